//! Incremental, bounded framing of an XMPP byte stream (no I/O).
//!
//! Bytes are fed as they arrive, in any split; [`Reader::next_event`] yields the stream
//! header, each complete top-level element, runs of inter-element whitespace (keepalives)
//! and the stream close. The scan is resumable: every byte is looked at a bounded number of
//! times however the input is split, so one byte at a time costs the same as one big read.
//!
//! Restricted XML (RFC 6120 §11.1): a DOCTYPE, a comment or a processing instruction is
//! refused as `restricted-xml`; entity references other than the five predefined ones are
//! refused when the element is parsed. Contrail tolerance (spec §2.2, §11): the keepalive
//! bytes `C8 80` and `20 0A 0D 09` between elements, and an XML declaration (with the
//! filler after it, which belongs to it rather than being a keepalive) in front of a
//! stanza in mid-stream, are accepted.
//!
//! Bounds: an element larger than [`Limits::max_element_bytes`], nested deeper than
//! [`Limits::max_depth`], or a header (with anything before it) larger than
//! [`Limits::max_header_bytes`] is a `policy-violation`, detected while the bytes are still
//! arriving: the buffer never holds more than one bound plus one read.
//!
//! Two paths read an element, with the same result (the tests check every split):
//!
//! - The fast path, for every element after the header: quick-xml parses the element's
//!   events straight from the buffer as they arrive, and a [`TreeBuilder`] builds the tree
//!   as it goes, keeping the partial tree between reads. Only the construct the end of the
//!   buffer cuts (a tag, a text run, a CDATA section) is followed by the framing scan below
//!   until it is complete, so each byte is scanned about once, not once for framing and
//!   once more for parsing. quick-xml starts afresh at each resumption, so end tags are
//!   matched by the builder, and a byte order mark at the start of a resumed text run is
//!   given back as text.
//! - The slow path: the framing scan finds the element's end, then [`Element::parse`]
//!   parses it. The stream header takes it, and so does an element on which the fast path
//!   met any error: it is read again from its start, so that which error is reported, and
//!   when, is exactly the framing scan's and then the parser's.

use bytes::{Buf, Bytes, BytesMut};
use memchr::memmem;
use quick_xml::events::Event as QEvent;

use super::element::{Element, NsScope, TreeBuilder, configure, parse_keeping_indents};
use crate::error::Error;
use crate::stanza::ns;

/// Size and depth bounds for one stream. The defaults suit Contrail traffic: the largest
/// Contrail stanzas seen in its tests are 27 KB IQs, and route items nest 9 deep.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest top-level element (stanza) in bytes. Default 512 KiB.
    pub max_element_bytes: usize,
    /// Deepest element nesting inside a stanza (the stanza itself is depth 1). Default 32.
    pub max_depth: usize,
    /// Largest stream header, including any XML declaration and whitespace before it.
    /// Default 8 KiB (Contrail's own encoder stops at 1024 bytes).
    pub max_header_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_element_bytes: 512 * 1024,
            max_depth: 32,
            max_header_bytes: 8 * 1024,
        }
    }
}

/// What the reader produces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The stream header's start tag, as an element without children.
    StreamOpen(Element),
    /// A complete top-level element (stanza or nonza).
    Element(Element),
    /// A run of inter-element filler bytes (`20 0A 0D 09 C8 80`): a keepalive. Filler
    /// right after a mid-stream XML declaration is not reported: it is part of the
    /// `<?xml version="1.0"?>\n` prefix of the next stanza, which the C++ framing cuts out
    /// with that stanza (spec §2.2), not a keepalive.
    Whitespace(usize),
    /// `</stream:stream>`.
    StreamClose,
}

/// Outcome of one scanning step between items.
enum Step {
    Event(Event),
    Continue,
    NeedMore,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Between top-level items (before the header too).
    Between,
    /// Parsing the element being read with quick-xml from `parsed` on (the fast path).
    Fast,
    /// At a `<` inside an element: the markup it starts is not classified yet.
    Markup,
    /// Inside a start tag; `quote` is the open attribute quote, if any.
    Tag { quote: Option<u8> },
    /// Inside an element's content.
    Content,
    /// Inside an end tag.
    EndTag,
    /// Inside a CDATA section.
    CData,
    /// Inside `<?…` between items: only an XML declaration is accepted (spec §2.2).
    Pi,
    /// Inside `</…` between items: only the stream's own end tag is accepted.
    Close,
}

