//! A small owned element tree for parsed stanzas, with namespace resolution.
//!
//! The reader cuts one complete top-level element out of the byte stream; [`Element::parse`]
//! turns those bytes into this tree with quick-xml. Typed stanzas (`stanza`, `stream`,
//! `contrail`) are converted from it and can be written back with an [`XmlWriter`].

use std::borrow::Cow;
use std::sync::Arc;

use quick_xml::escape::resolve_predefined_entity;
use quick_xml::events::{BytesStart, Event};

use super::writer::XmlWriter;
use crate::error::Error;

/// A child of an element: another element or character data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Node {
    /// A child element.
    Element(Element),
    /// Character data (entities resolved, CDATA included).
    Text(String),
}

/// An XML element: its qualified name as written, its resolved namespace, its attributes
/// (namespace declarations included, in document order) and its children.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Element {
    name: String,
    /// Shared with the scope it was resolved in: no allocation per element.
    ns: Arc<str>,
    attrs: Vec<(String, String)>,
    children: Vec<Node>,
}

/// The namespace context an element is parsed in: the stream's default namespace and its
/// prefix declarations (normally `stream` → `http://etherx.jabber.org/streams`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NsScope {
    /// The default namespace (`xmlns`), `""` when none.
    pub default: Arc<str>,
    /// Declared prefixes, innermost last.
    pub prefixes: Vec<(String, Arc<str>)>,
}

impl NsScope {
    /// The scope a stream header establishes for its children.
    pub fn for_stream(header: &Element) -> Self {
        let mut scope = NsScope::default();
        scope.push_decls(header);
        scope
    }

    fn push_decls(&mut self, el: &Element) {
        for (k, v) in &el.attrs {
            if k == "xmlns" {
                self.default = Arc::from(v.as_str());
            } else if let Some(p) = k.strip_prefix("xmlns:") {
                self.prefixes.push((p.to_owned(), Arc::from(v.as_str())));
            }
        }
    }

    fn resolve(&self, prefix: Option<&str>) -> Option<Arc<str>> {
        match prefix {
            None => Some(self.default.clone()),
            Some("xml") => Some(Arc::from("http://www.w3.org/XML/1998/namespace")),
            Some(p) => self
                .prefixes
                .iter()
                .rev()
                .find(|(k, _)| k == p)
                .map(|(_, v)| v.clone()),
        }
    }
}

