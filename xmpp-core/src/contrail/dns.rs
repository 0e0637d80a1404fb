//! Agent → contrail-dns update IQs (spec §7): `<iq><dns transid><update>…`, built by
//! `DnsAgentXmpp::DnsAgentXmppEncode` (`src/dns/bind/xmpp_dns_agent.cc`) and decoded by
//! `DnsAgentXmppDecode`, which rejects the whole update on any unknown element.

use bytes::BytesMut;

use super::{PayloadError, find_iq, parse_decimal};
use crate::stanza::ns;
use crate::xml::{Element, Style, XmlWriter};

/// At most this many entries per IQ (`DnsHandler::max_items_per_xmpp_msg`): the C++
/// encoder writes into an 8192-byte buffer without bounds checks.
pub const MAX_DNS_ENTRIES_PER_IQ: usize = 20;

/// DNS class IN.
pub const CLASS_IN: u16 = 1;
/// DNS class NONE (RFC 2136 delete of one RR).
pub const CLASS_NONE: u16 = 254;
/// DNS class ANY (RFC 2136 delete of an RRset).
pub const CLASS_ANY: u16 = 255;

/// The C++ XML declaration in front of DNS IQs (§2.4, quirk 22).
const DECLARATION: &[u8] = b"<?xml version=\"1.0\"?>\n";

/// One record: `<entry>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsEntry {
    /// `class` (1 IN, 254 NONE, 255 ANY).
    pub class: u16,
    /// `type` (1 A, 2 NS, 5 CNAME, 6 SOA, 12 PTR, 15 MX, 16 TXT, 28 AAAA, 33 SRV, 255 ANY).
    pub rtype: u16,
    /// `name`.
    pub name: String,
    /// `data`, omitted from the XML when empty.
    pub data: String,
    /// `ttl`; `None` is the C++ 0xFFFFFFFF "unset", which is not written.
    pub ttl: Option<u32>,
    /// `priority`; `None` is the C++ 0xFFFF "unset", which is not written.
    pub priority: Option<u16>,
}

impl DnsEntry {
    /// A deletion: class NONE or ANY with TTL 0 (§7).
    pub fn is_delete(&self) -> bool {
        matches!(self.class, CLASS_NONE | CLASS_ANY) && self.ttl == Some(0)
    }

    fn parse(entry: &Element) -> Result<Self, PayloadError> {
        let mut e = DnsEntry {
            class: 0,
            rtype: 0,
            name: String::new(),
            data: String::new(),
            ttl: None,
            priority: None,
        };
        for c in entry.children() {
            let text = c.text();
            match c.local_name() {
                "class" => e.class = parse_decimal("entry/class", &text)?,
                "type" => e.rtype = parse_decimal("entry/type", &text)?,
                "name" => e.name = text.into_owned(),
                "data" => e.data = text.into_owned(),
                "ttl" => e.ttl = Some(parse_decimal("entry/ttl", &text)?),
                "priority" => e.priority = Some(parse_decimal("entry/priority", &text)?),
                other => {
                    return Err(PayloadError::UnknownChild {
                        parent: "entry",
                        child: other.to_owned(),
                    });
                }
            }
        }
        Ok(e)
    }

    fn write(&self, w: &mut XmlWriter<'_>) {
        w.start("entry");
        w.int_element("class", self.class.into());
        w.int_element("type", self.rtype.into());
        w.text_element("name", &self.name);
        if !self.data.is_empty() {
            w.text_element("data", &self.data);
        }
        if let Some(ttl) = self.ttl {
            w.int_element("ttl", ttl.into());
        }
        if let Some(priority) = self.priority {
            w.int_element("priority", priority.into());
        }
        w.end();
    }
}

/// A DNS update: the records of one (virtual-DNS, zone) pair.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsUpdate {
    /// `dns/@transid`, also the IQ `id` (the agent's transaction counter).
    pub transid: u32,
    /// `virtual-dns`: the virtual DNS server's FQ name.
    pub virtual_dns: String,
    /// `zone`.
    pub zone: String,
    /// The records.
    pub entries: Vec<DnsEntry>,
}

