//! Stanza errors (RFC 6120 §8.3): `<error type='…'><condition xmlns='…stanzas'/>…</error>`,
//! the answer to an IQ request that cannot be served.

use crate::stanza::ns;
use crate::xml::Element;

/// The `type` of a stanza error (RFC 6120 §8.3.2): what the sender may do about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorType {
    /// Retry after providing credentials.
    Auth,
    /// Do not retry: the error cannot be remedied.
    Cancel,
    /// Proceed: the condition was only a warning.
    Continue,
    /// Retry after changing the data sent.
    Modify,
    /// Retry after waiting.
    Wait,
}

impl ErrorType {
    /// The attribute value.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorType::Auth => "auth",
            ErrorType::Cancel => "cancel",
            ErrorType::Continue => "continue",
            ErrorType::Modify => "modify",
            ErrorType::Wait => "wait",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "auth" => ErrorType::Auth,
            "cancel" => ErrorType::Cancel,
            "continue" => ErrorType::Continue,
            "modify" => ErrorType::Modify,
            "wait" => ErrorType::Wait,
            _ => return None,
        })
    }
}

macro_rules! stanza_conditions {
    ($($variant:ident => $name:literal, $kind:ident;)*) => {
        /// The defined stanza error conditions (RFC 6120 §8.3.3).
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum StanzaCondition {
            $(#[doc = concat!("`", $name, "`")] $variant,)*
        }

        impl StanzaCondition {
            /// The element name.
            pub fn as_str(self) -> &'static str {
                match self { $(StanzaCondition::$variant => $name,)* }
            }

            /// The condition for an element name.
            pub fn from_name(name: &str) -> Option<Self> {
                match name { $($name => Some(StanzaCondition::$variant),)* _ => None }
            }

            /// The error type RFC 6120 §8.3.3 gives in its example for the condition.
            pub fn default_type(self) -> ErrorType {
                match self { $(StanzaCondition::$variant => ErrorType::$kind,)* }
            }
        }
    };
}

stanza_conditions! {
    BadRequest => "bad-request", Modify;
    Conflict => "conflict", Cancel;
    FeatureNotImplemented => "feature-not-implemented", Cancel;
    Forbidden => "forbidden", Auth;
    Gone => "gone", Cancel;
    InternalServerError => "internal-server-error", Cancel;
    ItemNotFound => "item-not-found", Cancel;
    JidMalformed => "jid-malformed", Modify;
    NotAcceptable => "not-acceptable", Modify;
    NotAllowed => "not-allowed", Cancel;
    NotAuthorized => "not-authorized", Auth;
    PolicyViolation => "policy-violation", Modify;
    RecipientUnavailable => "recipient-unavailable", Wait;
    Redirect => "redirect", Modify;
    RegistrationRequired => "registration-required", Auth;
    RemoteServerNotFound => "remote-server-not-found", Cancel;
    RemoteServerTimeout => "remote-server-timeout", Wait;
    ResourceConstraint => "resource-constraint", Wait;
    ServiceUnavailable => "service-unavailable", Cancel;
    SubscriptionRequired => "subscription-required", Auth;
    UndefinedCondition => "undefined-condition", Cancel;
    UnexpectedRequest => "unexpected-request", Modify;
}

impl std::fmt::Display for StanzaCondition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A stanza `<error>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StanzaError {
    /// `type`.
    pub kind: ErrorType,
    /// The defined condition.
    pub condition: StanzaCondition,
    /// The `<text>` child, if any.
    pub text: Option<String>,
    /// An application-specific condition (e.g. XEP-0060's `<not-subscribed/>`).
    pub app: Option<Element>,
}

impl StanzaError {
    /// An error with the condition's usual type and no text.
    pub fn new(condition: StanzaCondition) -> Self {
        Self {
            kind: condition.default_type(),
            condition,
            text: None,
            app: None,
        }
    }

    /// Builder: adds a human-readable text.
    pub fn with_text(mut self, text: impl Into<String>) -> Self {
        self.text = Some(text.into());
        self
    }

    /// Builder: adds an application-specific condition element.
    pub fn with_app(mut self, app: Element) -> Self {
        self.app = Some(app);
        self
    }

    /// Reads an `<error>` element; unknown conditions become `undefined-condition`.
    pub fn from_element(el: &Element) -> Self {
        let mut e = StanzaError::new(StanzaCondition::UndefinedCondition);
        if let Some(k) = el.get_attr("type").and_then(ErrorType::parse) {
            e.kind = k;
        }
        for c in el.children() {
            if c.ns() == ns::STANZA_ERRORS {
                if c.local_name() == "text" {
                    e.text = Some(c.text().into_owned());
                } else if let Some(cond) = StanzaCondition::from_name(c.local_name()) {
                    e.condition = cond;
                }
            } else if e.app.is_none() {
                e.app = Some(c.clone());
            }
        }
        e
    }

    /// The `<error>` element.
    pub fn to_element(&self) -> Element {
        let mut el = Element::new("error")
            .attr("type", self.kind.as_str())
            .child(Element::with_ns(self.condition.as_str(), ns::STANZA_ERRORS));
        if let Some(t) = &self.text {
            el.push_child(
                Element::with_ns("text", ns::STANZA_ERRORS)
                    .attr("xml:lang", "en")
                    .text_node(t.clone()),
            );
        }
        if let Some(app) = &self.app {
            el.push_child(app.clone());
        }
        el
    }
}

impl std::fmt::Display for StanzaError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.condition, self.kind.as_str())?;
        if let Some(t) = &self.text {
            write!(f, ": {t}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xml::{NsScope, Style, XmlWriter};

    #[test]
    fn round_trip() {
        let e = StanzaError::new(StanzaCondition::ServiceUnavailable)
            .with_text("no handler")
            .with_app(Element::with_ns(
                "not-subscribed",
                "http://jabber.org/protocol/pubsub#errors",
            ));
        let mut out = bytes::BytesMut::new();
        e.to_element()
            .write(&mut XmlWriter::new(&mut out, Style::Compact));
        let text = std::str::from_utf8(&out).expect("utf8");
        assert!(text.starts_with(
            "<error type=\"cancel\"><service-unavailable xmlns=\"urn:ietf:params:xml:ns:xmpp-stanzas\"/>"
        ), "{text}");
        let back =
            StanzaError::from_element(&Element::parse(&out, &NsScope::default()).expect("parse"));
        assert_eq!(back, e);
    }
}