impl Element {
    /// A new element with no namespace of its own (it inherits its parent's when written).
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            ..Self::default()
        }
    }

    /// A new element that declares `ns` as its default namespace.
    pub fn with_ns(name: impl Into<String>, ns: &str) -> Self {
        Self {
            name: name.into(),
            attrs: vec![("xmlns".to_owned(), ns.to_owned())],
            ns: Arc::from(ns),
            children: Vec::new(),
        }
    }

    /// Builder: adds an attribute.
    pub fn attr(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.set_attr(name, value);
        self
    }

    /// Builder: appends a child element.
    pub fn child(mut self, child: Element) -> Self {
        self.children.push(Node::Element(child));
        self
    }

    /// Builder: appends character data.
    pub fn text_node(mut self, text: impl Into<String>) -> Self {
        self.children.push(Node::Text(text.into()));
        self
    }

    /// Sets (or replaces) an attribute.
    pub fn set_attr(&mut self, name: impl Into<String>, value: impl Into<String>) {
        let name = name.into();
        let value = value.into();
        if name == "xmlns" {
            self.ns = Arc::from(value.as_str());
        }
        match self.attrs.iter_mut().find(|(k, _)| *k == name) {
            Some(slot) => slot.1 = value,
            None => self.attrs.push((name, value)),
        }
    }

    /// Appends a child element.
    pub fn push_child(&mut self, child: Element) {
        self.children.push(Node::Element(child));
    }

    /// The qualified name as written (`stream:features`, `iq`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The local part of the name (`features` for `stream:features`).
    pub fn local_name(&self) -> &str {
        match self.name.split_once(':') {
            Some((_, local)) => local,
            None => &self.name,
        }
    }

    /// The prefix of the name, if any.
    pub fn prefix(&self) -> Option<&str> {
        self.name.split_once(':').map(|(p, _)| p)
    }

    /// The resolved namespace (`""` when none is in scope).
    pub fn ns(&self) -> &str {
        &self.ns
    }

    /// True when the local name and the resolved namespace are both equal.
    pub fn is(&self, local_name: &str, ns: &str) -> bool {
        self.local_name() == local_name && &*self.ns == ns
    }

    /// An attribute value by its name as written.
    pub fn get_attr(&self, name: &str) -> Option<&str> {
        self.attrs
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// All attributes, in document order.
    pub fn attrs(&self) -> impl Iterator<Item = (&str, &str)> {
        self.attrs.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// All child nodes.
    pub fn nodes(&self) -> &[Node] {
        &self.children
    }

    /// The child elements.
    pub fn children(&self) -> impl Iterator<Item = &Element> {
        self.children.iter().filter_map(|n| match n {
            Node::Element(e) => Some(e),
            Node::Text(_) => None,
        })
    }

    /// The first child element with this local name (any namespace: Contrail receivers
    /// compare names literally, spec §2.3).
    pub fn get_child(&self, local_name: &str) -> Option<&Element> {
        self.children().find(|c| c.local_name() == local_name)
    }

    /// The first child element with this local name and namespace.
    pub fn get_child_ns(&self, local_name: &str, ns: &str) -> Option<&Element> {
        self.children().find(|c| c.is(local_name, ns))
    }

    /// The first element with this local name anywhere below (depth first), as the C++
    /// decoder's `find_node` does.
    pub fn find_descendant(&self, local_name: &str) -> Option<&Element> {
        for c in self.children() {
            if c.local_name() == local_name {
                return Some(c);
            }
            if let Some(found) = c.find_descendant(local_name) {
                return Some(found);
            }
        }
        None
    }

    /// The concatenated character data directly inside this element.
    pub fn text(&self) -> Cow<'_, str> {
        let mut texts = self.children.iter().filter_map(|n| match n {
            Node::Text(t) => Some(t.as_str()),
            Node::Element(_) => None,
        });
        match (texts.next(), texts.next()) {
            (None, _) => Cow::Borrowed(""),
            (Some(one), None) => Cow::Borrowed(one),
            (Some(a), Some(b)) => {
                let mut s = String::from(a);
                s.push_str(b);
                texts.for_each(|t| s.push_str(t));
                Cow::Owned(s)
            }
        }
    }

    /// The text of the first child with this local name.
    pub fn child_text(&self, local_name: &str) -> Option<Cow<'_, str>> {
        self.get_child(local_name).map(Element::text)
    }

    /// Writes the element and its subtree. Whitespace-only text nodes are skipped in the
    /// indented styles (the layout supplies its own; pugixml drops them when parsing). An
    /// empty text node is kept: it is how a built element asks for `<name></name>`, the
    /// form the Contrail generated encoders use for empty strings (spec §2.4).
    pub fn write(&self, w: &mut XmlWriter<'_>) {
        w.start(Cow::Owned(self.name.clone()));
        for (k, v) in &self.attrs {
            w.attr(k, v);
        }
        let indented = w.style() != super::Style::Compact;
        for n in &self.children {
            match n {
                Node::Element(e) => e.write(w),
                Node::Text(t) if indented && !t.is_empty() && t.bytes().all(is_xml_space) => {}
                Node::Text(t) => w.text(t),
            }
        }
        w.end();
    }

    /// Parses one complete element from `bytes` in namespace scope `scope`.
    ///
    /// The framing reader has already rejected restricted-XML constructs and checked the
    /// size and depth bounds; this is the well-formedness and tree-building step.
    pub fn parse(bytes: &[u8], scope: &NsScope) -> Result<Element, Error> {
        let mut reader = quick_xml::Reader::from_reader(bytes);
        let cfg = reader.config_mut();
        cfg.check_end_names = true;
        cfg.trim_text(false);
        cfg.expand_empty_elements = false;

        // Scopes are pushed only by elements that declare namespaces; each open element
        // remembers how many scopes were live when it opened.
        let mut scopes: Vec<Cow<'_, NsScope>> = vec![Cow::Borrowed(scope)];
        let mut stack: Vec<(Element, usize)> = Vec::new();
        let mut root: Option<Element> = None;
        loop {
            let event = reader
                .read_event()
                .map_err(|e| Error::NotWellFormed(e.to_string()))?;
            match event {
                Event::Start(_) | Event::Empty(_) if root.is_some() => {
                    return Err(Error::NotWellFormed("content after the element".into()));
                }
                Event::Start(start) => {
                    let live = scopes.len();
                    let el = open_element(&start, &mut scopes)?;
                    stack.push((el, live));
                }
                Event::Empty(start) => {
                    let live = scopes.len();
                    let el = open_element(&start, &mut scopes)?;
                    scopes.truncate(live);
                    close_element(&mut stack, &mut root, el);
                }
                Event::End(_) => {
                    let Some((el, live)) = stack.pop() else {
                        return Err(Error::NotWellFormed("unbalanced end tag".into()));
                    };
                    scopes.truncate(live);
                    close_element(&mut stack, &mut root, el);
                }
                Event::Text(t) => {
                    if let Some((el, _)) = stack.last_mut() {
                        // XML 1.0 §2.4: "]]>" may not appear literally in content.
                        if t.contains("]]>") {
                            return Err(Error::NotWellFormed("']]>' in character data".into()));
                        }
                        let content = t.xml10_content();
                        check_chars(&content)?;
                        push_text(el, &content);
                    } else if !t.bytes().all(is_xml_space) {
                        return Err(Error::NotWellFormed("text outside the element".into()));
                    }
                }
                Event::CData(t) => {
                    let Some((el, _)) = stack.last_mut() else {
                        return Err(Error::NotWellFormed("CDATA outside the element".into()));
                    };
                    let content = t.xml10_content();
                    check_chars(&content)?;
                    push_text(el, &content);
                }
                Event::GeneralRef(r) => {
                    let Some((el, _)) = stack.last_mut() else {
                        return Err(Error::NotWellFormed("reference outside the element".into()));
                    };
                    let resolved = resolve_reference(&r)?;
                    push_text(el, &resolved);
                }
                Event::Comment(_) => return Err(Error::RestrictedXml("comment".into())),
                Event::PI(_) | Event::Decl(_) => {
                    return Err(Error::RestrictedXml("processing instruction".into()));
                }
                Event::DocType(_) => return Err(Error::RestrictedXml("DOCTYPE".into())),
                Event::Eof => break,
            }
        }
        if !stack.is_empty() {
            return Err(Error::NotWellFormed("unclosed element".into()));
        }
        root.ok_or_else(|| Error::NotWellFormed("no element".into()))
    }
}

