//! A light scanner for route notifications, so a thousand simulated agents on one core can
//! keep up with the control node: it finds `<item … id=…>`, `<retract id=…>` and
//! `<sequence-number>N<` in the byte stream (both quote styles, tokens cut across reads)
//! without building elements. The same scanner reads Contrail route `<message>`s and XEP-0060
//! event notifications, whose payload is the same `<entry>`.
//!
//! The loads only use host routes `10.0.0.0/8 + (index + 1)`, so an id maps to a route index.

use memchr::memchr;

/// What the scanner found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Token {
    /// A reachable route (its index).
    Item(u32),
    /// A withdrawn route (its index).
    Retract(u32),
    /// The `sequence-number` of an item: the publish time the generator put there.
    Seq(u32),
}

/// The longest token prefix we must keep across reads when it is cut.
const LONGEST: usize = 256;

/// Incremental scanner state: the unprocessed tail of the stream.
#[derive(Debug, Default)]
pub struct Scanner {
    buf: Vec<u8>,
}

/// The route index of a bench prefix (`10.a.b.c/32` → `a.b.c − 1`).
pub fn route_index(id: &[u8]) -> Option<u32> {
    let s = std::str::from_utf8(id).ok()?;
    let (addr, len) = s.split_once('/')?;
    if len != "32" {
        return None;
    }
    let a: std::net::Ipv4Addr = addr.parse().ok()?;
    u32::from(a).checked_sub(0x0a00_0001)
}

/// The prefix of route `index`.
pub fn route_prefix(index: u32) -> std::net::Ipv4Addr {
    std::net::Ipv4Addr::from(0x0a00_0001 + index)
}

enum Step {
    Token(Token, usize),
    Skip(usize),
    Incomplete,
}

fn attr_id(tag: &[u8]) -> Option<&[u8]> {
    let mut i = 0;
    while let Some(p) = memchr::memmem::find(&tag[i..], b"id=") {
        let at = i + p;
        let before_ok = at == 0 || matches!(tag[at - 1], b' ' | b'\t' | b'\n' | b'\r');
        if before_ok
            && let Some(&q) = tag.get(at + 3)
            && (q == b'"' || q == b'\'')
        {
            let start = at + 4;
            let end = memchr(q, &tag[start..])?;
            return Some(&tag[start..start + end]);
        }
        i = at + 3;
    }
    None
}

/// Looks at the markup starting at `b[0] == b'<'`.
fn step(b: &[u8]) -> Step {
    const ITEM: &[u8] = b"<item";
    const RETRACT: &[u8] = b"<retract";
    const SEQ: &[u8] = b"<sequence-number>";
    for (pat, kind) in [(ITEM, 0u8), (RETRACT, 1), (SEQ, 2)] {
        let n = pat.len().min(b.len());
        if b[..n] != pat[..n] {
            continue;
        }
        if b.len() < pat.len() + 1 {
            return Step::Incomplete;
        }
        if kind == 2 {
            let rest = &b[pat.len()..];
            let Some(end) = memchr(b'<', rest) else {
                return if b.len() > LONGEST {
                    Step::Skip(1)
                } else {
                    Step::Incomplete
                };
            };
            let v = std::str::from_utf8(&rest[..end])
                .ok()
                .and_then(|s| s.trim().parse::<u32>().ok());
            return match v {
                Some(v) => Step::Token(Token::Seq(v), pat.len() + end),
                None => Step::Skip(pat.len() + end),
            };
        }
        // `<item` must be followed by whitespace or `>` (not `<items`).
        if !matches!(b[pat.len()], b' ' | b'\t' | b'\n' | b'\r' | b'>' | b'/') {
            return Step::Skip(1);
        }
        let Some(close) = memchr(b'>', b) else {
            return if b.len() > LONGEST {
                Step::Skip(1)
            } else {
                Step::Incomplete
            };
        };
        let tag = &b[..close];
        return match attr_id(tag).and_then(route_index) {
            Some(i) if kind == 0 => Step::Token(Token::Item(i), close + 1),
            Some(i) => Step::Token(Token::Retract(i), close + 1),
            None => Step::Skip(close + 1),
        };
    }
    Step::Skip(1)
}

impl Scanner {
    /// A fresh scanner.
    pub fn new() -> Self {
        Self::default()
    }

    /// Scans `data` (appended to what was left from the last call), calling `f` per token.
    pub fn feed(&mut self, data: &[u8], mut f: impl FnMut(Token)) {
        let owned;
        let b: &[u8] = if self.buf.is_empty() {
            data
        } else {
            self.buf.extend_from_slice(data);
            owned = std::mem::take(&mut self.buf);
            &owned[..]
        };
        let mut pos = 0;
        let mut keep_from = b.len();
        while let Some(off) = memchr(b'<', &b[pos..]) {
            let at = pos + off;
            match step(&b[at..]) {
                Step::Token(t, used) => {
                    f(t);
                    pos = at + used;
                }
                Step::Skip(n) => pos = at + n,
                Step::Incomplete => {
                    keep_from = at;
                    break;
                }
            }
        }
        self.buf = b[keep_from..].to_vec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_tokens_across_any_cut() {
        let msg = b"\n<message>\n\t<event>\n\t\t<items node=\"1/1/x\">\n\t\t\t<item id=\"10.0.0.3/32\">\n\
            <entry><sequence-number>1234</sequence-number></entry>\n\t\t\t</item>\n\
            <item publisher='a' id='10.0.1.1/32'><entry><sequence-number>7</sequence-number>\
            </entry></item><retract id=\"10.0.0.2/32\" />\n\t\t</items></message>\n";
        let want = vec![
            Token::Item(2),
            Token::Seq(1234),
            Token::Item(256),
            Token::Seq(7),
            Token::Retract(1),
        ];
        for cut in 0..msg.len() {
            let mut s = Scanner::new();
            let mut got = Vec::new();
            s.feed(&msg[..cut], |t| got.push(t));
            s.feed(&msg[cut..], |t| got.push(t));
            assert_eq!(got, want, "cut at {cut}");
        }
        assert_eq!(route_prefix(2).to_string(), "10.0.0.3");
    }
}
