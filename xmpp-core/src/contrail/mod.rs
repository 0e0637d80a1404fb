//! Contrail message payloads carried inside `iq` and `message` stanzas (spec §6, §7).
//!
//! * [`route`]: unicast route items (`<item><entry>…`, inet 1/1, labeled inet 1/4,
//!   inet6 2/1), parsed with the generated-parser rules, validated with the control node's
//!   rules and written exactly as the generated encoders write them.
//! * [`pubsub`]: agent → control IQs (subscribe, unsubscribe, publish + collection pairs,
//!   end-of-RIB), the control-side publish/collection pairing, and the agent-side writers.
//! * [`message`]: control → agent route advertisements (`<message><event><items>`), their
//!   chunking (≤ 32 items / ≤ 256 retracts) and the agent-side parser.
//! * [`dns`]: agent → contrail-dns update IQs.
//!
//! Everything here is pure: elements in, typed values out; typed values in, bytes out.
//! Membership rules (subscribe before publish, duplicate subscribe, …) are the control
//! node's business; this module only parses and validates payloads.

pub mod dns;
pub mod message;
pub mod pubsub;
pub mod route;

pub use dns::{DnsEntry, DnsUpdate, MAX_DNS_ENTRIES_PER_IQ};
pub use message::{
    MAX_ITEMS_PER_MESSAGE, MAX_RETRACTS_PER_MESSAGE, RouteChange, RouteEvent, encode_changes,
};
pub use pubsub::{AgentRequest, CollectionOp, Discard, PairOutcome, PublishPairer, RouteUpdate};
pub use route::{LoadBalance, Mobility, NextHop, Nlri, Prefix, RouteEntry};

/// What the receiver does with a payload that failed to parse or validate.
///
/// No payload error closes the session by itself: the C++ receivers log and skip. (The
/// errors that do close a session are membership violations, decided by the control node,
/// and XML that is not well-formed, reported by [`crate::Error`].)
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    /// Drop this one route item; the other items of the stanza are still processed
    /// (`ProcessItem` returning false, spec §6.4).
    DropItem,
    /// Ignore the whole stanza (unknown action, unsupported family, a `<message>` whose
    /// `<items>` do not all parse, a DNS update with an unknown element).
    DropStanza,
}