/// The incremental stream reader. See the module documentation.
#[derive(Debug)]
pub struct Reader {
    buf: BytesMut,
    limits: Limits,
    mode: Mode,
    /// Resume position of the scan within `buf` (the current item starts at 0).
    pos: usize,
    /// Element nesting of the item being scanned.
    depth: usize,
    /// The stream header has been read (since the last restart).
    header_seen: bool,
    /// Bytes consumed before the header (filler, XML declarations) since the last
    /// restart; they count against [`Limits::max_header_bytes`] with the header itself.
    pre_header: usize,
    /// The last item was an XML declaration: filler now belongs to the stanza it prefixes.
    after_decl: bool,
    /// The qualified name of the stream element, for matching its close.
    stream_name: String,
    scope: NsScope,
    closed: bool,
    /// The element being read is on the fast path: quick-xml parses its events straight
    /// from `buf` as they arrive, into `builder`, and the framing scan only follows a
    /// construct that the end of the buffer cut. Otherwise (before the header, and after
    /// an error) the framing scan finds the element's end and [`Element::parse`] parses it.
    fast: bool,
    /// The partial tree of the element being read on the fast path.
    builder: TreeBuilder,
    /// How much of `buf` the fast path has turned into `builder`'s tree.
    parsed: usize,
    /// The end of the last construct the framing scan found complete on the fast path: an
    /// error of quick-xml before it is not a construct cut by the end of the buffer.
    verified: usize,
}

/// The inter-element filler set of the C++ framing (spec §2.2), tested byte-wise.
#[inline]
pub fn is_filler(b: u8) -> bool {
    matches!(b, b' ' | b'\n' | b'\r' | b'\t' | 0xC8 | 0x80)
}

impl Default for Reader {
    fn default() -> Self {
        Self::new(Limits::default())
    }
}

impl Reader {
    /// A reader expecting a stream header.
    pub fn new(limits: Limits) -> Self {
        Self {
            buf: BytesMut::with_capacity(16 * 1024),
            limits,
            mode: Mode::Between,
            pos: 0,
            depth: 0,
            header_seen: false,
            pre_header: 0,
            after_decl: false,
            stream_name: String::new(),
            scope: NsScope::default(),
            closed: false,
            fast: false,
            builder: TreeBuilder::default(),
            parsed: 0,
            verified: 0,
        }
    }

