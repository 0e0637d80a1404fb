//! XML serialisation into a byte buffer, in the layouts the Contrail C++ peers produce
//! (pugixml 1.2 "indent" format, spec §2.4) and the compact form standard XMPP peers use.
//!
//! The writer is push-style (`start`, `attr`, `text`, `end`) so typed stanzas serialise
//! themselves straight into the output buffer without building a tree first; that is what
//! keeps route fan-out encoding cheap.

use std::borrow::Cow;

use bytes::{BufMut, BytesMut};

/// How elements are laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Style {
    /// No whitespace between elements; empty elements as `<name/>` (RFC 6120 peers).
    Compact,
    /// pugixml "indent" format with an empty indent string: every element on its own line,
    /// empty elements as `<name />`, text-only elements as `<name>text</name>` (Contrail
    /// agent stanzas, spec §2.4).
    Lines,
    /// pugixml "indent" format with one tab per depth level (Contrail control route
    /// messages, spec §6.6).
    Tabs,
}

/// Writes XML into a [`BytesMut`].
///
/// Invariant: `start` and `end` are balanced by the caller; `attr` is only valid directly
/// after `start` (before any `text` or child). Violations are programming errors caught by
/// debug assertions, never reachable from network input.
#[derive(Debug)]
pub struct XmlWriter<'a> {
    out: &'a mut BytesMut,
    style: Style,
    /// The open elements, innermost last.
    stack: Vec<Open>,
    /// The current start tag has not been closed with `>` yet.
    tag_open: bool,
}

#[derive(Debug)]
struct Open {
    name: Cow<'static, str>,
    /// A child element was written (decides the closing layout in indented styles).
    children: bool,
    text: bool,
}

impl<'a> XmlWriter<'a> {
    /// A writer appending to `out`.
    pub fn new(out: &'a mut BytesMut, style: Style) -> Self {
        Self {
            out,
            style,
            stack: Vec::with_capacity(16),
            tag_open: false,
        }
    }

    /// The layout in use.
    pub fn style(&self) -> Style {
        self.style
    }

    /// How many elements are open.
    pub fn depth(&self) -> usize {
        self.stack.len()
    }

    /// Appends raw bytes (an XML declaration, a leading newline). The caller guarantees
    /// they are well-formed at this position.
    pub fn raw(&mut self, bytes: &[u8]) {
        self.close_start_tag(false);
        self.out.put_slice(bytes);
    }

    /// Opens an element.
    pub fn start(&mut self, name: impl Into<Cow<'static, str>>) {
        let name = name.into();
        self.close_start_tag(self.style != Style::Compact);
        if let Some(parent) = self.stack.last_mut() {
            parent.children = true;
        }
        // In the indented styles every element starts on a new line: the previous line was
        // ended by the parent's start tag or the previous sibling's end; only indentation
        // remains. The root element is positioned by the caller.
        if self.style == Style::Tabs {
            self.indent(self.stack.len());
        }
        self.out.put_u8(b'<');
        self.out.put_slice(name.as_bytes());
        self.stack.push(Open {
            name,
            children: false,
            text: false,
        });
        self.tag_open = true;
    }

    fn indent(&mut self, depth: usize) {
        for _ in 0..depth {
            self.out.put_u8(b'\t');
        }
    }

    /// Adds an attribute to the element just opened. The value is escaped.
    pub fn attr(&mut self, name: &str, value: &str) {
        debug_assert!(self.tag_open, "attr() after content");
        self.out.put_u8(b' ');
        self.out.put_slice(name.as_bytes());
        self.out.put_slice(b"=\"");
        escape_into(self.out, value, true);
        self.out.put_u8(b'"');
    }

    /// Ends the pending start tag, if any. In indented styles a start tag followed by a
    /// child element ends its line (`newline`); one followed by text does not.
    fn close_start_tag(&mut self, newline: bool) {
        if self.tag_open {
            self.out.put_u8(b'>');
            if newline {
                self.out.put_u8(b'\n');
            }
            self.tag_open = false;
        }
    }

    /// Appends escaped character data to the open element.
    pub fn text(&mut self, text: &str) {
        self.close_start_tag(false);
        if let Some(s) = self.stack.last_mut() {
            s.text = true;
        }
        escape_into(self.out, text, false);
    }

    /// Writes `<name>text</name>`, with both tags also for empty text, as the Contrail
    /// generated encoders do for scalar members (spec §6.4).
    pub fn text_element(&mut self, name: &'static str, text: &str) {
        self.start(name);
        self.text(text);
        self.end();
    }

    /// Writes `<name>N</name>` for an integer without allocating.
    pub fn int_element(&mut self, name: &'static str, value: u64) {
        let mut buf = [0u8; 20];
        let digits = format_u64(value, &mut buf);
        self.start(name);
        self.close_start_tag(false);
        if let Some(s) = self.stack.last_mut() {
            s.text = true;
        }
        self.out.put_slice(digits);
        self.end();
    }

    /// Closes the innermost open element.
    pub fn end(&mut self) {
        let Some(open) = self.stack.pop() else {
            debug_assert!(false, "end() without start()");
            return;
        };
        if self.tag_open {
            self.tag_open = false;
            match self.style {
                Style::Compact => self.out.put_slice(b"/>"),
                Style::Lines | Style::Tabs => self.out.put_slice(b" />"),
            }
        } else {
            if open.children && !open.text && self.style == Style::Tabs {
                self.indent(self.stack.len());
            }
            self.out.put_slice(b"</");
            self.out.put_slice(open.name.as_bytes());
            self.out.put_u8(b'>');
        }
        if self.style != Style::Compact {
            self.out.put_u8(b'\n');
        }
    }
}

/// Escapes `text` into `out`. Attribute values escape `& < > "` and the whitespace
/// characters that attribute-value normalisation would otherwise fold (`\t \n \r`);
/// text escapes `& < >`, and `\r`, which the receiver's end-of-line normalisation would
/// otherwise turn into `\n` (so a parsed element writes back equal). Characters XML 1.0 cannot carry at all (C0
/// controls other than tab, LF, CR, and U+FFFE/U+FFFF) are replaced by U+FFFD rather than
/// producing a document the peer rejects.
pub fn escape_into(out: &mut BytesMut, text: &str, attr: bool) {
    const REPLACEMENT: &[u8] = "\u{FFFD}".as_bytes();
    let bytes = text.as_bytes();
    let mut last = 0;
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        let (rep, len): (&[u8], usize) = match b {
            b'&' => (b"&amp;", 1),
            b'<' => (b"&lt;", 1),
            b'>' => (b"&gt;", 1),
            b'"' if attr => (b"&quot;", 1),
            b'\t' if attr => (b"&#9;", 1),
            b'\n' if attr => (b"&#10;", 1),
            b'\r' => (b"&#13;", 1),
            b'\t' | b'\n' => {
                i += 1;
                continue;
            }
            0x00..=0x1f => (REPLACEMENT, 1),
            // U+FFFE and U+FFFF (EF BF BE, EF BF BF): not XML characters either.
            0xEF if matches!(bytes.get(i + 1..i + 3), Some([0xBF, 0xBE | 0xBF])) => {
                (REPLACEMENT, 3)
            }
            _ => {
                i += 1;
                continue;
            }
        };
        out.put_slice(&bytes[last..i]);
        out.put_slice(rep);
        i += len;
        last = i;
    }
    out.put_slice(&bytes[last..]);
}

fn format_u64(mut v: u64, buf: &mut [u8; 20]) -> &[u8] {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    &buf[i..]
}