/// Why a Contrail payload was rejected. Each variant names the field and the value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PayloadError {
    /// An integer field is not a decimal number (generated parsers: `strtoul` base 10,
    /// surrounding whitespace allowed, nothing else). Drop the item.
    #[error("{field}: {value:?} is not a decimal integer")]
    Integer {
        /// The element or attribute path (`entry/version`, `mobility/@seqno`).
        field: &'static str,
        /// The text found.
        value: String,
    },
    /// A prefix that does not parse as `address/length`. Drop the item.
    #[error("{field}: bad prefix {value:?}: {reason}")]
    Prefix {
        /// Where the prefix came from (`nlri/address`, `retract/@id`).
        field: &'static str,
        /// The text found.
        value: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// An IP address that does not parse. Drop the item.
    #[error("{field}: bad IP address {value:?}")]
    Address {
        /// Where the address came from (`next-hop/address`).
        field: &'static str,
        /// The text found.
        value: String,
    },
    /// The item's AFI/SAFI do not match the family of the publish node. Drop the item.
    #[error("nlri af/safi {af}/{safi} do not match the {family} node")]
    AfiSafi {
        /// `nlri/af`.
        af: u32,
        /// `nlri/safi`.
        safi: u32,
        /// The family named by the publish node.
        family: Family,
    },
    /// The prefix is of the other IP version than `nlri/af` says. Drop the item.
    #[error("prefix {prefix} is not an IPv{expected} prefix")]
    PrefixVersion {
        /// The prefix.
        prefix: Prefix,
        /// 4 or 6.
        expected: u8,
    },
    /// A route add must carry exactly one next-hop (control rejects ECMP from agents).
    /// Drop the item.
    #[error("{count} next-hops in a route add, exactly one expected")]
    NextHopCount {
        /// How many there were.
        count: usize,
    },
    /// `next-hop/af` is not 1, 2 or 25. Drop the item.
    #[error("next-hop/af {af} is not 1, 2 or 25")]
    NextHopAf {
        /// The value found.
        af: u32,
    },
    /// The next-hop address is `0.0.0.0` or `::`. Drop the item.
    #[error("next-hop/address {address} is unspecified")]
    ZeroNextHop {
        /// The address.
        address: std::net::IpAddr,
    },
    /// `next-hop/label` does not fit in 20 bits. Drop the item.
    #[error("next-hop/label {label} exceeds 0xFFFFF")]
    LabelRange {
        /// The value found.
        label: u32,
    },
    /// Label 0 outside the master instance (or in the labeled family). Drop the item.
    #[error("next-hop/label 0 in a non-master VRF or labeled route")]
    ZeroLabel,
    /// A non-zero label on a plain unicast route of the master instance. Drop the item.
    #[error("next-hop/label {label} in the master instance, 0 expected")]
    LabelInMaster {
        /// The value found.
        label: u32,
    },
    /// A node or family this module does not handle (EVPN, multicast, MVPN payloads, or
    /// an `AFI/SAFI` that names no family). Drop the stanza.
    #[error("unsupported family in node {node:?}")]
    UnsupportedFamily {
        /// The node string.
        node: String,
    },
    /// An `iq` whose `type` is not `set`: the control BGP channel handles only `set`.
    /// Drop the stanza.
    #[error("iq type {iq_type:?} is not handled, only \"set\"")]
    IqType {
        /// The type found.
        iq_type: String,
    },
    /// An IQ action other than subscribe, unsubscribe, publish, collection. Drop the stanza.
    #[error("unknown pubsub action <{action}>")]
    UnknownAction {
        /// The action element's name (empty when there is none).
        action: String,
    },
    /// A required element is absent (`iq`, `dns`, `update`). Drop the stanza.
    #[error("missing <{element}>")]
    Missing {
        /// The element's name.
        element: &'static str,
    },
    /// An element the C++ DNS decoder does not know (it rejects the whole update).
    /// Drop the stanza.
    #[error("unknown element <{child}> in <{parent}>")]
    UnknownChild {
        /// The parent element.
        parent: &'static str,
        /// The unknown child.
        child: String,
    },
    /// A DNS update with an empty `virtual-dns` or `zone` (contrail-dns ignores it).
    /// Drop the stanza.
    #[error("empty <{field}>")]
    Empty {
        /// `virtual-dns` or `zone`.
        field: &'static str,
    },
    /// A writer was asked to put more elements in one stanza than the receiver's bound.
    /// A programming error on our side; nothing was written.
    #[error("{count} {what} in one stanza, at most {max}")]
    TooMany {
        /// `items`, `retracts`, `entries`.
        what: &'static str,
        /// How many were given.
        count: usize,
        /// The bound.
        max: usize,
    },
}

impl PayloadError {
    /// What the receiver does with the payload.
    pub fn disposition(&self) -> Disposition {
        match self {
            PayloadError::Integer { .. }
            | PayloadError::Prefix { .. }
            | PayloadError::Address { .. }
            | PayloadError::AfiSafi { .. }
            | PayloadError::PrefixVersion { .. }
            | PayloadError::NextHopCount { .. }
            | PayloadError::NextHopAf { .. }
            | PayloadError::ZeroNextHop { .. }
            | PayloadError::LabelRange { .. }
            | PayloadError::ZeroLabel
            | PayloadError::LabelInMaster { .. } => Disposition::DropItem,
            PayloadError::UnsupportedFamily { .. }
            | PayloadError::IqType { .. }
            | PayloadError::UnknownAction { .. }
            | PayloadError::Missing { .. }
            | PayloadError::UnknownChild { .. }
            | PayloadError::Empty { .. }
            | PayloadError::TooMany { .. } => Disposition::DropStanza,
        }
    }
}

/// A route family, as named by the first two `/`-separated tokens (AFI/SAFI) of a publish
/// or items node (spec §6.3, `src/net/bgp_af.h`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Family {
    /// IPv4 unicast, 1/1.
    Inet,
    /// IPv4 labeled (fabric), 1/4.
    LabeledInet,
    /// IPv6 unicast, 2/1.
    Inet6,
    /// EVPN, 25/242.
    Enet,
    /// ERMVPN (native multicast tree), 1/241.
    Mcast,
    /// MVPN, 1/5.
    Mvpn,
}