fn push_text(el: &mut Element, text: &str) {
    if text.is_empty() {
        return;
    }
    if let Some(Node::Text(prev)) = el.children.last_mut() {
        prev.push_str(text);
    } else {
        el.children.push(Node::Text(text.to_owned()));
    }
}

fn close_element(stack: &mut [(Element, usize)], root: &mut Option<Element>, el: Element) {
    match stack.last_mut() {
        Some((parent, _)) => parent.children.push(Node::Element(el)),
        None => *root = Some(el),
    }
}

pub(crate) fn is_xml_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r')
}

/// Resolves `&name;`: only the five predefined entities and character references exist in
/// restricted XML (RFC 6120 §11.1).
fn resolve_reference(r: &quick_xml::events::BytesRef<'_>) -> Result<String, Error> {
    match r.resolve_char_ref() {
        Ok(Some(c)) => {
            if is_xml_char(c) {
                Ok(c.to_string())
            } else {
                Err(Error::NotWellFormed(format!(
                    "character reference to U+{:04X}",
                    c as u32
                )))
            }
        }
        Ok(None) => {
            let name: &str = r;
            resolve_predefined_entity(name)
                .map(str::to_owned)
                .ok_or_else(|| Error::RestrictedXml(format!("entity reference &{name};")))
        }
        Err(e) => Err(Error::NotWellFormed(e.to_string())),
    }
}

/// Rejects characters XML 1.0 §2.2 does not allow, literal or by character reference:
/// C0 controls other than tab, LF and CR, and U+FFFE/U+FFFF (surrogates cannot occur in a
/// `str`). quick-xml passes them through; the C++ peers would choke on them, and our
/// writer could not give them back.
fn check_chars(s: &str) -> Result<(), Error> {
    let bytes = s.as_bytes();
    for (i, &b) in bytes.iter().enumerate() {
        let bad = match b {
            0x00..=0x08 | 0x0B | 0x0C | 0x0E..=0x1F => true,
            // U+FFFE / U+FFFF are EF BF BE / EF BF BF.
            0xEF => matches!(bytes.get(i + 1..i + 3), Some([0xBF, 0xBE | 0xBF])),
            _ => false,
        };
        if bad {
            let c = s[i..].chars().next().unwrap_or_default();
            return Err(Error::NotWellFormed(format!(
                "character U+{:04X} is not allowed in XML",
                c as u32
            )));
        }
    }
    Ok(())
}

