//! Stream errors (RFC 6120 §4.9): the conditions and the `<stream:error>` element.

use crate::stanza::ns;
use crate::xml::{Element, XmlWriter};

macro_rules! conditions {
    ($($variant:ident => $name:literal,)*) => {
        /// The defined stream error conditions (RFC 6120 §4.9.3).
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum Condition {
            $(#[doc = concat!("`", $name, "`")] $variant,)*
        }

        impl Condition {
            /// The element name of the condition.
            pub fn as_str(self) -> &'static str {
                match self { $(Condition::$variant => $name,)* }
            }

            /// The condition for an element name, if defined.
            pub fn from_name(name: &str) -> Option<Self> {
                match name { $($name => Some(Condition::$variant),)* _ => None }
            }
        }
    };
}

conditions! {
    BadFormat => "bad-format",
    BadNamespacePrefix => "bad-namespace-prefix",
    Conflict => "conflict",
    ConnectionTimeout => "connection-timeout",
    HostGone => "host-gone",
    HostUnknown => "host-unknown",
    ImproperAddressing => "improper-addressing",
    InternalServerError => "internal-server-error",
    InvalidFrom => "invalid-from",
    InvalidNamespace => "invalid-namespace",
    InvalidXml => "invalid-xml",
    NotAuthorized => "not-authorized",
    NotWellFormed => "not-well-formed",
    PolicyViolation => "policy-violation",
    RemoteConnectionFailed => "remote-connection-failed",
    Reset => "reset",
    ResourceConstraint => "resource-constraint",
    RestrictedXml => "restricted-xml",
    SeeOtherHost => "see-other-host",
    SystemShutdown => "system-shutdown",
    UndefinedCondition => "undefined-condition",
    UnsupportedEncoding => "unsupported-encoding",
    UnsupportedFeature => "unsupported-feature",
    UnsupportedStanzaType => "unsupported-stanza-type",
    UnsupportedVersion => "unsupported-version",
}

impl std::fmt::Display for Condition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `<stream:error>`: a condition and an optional human-readable text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamError {
    /// The defined condition (`undefined-condition` when the peer's is unknown).
    pub condition: Condition,
    /// The `<text>` child, if any.
    pub text: Option<String>,
}

impl std::fmt::Display for StreamError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.text {
            Some(t) => write!(f, "{} ({t})", self.condition),
            None => write!(f, "{}", self.condition),
        }
    }
}

impl StreamError {
    /// A stream error with a text.
    pub fn new(condition: Condition, text: impl Into<String>) -> Self {
        Self {
            condition,
            text: Some(text.into()),
        }
    }

    /// Whether `el` is a `<stream:error>`.
    pub fn matches(el: &Element) -> bool {
        el.is("error", ns::STREAM)
    }

    /// Reads a `<stream:error>`; an unknown condition becomes `undefined-condition`.
    pub fn from_element(el: &Element) -> Self {
        let mut condition = Condition::UndefinedCondition;
        let mut text = None;
        for c in el.children() {
            if c.ns() != ns::STREAM_ERRORS {
                continue;
            }
            if c.local_name() == "text" {
                text = Some(c.text().into_owned());
            } else if let Some(cond) = Condition::from_name(c.local_name()) {
                condition = cond;
            }
        }
        Self { condition, text }
    }

    /// Writes `<stream:error><condition xmlns='…streams'/><text …>…</text></stream:error>`.
    pub fn write(&self, w: &mut XmlWriter<'_>) {
        w.start("stream:error");
        w.start(self.condition.as_str());
        w.attr("xmlns", ns::STREAM_ERRORS);
        w.end();
        if let Some(t) = &self.text {
            w.start("text");
            w.attr("xmlns", ns::STREAM_ERRORS);
            w.text(t);
            w.end();
        }
        w.end();
    }
}