impl Family {
    /// The family for an AFI/SAFI pair.
    pub fn from_afi_safi(afi: u32, safi: u32) -> Option<Self> {
        Some(match (afi, safi) {
            (1, 1) => Family::Inet,
            (1, 4) => Family::LabeledInet,
            (2, 1) => Family::Inet6,
            (25, 242) => Family::Enet,
            (1, 241) => Family::Mcast,
            (1, 5) => Family::Mvpn,
            _ => return None,
        })
    }

    /// The family named by a node string `AFI/SAFI/…`. The tokens are read with C `atoi`
    /// as the C++ receivers do, so junk yields AFI 0 and no family.
    pub fn from_node(node: &str) -> Option<Self> {
        let (afi, safi, _) = split_node(node);
        Self::from_afi_safi(c_atoi(afi), c_atoi(safi))
    }

    /// The AFI number.
    pub fn afi(self) -> u32 {
        match self {
            Family::Inet | Family::LabeledInet | Family::Mcast | Family::Mvpn => 1,
            Family::Inet6 => 2,
            Family::Enet => 25,
        }
    }

    /// The (XMPP) SAFI number.
    pub fn safi(self) -> u32 {
        match self {
            Family::Inet | Family::Inet6 => 1,
            Family::LabeledInet => 4,
            Family::Enet => 242,
            Family::Mcast => 241,
            Family::Mvpn => 5,
        }
    }

    /// True for the families whose items are [`RouteEntry`] (inet, labeled inet, inet6).
    pub fn is_unicast(self) -> bool {
        matches!(self, Family::Inet | Family::LabeledInet | Family::Inet6)
    }
}

impl std::fmt::Display for Family {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = match self {
            Family::Inet => "inet",
            Family::LabeledInet => "labeled inet",
            Family::Inet6 => "inet6",
            Family::Enet => "evpn",
            Family::Mcast => "ermvpn",
            Family::Mvpn => "mvpn",
        };
        write!(f, "{name} ({}/{})", self.afi(), self.safi())
    }
}

/// Splits `AFI/SAFI/rest` into its three parts (missing parts are empty).
pub(crate) fn split_node(node: &str) -> (&str, &str, &str) {
    let mut it = node.splitn(3, '/');
    let afi = it.next().unwrap_or("");
    let safi = it.next().unwrap_or("");
    let rest = it.next().unwrap_or("");
    (afi, safi, rest)
}

/// C `isspace` in the "C" locale.
pub(crate) fn is_c_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r')
}

/// C `atoi`/`strtol` prefix parse: leading whitespace, optional sign, digits, stop at the
/// first other character; junk gives 0. Used where the C++ code uses `atoi` or pugixml
/// `as_int` (node tokens, `instance-id`). Values are truncated to 32 bits as the C `int`.
pub(crate) fn c_atoi(s: &str) -> u32 {
    c_strtoul(s).0 as u32
}

/// C `strtoul(s, &end, 10)`: returns the value (saturated at `u64::MAX`, negated modulo
/// 2^64 after a `-`) and the byte offset of `end` (0 when no digits were found).
fn c_strtoul(s: &str) -> (u64, usize) {
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() && is_c_space(b[i]) {
        i += 1;
    }
    let mut neg = false;
    if i < b.len() && (b[i] == b'+' || b[i] == b'-') {
        neg = b[i] == b'-';
        i += 1;
    }
    let digits_start = i;
    let mut value: u64 = 0;
    let mut overflow = false;
    while i < b.len() && b[i].is_ascii_digit() {
        let d = u64::from(b[i] - b'0');
        match value.checked_mul(10).and_then(|v| v.checked_add(d)) {
            Some(v) => value = v,
            None => overflow = true,
        }
        i += 1;
    }
    if i == digits_start {
        return (0, 0);
    }
    let value = if overflow {
        u64::MAX
    } else if neg {
        value.wrapping_neg()
    } else {
        value
    };
    (value, i)
}