impl DnsUpdate {
    /// Parses a whole `<iq>` as contrail-dns does: the first `dns` element, whose first
    /// child must be `update` (responses and queries are not handled by the DNS node);
    /// any other child of `update` or `entry` rejects the IQ; an empty `virtual-dns` or
    /// `zone` rejects it too. Numbers must be decimal (the C++ `stringstream` would read
    /// junk as 0; nothing here sends junk, so it is refused instead).
    pub fn from_iq(stanza: &Element) -> Result<Self, PayloadError> {
        let iq = find_iq(stanza).ok_or(PayloadError::Missing { element: "iq" })?;
        let dns = iq
            .find_descendant("dns")
            .ok_or(PayloadError::Missing { element: "dns" })?;
        let transid = match dns.get_attr("transid") {
            Some(t) => parse_decimal("dns/@transid", t)?,
            None => 0,
        };
        let update = match dns.children().next() {
            Some(u) if u.local_name() == "update" => u,
            Some(other) => {
                return Err(PayloadError::UnknownChild {
                    parent: "dns",
                    child: other.local_name().to_owned(),
                });
            }
            None => return Err(PayloadError::Missing { element: "update" }),
        };
        let mut virtual_dns = String::new();
        let mut zone = String::new();
        let mut entries = Vec::new();
        for c in update.children() {
            match c.local_name() {
                "virtual-dns" => virtual_dns = c.text().into_owned(),
                "zone" => zone = c.text().into_owned(),
                "entry" => entries.push(DnsEntry::parse(c)?),
                other => {
                    return Err(PayloadError::UnknownChild {
                        parent: "update",
                        child: other.to_owned(),
                    });
                }
            }
        }
        if virtual_dns.is_empty() {
            return Err(PayloadError::Empty {
                field: "virtual-dns",
            });
        }
        if zone.is_empty() {
            return Err(PayloadError::Empty { field: "zone" });
        }
        Ok(DnsUpdate {
            transid,
            virtual_dns,
            zone,
            entries,
        })
    }

    /// Writes the IQ as the C++ agent does: declaration, one element per line,
    /// `from` = `<agent>/dns`, `to` = `network-dns@contrailsystems.com/dns-peer`,
    /// `id` = `transid`. At most [`MAX_DNS_ENTRIES_PER_IQ`] entries ([`DnsUpdate::split`]).
    pub fn write(&self, out: &mut BytesMut, agent: &str) -> Result<(), PayloadError> {
        if self.entries.len() > MAX_DNS_ENTRIES_PER_IQ {
            return Err(PayloadError::TooMany {
                what: "entries",
                count: self.entries.len(),
                max: MAX_DNS_ENTRIES_PER_IQ,
            });
        }
        let transid = self.transid.to_string();
        let mut w = XmlWriter::new(out, Style::Lines);
        w.raw(DECLARATION);
        w.start("iq");
        w.attr("type", "set");
        w.attr("from", &format!("{agent}/dns"));
        w.attr("to", &format!("{}/{}", ns::DNS_JID, ns::RESOURCE_DNS));
        w.attr("id", &transid);
        w.start("dns");
        w.attr("transid", &transid);
        w.start("update");
        w.text_element("virtual-dns", &self.virtual_dns);
        w.text_element("zone", &self.zone);
        for e in &self.entries {
            e.write(&mut w);
        }
        w.end();
        w.end();
        w.end();
        Ok(())
    }

