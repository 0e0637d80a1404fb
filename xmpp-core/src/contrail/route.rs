//! Unicast route items — `ItemType`/`EntryType` of `[api] schema/xmpp_unicast.xsd`, used by
//! inet (1/1), labeled inet (1/4) and inet6 (2/1) (spec §6.4).
//!
//! Parsing follows the generated C++ parser: children are matched by name, unknown ones
//! are ignored, missing ones keep their defaults (0, `""`, `false`), integers are
//! `strtoul` with only whitespace after, booleans are true only for `true`. Two fields are
//! stricter than the generated parser because they are typed here: `nlri/address` must be
//! a prefix and `next-hop/address` an IP address — the C++ consumers (`ProcessItem`,
//! the agent's `AddRoute`) reject the item when those do not parse, so the result is the
//! same. Writing follows the generated encoder: every scalar member in XSD order (empty
//! strings as `<x></x>`, zeros as `0`), every complex member (possibly `<x />`), lists
//! once per element.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use super::{Family, PayloadError, parse_c_int};
use crate::xml::{Element, XmlWriter};

/// The largest MPLS label (20 bits).
pub const MAX_LABEL: u32 = 0xF_FFFF;

/// An IP prefix, normalised: host bits below the length are cleared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Prefix {
    addr: IpAddr,
    len: u8,
}

impl Prefix {
    /// A prefix of `len` bits of `addr` (host bits cleared); the length must fit the
    /// address family.
    pub fn new(addr: IpAddr, len: u8) -> Result<Self, PayloadError> {
        let max = if addr.is_ipv4() { 32 } else { 128 };
        if len > max {
            return Err(PayloadError::Prefix {
                field: "prefix",
                value: format!("{addr}/{len}"),
                reason: "length out of range",
            });
        }
        Ok(Self {
            addr: mask(addr, len),
            len,
        })
    }

    /// A host prefix (`/32` or `/128`).
    pub fn host(addr: IpAddr) -> Self {
        let len = if addr.is_ipv4() { 32 } else { 128 };
        Self { addr, len }
    }

    /// Parses `address/length` for the named field (used in error messages).
    pub fn parse_field(field: &'static str, text: &str) -> Result<Self, PayloadError> {
        let bad = |reason| PayloadError::Prefix {
            field,
            value: text.to_owned(),
            reason,
        };
        let (addr, len) = text.split_once('/').ok_or_else(|| bad("no '/'"))?;
        let addr = IpAddr::from_str(addr).map_err(|_| bad("bad address"))?;
        if len.is_empty() || len.len() > 3 || !len.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad("bad length"));
        }
        let len: u8 = len.parse().map_err(|_| bad("bad length"))?;
        Prefix::new(addr, len).map_err(|_| bad("length out of range"))
    }

    /// The (normalised) network address.
    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    /// The prefix length in bits.
    pub fn prefix_len(&self) -> u8 {
        self.len
    }
}

fn mask(addr: IpAddr, len: u8) -> IpAddr {
    match addr {
        IpAddr::V4(a) => {
            let m = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
            IpAddr::V4(Ipv4Addr::from(u32::from(a) & m))
        }
        IpAddr::V6(a) => {
            let m = u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
            IpAddr::V6(Ipv6Addr::from(u128::from(a) & m))
        }
    }
}

impl FromStr for Prefix {
    type Err = PayloadError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Prefix::parse_field("prefix", s)
    }
}

impl fmt::Display for Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

/// `nlri`: the route's key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Nlri {
    /// AFI (1 IPv4, 2 IPv6).
    pub af: u32,
    /// SAFI (1 unicast, 4 labeled).
    pub safi: u32,
    /// `address`.
    pub prefix: Prefix,
}