/// The generated parsers' `ParseInteger` (`[api] generateds/type_parser.py`): `strtoul`
/// base 10 into a C `int`, then only whitespace may follow. Empty or all-blank text is 0.
/// The value keeps the C `int`'s 32 bits (`-1` reads as `0xFFFFFFFF`), as the C++ does.
pub(crate) fn parse_c_int(field: &'static str, text: &str) -> Result<u32, PayloadError> {
    let (value, end) = c_strtoul(text);
    if text.as_bytes()[end..].iter().all(|&b| is_c_space(b)) {
        Ok(value as u32)
    } else {
        Err(PayloadError::Integer {
            field,
            value: text.to_owned(),
        })
    }
}

/// A strict decimal parse with surrounding whitespace tolerated, for the DNS fields.
pub(crate) fn parse_decimal<T: std::str::FromStr>(
    field: &'static str,
    text: &str,
) -> Result<T, PayloadError> {
    text.trim_matches(|c: char| c.is_ascii() && is_c_space(c as u8))
        .parse::<T>()
        .map_err(|_| PayloadError::Integer {
            field,
            value: text.to_owned(),
        })
}

/// The `iq` element of a stanza: the root when it is named `iq`, else the first `iq`
/// below it (the C++ decoder's `FindNode("iq")`).
pub(crate) fn find_iq(el: &crate::xml::Element) -> Option<&crate::xml::Element> {
    if el.local_name() == "iq" {
        Some(el)
    } else {
        el.find_descendant("iq")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn c_integer_rules() {
        assert_eq!(parse_c_int("f", "25"), Ok(25));
        assert_eq!(parse_c_int("f", " 25 \n"), Ok(25));
        assert_eq!(parse_c_int("f", ""), Ok(0));
        assert_eq!(parse_c_int("f", "  "), Ok(0));
        assert_eq!(parse_c_int("f", "+7"), Ok(7));
        assert_eq!(parse_c_int("f", "-1"), Ok(u32::MAX));
        assert!(parse_c_int("f", "1x").is_err());
        assert!(parse_c_int("f", "x").is_err());
        assert!(parse_c_int("f", "+").is_err());
        assert!(parse_c_int("f", "1 2").is_err());
        let err = parse_c_int("entry/version", "one").expect_err("must fail");
        assert_eq!(
            err.to_string(),
            "entry/version: \"one\" is not a decimal integer"
        );
        assert_eq!(err.disposition(), Disposition::DropItem);
    }

    #[test]
    fn atoi_rules() {
        assert_eq!(c_atoi("7"), 7);
        assert_eq!(c_atoi(" 7x"), 7);
        assert_eq!(c_atoi("abc"), 0);
        assert_eq!(c_atoi(""), 0);
    }

    #[test]
    fn families() {
        assert_eq!(
            Family::from_node("1/1/blue/10.0.0.1/32"),
            Some(Family::Inet)
        );
        assert_eq!(
            Family::from_node("1/4/fabric/10.0.0.1/32/3"),
            Some(Family::LabeledInet)
        );
        assert_eq!(
            Family::from_node("2/1/blue/fd00::1/128"),
            Some(Family::Inet6)
        );
        assert_eq!(
            Family::from_node("25/242/aa:bb,1.1.1.1/32"),
            Some(Family::Enet)
        );
        assert_eq!(Family::from_node("1/241/x/1"), Some(Family::Mcast));
        assert_eq!(Family::from_node("1/5/x/1"), Some(Family::Mvpn));
        assert_eq!(Family::from_node("0/0/EndOfRib"), None);
        assert_eq!(Family::from_node(""), None);
        for f in [
            Family::Inet,
            Family::LabeledInet,
            Family::Inet6,
            Family::Enet,
            Family::Mcast,
            Family::Mvpn,
        ] {
            assert_eq!(Family::from_afi_safi(f.afi(), f.safi()), Some(f));
        }
        assert_eq!(
            split_node("1/1/a:b/10.0.0.0/8"),
            ("1", "1", "a:b/10.0.0.0/8")
        );
    }
}
