//! A small owned element tree for parsed stanzas, with namespace resolution.
//!
//! [`Element::parse`] turns the bytes of one complete element into this tree with
//! quick-xml; the stream reader builds the same tree with the same [`TreeBuilder`] as the
//! element's bytes arrive. Typed stanzas (`stanza`, `stream`, `contrail`) are converted
//! from it and can be written back with an [`XmlWriter`].
//!
//! Decoding cost is dominated by allocation and copying, so the tree is laid out to need
//! one allocation per element with element children and none for a leaf: names, attribute
//! values and text are [`CompactString`]s (inline up to 24 bytes, which covers the element
//! names and most values of XMPP and Contrail traffic); a text-only element keeps its text
//! in itself, not in a `Vec` of one node; well-known namespaces are `&'static str`s rather
//! than reference-counted; children are collected on a scratch stack and moved into an
//! exactly sized `Vec` when their parent ends ([`TreeBuilder`]); names are checked once per
//! reader and then taken from a small cache.
//!
//! Whitespace: runs of whitespace that contain a line break, in an element whose content
//! is otherwise only elements, are indentation (both Contrail layouts indent every element
//! on its own line) and are not kept. Everything else is kept as it is: the text of a
//! text-only element (`<name> </name>`, `<name>\n</name>`), whitespace without a line
//! break, and all the text of mixed content.

use std::borrow::Cow;
use std::fmt;
use std::sync::{Arc, OnceLock};

use compact_str::CompactString;
use quick_xml::escape::resolve_predefined_entity;
use quick_xml::events::{BytesStart, Event};

use super::writer::XmlWriter;
use crate::error::Error;
use crate::stanza::ns;

/// A child of an element: another element or character data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Node {
    /// A child element.
    Element(Element),
    /// Character data (entities resolved, CDATA included). A [`CompactString`]: text of up
    /// to 24 bytes (indentation, most Contrail values) is stored inline. It dereferences to
    /// `str` and compares with `&str` and `String`.
    Text(CompactString),
}

/// An XML element: its qualified name as written, its resolved namespace, its attributes
/// (namespace declarations included, in document order) and its children.
#[derive(Default)]
pub struct Element {
    name: CompactString,
    /// A well-known namespace is a `&'static str`; others are shared with the scope they
    /// were declared in.
    ns: Ns,
    /// Rare on most elements: one word when there are none (an element is at most 88 bytes,
    /// which keeps types that embed one, such as stanza errors, small).
    attrs: Option<Box<Attrs>>,
    content: Content,
}

/// An element's attributes (boxed in [`Element`]: most elements have none).
#[derive(Debug, Clone, Default)]
struct Attrs(Vec<(CompactString, CompactString)>);

/// An element's child nodes.
#[derive(Debug)]
enum Content {
    /// Any nodes (none for an empty element).
    Nodes(Vec<Node>),
    /// Exactly one text node (most leaves): kept without a `Vec` to allocate. The cell
    /// caches it as a node for [`Element::nodes`], if anyone asks.
    Text(CompactString, OnceLock<Box<Node>>),
}

impl Default for Content {
    fn default() -> Self {
        Content::Nodes(Vec::new())
    }
}

impl Clone for Content {
    fn clone(&self) -> Self {
        match self {
            Content::Nodes(nodes) => Content::Nodes(nodes.clone()),
            Content::Text(t, _) => Content::Text(t.clone(), OnceLock::new()),
        }
    }
}

impl Clone for Element {
    fn clone(&self) -> Self {
        Self {
            name: self.name.clone(),
            ns: self.ns.clone(),
            attrs: self.attrs.clone(),
            content: self.content.clone(),
        }
    }
}

/// Equal names, namespaces, attributes and child nodes, however the content is stored.
impl PartialEq for Element {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name
            && self.ns == other.ns
            && self.attr_list() == other.attr_list()
            && match (&self.content, &other.content) {
                (Content::Text(a, _), Content::Text(b, _)) => a == b,
                (Content::Nodes(a), Content::Nodes(b)) => a == b,
                (Content::Text(a, _), Content::Nodes(b))
                | (Content::Nodes(b), Content::Text(a, _)) => {
                    matches!(b.as_slice(), [Node::Text(b)] if a == b)
                }
            }
    }
}

impl Eq for Element {}

impl fmt::Debug for Element {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        struct Nodes<'a>(&'a Element);
        impl fmt::Debug for Nodes<'_> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                match &self.0.content {
                    Content::Text(t, _) => f.debug_list().entry(&TextNode(t)).finish(),
                    Content::Nodes(nodes) => f.debug_list().entries(nodes).finish(),
                }
            }
        }
        struct TextNode<'a>(&'a CompactString);
        impl fmt::Debug for TextNode<'_> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.debug_tuple("Text").field(self.0).finish()
            }
        }
        f.debug_struct("Element")
            .field("name", &self.name)
            .field("ns", &self.ns)
            .field("attrs", &self.attr_list())
            .field("children", &Nodes(self))
            .finish()
    }
}