/// One `next-hop`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NextHop {
    /// `af` of the address (1, 2; 25 accepted by control).
    pub af: u32,
    /// Tunnel endpoint (agent router-id).
    pub address: IpAddr,
    /// Router MAC (agent: vhost0 MAC; control: empty).
    pub mac: String,
    /// MPLS label.
    pub label: u32,
    /// VXLAN id.
    pub vni: u32,
    /// `tunnel-encapsulation-list/tunnel-encapsulation` (`gre`, `udp`, `native`, …).
    pub encapsulations: Vec<String>,
    /// The next-hop's VN FQ name.
    pub virtual_network: String,
    /// `tag-list/tag`.
    pub tags: Vec<u32>,
}

/// `mobility` (attribute-only element).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Mobility {
    /// `@seqno`.
    pub seqno: u32,
    /// `@sticky`.
    pub sticky: bool,
}

/// `load-balance`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LoadBalance {
    /// `load-balance-fields/load-balance-field-list` (`l3-source-address`, …).
    pub fields: Vec<String>,
    /// `load-balance-decision` (`field-hash`, `source-bias`).
    pub decision: String,
}

/// A unicast route `entry`, every field in emission (XSD) order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteEntry {
    /// `nlri`.
    pub nlri: Nlri,
    /// `next-hops/next-hop`.
    pub next_hops: Vec<NextHop>,
    /// `version` (agent and control send 1).
    pub version: u32,
    /// `virtual-network`.
    pub virtual_network: String,
    /// `mobility`.
    pub mobility: Mobility,
    /// `sequence-number` (legacy, still sent).
    pub sequence_number: u32,
    /// `security-group-list/security-group`.
    pub security_groups: Vec<u32>,
    /// `community-tag-list/community-tag`.
    pub community_tags: Vec<String>,
    /// `local-preference`.
    pub local_preference: u32,
    /// `med`.
    pub med: u32,
    /// `load-balance`.
    pub load_balance: LoadBalance,
    /// `sub-protocol` (`interface`, `interface-static`, `service-interface`, `bgpaas`).
    pub sub_protocol: String,
}

/// The generated parser's view before the two typed fields are converted.
#[derive(Default)]
struct RawEntry {
    af: u32,
    safi: u32,
    address: String,
    next_hops: Vec<RawNextHop>,
    version: u32,
    virtual_network: String,
    mobility: Mobility,
    sequence_number: u32,
    security_groups: Vec<u32>,
    community_tags: Vec<String>,
    local_preference: u32,
    med: u32,
    load_balance: LoadBalance,
    sub_protocol: String,
}

#[derive(Default)]
struct RawNextHop {
    af: u32,
    address: String,
    mac: String,
    label: u32,
    vni: u32,
    encapsulations: Vec<String>,
    virtual_network: String,
    tags: Vec<u32>,
}

fn int(field: &'static str, el: &Element) -> Result<u32, PayloadError> {
    parse_c_int(field, &el.text())
}

/// Children with this (local) name, in document order.
fn named<'a>(el: &'a Element, name: &'static str) -> impl Iterator<Item = &'a Element> {
    el.children().filter(move |c| c.local_name() == name)
}

impl RawEntry {
    /// `EntryType::XmlParse`: repeated elements are parsed into the same member again
    /// (later scalars win, lists accumulate), as the generated code does.
    fn parse(&mut self, entry: &Element) -> Result<(), PayloadError> {
        for c in entry.children() {
            match c.local_name() {
                "nlri" => self.parse_nlri(c)?,
                "next-hops" => {
                    for nh in named(c, "next-hop") {
                        let mut raw = RawNextHop::default();
                        raw.parse(nh)?;
                        self.next_hops.push(raw);
                    }
                }
                "version" => self.version = int("entry/version", c)?,
                "virtual-network" => self.virtual_network = c.text().into_owned(),
                "mobility" => {
                    for (k, v) in c.attrs() {
                        match k {
                            "seqno" => self.mobility.seqno = parse_c_int("mobility/@seqno", v)?,
                            "sticky" => self.mobility.sticky = v == "true",
                            _ => {}
                        }
                    }
                }
                "sequence-number" => self.sequence_number = int("entry/sequence-number", c)?,
                "security-group-list" => {
                    for sg in named(c, "security-group") {
                        self.security_groups.push(int("security-group", sg)?);
                    }
                }
                "community-tag-list" => {
                    for ct in named(c, "community-tag") {
                        self.community_tags.push(ct.text().into_owned());
                    }
                }
                "local-preference" => self.local_preference = int("entry/local-preference", c)?,
                "med" => self.med = int("entry/med", c)?,
                "load-balance" => {
                    for lb in c.children() {
                        match lb.local_name() {
                            "load-balance-fields" => {
                                for f in named(lb, "load-balance-field-list") {
                                    self.load_balance.fields.push(f.text().into_owned());
                                }
                            }
                            "load-balance-decision" => {
                                self.load_balance.decision = lb.text().into_owned();
                            }
                            _ => {}
                        }
                    }
                }
                "sub-protocol" => self.sub_protocol = c.text().into_owned(),
                _ => {}
            }
        }
        Ok(())
    }