    /// Splits records into updates of at most 20 entries, each with the next transaction
    /// id from `next_transid` (`DnsHandler::SendXmppUpdate`). No records → no update.
    pub fn split(
        virtual_dns: &str,
        zone: &str,
        entries: Vec<DnsEntry>,
        mut next_transid: impl FnMut() -> u32,
    ) -> Vec<DnsUpdate> {
        let mut updates = Vec::with_capacity(entries.len().div_ceil(MAX_DNS_ENTRIES_PER_IQ));
        let mut rest = entries.into_iter().peekable();
        while rest.peek().is_some() {
            let chunk: Vec<DnsEntry> = rest.by_ref().take(MAX_DNS_ENTRIES_PER_IQ).collect();
            updates.push(DnsUpdate {
                transid: next_transid(),
                virtual_dns: virtual_dns.to_owned(),
                zone: zone.to_owned(),
                entries: chunk,
            });
        }
        updates
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contrail::Disposition;
    use crate::contrail::route::tests::parse;
    use crate::xml::NsScope;

    fn a_record(name: &str, ip: &str) -> DnsEntry {
        DnsEntry {
            class: CLASS_IN,
            rtype: 1,
            name: name.into(),
            data: ip.into(),
            ttl: Some(86400),
            priority: Some(0),
        }
    }

    #[test]
    fn spec_sample_is_byte_exact() {
        let update = DnsUpdate {
            transid: 41,
            virtual_dns: "default-domain:vdns-1".into(),
            zone: "demo.example".into(),
            entries: vec![a_record("vm-a", "10.1.1.3")],
        };
        let mut out = BytesMut::new();
        update.write(&mut out, "compute-1").expect("fits");
        assert_eq!(
            std::str::from_utf8(&out).expect("utf8"),
            "<?xml version=\"1.0\"?>\n\
             <iq type=\"set\" from=\"compute-1/dns\" to=\"network-dns@contrailsystems.com/dns-peer\" id=\"41\">\n\
             <dns transid=\"41\">\n\
             <update>\n\
             <virtual-dns>default-domain:vdns-1</virtual-dns>\n\
             <zone>demo.example</zone>\n\
             <entry>\n\
             <class>1</class>\n\
             <type>1</type>\n\
             <name>vm-a</name>\n\
             <data>10.1.1.3</data>\n\
             <ttl>86400</ttl>\n\
             <priority>0</priority>\n\
             </entry>\n\
             </update>\n\
             </dns>\n\
             </iq>\n"
        );
        // The declaration is the framing layer's to strip; parse the stanza after it.
        let el = Element::parse(&out[DECLARATION.len()..], &NsScope::default()).expect("parses");
        assert_eq!(DnsUpdate::from_iq(&el).expect("valid"), update);
    }

    #[test]
    fn optional_fields_and_delete_round_trip() {
        let update = DnsUpdate {
            transid: 7,
            virtual_dns: "d:v".into(),
            zone: "1.1.10.in-addr.arpa".into(),
            entries: vec![
                DnsEntry {
                    class: CLASS_NONE,
                    rtype: 12,
                    name: "3.1.1.10.in-addr.arpa".into(),
                    data: "vm-a.demo.example".into(),
                    ttl: Some(0),
                    priority: None,
                },
                DnsEntry {
                    class: CLASS_ANY,
                    rtype: 255,
                    name: "vm-b".into(),
                    data: String::new(),
                    ttl: None,
                    priority: None,
                },
            ],
        };
        let mut out = BytesMut::new();
        update.write(&mut out, "c").expect("fits");
        let text = std::str::from_utf8(&out).expect("utf8");
        assert!(!text.contains("<data></data>"), "empty data is omitted");
        assert!(!text.contains("<priority>"), "unset priority is omitted");
        let el = Element::parse(&out[DECLARATION.len()..], &NsScope::default()).expect("parses");
        let parsed = DnsUpdate::from_iq(&el).expect("valid");
        assert_eq!(parsed, update);
        assert!(parsed.entries[0].is_delete());
        assert!(!parsed.entries[1].is_delete(), "no ttl 0");
        assert!(!a_record("x", "1.1.1.1").is_delete());
    }

    #[test]
    fn decoder_rejections() {
        let wrap = |body: &str| {
            parse(&format!(
                "<iq type='set' id='1'><dns transid='1'><update>{body}</update></dns></iq>"
            ))
        };
        let ok = "<virtual-dns>v</virtual-dns><zone>z</zone>";
        DnsUpdate::from_iq(&wrap(ok)).expect("empty entry list is valid");
        let cases = [
            (
                format!("{ok}<bogus/>"),
                PayloadError::UnknownChild {
                    parent: "update",
                    child: "bogus".into(),
                },
            ),
            (
                format!("{ok}<entry><class>1</class><weight>3</weight></entry>"),
                PayloadError::UnknownChild {
                    parent: "entry",
                    child: "weight".into(),
                },
            ),
            (
                "<virtual-dns></virtual-dns><zone>z</zone>".to_owned(),
                PayloadError::Empty {
                    field: "virtual-dns",
                },
            ),
            (
                "<virtual-dns>v</virtual-dns>".to_owned(),
                PayloadError::Empty { field: "zone" },
            ),
        ];
        for (body, expected) in cases {
            let err = DnsUpdate::from_iq(&wrap(&body)).expect_err(&body);
            assert_eq!(err, expected);
            assert_eq!(err.disposition(), Disposition::DropStanza);
        }
        let err = DnsUpdate::from_iq(&wrap(&format!("{ok}<entry><class>IN</class></entry>")))
            .expect_err("non-numeric class");
        assert!(matches!(
            err,
            PayloadError::Integer {
                field: "entry/class",
                ..
            }
        ));
        let err = DnsUpdate::from_iq(&wrap(&format!(
            "{ok}<entry><priority>70000</priority></entry>"
        )))
        .expect_err("priority is 16 bits");
        assert!(matches!(
            err,
            PayloadError::Integer {
                field: "entry/priority",
                ..
            }
        ));
        let response = parse(
            "<iq type='result'><dns transid='1'><response code='0'><update/></response></dns></iq>",
        );
        assert!(matches!(
            DnsUpdate::from_iq(&response),
            Err(PayloadError::UnknownChild { parent: "dns", .. })
        ));
        assert_eq!(
            DnsUpdate::from_iq(&parse("<iq type='set'/>")),
            Err(PayloadError::Missing { element: "dns" })
        );
        // Whitespace around numbers is fine.
        let spaced = DnsUpdate::from_iq(&wrap(&format!(
            "{ok}<entry><class> 1 </class><ttl>\n5\n</ttl></entry>"
        )))
        .expect("valid");
        assert_eq!(spaced.entries[0].class, 1);
        assert_eq!(spaced.entries[0].ttl, Some(5));
    }

    #[test]
    fn split_at_twenty() {
        let records = |n: usize| {
            (0..n)
                .map(|i| a_record(&format!("vm-{i}"), "10.0.0.1"))
                .collect::<Vec<_>>()
        };
        let mut next = 100;
        let mut ids = || {
            next += 1;
            next
        };
        assert!(DnsUpdate::split("v", "z", records(0), &mut ids).is_empty());
        let sizes = |n| {
            DnsUpdate::split("v", "z", records(n), || 0)
                .iter()
                .map(|u| u.entries.len())
                .collect::<Vec<_>>()
        };
        assert_eq!(sizes(20), [20]);
        assert_eq!(sizes(21), [20, 1]);
        assert_eq!(sizes(40), [20, 20]);
        let updates = DnsUpdate::split("v", "z", records(41), &mut ids);
        assert_eq!(
            updates.iter().map(|u| u.transid).collect::<Vec<_>>(),
            [101, 102, 103]
        );
        assert_eq!(updates[2].entries[0].name, "vm-40");
        for u in &updates {
            let mut out = BytesMut::new();
            u.write(&mut out, "c").expect("each chunk fits");
        }
        let too_big = DnsUpdate {
            transid: 1,
            virtual_dns: "v".into(),
            zone: "z".into(),
            entries: records(21),
        };
        let mut out = BytesMut::new();
        assert_eq!(
            too_big.write(&mut out, "c"),
            Err(PayloadError::TooMany {
                what: "entries",
                count: 21,
                max: 20
            })
        );
        assert!(out.is_empty());
    }
}
