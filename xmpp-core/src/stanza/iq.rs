//! `<iq>`: request/response stanzas (RFC 6120 §8.2.3). Contrail uses only `type="set"`
//! and never answers (spec §6.1); standard peers require a `result` or `error` for each.

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