    fn parse_nlri(&mut self, nlri: &Element) -> Result<(), PayloadError> {
        for c in nlri.children() {
            match c.local_name() {
                "af" => self.af = int("nlri/af", c)?,
                "safi" => self.safi = int("nlri/safi", c)?,
                "address" => self.address = c.text().into_owned(),
                _ => {}
            }
        }
        Ok(())
    }

    fn into_entry(self) -> Result<RouteEntry, PayloadError> {
        let prefix = Prefix::parse_field("nlri/address", &self.address)?;
        let next_hops = self
            .next_hops
            .into_iter()
            .map(RawNextHop::into_next_hop)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(RouteEntry {
            nlri: Nlri {
                af: self.af,
                safi: self.safi,
                prefix,
            },
            next_hops,
            version: self.version,
            virtual_network: self.virtual_network,
            mobility: self.mobility,
            sequence_number: self.sequence_number,
            security_groups: self.security_groups,
            community_tags: self.community_tags,
            local_preference: self.local_preference,
            med: self.med,
            load_balance: self.load_balance,
            sub_protocol: self.sub_protocol,
        })
    }
}

impl RawNextHop {
    fn parse(&mut self, nh: &Element) -> Result<(), PayloadError> {
        for c in nh.children() {
            match c.local_name() {
                "af" => self.af = int("next-hop/af", c)?,
                "address" => self.address = c.text().into_owned(),
                "mac" => self.mac = c.text().into_owned(),
                "label" => self.label = int("next-hop/label", c)?,
                "vni" => self.vni = int("next-hop/vni", c)?,
                "tunnel-encapsulation-list" => {
                    for e in named(c, "tunnel-encapsulation") {
                        self.encapsulations.push(e.text().into_owned());
                    }
                }
                "virtual-network" => self.virtual_network = c.text().into_owned(),
                "tag-list" => {
                    for t in named(c, "tag") {
                        self.tags.push(int("next-hop/tag", t)?);
                    }
                }
                _ => {}
            }
        }
        Ok(())
    }

    fn into_next_hop(self) -> Result<NextHop, PayloadError> {
        // Verbatim, as boost's `from_string`: no trimming.
        let address = IpAddr::from_str(&self.address).map_err(|_| PayloadError::Address {
            field: "next-hop/address",
            value: self.address.clone(),
        })?;
        Ok(NextHop {
            af: self.af,
            address,
            mac: self.mac,
            label: self.label,
            vni: self.vni,
            encapsulations: self.encapsulations,
            virtual_network: self.virtual_network,
            tags: self.tags,
        })
    }
}

impl RouteEntry {
    /// Parses an `<item>` element (its `entry` children; `item/@id` is the caller's).
    pub fn from_item(item: &Element) -> Result<Self, PayloadError> {
        let mut raw = RawEntry::default();
        for entry in named(item, "entry") {
            raw.parse(entry)?;
        }
        raw.into_entry()
    }

    /// The family the `nlri` names, if any.
    pub fn family(&self) -> Option<Family> {
        Family::from_afi_safi(self.nlri.af, self.nlri.safi)
    }