/// A resolved namespace name. Cloning one never allocates; only namespaces that are not
/// in [`KNOWN_NS`] touch a reference count.
#[derive(Clone)]
enum Ns {
    /// An entry of [`KNOWN_NS`] (a reference to it keeps `Ns` at two words).
    Static(&'static &'static str),
    Shared(Arc<str>),
}

impl Ns {
    fn new(s: &str) -> Self {
        match KNOWN_NS.iter().find(|k| **k == s) {
            Some(k) => Ns::Static(k),
            None => Ns::Shared(Arc::from(s)),
        }
    }

    fn from_arc(s: &Arc<str>) -> Self {
        match KNOWN_NS.iter().find(|k| **k == &**s) {
            Some(k) => Ns::Static(k),
            None => Ns::Shared(s.clone()),
        }
    }

    fn as_str(&self) -> &str {
        match self {
            Ns::Static(s) => s,
            Ns::Shared(s) => s,
        }
    }
}

impl Default for Ns {
    fn default() -> Self {
        Ns::Static(&KNOWN_NS[0])
    }
}

impl PartialEq for Ns {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for Ns {}

impl fmt::Debug for Ns {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

/// The namespaces XMPP and Contrail streams use, so that resolving them costs no reference
/// counting. The empty one (no namespace) first.
static KNOWN_NS: [&str; 13] = [
    "",
    ns::CLIENT,
    ns::SERVER,
    ns::STREAM,
    ns::PUBSUB,
    ns::PUBSUB_EVENT,
    ns::TLS,
    ns::SASL,
    ns::BIND,
    ns::STREAM_ERRORS,
    ns::STANZA_ERRORS,
    ns::PING,
    ns::XML,
];

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
        for (k, v) in header.attrs() {
            if k == "xmlns" {
                scope.default = Arc::from(v);
            } else if let Some(p) = k.strip_prefix("xmlns:") {
                scope.prefixes.push((p.to_owned(), Arc::from(v)));
            }
        }
        scope
    }

    fn resolve_prefix(&self, prefix: &str) -> Option<Ns> {
        self.prefixes
            .iter()
            .rev()
            .find(|(k, _)| k == prefix)
            .map(|(_, v)| Ns::from_arc(v))
    }
}

