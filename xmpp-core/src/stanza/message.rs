//! `<message>`: one-way stanzas. Contrail uses them for route advertisements and end-of-RIB
//! markers (spec §6.6, §5.8).

use crate::error::Error;
use crate::xml::{Element, XmlWriter};

/// A message stanza.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Message {
    /// `from`.
    pub from: Option<String>,
    /// `to`.
    pub to: Option<String>,
    /// `id`.
    pub id: Option<String>,
    /// `type` (Contrail sends none).
    pub kind: Option<String>,
    /// The child elements.
    pub children: Vec<Element>,
}

impl Message {
    /// Whether `el` is a `<message>` (names compared literally).
    pub fn matches(el: &Element) -> bool {
        el.local_name() == "message"
    }

    /// Reads a `<message>`.
    pub fn from_element(el: &Element) -> Result<Self, Error> {
        if !Self::matches(el) {
            return Err(Error::BadFormat(format!(
                "<{}> is not a message",
                el.name()
            )));
        }
        Ok(Self {
            from: el.get_attr("from").map(str::to_owned),
            to: el.get_attr("to").map(str::to_owned),
            id: el.get_attr("id").map(str::to_owned),
            kind: el.get_attr("type").map(str::to_owned),
            children: el.children().cloned().collect(),
        })
    }

    /// Writes the message with the Contrail attribute order: `from to id type`.
    pub fn write(&self, w: &mut XmlWriter<'_>) {
        w.start("message");
        for (k, v) in [
            ("from", &self.from),
            ("to", &self.to),
            ("id", &self.id),
            ("type", &self.kind),
        ] {
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