    /// Checks an add/change the way the control node does (`ProcessItem`,
    /// `ProcessInet6Item`) for an item published on a node of family `node`:
    ///
    /// * inet / labeled inet: `nlri/af` 1 (SAFI 1 or 4, the agent's two values); inet6:
    ///   `nlri/af` 2 and `nlri/safi` 1; the prefix of that IP version;
    /// * exactly one next-hop, `af` 1, 2 or 25, a non-zero address;
    /// * label ≤ 0xFFFFF; non-zero outside the master instance and in the labeled family;
    ///   zero for plain unicast in the master instance. (For inet6 the C++ skips a
    ///   label-0 next-hop silently instead of logging; either way nothing is added.)
    ///
    /// Every failure drops only this item ([`super::Disposition::DropItem`]).
    pub fn validate_publish(&self, node: Family, vrf_is_master: bool) -> Result<(), PayloadError> {
        self.validate_withdraw(node)?;
        let [nh] = self.next_hops.as_slice() else {
            return Err(PayloadError::NextHopCount {
                count: self.next_hops.len(),
            });
        };
        if !matches!(nh.af, 1 | 2 | 25) {
            return Err(PayloadError::NextHopAf { af: nh.af });
        }
        if nh.address.is_unspecified() {
            return Err(PayloadError::ZeroNextHop {
                address: nh.address,
            });
        }
        if nh.label > MAX_LABEL {
            return Err(PayloadError::LabelRange { label: nh.label });
        }
        let labeled = node == Family::LabeledInet;
        if vrf_is_master && !labeled {
            if nh.label != 0 {
                return Err(PayloadError::LabelInMaster { label: nh.label });
            }
        } else if nh.label == 0 {
            return Err(PayloadError::ZeroLabel);
        }
        Ok(())
    }

    /// Checks a delete (dissociate) the way the control node does: only the family and
    /// the prefix matter, the next-hops are not looked at.
    pub fn validate_withdraw(&self, node: Family) -> Result<(), PayloadError> {
        let (af, ok_safi, version) = match node {
            Family::Inet | Family::LabeledInet => (1, matches!(self.nlri.safi, 1 | 4), 4),
            Family::Inet6 => (2, self.nlri.safi == 1, 6),
            _ => {
                return Err(PayloadError::UnsupportedFamily {
                    node: node.to_string(),
                });
            }
        };
        if self.nlri.af != af || !ok_safi {
            return Err(PayloadError::AfiSafi {
                af: self.nlri.af,
                safi: self.nlri.safi,
                family: node,
            });
        }
        if self.nlri.prefix.addr().is_ipv4() != (version == 4) {
            return Err(PayloadError::PrefixVersion {
                prefix: self.nlri.prefix,
                expected: version,
            });
        }
        Ok(())
    }

    /// Writes the `<entry>` element (not the enclosing `<item>`) as the generated
    /// encoder does. The layout (one element per line, tabs) is the writer's style.
    pub fn write(&self, w: &mut XmlWriter<'_>) {
        w.start("entry");

        w.start("nlri");
        w.int_element("af", self.nlri.af.into());
        w.int_element("safi", self.nlri.safi.into());
        w.text_element("address", &self.nlri.prefix.to_string());
        w.end();

        w.start("next-hops");
        for nh in &self.next_hops {
            nh.write(w);
        }
        w.end();

        w.int_element("version", self.version.into());
        w.text_element("virtual-network", &self.virtual_network);
        w.start("mobility");
        // Attribute order as in the spec's samples; receivers do not care (§6.4, §13).
        w.attr(
            "sticky",
            if self.mobility.sticky {
                "true"
            } else {
                "false"
            },
        );
        w.attr("seqno", &self.mobility.seqno.to_string());
        w.end();
        w.int_element("sequence-number", self.sequence_number.into());

        w.start("security-group-list");
        for sg in &self.security_groups {
            w.int_element("security-group", (*sg).into());
        }
        w.end();

        w.start("community-tag-list");
        for ct in &self.community_tags {
            w.text_element("community-tag", ct);
        }
        w.end();

        w.int_element("local-preference", self.local_preference.into());
        w.int_element("med", self.med.into());

        w.start("load-balance");
        w.start("load-balance-fields");
        for f in &self.load_balance.fields {
            w.text_element("load-balance-field-list", f);
        }
        w.end();
        w.text_element("load-balance-decision", &self.load_balance.decision);
        w.end();

        w.text_element("sub-protocol", &self.sub_protocol);
        w.end();
    }

