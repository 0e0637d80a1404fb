//! `<iq>`: request/response stanzas (RFC 6120 §8.2.3). Contrail uses only `type="set"`
//! and never answers (spec §6.1); standard peers require a `result` or `error` for each.

use super::error::StanzaError;
use crate::error::Error;
use crate::xml::{Element, XmlWriter};

/// The `type` attribute of an IQ.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IqType {
    /// `get`
    Get,
    /// `set`
    Set,
    /// `result`
    Result,
    /// `error`
    Error,
}

impl IqType {
    /// The attribute value.
    pub fn as_str(self) -> &'static str {
        match self {
            IqType::Get => "get",
            IqType::Set => "set",
            IqType::Result => "result",
            IqType::Error => "error",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "get" => IqType::Get,
            "set" => IqType::Set,
            "result" => IqType::Result,
            "error" => IqType::Error,
            _ => return None,
        })
    }
}

/// An IQ stanza.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Iq {
    /// `type`.
    pub kind: IqType,
    /// `id` (Contrail config IQs carry none).
    pub id: Option<String>,
    /// `from`.
    pub from: Option<String>,
    /// `to`.
    pub to: Option<String>,
    /// The child elements (the payload; for `error`, possibly the request and `<error>`).
    pub children: Vec<Element>,
}

impl Iq {
    /// Whether `el` is an `<iq>` (names compared literally, as the C++ decoder does).
    pub fn matches(el: &Element) -> bool {
        el.local_name() == "iq"
    }

    /// Reads an `<iq>`; a missing or unknown `type` is `bad-format`.
    pub fn from_element(el: &Element) -> Result<Self, Error> {
        if !Self::matches(el) {
            return Err(Error::BadFormat(format!("<{}> is not an iq", el.name())));
        }
        let kind = el
            .get_attr("type")
            .and_then(IqType::parse)
            .ok_or_else(|| Error::BadFormat("iq without a valid type".into()))?;
        Ok(Self {
            kind,
            id: el.get_attr("id").map(str::to_owned),
            from: el.get_attr("from").map(str::to_owned),
            to: el.get_attr("to").map(str::to_owned),
            children: el.children().cloned().collect(),
        })
    }

    /// The first child element (the request payload).
    pub fn payload(&self) -> Option<&Element> {
        self.children.first()
    }

    /// An empty `result` answering this request (addresses swapped, same id).
    pub fn result(&self) -> Iq {
        Iq {
            kind: IqType::Result,
            id: self.id.clone(),
            from: self.to.clone(),
            to: self.from.clone(),
            children: Vec::new(),
        }
    }

    /// A request (`get` or `set`) with one payload element.
    pub fn request(kind: IqType, id: &str, to: Option<&str>, payload: Element) -> Iq {
        Iq {
            kind,
            id: Some(id.to_owned()),
            from: None,
            to: to.map(str::to_owned),
            children: vec![payload],
        }
    }

    /// Whether this is a request (`get` or `set`), which RFC 6120 §8.2.3 requires to be
    /// answered with exactly one `result` or `error`.
    pub fn is_request(&self) -> bool {
        matches!(self.kind, IqType::Get | IqType::Set)
    }

    /// An `error` answering this request (addresses swapped, same id).
    pub fn error(&self, error: &StanzaError) -> Iq {
        Iq {
            kind: IqType::Error,
            id: self.id.clone(),
            from: self.to.clone(),
            to: self.from.clone(),
            children: vec![error.to_element()],
        }
    }

    /// The `<error>` of an `error` response.
    pub fn stanza_error(&self) -> Option<StanzaError> {
        if self.kind != IqType::Error {
            return None;
        }
        self.children
            .iter()
            .find(|c| c.local_name() == "error")
            .map(StanzaError::from_element)
    }

    /// The IQ as an element (for [`crate::io::XmppStream::queue`]).
    pub fn to_element(&self) -> Element {
        let mut el = Element::new("iq").attr("type", self.kind.as_str());
        for (k, v) in [("from", &self.from), ("to", &self.to), ("id", &self.id)] {
            if let Some(v) = v {
                el.set_attr(k, v.clone());
            }
        }
        for c in &self.children {
            el.push_child(c.clone());
        }
        el
    }

    /// Writes the IQ with the attribute order of the Contrail encoders: `type from to id`.
    pub fn write(&self, w: &mut XmlWriter<'_>) {
        w.start("iq");
        w.attr("type", self.kind.as_str());
        for (k, v) in [("from", &self.from), ("to", &self.to), ("id", &self.id)] {
            if let Some(v) = v {
                w.attr(k, v);
            }
        }
        for c in &self.children {
            c.write(w);
        }
        w.end();
    }
}