/// XML 1.0 (5th ed.) §2.3 `NameStartChar`.
fn is_name_start_char(c: char) -> bool {
    matches!(c,
        ':' | 'A'..='Z' | '_' | 'a'..='z' | '\u{C0}'..='\u{D6}' | '\u{D8}'..='\u{F6}'
        | '\u{F8}'..='\u{2FF}' | '\u{370}'..='\u{37D}' | '\u{37F}'..='\u{1FFF}'
        | '\u{200C}'..='\u{200D}' | '\u{2070}'..='\u{218F}' | '\u{2C00}'..='\u{2FEF}'
        | '\u{3001}'..='\u{D7FF}' | '\u{F900}'..='\u{FDCF}' | '\u{FDF0}'..='\u{FFFD}'
        | '\u{10000}'..='\u{EFFFF}')
}

/// XML 1.0 (5th ed.) §2.3 `NameChar`.
fn is_name_char(c: char) -> bool {
    is_name_start_char(c)
        || matches!(c, '-' | '.' | '0'..='9' | '\u{B7}' | '\u{300}'..='\u{36F}' | '\u{203F}'..='\u{2040}')
}

/// A qualified name (Namespaces in XML §4): a name with at most one colon, not at either
/// end. Names are written back unescaped, so one that is not a name must not get in.
fn check_qname(name: &str) -> Result<(), Error> {
    let mut chars = name.chars();
    let valid = chars
        .next()
        .is_some_and(|c| c != ':' && is_name_start_char(c))
        && chars.all(is_name_char)
        && name.matches(':').count() <= 1
        && !name.ends_with(':');
    if valid {
        Ok(())
    } else {
        Err(Error::NotWellFormed(format!("invalid name '{name}'")))
    }
}

fn is_xml_char(c: char) -> bool {
    matches!(c, '\t' | '\n' | '\r' | '\u{20}'..='\u{D7FF}' | '\u{E000}'..='\u{FFFD}' | '\u{10000}'..)
}

/// Builds an element (without children) from a start tag, resolving its namespace; pushes
/// a new scope when the tag declares namespaces.
pub(crate) fn open_element(
    start: &BytesStart<'_>,
    scopes: &mut Vec<Cow<'_, NsScope>>,
) -> Result<Element, Error> {
    let name = start.name().as_ref().to_owned();
    check_qname(&name)?;
    let mut el = Element::new(name);
    for attr in start.attributes() {
        let attr = attr.map_err(|e| Error::NotWellFormed(e.to_string()))?;
        let key = attr.key.as_ref().to_owned();
        check_qname(&key)?;
        let value = attr
            .normalized_value(quick_xml::XmlVersion::Implicit1_0)
            .map_err(|e| match e {
                quick_xml::Error::Escape(quick_xml::escape::EscapeError::UnrecognizedEntity(
                    ..,
                )) => Error::RestrictedXml(format!("entity reference in attribute {key}")),
                other => Error::NotWellFormed(other.to_string()),
            })?
            .into_owned();
        check_chars(&value)?;
        if key.starts_with("xmlns:") && value.is_empty() {
            // Namespaces in XML 1.0 §3: a prefix cannot be undeclared.
            return Err(Error::NotWellFormed(format!("empty namespace for {key}")));
        }
        if el.attrs.iter().any(|(k, _)| *k == key) {
            return Err(Error::NotWellFormed(format!("duplicate attribute {key}")));
        }
        el.attrs.push((key, value));
    }
    let has_decls = el
        .attrs
        .iter()
        .any(|(k, _)| k == "xmlns" || k.starts_with("xmlns:"));
    if has_decls {
        let mut s = scopes.last().map(|s| (**s).clone()).unwrap_or_default();
        s.push_decls(&el);
        scopes.push(Cow::Owned(s));
    }
    let scope = scopes.last().map(|s| &**s);
    el.ns = scope.and_then(|s| s.resolve(el.prefix())).ok_or_else(|| {
        Error::NotWellFormed(format!("undeclared namespace prefix in <{}>", el.name))
    })?;
    // A prefixed attribute needs its prefix declared too (unprefixed ones are in no
    // namespace; `xmlns:` declarations are not attributes in this sense).
    for (k, _) in &el.attrs {
        if let Some((p, _)) = k.split_once(':')
            && p != "xmlns"
            && scope.and_then(|s| s.resolve(Some(p))).is_none()
        {
            return Err(Error::NotWellFormed(format!(
                "undeclared namespace prefix in attribute {k} of <{}>",
                el.name
            )));
        }
    }
    Ok(el)
}