    /// Writes `<item>` + entry, as the agent does (no `id`), or with `id` as control does.
    pub fn write_item(&self, w: &mut XmlWriter<'_>, id: Option<&str>) {
        w.start("item");
        if let Some(id) = id {
            w.attr("id", id);
        }
        self.write(w);
        w.end();
    }
}

impl NextHop {
    fn write(&self, w: &mut XmlWriter<'_>) {
        w.start("next-hop");
        w.int_element("af", self.af.into());
        w.text_element("address", &self.address.to_string());
        w.text_element("mac", &self.mac);
        w.int_element("label", self.label.into());
        w.int_element("vni", self.vni.into());
        w.start("tunnel-encapsulation-list");
        for e in &self.encapsulations {
            w.text_element("tunnel-encapsulation", e);
        }
        w.end();
        w.text_element("virtual-network", &self.virtual_network);
        w.start("tag-list");
        for t in &self.tags {
            w.int_element("tag", (*t).into());
        }
        w.end();
        w.end();
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use bytes::BytesMut;

    use super::*;
    use crate::contrail::Disposition;
    use crate::xml::{NsScope, Style};

    pub(crate) fn parse(xml: &str) -> Element {
        Element::parse(xml.as_bytes(), &NsScope::default()).expect("test XML parses")
    }

    /// The entry of the spec's §6.4 agent IPv4 publish sample.
    pub(crate) fn sample_entry() -> RouteEntry {
        RouteEntry {
            nlri: Nlri {
                af: 1,
                safi: 1,
                prefix: "10.1.1.3/32".parse().expect("prefix"),
            },
            next_hops: vec![NextHop {
                af: 1,
                address: IpAddr::V4(Ipv4Addr::new(192, 168, 0, 11)),
                mac: "52:54:00:aa:bb:cc".into(),
                label: 25,
                vni: 0,
                encapsulations: vec!["gre".into(), "udp".into()],
                virtual_network: "default-domain:demo:net-a".into(),
                tags: vec![],
            }],
            version: 1,
            virtual_network: String::new(),
            mobility: Mobility::default(),
            sequence_number: 3,
            security_groups: vec![8000002],
            community_tags: vec![],
            local_preference: 200,
            med: 0,
            load_balance: LoadBalance {
                fields: vec![],
                decision: "field-hash".into(),
            },
            sub_protocol: "interface".into(),
        }
    }

    /// Every list non-empty, an IPv6 prefix, host bits that need normalising.
    fn full_entry() -> RouteEntry {
        RouteEntry {
            nlri: Nlri {
                af: 2,
                safi: 1,
                prefix: "fd00::4/128".parse().expect("prefix"),
            },
            next_hops: vec![
                NextHop {
                    af: 1,
                    address: "10.0.0.11".parse().expect("ip"),
                    mac: String::new(),
                    label: 17,
                    vni: 5,
                    encapsulations: vec!["gre".into(), "udp".into(), "native".into()],
                    virtual_network: "d:p:vn & <x>".into(),
                    tags: vec![1, 0xFFFF_FFFF],
                },
                NextHop {
                    af: 2,
                    address: "fd00::11".parse().expect("ip"),
                    mac: "00:01:02:03:04:05".into(),
                    label: 18,
                    vni: 0,
                    encapsulations: vec![],
                    virtual_network: String::new(),
                    tags: vec![],
                },
            ],
            version: 1,
            virtual_network: "d:p:vn".into(),
            mobility: Mobility {
                seqno: 5,
                sticky: true,
            },
            sequence_number: 9,
            security_groups: vec![8000001, 8000002],
            community_tags: vec!["64512:100".into(), "no-export".into()],
            local_preference: 100,
            med: 7,
            load_balance: LoadBalance {
                fields: vec!["l3-source-address".into(), "l4-protocol".into()],
                decision: "source-bias".into(),
            },
            sub_protocol: "bgpaas".into(),
        }
    }

    fn item_bytes(entry: &RouteEntry, style: Style) -> BytesMut {
        let mut out = BytesMut::new();
        let mut w = XmlWriter::new(&mut out, style);
        entry.write_item(&mut w, None);
        out
    }

    #[test]
    fn round_trip_all_styles() {
        for entry in [sample_entry(), full_entry()] {
            for style in [Style::Compact, Style::Lines, Style::Tabs] {
                let bytes = item_bytes(&entry, style);
                let el = Element::parse(&bytes, &NsScope::default()).expect("parses");
                assert_eq!(RouteEntry::from_item(&el).expect("valid"), entry);
            }
        }
    }

    #[test]
    fn writes_every_scalar_in_xsd_order() {
        let bytes = item_bytes(&sample_entry(), Style::Lines);
        let text = std::str::from_utf8(&bytes).expect("utf8");
        let expected = "<item>\n<entry>\n<nlri>\n<af>1</af>\n<safi>1</safi>\n\
            <address>10.1.1.3/32</address>\n</nlri>\n<next-hops>\n<next-hop>\n<af>1</af>\n\
            <address>192.168.0.11</address>\n<mac>52:54:00:aa:bb:cc</mac>\n<label>25</label>\n\
            <vni>0</vni>\n<tunnel-encapsulation-list>\n\
            <tunnel-encapsulation>gre</tunnel-encapsulation>\n\
            <tunnel-encapsulation>udp</tunnel-encapsulation>\n</tunnel-encapsulation-list>\n\
            <virtual-network>default-domain:demo:net-a</virtual-network>\n<tag-list />\n\
            </next-hop>\n</next-hops>\n<version>1</version>\n<virtual-network></virtual-network>\n\
            <mobility sticky=\"false\" seqno=\"0\" />\n<sequence-number>3</sequence-number>\n\
            <security-group-list>\n<security-group>8000002</security-group>\n\
            </security-group-list>\n<community-tag-list />\n\
            <local-preference>200</local-preference>\n<med>0</med>\n<load-balance>\n\
            <load-balance-fields />\n<load-balance-decision>field-hash</load-balance-decision>\n\
            </load-balance>\n<sub-protocol>interface</sub-protocol>\n</entry>\n</item>\n";
        assert_eq!(text, expected);
    }

    #[test]
    fn generated_parser_rules() {
        // Unknown elements ignored, whitespace around integers tolerated, missing members
        // defaulted, booleans true only for "true".
        let el = parse(
            "<item><entry><unknown>x</unknown>\
             <nlri><af> 1 </af><safi>1\n</safi><address>10.1.1.0/24</address><x/></nlri>\
             <next-hops><next-hop><af>1</af><address>10.0.0.1</address><label>16</label>\
             <bogus/></next-hop></next-hops>\
             <mobility seqno=\" 4\" sticky=\"True\"/><local-preference></local-preference>\
             </entry></item>",
        );
        let e = RouteEntry::from_item(&el).expect("valid");
        assert_eq!(e.nlri.af, 1);
        assert_eq!(e.nlri.prefix.to_string(), "10.1.1.0/24");
        assert_eq!(e.next_hops.len(), 1);
        assert_eq!(e.next_hops[0].label, 16);
        assert_eq!(e.next_hops[0].mac, "");
        assert_eq!(
            e.mobility,
            Mobility {
                seqno: 4,
                sticky: false
            }
        );
        assert_eq!(e.local_preference, 0);
        assert_eq!(e.version, 0);
        assert_eq!(e.sub_protocol, "");
    }

    #[test]
    fn prefix_normalised_and_checked() {
        let p: Prefix = "10.1.1.3/24".parse().expect("host bits allowed");
        assert_eq!(p.to_string(), "10.1.1.0/24");
        assert_eq!(p.prefix_len(), 24);
        let p: Prefix = "fd00::1:2/112".parse().expect("v6");
        assert_eq!(p.to_string(), "fd00::1:0/112");
        assert_eq!(
            "0.0.0.0/0".parse::<Prefix>().expect("default").prefix_len(),
            0
        );
        for bad in [
            "10.1.1.3",
            "10.1.1.3/33",
            "10.1.1/24",
            "10.1.1.3/",
            "10.1.1.3/+8",
            " 10.1.1.3/32",
            "::/129",
            "",
        ] {
            assert!(bad.parse::<Prefix>().is_err(), "{bad:?} must be rejected");
        }
        assert_eq!(
            Prefix::host("10.0.0.1".parse().expect("ip")).to_string(),
            "10.0.0.1/32"
        );
    }

    fn item_with(entry_body: &str) -> Result<RouteEntry, PayloadError> {
        RouteEntry::from_item(&parse(&format!("<item><entry>{entry_body}</entry></item>")))
    }

    const NLRI: &str = "<nlri><af>1</af><safi>1</safi><address>10.1.1.3/32</address></nlri>";

    fn nh(af: &str, addr: &str, label: &str) -> String {
        format!("<next-hop><af>{af}</af><address>{addr}</address><label>{label}</label></next-hop>")
    }

    #[test]
    fn bad_items_rejected_by_parser() {
        let one = nh("1", "192.168.0.11", "25");
        let cases = [
            (
                format!("{NLRI}<next-hops>{one}</next-hops><version>1x</version>"),
                "entry/version",
            ),
            (
                format!("{NLRI}<next-hops>{one}</next-hops><sequence-number>a</sequence-number>"),
                "entry/sequence-number",
            ),
            ("<nlri><af>one</af></nlri>".to_owned(), "nlri/af"),
            (
                "<nlri><af>1</af><safi>1</safi><address>10.1.1.3</address></nlri>".to_owned(),
                "nlri/address",
            ),
            (
                "<nlri><af>1</af><safi>1</safi><address>10.1.1.300/32</address></nlri>".to_owned(),
                "nlri/address",
            ),
            (
                format!(
                    "{NLRI}<next-hops>{}</next-hops>",
                    nh("1", "192.168.0", "25")
                ),
                "next-hop/address",
            ),
            (
                format!(
                    "{NLRI}<next-hops>{}</next-hops>",
                    nh("1", "192.168.0.11", "2 5")
                ),
                "next-hop/label",
            ),
            (format!("{NLRI}<mobility seqno=\"x\"/>"), "mobility/@seqno"),
        ];
        for (body, field) in cases {
            let err = item_with(&body).expect_err(&body);
            assert_eq!(err.disposition(), Disposition::DropItem);
            assert!(
                err.to_string().starts_with(field),
                "{err} should name {field}"
            );
        }
    }

    #[test]
    fn control_validation() {
        let one = nh("1", "192.168.0.11", "25");
        let ok = item_with(&format!("{NLRI}<next-hops>{one}</next-hops>")).expect("parses");
        ok.validate_publish(Family::Inet, false).expect("valid add");

        // Wrong af/safi for the node.
        assert!(matches!(
            ok.validate_publish(Family::Inet6, false),
            Err(PayloadError::AfiSafi { af: 1, safi: 1, .. })
        ));
        let v6 = item_with(&format!(
            "<nlri><af>2</af><safi>1</safi><address>10.1.1.3/32</address></nlri><next-hops>{one}</next-hops>"
        ))
        .expect("parses");
        assert!(matches!(
            v6.validate_publish(Family::Inet, false),
            Err(PayloadError::AfiSafi { .. })
        ));
        assert!(matches!(
            v6.validate_publish(Family::Inet6, false),
            Err(PayloadError::PrefixVersion { .. })
        ));
        let safi = item_with(&format!(
            "<nlri><af>1</af><safi>7</safi><address>10.1.1.3/32</address></nlri><next-hops>{one}</next-hops>"
        ))
        .expect("parses");
        assert!(matches!(
            safi.validate_publish(Family::Inet, false),
            Err(PayloadError::AfiSafi { .. })
        ));
        assert!(matches!(
            ok.validate_publish(Family::Enet, false),
            Err(PayloadError::UnsupportedFamily { .. })
        ));

        // Zero next-hop.
        let zero = item_with(&format!(
            "{NLRI}<next-hops>{}</next-hops>",
            nh("1", "0.0.0.0", "25")
        ))
        .expect("parses");
        assert!(matches!(
            zero.validate_publish(Family::Inet, false),
            Err(PayloadError::ZeroNextHop { .. })
        ));

        // Missing and multiple next-hops.
        let none = item_with(NLRI).expect("parses");
        assert_eq!(
            none.validate_publish(Family::Inet, false),
            Err(PayloadError::NextHopCount { count: 0 })
        );
        none.validate_withdraw(Family::Inet)
            .expect("deletes need no next-hop");
        let two = item_with(&format!("{NLRI}<next-hops>{one}{one}</next-hops>")).expect("parses");
        assert_eq!(
            two.validate_publish(Family::Inet, false),
            Err(PayloadError::NextHopCount { count: 2 })
        );
        // Two `next-hops` lists accumulate, as in the generated parser.
        let two_lists = item_with(&format!(
            "{NLRI}<next-hops>{one}</next-hops><next-hops>{one}</next-hops>"
        ))
        .expect("parses");
        assert_eq!(two_lists.next_hops.len(), 2);

        // Next-hop af.
        let af = item_with(&format!(
            "{NLRI}<next-hops>{}</next-hops>",
            nh("3", "10.0.0.1", "25")
        ))
        .expect("parses");
        assert_eq!(
            af.validate_publish(Family::Inet, false),
            Err(PayloadError::NextHopAf { af: 3 })
        );

        // Labels.
        let big = item_with(&format!(
            "{NLRI}<next-hops>{}</next-hops>",
            nh("1", "10.0.0.1", "1048576")
        ))
        .expect("parses");
        assert_eq!(
            big.validate_publish(Family::Inet, false),
            Err(PayloadError::LabelRange { label: 0x10_0000 })
        );
        let neg = item_with(&format!(
            "{NLRI}<next-hops>{}</next-hops>",
            nh("1", "10.0.0.1", "-1")
        ))
        .expect("C strtoul accepts a sign");
        assert!(matches!(
            neg.validate_publish(Family::Inet, false),
            Err(PayloadError::LabelRange { .. })
        ));
        let max = item_with(&format!(
            "{NLRI}<next-hops>{}</next-hops>",
            nh("1", "10.0.0.1", "1048575")
        ))
        .expect("parses");
        max.validate_publish(Family::Inet, false)
            .expect("0xFFFFF is a label");
        let zero_label = item_with(&format!(
            "{NLRI}<next-hops>{}</next-hops>",
            nh("1", "10.0.0.1", "0")
        ))
        .expect("parses");
        assert_eq!(
            zero_label.validate_publish(Family::Inet, false),
            Err(PayloadError::ZeroLabel)
        );
        zero_label
            .validate_publish(Family::Inet, true)
            .expect("label 0 in the master instance");
        assert_eq!(
            zero_label.validate_publish(Family::LabeledInet, true),
            Err(PayloadError::ZeroLabel)
        );
        assert_eq!(
            ok.validate_publish(Family::Inet, true),
            Err(PayloadError::LabelInMaster { label: 25 })
        );
        ok.validate_publish(Family::LabeledInet, true)
            .expect("labeled route in master");
    }
}