    /// The bounds in force.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Appends received bytes.
    pub fn feed(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The receive buffer, for reading from a socket straight into it (`read_buf`).
    pub fn buffer_mut(&mut self) -> &mut BytesMut {
        &mut self.buf
    }

    /// Bytes received and not yet returned as events.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// The namespace scope of the current stream (from its header).
    pub fn scope(&self) -> &NsScope {
        &self.scope
    }

    /// Whether the peer closed the stream.
    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// Stream restart (after TLS or SASL): a new header is expected; buffered bytes are kept.
    pub fn restart(&mut self) {
        self.mode = Mode::Between;
        self.pos = 0;
        self.depth = 0;
        self.header_seen = false;
        self.pre_header = 0;
        self.after_decl = false;
        self.stream_name.clear();
        self.scope = NsScope::default();
        self.closed = false;
        self.leave_fast_path();
    }

    /// Takes every buffered byte (the TLS handover: what the peer sent after `<proceed/>`
    /// or `<starttls/>` belongs to the TLS layer, or is filler to discard).
    pub fn take_buffered(&mut self) -> BytesMut {
        self.mode = Mode::Between;
        self.pos = 0;
        self.depth = 0;
        self.after_decl = false;
        self.leave_fast_path();
        self.buf.split()
    }

    fn leave_fast_path(&mut self) {
        self.fast = false;
        self.parsed = 0;
        self.verified = 0;
        self.builder.start(&NsScope::default());
    }

    /// The next event, `Ok(None)` when more bytes are needed. An error is fatal to the
    /// stream; the caller reports it to the peer (`Error::stream_condition`) and closes.
    pub fn next_event(&mut self) -> Result<Option<Event>, Error> {
        if self.closed {
            return Ok(None);
        }
        loop {
            match self.mode {
                Mode::Between => match self.between()? {
                    Step::Event(ev) => return Ok(Some(ev)),
                    Step::Continue => {}
                    Step::NeedMore => return Ok(None),
                },
                Mode::Tag { quote } => {
                    if let Some(ev) = self.tag(quote)? {
                        return Ok(Some(ev));
                    }
                    if matches!(self.mode, Mode::Tag { .. }) {
                        return self.need_more();
                    }
                }
                Mode::Fast => {
                    if let Some(ev) = self.fast_path()? {
                        return Ok(Some(ev));
                    }
                }
                Mode::Content => {
                    let Some(off) = memchr::memchr(b'<', &self.buf[self.pos..]) else {
                        self.pos = self.buf.len();
                        return self.need_more();
                    };
                    let lt = self.pos + off;
                    if self.fast {
                        // The cut text is complete.
                        self.resume_fast_path(lt);
                        continue;
                    }
                    self.mode = Mode::Markup;
                    self.pos = lt;
                }
                Mode::Markup => {
                    let lt = self.pos;
                    let Some(&next) = self.buf.get(lt + 1) else {
                        return self.need_more();
                    };
                    match next {
                        b'/' => {
                            self.mode = Mode::EndTag;
                            self.pos = lt + 2;
                        }
                        b'!' => {
                            const CDATA: &[u8] = b"<![CDATA[";
                            let avail = &self.buf[lt..];
                            if avail.len() < CDATA.len() && CDATA.starts_with(avail) {
                                self.pos = lt;
                                return self.need_more();
                            }
                            if avail.starts_with(CDATA) {
                                self.mode = Mode::CData;
                                self.pos = lt + CDATA.len();
                            } else if avail.starts_with(b"<!--") || b"<!--".starts_with(avail) {
                                return Err(Error::RestrictedXml("comment".into()));
                            } else {
                                return Err(Error::RestrictedXml("markup declaration".into()));
                            }
                        }
                        b'?' => {
                            return Err(Error::RestrictedXml(
                                "processing instruction inside an element".into(),
                            ));
                        }
                        _ => {
                            self.mode = Mode::Tag { quote: None };
                            self.pos = lt + 1;
                        }
                    }
                }
                Mode::EndTag => {
                    let Some(off) = memchr::memchr(b'>', &self.buf[self.pos..]) else {
                        self.pos = self.buf.len();
                        return self.need_more();
                    };
                    let gt = self.pos + off;
                    if self.fast {
                        self.resume_fast_path(gt + 1);
                        continue;
                    }
                    self.depth = self.depth.saturating_sub(1);
                    if self.depth == 0 {
                        return self.complete(gt + 1).map(Some);
                    }
                    self.mode = Mode::Content;
                    self.pos = gt + 1;
                }
                Mode::CData => match memmem::find(&self.buf[self.pos..], b"]]>") {
                    Some(off) => {
                        self.mode = Mode::Content;
                        self.pos += off + 3;
                        if self.fast {
                            self.resume_fast_path(self.pos);
                        }
                    }
                    None => {
                        // Keep the last two bytes: they may start "]]>".
                        self.pos = self.buf.len().saturating_sub(2).max(self.pos);
                        return self.need_more();
                    }
                },
                Mode::Pi => {
                    if !self.pi()? {
                        return self.need_more();
                    }
                }
                Mode::Close => {
                    if let Some(ev) = self.close_tag()? {
                        return Ok(Some(ev));
                    }
                    return self.need_more();
                }
            }
        }
    }

    /// Between items: filler, a declaration, the stream close, or the start of an item.
    fn between(&mut self) -> Result<Step, Error> {
        let Some(&first) = self.buf.first() else {
            return Ok(Step::NeedMore);
        };
        if is_filler(first) {
            let n = self.buf.iter().take_while(|b| is_filler(**b)).count();
            self.buf.advance(n);
            self.count_pre_header(n)?;
            if self.after_decl {
                return Ok(Step::Continue);
            }
            return Ok(Step::Event(Event::Whitespace(n)));
        }
        self.after_decl = false;
        if first != b'<' {
            return Err(Error::NotWellFormed(
                "character data between stanzas".to_owned(),
            ));
        }
        let Some(&second) = self.buf.get(1) else {
            return Ok(Step::NeedMore);
        };
        match second {
            b'?' => {
                self.mode = Mode::Pi;
                self.pos = 2;
                Ok(Step::Continue)
            }
            b'!' => {
                let avail = &self.buf[..self.buf.len().min(9)];
                if avail.starts_with(b"<!--") {
                    Err(Error::RestrictedXml("comment".into()))
                } else if avail.starts_with(b"<!D") {
                    Err(Error::RestrictedXml("DOCTYPE".into()))
                } else if avail.len() < 4 {
                    Ok(Step::NeedMore)
                } else {
                    Err(Error::RestrictedXml("markup declaration".into()))
                }
            }
            b'/' if !self.header_seen => Err(Error::NotWellFormed(
                "end tag before the stream header".to_owned(),
            )),
            b'/' => {
                self.mode = Mode::Close;
                self.pos = 2;
                Ok(Step::Continue)
            }
            _ if self.header_seen => {
                self.fast = true;
                self.parsed = 0;
                self.verified = 0;
                self.builder.start(&self.scope);
                self.mode = Mode::Fast;
                Ok(Step::Continue)
            }
            _ => {
                self.mode = Mode::Tag { quote: None };
                self.pos = 1;
                self.depth = 0;
                Ok(Step::Continue)
            }
        }
    }

    /// Inside `<?…` between items. Contrail writes `<?xml version="1.0"?>` in front of some
    /// stanzas mid-stream (spec §2.2); any other processing instruction is restricted, and
    /// is refused as soon as its target shows it is not `xml`. Resumes at `pos`, so a long
    /// declaration arriving byte by byte is scanned once. Returns false when more bytes are
    /// needed.
    fn pi(&mut self) -> Result<bool, Error> {
        let head = &self.buf[..self.buf.len().min(6)];
        let is_decl = head.iter().zip(b"<?xml").all(|(a, b)| a == b)
            && (head.len() < 6 || super::element::is_xml_space(head[5]));
        if !is_decl {
            return Err(Error::RestrictedXml("processing instruction".into()));
        }
        let Some(off) = memmem::find(&self.buf[self.pos..], b"?>") else {
            // Keep the last byte: it may be the '?' of "?>".
            self.pos = self.buf.len().saturating_sub(1).max(self.pos);
            return Ok(false);
        };
        let end = self.pos + off + 2;
        self.buf.advance(end);
        self.count_pre_header(end)?;
        self.pos = 0;
        self.mode = Mode::Between;
        self.after_decl = true;
        Ok(true)
    }

    /// Inside `</…` between items: only the stream's own close is allowed there.
    fn close_tag(&mut self) -> Result<Option<Event>, Error> {
        let Some(off) = memchr::memchr(b'>', &self.buf[self.pos..]) else {
            self.pos = self.buf.len();
            return Ok(None);
        };
        let gt = self.pos + off;
        let name = self.buf[2..gt].trim_ascii();
        if !self.header_seen || name != self.stream_name.as_bytes() {
            return Err(Error::NotWellFormed(format!(
                "unexpected end tag </{}>",
                String::from_utf8_lossy(name)
            )));
        }
        self.buf.advance(gt + 1);
        self.pos = 0;
        self.mode = Mode::Between;
        self.closed = true;
        Ok(Some(Event::StreamClose))
    }

    /// Accounts for `n` bytes consumed before the stream header.
    fn count_pre_header(&mut self, n: usize) -> Result<(), Error> {
        if self.header_seen {
            return Ok(());
        }
        self.pre_header += n;
        if self.pre_header > self.limits.max_header_bytes {
            return Err(self.header_too_large());
        }
        Ok(())
    }

    /// Inside a start tag: find its `>` outside attribute quotes.
    fn tag(&mut self, mut quote: Option<u8>) -> Result<Option<Event>, Error> {
        loop {
            let hay = &self.buf[self.pos..];
            match quote {
                Some(q) => match memchr::memchr2(q, b'<', hay) {
                    Some(off) if hay[off] == b'<' => {
                        return Err(Error::NotWellFormed("'<' in an attribute value".into()));
                    }
                    Some(off) => {
                        quote = None;
                        self.pos += off + 1;
                    }
                    None => {
                        self.pos = self.buf.len();
                        self.mode = Mode::Tag { quote };
                        return Ok(None);
                    }
                },
                None => match memchr::memchr3(b'>', b'"', b'\'', hay) {
                    Some(off) if hay[off] == b'>' => {
                        let gt = self.pos + off;
                        if self.fast {
                            self.resume_fast_path(gt + 1);
                            return Ok(None);
                        }
                        let self_closing = gt > 0 && self.buf[gt - 1] == b'/';
                        return self.tag_end(gt, self_closing);
                    }
                    Some(off) => {
                        quote = Some(hay[off]);
                        self.pos += off + 1;
                    }
                    None => {
                        self.pos = self.buf.len();
                        self.mode = Mode::Tag { quote: None };
                        return Ok(None);
                    }
                },
            }
        }
    }

    fn tag_end(&mut self, gt: usize, self_closing: bool) -> Result<Option<Event>, Error> {
        if !self.header_seen {
            return self.header(gt, self_closing).map(Some);
        }
        // A self-closing element is as deep as one with an end tag: it counts too.
        let depth = self.depth + 1;
        if depth > self.limits.max_depth {
            return Err(Error::PolicyViolation(format!(
                "element nesting deeper than {}",
                self.limits.max_depth
            )));
        }
        if self_closing {
            if self.depth == 0 {
                return self.complete(gt + 1).map(Some);
            }
        } else {
            self.depth = depth;
        }
        self.mode = Mode::Content;
        self.pos = gt + 1;
        Ok(None)
    }

    /// The stream header's start tag is complete at `buf[gt]`.
    fn header(&mut self, gt: usize, self_closing: bool) -> Result<Event, Error> {
        if self.pre_header + gt + 1 > self.limits.max_header_bytes {
            return Err(self.header_too_large());
        }
        if self_closing {
            return Err(Error::BadFormat("self-closing stream header".into()));
        }
        let mut tag = Vec::with_capacity(gt + 2);
        tag.extend_from_slice(&self.buf[..gt]);
        tag.extend_from_slice(b"/>");
        let header = Element::parse(&tag, &NsScope::default())?;
        if header.local_name() != "stream" || header.ns() != ns::STREAM {
            return Err(Error::InvalidNamespace(format!(
                "expected a stream header, got <{}> in namespace '{}'",
                header.name(),
                header.ns()
            )));
        }
        self.buf.advance(gt + 1);
        self.pos = 0;
        self.mode = Mode::Between;
        self.header_seen = true;
        self.stream_name = header.name().to_owned();
        self.scope = NsScope::for_stream(&header);
        Ok(Event::StreamOpen(header))
    }

    /// The fast path: parses the element's events from `parsed` on with quick-xml, as far
    /// as the buffer holds complete constructs. Returns the element when its end tag is
    /// in; otherwise leaves the construct the buffer ends in to the framing scan (which
    /// comes back here once it is complete), or, on any error, falls back to the slow path
    /// from the element's start so that errors are exactly the slow path's.
    fn fast_path(&mut self) -> Result<Option<Event>, Error> {
        const BOM: &[u8] = b"\xEF\xBB\xBF";
        let mut base = self.parsed;
        while base > 0 && self.buf[base..].starts_with(BOM) {
            // quick-xml would drop U+FEFF at the start of its input as a byte order mark
            // (without counting it in its position); here it is character data of an open
            // element.
            self.builder.push_text("\u{FEFF}");
            base += BOM.len();
            self.parsed = base;
        }
        let input = &self.buf[base..];
        let mut reader = quick_xml::Reader::from_reader(input);
        configure(&mut reader);
        let cut_at = loop {
            let start = reader.buffer_position() as usize;
            // Matched by reference: moving the event out costs more than handling it.
            let event = reader.read_event();
            let event = match &event {
                Ok(event) => event,
                // Most likely the construct is cut by the end of the buffer. If the framing
                // scan finds it complete, quick-xml fails on it again, before `verified`.
                Err(_) if base + start >= self.verified => break base + start,
                Err(_) => return self.fall_back(),
            };
            let end = reader.buffer_position() as usize;
            match event {
                QEvent::Eof => break base + start,
                // Text (or a reference) up to the end of the buffer may go on.
                QEvent::Text(_) | QEvent::GeneralRef(_) if end == input.len() => {
                    break base + start;
                }
                QEvent::Start(_) | QEvent::Empty(_)
                    if self.builder.depth() >= self.limits.max_depth =>
                {
                    return self.fall_back();
                }
                _ => {}
            }
            match self.builder.event(event, &self.scope) {
                Ok(false) => self.parsed = base + end,
                Ok(true) => {
                    let Some(mut el) = self.builder.take_root() else {
                        return self.fall_back();
                    };
                    let end = base + end;
                    if end > self.limits.max_element_bytes {
                        return Err(self.element_too_large());
                    }
                    if self.builder.is_lossy() {
                        el = parse_keeping_indents(&self.buf[..end], &self.scope)?;
                    }
                    self.buf.advance(end);
                    self.fast = false;
                    self.parsed = 0;
                    self.verified = 0;
                    self.pos = 0;
                    self.mode = Mode::Between;
                    return Ok(Some(Event::Element(el)));
                }
                Err(e) => {
                    // Moved out in every arm: no drop glue to call for each event.
                    drop(e);
                    return self.fall_back();
                }
            }
        };
        // The buffer ends inside the construct at `cut_at`: follow it with the framing
        // scan until it is complete.
        self.parsed = cut_at;
        self.pos = cut_at;
        self.mode = if self.buf.get(cut_at) == Some(&b'<') {
            Mode::Markup
        } else {
            Mode::Content
        };
        Ok(None)
    }

    /// The construct the fast path stopped at is complete up to `end`.
    fn resume_fast_path(&mut self, end: usize) {
        self.verified = end;
        self.mode = Mode::Fast;
    }

    /// An error on the fast path: reads the element again on the slow path, from its start.
    fn fall_back(&mut self) -> Result<Option<Event>, Error> {
        self.leave_fast_path();
        self.mode = Mode::Tag { quote: None };
        self.pos = 1;
        self.depth = 0;
        Ok(None)
    }

    /// A top-level element ends at `buf[..end]`.
    fn complete(&mut self, end: usize) -> Result<Event, Error> {
        if end > self.limits.max_element_bytes {
            return Err(self.element_too_large());
        }
        let bytes: Bytes = self.buf.split_to(end).freeze();
        self.pos = 0;
        self.depth = 0;
        self.mode = Mode::Between;
        let el = Element::parse(&bytes, &self.scope)?;
        Ok(Event::Element(el))
    }

    /// More bytes are needed for the item being scanned: every buffered byte belongs to
    /// it, so the buffer size is the item's size so far (plus, before the header, what was
    /// consumed ahead of it). Checking here is what catches an oversized item while it is
    /// still arriving.
    fn need_more(&self) -> Result<Option<Event>, Error> {
        if !self.header_seen {
            if self.pre_header + self.buf.len() > self.limits.max_header_bytes {
                return Err(self.header_too_large());
            }
        } else if self.buf.len() > self.limits.max_element_bytes {
            return Err(self.element_too_large());
        }
        Ok(None)
    }

    fn element_too_large(&self) -> Error {
        Error::PolicyViolation(format!(
            "stanza larger than {} bytes",
            self.limits.max_element_bytes
        ))
    }

    fn header_too_large(&self) -> Error {
        Error::PolicyViolation(format!(
            "stream header larger than {} bytes",
            self.limits.max_header_bytes
        ))
    }
}