impl Element {
    /// A new element with no namespace of its own (it inherits its parent's when written).
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: CompactString::from(name.into()),
            ..Self::default()
        }
    }

    /// A new element that declares `ns` as its default namespace.
    pub fn with_ns(name: impl Into<String>, ns: &str) -> Self {
        Self {
            name: CompactString::from(name.into()),
            attrs: Some(Box::new(Attrs(vec![(
                CompactString::const_new("xmlns"),
                CompactString::from(ns),
            )]))),
            ns: Ns::new(ns),
            ..Self::default()
        }
    }

    fn attr_list(&self) -> &[(CompactString, CompactString)] {
        self.attrs.as_deref().map_or(&[], |a| a.0.as_slice())
    }

    /// The child nodes when they are stored as nodes (none for a text content).
    fn child_nodes(&self) -> &[Node] {
        match &self.content {
            Content::Nodes(nodes) => nodes,
            Content::Text(..) => &[],
        }
    }

    /// Changes the child nodes (a text content becomes a node).
    fn change_nodes(&mut self, change: impl FnOnce(&mut Vec<Node>)) {
        let mut nodes = match std::mem::take(&mut self.content) {
            Content::Text(t, _) => vec![Node::Text(t)],
            Content::Nodes(nodes) => nodes,
        };
        change(&mut nodes);
        self.content = Content::Nodes(nodes);
    }

    /// Builder: adds an attribute.
    pub fn attr(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.set_attr(name, value);
        self
    }

    /// Builder: appends a child element.
    pub fn child(mut self, child: Element) -> Self {
        self.push_child(child);
        self
    }

    /// Builder: appends character data.
    pub fn text_node(mut self, text: impl Into<String>) -> Self {
        let text = CompactString::from(text.into());
        if matches!(&self.content, Content::Nodes(nodes) if nodes.is_empty()) {
            self.content = Content::Text(text, OnceLock::new());
        } else {
            self.change_nodes(|nodes| nodes.push(Node::Text(text)));
        }
        self
    }

    /// Sets (or replaces) an attribute.
    pub fn set_attr(&mut self, name: impl Into<String>, value: impl Into<String>) {
        let name = name.into();
        let value = CompactString::from(value.into());
        if name == "xmlns" {
            self.ns = Ns::new(&value);
        }
        let attrs = &mut self.attrs.get_or_insert_default().0;
        match attrs.iter_mut().find(|(k, _)| *k == name) {
            Some(slot) => slot.1 = value,
            None => attrs.push((CompactString::from(name), value)),
        }
    }

    /// Appends a child element.
    pub fn push_child(&mut self, child: Element) {
        self.change_nodes(|nodes| nodes.push(Node::Element(child)));
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
        self.ns.as_str()
    }

    /// True when the local name and the resolved namespace are both equal.
    pub fn is(&self, local_name: &str, ns: &str) -> bool {
        self.local_name() == local_name && self.ns.as_str() == ns
    }

    /// An attribute value by its name as written.
    pub fn get_attr(&self, name: &str) -> Option<&str> {
        self.attr_list()
            .iter()
            .find(|(k, _)| k.as_str() == name)
            .map(|(_, v)| v.as_str())
    }

    /// All attributes, in document order.
    pub fn attrs(&self) -> impl Iterator<Item = (&str, &str)> {
        self.attr_list()
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// All child nodes. (A text-only element stores its text without a node; the node is
    /// made on the first call, and kept.)
    pub fn nodes(&self) -> &[Node] {
        match &self.content {
            Content::Nodes(nodes) => nodes,
            Content::Text(t, cache) => {
                std::slice::from_ref(cache.get_or_init(|| Box::new(Node::Text(t.clone()))))
            }
        }
    }

    /// The child elements.
    pub fn children(&self) -> impl Iterator<Item = &Element> {
        self.child_nodes().iter().filter_map(|n| match n {
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
        if let Content::Text(t, _) = &self.content {
            return Cow::Borrowed(t);
        }
        let mut texts = self.child_nodes().iter().filter_map(|n| match n {
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
        w.start(Cow::Owned(self.name.to_string()));
        for (k, v) in self.attr_list() {
            w.attr(k, v);
        }
        let indented = w.style() != super::Style::Compact;
        let write_text = |w: &mut XmlWriter<'_>, t: &str| {
            if !(indented && !t.is_empty() && t.bytes().all(is_xml_space)) {
                w.text(t);
            }
        };
        if let Content::Text(t, _) = &self.content {
            write_text(w, t);
        }
        for n in self.child_nodes() {
            match n {
                Node::Element(e) => e.write(w),
                Node::Text(t) => write_text(w, t),
            }
        }
        w.end();
    }

    /// Parses one complete element from `bytes` in namespace scope `scope`.
    ///
    /// The framing reader has already rejected restricted-XML constructs and checked the
    /// size and depth bounds; this is the well-formedness and tree-building step.
    /// Indentation is not kept (see the module documentation); mixed content found to
    /// have lost some is parsed a second time, keeping it.
    pub fn parse(bytes: &[u8], scope: &NsScope) -> Result<Element, Error> {
        let mut builder = TreeBuilder::default();
        let el = parse_into(&mut builder, bytes, scope, false)?;
        if builder.is_lossy() {
            return parse_into(&mut builder, bytes, scope, true);
        }
        Ok(el)
    }
}

/// [`Element::parse`] keeping every whitespace run until its element's end tag decides:
/// for mixed content that the first parse found it dropped runs of.
pub(crate) fn parse_keeping_indents(bytes: &[u8], scope: &NsScope) -> Result<Element, Error> {
    parse_into(&mut TreeBuilder::default(), bytes, scope, true)
}

fn parse_into(
    builder: &mut TreeBuilder,
    bytes: &[u8],
    scope: &NsScope,
    keep_indents: bool,
) -> Result<Element, Error> {
    let mut reader = quick_xml::Reader::from_reader(bytes);
    configure(&mut reader);
    builder.start(scope);
    builder.keep_indents = keep_indents;
    let mut root = None;
    loop {
        let event = reader.read_event();
        let event = event.as_ref().map_err(not_well_formed)?;
        if let Event::Eof = event {
            break;
        }
        if root.is_some() {
            // Only whitespace may follow the element.
            match event {
                Event::Start(_) | Event::Empty(_) => {
                    return Err(Error::NotWellFormed("content after the element".into()));
                }
                Event::Text(t) if t.bytes().all(is_xml_space) => continue,
                _ => {}
            }
        }
        if builder.event(event, scope)? {
            root = builder.take_root();
        }
    }
    if builder.depth() > 0 {
        return Err(Error::NotWellFormed("unclosed element".into()));
    }
    root.ok_or_else(|| Error::NotWellFormed("no element".into()))
}

/// The quick-xml settings for both parse paths. End tags are matched against the open
/// element by [`TreeBuilder`] itself, so that a parse can resume in the middle of an
/// element with a fresh quick-xml reader (see `Reader`).
pub(crate) fn configure<R>(reader: &mut quick_xml::Reader<R>) {
    let cfg = reader.config_mut();
    cfg.check_end_names = false;
    cfg.allow_unmatched_ends = true;
    cfg.trim_text(false);
    cfg.expand_empty_elements = false;
}

fn not_well_formed(e: &quick_xml::Error) -> Error {
    Error::NotWellFormed(e.to_string())
}

/// An element whose end tag has not been seen yet.
#[derive(Debug)]
struct Open {
    /// Where the element (without its children yet) is in [`TreeBuilder::nodes`]; its
    /// children follow it there. It stays in place, and is finished in place, until its
    /// parent ends: elements are moved in bulk, with their siblings, not one by one.
    at: u32,
    /// Where its indentation runs start in [`TreeBuilder::indents`].
    first_indent: u32,
    /// The length of [`TreeBuilder::prefixes`] before its declarations.
    prefixes: u32,
    /// It declared a default namespace (the previous one is on `saved_defaults`).
    declares_default: bool,
    /// A child element was seen.
    has_elements: bool,
    /// Character data other than indentation was seen (see [`TreeBuilder`]); from then
    /// on all its text goes to `nodes`.
    has_text: bool,
    /// Whitespace runs after a child element were dropped as indentation without being
    /// kept (see [`TreeBuilder::keep_indents`]).
    dropped: bool,
}

/// Builds element trees from quick-xml events, one event at a time, so that the stream
/// reader can feed it events as their bytes arrive and keep the partial tree between reads.
///
/// The open elements and the children of all of them live on stacks that are reused from
/// one element to the next: each element is pushed on the node stack at its start tag and
/// finished there in place; at its end tag its children are moved off the stack into an
/// exactly sized `Vec`, its only allocation besides text or attribute values longer than
/// 24 bytes. The text of a text-only element goes straight into it: leaves cost nothing.
///
/// Indentation is dropped: in an element that has child elements and no character data
/// but whitespace runs that each contain a line break (the layout of pretty-printed XML,
/// as both Contrail dialects write it), those runs are not kept as text nodes. Any other
/// text is kept as it is: all the text of a text-only element (`<name> </name>`), and all
/// the text of mixed content, whitespace runs included.
#[derive(Debug, Default)]
pub(crate) struct TreeBuilder {
    open: Vec<Open>,
    nodes: Vec<Node>,
    /// Whitespace runs with a line break of the open elements that have no other text
    /// (yet), each with the position in `nodes` it was read at: indentation to drop at
    /// the end tag, unless the element turns out to be text-only or mixed. Kept apart so
    /// that element content, the common case, moves off `nodes` in one copy.
    ///
    /// Only the runs before an element's first child are kept, unless `keep_indents`:
    /// after a child element, a text-only element is ruled out, and mixed content is
    /// rare enough to be parsed again (`lossy`).
    indents: Vec<(u32, CompactString)>,
    /// Keep every whitespace run until the end tag decides (the second parse).
    keep_indents: bool,
    /// Text came after dropped runs in the same element: the tree is wrong, and the
    /// element must be parsed again with `keep_indents`.
    lossy: bool,
    /// Prefix declarations of the open elements, innermost last.
    prefixes: Vec<(CompactString, Ns)>,
    /// The default namespace for the next element.
    default: Ns,
    /// The default namespaces replaced by open elements' declarations, innermost last.
    saved_defaults: Vec<Ns>,
    /// Attributes of the start tag being read.
    attrs: Vec<(CompactString, CompactString)>,
    /// The top-level element, once its end tag is in.
    root: Option<Element>,
    names: NameCache,
}

/// An empty element, pushed as a constant (see `open_element`).
const BLANK: Node = Node::Element(Element {
    name: CompactString::const_new(""),
    ns: Ns::Static(&KNOWN_NS[0]),
    attrs: None,
    content: Content::Nodes(Vec::new()),
});

/// Element names seen recently, checked: a stream uses few names (Contrail about fifty),
/// and a hit costs neither the name check nor building the string.
#[derive(Debug, Default)]
struct NameCache {
    /// Direct-mapped on a hash of the name, with the position of its colon; filled on
    /// first use (an empty name is an empty slot).
    slots: Vec<(CompactString, Option<usize>)>,
}

impl NameCache {
    const BITS: u32 = 6;

    /// The slot that holds `name` (checked) and the position of its colon, or the error
    /// of an invalid name.
    fn lookup(&mut self, name: &str) -> Result<(usize, Option<usize>), Error> {
        let b = name.as_bytes();
        let (Some(&first), Some(&last)) = (b.first(), b.last()) else {
            return Err(Error::NotWellFormed("empty name".into()));
        };
        let key = (b.len() as u64)
            | u64::from(first) << 8
            | u64::from(last) << 16
            | u64::from(b[b.len() / 2]) << 24;
        let slot = (key.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> (64 - Self::BITS)) as usize;
        if self.slots.is_empty() {
            self.slots
                .resize(1 << Self::BITS, (CompactString::const_new(""), None));
        }
        let entry = &mut self.slots[slot];
        if entry.0.as_str() != name {
            let colon = check_qname(name)?;
            *entry = (CompactString::from(name), colon);
        }
        Ok((slot, entry.1))
    }

    fn name(&self, slot: usize) -> &CompactString {
        &self.slots[slot].0
    }
}

impl TreeBuilder {
    /// Prepares for a new top-level element in `scope`, dropping any partial tree.
    pub(crate) fn start(&mut self, scope: &NsScope) {
        /// Scratch nodes kept between elements (about 90 KB): a reader lives as long as
        /// its connection, and one huge flat element must not pin its memory.
        const KEEP_NODES: usize = 1024;
        self.keep_indents = false;
        self.lossy = false;
        self.open.clear();
        self.nodes.clear();
        if self.nodes.capacity() > KEEP_NODES {
            self.nodes = Vec::new();
        }
        self.indents.clear();
        self.prefixes.clear();
        self.saved_defaults.clear();
        self.attrs.clear();
        self.root = None;
        self.default = Ns::from_arc(&scope.default);
    }

    /// The element read is mixed content that lost whitespace: parse it again with
    /// [`parse_keeping_indents`].
    pub(crate) fn is_lossy(&self) -> bool {
        self.lossy
    }

    /// How many elements are open.
    pub(crate) fn depth(&self) -> usize {
        self.open.len()
    }

    /// The top-level element, once [`event`](Self::event) has said it is complete.
    pub(crate) fn take_root(&mut self) -> Option<Element> {
        self.root.take()
    }

    /// Takes one event. Returns true when this event ends the top-level element (see
    /// [`take_root`](Self::take_root)). Events after that are errors, except whitespace,
    /// which the caller filters. (Only a flag is returned, not the element: moving an
    /// element through every event's result costs more than the event.)
    pub(crate) fn event(&mut self, event: &Event<'_>, scope: &NsScope) -> Result<bool, Error> {
        // The common events here; the rest, and every error, out of line (a smaller
        // function for the hot path).
        match event {
            Event::Start(start) => {
                self.open_element(start, scope)?;
                Ok(false)
            }
            Event::Empty(start) => {
                self.open_element(start, scope)?;
                Ok(self.close_element())
            }
            Event::End(end) => {
                let open = self.open.last().map(|o| o.at as usize);
                match open.and_then(|at| self.nodes.get(at)) {
                    Some(Node::Element(el)) if el.name.as_str() == end.name().as_ref() => {
                        Ok(self.close_element())
                    }
                    _ => Err(self.end_mismatch(end.name().as_ref())),
                }
            }
            Event::Text(t) if !self.open.is_empty() => {
                let class = classify_text(t.as_bytes());
                if class & TEXT_SPECIAL == 0 {
                    self.push_run(t, class);
                    Ok(false)
                } else {
                    self.special_text(t)
                }
            }
            other => self.other_event(other),
        }
    }

    #[cold]
    fn end_mismatch(&self, end: &str) -> Error {
        let open = self.open.last().map(|o| o.at as usize);
        match open.and_then(|at| self.nodes.get(at)) {
            Some(Node::Element(el)) => {
                Error::NotWellFormed(format!("end tag </{end}> does not match <{}>", el.name))
            }
            _ => Error::NotWellFormed("unbalanced end tag".into()),
        }
    }

    /// Text that needs checks or normalisation (see `TEXT_SPECIAL`).
    #[inline(never)]
    fn special_text(&mut self, t: &quick_xml::events::BytesText<'_>) -> Result<bool, Error> {
        // XML 1.0 §2.4: "]]>" may not appear literally in content.
        if t.contains("]]>") {
            return Err(Error::NotWellFormed("']]>' in character data".into()));
        }
        let content = t.xml10_content();
        check_chars(&content)?;
        self.push_run(&content, classify_text(content.as_bytes()));
        Ok(false)
    }

    /// The events other than start and end tags and text in an element.
    #[inline(never)]
    fn other_event(&mut self, event: &Event<'_>) -> Result<bool, Error> {
        match event {
            Event::Text(t) => {
                // Outside the element (the text inside is handled by `event`).
                if t.bytes().all(is_xml_space) {
                    return Ok(false);
                }
                Err(Error::NotWellFormed("text outside the element".into()))
            }
            Event::CData(t) => {
                if self.open.is_empty() {
                    return Err(Error::NotWellFormed("CDATA outside the element".into()));
                }
                let content = t.xml10_content();
                check_chars(&content)?;
                self.push_text(&content);
                Ok(false)
            }
            Event::GeneralRef(r) => {
                if self.open.is_empty() {
                    return Err(Error::NotWellFormed("reference outside the element".into()));
                }
                let mut utf8 = [0; 4];
                let resolved = resolve_reference(r, &mut utf8)?;
                self.push_text(resolved);
                Ok(false)
            }
            Event::Comment(_) => Err(Error::RestrictedXml("comment".into())),
            Event::PI(_) | Event::Decl(_) => {
                Err(Error::RestrictedXml("processing instruction".into()))
            }
            Event::DocType(_) => Err(Error::RestrictedXml("DOCTYPE".into())),
            Event::Start(_) | Event::Empty(_) | Event::End(_) | Event::Eof => Ok(false),
        }
    }

    /// A run of character data between markup, checked and normalised, of class `class`.
    fn push_run(&mut self, text: &str, class: u8) {
        let Some(open) = self.open.last_mut() else {
            return;
        };
        if !open.has_text && class & TEXT_NOT_SPACE == 0 && class & TEXT_NEWLINE != 0 {
            // Indentation, unless the element turns out to have other text.
            if open.has_elements && !self.keep_indents {
                open.dropped = true;
            } else {
                self.indents
                    .push((self.nodes.len() as u32, CompactString::from(text)));
            }
        } else {
            self.push_text(text);
        }
    }

    /// Appends character data to the innermost open element, merging it with text that
    /// directly precedes it.
    pub(crate) fn push_text(&mut self, text: &str) {
        if text.is_empty() {
            return;
        }
        let Some(open) = self.open.last_mut() else {
            return;
        };
        if !open.has_text {
            open.has_text = true;
            self.lossy |= open.dropped;
            // A whitespace run just before this text is part of it.
            if self.indents.len() > open.first_indent as usize
                && let Some((at, _)) = self.indents.last()
                && *at as usize == self.nodes.len()
                && let Some((_, run)) = self.indents.pop()
            {
                self.nodes.push(Node::Text(run));
            }
        }
        let at = open.at as usize;
        if self.nodes.len() == at + 1 {
            // No child node yet: the text goes straight into the element, where a
            // text-only element keeps it (built in place: moving a string just built
            // stalls on store forwarding). A child element moves it out to a node.
            if let Some(Node::Element(el)) = self.nodes.get_mut(at) {
                if let Content::Nodes(nodes) = &el.content
                    && nodes.is_empty()
                {
                    el.content = Content::Text(CompactString::const_new(""), OnceLock::new());
                }
                if let Content::Text(t, _) = &mut el.content {
                    t.push_str(text);
                    return;
                }
            }
        }
        let has_nodes = self.nodes.len() > at + 1;
        if has_nodes && let Some(Node::Text(prev)) = self.nodes.last_mut() {
            prev.push_str(text);
        } else {
            self.nodes.push(Node::Text(CompactString::from(text)));
        }
    }

    /// The text an element has so far, if any, becomes its first node: a child element
    /// follows it.
    fn text_to_node(&mut self, at: usize) {
        if let Some(Node::Element(el)) = self.nodes.get_mut(at)
            && let Content::Text(..) = el.content
            && let Content::Text(t, _) = std::mem::take(&mut el.content)
        {
            self.nodes.push(Node::Text(t));
        }
    }

    /// Ends the innermost open element; true when it is the top-level one.
    fn close_element(&mut self) -> bool {
        let Some(open) = self.open.pop() else {
            return false;
        };
        let at = open.at as usize;
        let first = at + 1;
        let first_indent = open.first_indent as usize;
        let mut text = None;
        let mut children = None;
        if self.indents.len() == first_indent || (open.has_elements && !open.has_text) {
            // Element content: any whitespace runs are indentation.
            if self.indents.len() > first_indent {
                self.indents.truncate(first_indent);
            }
            match self.nodes.len() - first {
                0 => {}
                1 if matches!(self.nodes.last(), Some(Node::Text(_))) => {
                    if let Some(Node::Text(t)) = self.nodes.pop() {
                        text = Some(t);
                    }
                }
                _ => children = Some(self.nodes.split_off(first)),
            }
        } else {
            // Text-only or mixed content: the runs are text, between the nodes they were
            // read before (never next to a text node: see `push_text`).
            let runs = self.indents.split_off(first_indent);
            let mut all = Vec::with_capacity(self.nodes.len() - first + runs.len());
            let mut nodes = self.nodes.drain(first..);
            let mut next = first;
            for (run_at, run) in runs {
                while next < run_at as usize {
                    all.extend(nodes.next());
                    next += 1;
                }
                all.push(Node::Text(run));
            }
            all.extend(nodes);
            if let [Node::Text(_)] = all.as_slice()
                && let Some(Node::Text(t)) = all.pop()
            {
                text = Some(t);
            } else {
                children = Some(all);
            }
        }
        if let Some(Node::Element(el)) = self.nodes.get_mut(at) {
            if let Some(t) = text {
                el.content = Content::Text(t, OnceLock::new());
            } else if let Some(children) = children {
                el.content = Content::Nodes(children);
            }
        }
        // (Truncating calls the elements' drop even when there is nothing to drop.)
        if self.prefixes.len() > open.prefixes as usize {
            self.prefixes.truncate(open.prefixes as usize);
        }
        if open.declares_default
            && let Some(d) = self.saved_defaults.pop()
        {
            self.default = d;
        }
        if !self.open.is_empty() {
            return false;
        }
        if let Some(Node::Element(root)) = self.nodes.pop() {
            self.root = Some(root);
        }
        true
    }

    /// Opens an element from a start tag: checks its name and attributes, applies its
    /// namespace declarations and resolves its namespace.
    fn open_element(&mut self, start: &BytesStart<'_>, scope: &NsScope) -> Result<(), Error> {
        let name = start.name();
        let name: &str = name.as_ref();
        let (name_slot, colon) = self.names.lookup(name)?;
        let mut has_decls = false;
        let mut has_prefixed = false;
        let attrs = if start.attributes_raw().bytes().all(is_xml_space) {
            None
        } else {
            self.attrs.clear();
            let mut attributes = start.attributes();
            attributes.with_checks(false);
            for attr in attributes {
                let attr = attr.map_err(|e| Error::NotWellFormed(e.to_string()))?;
                let key: &str = attr.key.as_ref();
                let key_colon = check_qname(key)?;
                if attr.value.contains('<') {
                    return Err(Error::NotWellFormed("'<' in an attribute value".into()));
                }
                let value = attr
                    .normalized_value(quick_xml::XmlVersion::Implicit1_0)
                    .map_err(|e| match e {
                        quick_xml::Error::Escape(
                            quick_xml::escape::EscapeError::UnrecognizedEntity(..),
                        ) => Error::RestrictedXml(format!("entity reference in attribute {key}")),
                        other => Error::NotWellFormed(other.to_string()),
                    })?;
                check_chars(&value)?;
                if key == "xmlns" || key_colon.is_some_and(|c| &key[..c] == "xmlns") {
                    if key.len() > 5 && value.is_empty() {
                        // Namespaces in XML 1.0 §3: a prefix cannot be undeclared.
                        return Err(Error::NotWellFormed(format!("empty namespace for {key}")));
                    }
                    has_decls = true;
                } else if key_colon.is_some() {
                    has_prefixed = true;
                }
                if self.attrs.iter().any(|(k, _)| k.as_str() == key) {
                    return Err(Error::NotWellFormed(format!("duplicate attribute {key}")));
                }
                self.attrs
                    .push((CompactString::from(key), CompactString::from(value)));
            }
            Some(Box::new(Attrs(self.attrs.drain(..).collect())))
        };

        let prefixes = self.prefixes.len() as u32;
        let mut declares_default = false;
        if has_decls {
            for (k, v) in attrs.iter().flat_map(|a| a.0.iter()) {
                if k == "xmlns" {
                    let prev = std::mem::replace(&mut self.default, Ns::new(v));
                    self.saved_defaults.push(prev);
                    declares_default = true;
                } else if let Some(p) = k.strip_prefix("xmlns:") {
                    self.prefixes.push((CompactString::from(p), Ns::new(v)));
                }
            }
        }
        let ns = match colon {
            None => Some(self.default.clone()),
            Some(c) => self.resolve_prefix(&name[..c], scope),
        };
        let Some(ns) = ns else {
            return Err(Error::NotWellFormed(format!(
                "undeclared namespace prefix in <{name}>"
            )));
        };
        // A prefixed attribute needs its prefix declared too (unprefixed ones are in no
        // namespace; `xmlns:` declarations are not attributes in this sense).
        if has_prefixed {
            for (k, _) in attrs.iter().flat_map(|a| a.0.iter()) {
                if let Some((p, _)) = k.split_once(':')
                    && p != "xmlns"
                    && self.resolve_prefix(p, scope).is_none()
                {
                    return Err(Error::NotWellFormed(format!(
                        "undeclared namespace prefix in attribute {k} of <{name}>"
                    )));
                }
            }
        }
        if let Some(parent) = self.open.last_mut() {
            parent.has_elements = true;
            if parent.has_text {
                let at = parent.at as usize;
                self.text_to_node(at);
            }
        }
        self.open.push(Open {
            at: self.nodes.len() as u32,
            first_indent: self.indents.len() as u32,
            prefixes,
            declares_default,
            has_elements: false,
            has_text: false,
            dropped: false,
        });
        // A constant element first, then its fields in place: an element built on the
        // stack and copied in stalls on store forwarding.
        self.nodes.push(BLANK);
        if let Some(Node::Element(el)) = self.nodes.last_mut() {
            el.name.clone_from(self.names.name(name_slot));
            el.ns = ns;
            el.attrs = attrs;
        }
        Ok(())
    }

    fn resolve_prefix(&self, prefix: &str, scope: &NsScope) -> Option<Ns> {
        if prefix == "xml" {
            return Some(Ns::new(ns::XML));
        }
        self.prefixes
            .iter()
            .rev()
            .find(|(k, _)| k == prefix)
            .map(|(_, v)| v.clone())
            .or_else(|| scope.resolve_prefix(prefix))
    }
}

/// Character classes of text bytes, or-ed over a run by [`classify_text`].
/// The run needs the slow path: a C0 control other than tab and LF, a CR to normalise,
/// a `]` (of a `]]>`) or an `EF` lead byte (of U+FFFE/U+FFFF).
const TEXT_SPECIAL: u8 = 1;
/// The run is not all XML whitespace.
const TEXT_NOT_SPACE: u8 = 2;
/// The run has a line feed.
const TEXT_NEWLINE: u8 = 4;
static TEXT_CLASS: [u8; 256] = {
    let mut t = [TEXT_NOT_SPACE; 256];
    let mut i = 0;
    while i < 0x20 {
        t[i] = TEXT_SPECIAL | TEXT_NOT_SPACE;
        i += 1;
    }
    t[b'\t' as usize] = 0;
    t[b' ' as usize] = 0;
    t[b'\n' as usize] = TEXT_NEWLINE;
    t[b'\r' as usize] = TEXT_SPECIAL;
    t[b']' as usize] = TEXT_SPECIAL | TEXT_NOT_SPACE;
    t[0xEF] = TEXT_SPECIAL | TEXT_NOT_SPACE;
    t
};

fn classify_text(bytes: &[u8]) -> u8 {
    bytes
        .iter()
        .fold(0, |class, &b| class | TEXT_CLASS[usize::from(b)])
}

pub(crate) fn is_xml_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r')
}

/// Resolves `&name;`: only the five predefined entities and character references exist in
/// restricted XML (RFC 6120 §11.1). A character is encoded into `utf8`.
fn resolve_reference<'a>(
    r: &quick_xml::events::BytesRef<'_>,
    utf8: &'a mut [u8; 4],
) -> Result<&'a str, Error> {
    match r.resolve_char_ref() {
        Ok(Some(c)) => {
            if is_xml_char(c) {
                Ok(c.encode_utf8(utf8))
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

/// ASCII classes for [`check_qname`]'s fast path, or-ed over a name.
const NAME_BAD_START: u8 = 1;
const NAME_BAD: u8 = 2;
const NAME_COLON: u8 = 4;
const NAME_NON_ASCII: u8 = 8;
static NAME_CLASS: [u8; 256] = {
    let mut t = [NAME_BAD | NAME_BAD_START; 256];
    let mut i = 0;
    while i < 256 {
        let c = i as u8;
        if c >= 0x80 {
            t[i] = NAME_NON_ASCII;
        } else if c.is_ascii_alphabetic() || c == b'_' {
            t[i] = 0;
        } else if c.is_ascii_digit() || c == b'-' || c == b'.' {
            t[i] = NAME_BAD_START;
        } else if c == b':' {
            t[i] = NAME_COLON | NAME_BAD_START;
        }
        i += 1;
    }
    t
};

/// A qualified name (Namespaces in XML §4): a name with at most one colon, not at either
/// end. Names are written back unescaped, so one that is not a name must not get in.
/// Returns the position of the colon.
fn check_qname(name: &str) -> Result<Option<usize>, Error> {
    let bytes = name.as_bytes();
    if let Some((&first, rest)) = bytes.split_first() {
        let class = rest.iter().fold(
            NAME_CLASS[usize::from(first)] & (NAME_BAD_START | NAME_NON_ASCII),
            |c, &b| c | (NAME_CLASS[usize::from(b)] & !NAME_BAD_START),
        );
        if class == 0 {
            return Ok(None);
        }
        if class & (NAME_BAD | NAME_BAD_START | NAME_NON_ASCII) == 0 {
            // ASCII with a colon: exactly one, not last (not first: checked above).
            let colon = memchr::memchr(b':', bytes);
            if let Some(c) = colon
                && c + 1 < bytes.len()
                && memchr::memchr(b':', &bytes[c + 1..]).is_none()
            {
                return Ok(colon);
            }
        } else if class & NAME_NON_ASCII != 0 {
            let mut chars = name.chars();
            let valid = chars
                .next()
                .is_some_and(|c| c != ':' && is_name_start_char(c))
                && chars.all(is_name_char)
                && name.matches(':').count() <= 1
                && !name.ends_with(':');
            if valid {
                return Ok(name.find(':'));
            }
        }
    }
    Err(Error::NotWellFormed(format!("invalid name '{name}'")))
}

fn is_xml_char(c: char) -> bool {
    matches!(c, '\t' | '\n' | '\r' | '\u{20}'..='\u{D7FF}' | '\u{E000}'..='\u{FFFD}' | '\u{10000}'..)
}
