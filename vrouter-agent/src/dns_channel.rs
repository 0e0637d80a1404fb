//! The DNS channels: one XMPP client per configured DNS node (the first two, in order,
//! spec §5.7), TLS exactly when `xmpp_dns_auth_enable=true`, with the control channels'
//! reconnect rules. Each registers the local VMs' names (spec §7): A/AAAA records in the
//! port's zone and PTR records in the matching reverse zone, at most 20 entries per IQ,
//! deletions when a port goes, and everything again when the channel comes back.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use bytes::BytesMut;
use tokio::net::TcpStream;
use tokio::time::{sleep, timeout};
use tracing::{Instrument, debug, info, info_span, warn};
use xmpp_core::Error;
use xmpp_core::contrail::dns::{CLASS_IN, CLASS_NONE, DnsEntry, DnsUpdate};
use xmpp_core::io::{Incoming, XmppStream, connect};
use xmpp_core::negotiate::ClientPolicy;
use xmpp_core::stanza::ns;
use xmpp_core::stream::Dialect;
use xmpp_core::tls::ClientTls;
use xmpp_core::xml::Limits;

use crate::channel::backoff;
use crate::ports::Port;

/// DNS record types used here.
pub const TYPE_A: u16 = 1;
/// PTR.
pub const TYPE_PTR: u16 = 12;
/// AAAA.
pub const TYPE_AAAA: u16 = 28;
/// TTL of the records we register (Contrail's virtual-DNS default).
pub const RECORD_TTL: u32 = 86_400;

/// A record as registered: type, name (relative to the zone for A/AAAA, the full reverse
/// name for PTR, as the C++ agent sends), data.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Record {
    /// `type`.
    pub rtype: u16,
    /// `name`.
    pub name: String,
    /// `data`.
    pub data: String,
}

/// (virtual DNS, zone) → records.
pub type RecordSet = BTreeMap<(String, String), BTreeSet<Record>>;

/// Defaults for ports that do not name a virtual DNS or zone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsDefaults {
    /// `[DNS] virtual_dns`.
    pub virtual_dns: String,
    /// `[DNS] domain`.
    pub domain: String,
}

/// The reverse zone and the full reverse name of an address: `c.b.a.in-addr.arpa` and
/// `d.c.b.a.in-addr.arpa` for IPv4; the /64 nibble zone and the 32-nibble name under
/// `ip6.arpa` for IPv6.
pub fn reverse(addr: IpAddr) -> (String, String) {
    match addr {
        IpAddr::V4(a) => {
            let o = a.octets();
            (
                format!("{}.{}.{}.in-addr.arpa", o[2], o[1], o[0]),
                format!("{}.{}.{}.{}.in-addr.arpa", o[3], o[2], o[1], o[0]),
            )
        }
        IpAddr::V6(a) => {
            let nibbles: Vec<String> = a
                .octets()
                .iter()
                .flat_map(|b| [b >> 4, b & 0xf])
                .map(|n| format!("{n:x}"))
                .collect();
            let rev = |n: &[String]| n.iter().rev().cloned().collect::<Vec<_>>().join(".");
            (
                format!("{}.ip6.arpa", rev(&nibbles[..16])),
                format!("{}.ip6.arpa", rev(&nibbles)),
            )
        }
    }
}

/// The records every DNS node should hold for these ports.
pub fn desired_records<'a>(ports: impl Iterator<Item = &'a Port>, d: &DnsDefaults) -> RecordSet {
    let mut set = RecordSet::new();
    for p in ports {
        if p.vm_name.is_empty() {
            continue;
        }
        let vdns = p
            .virtual_dns
            .clone()
            .unwrap_or_else(|| d.virtual_dns.clone());
        let zone = p.dns_domain.clone().unwrap_or_else(|| d.domain.clone());
        let fqdn = format!("{}.{zone}", p.vm_name);
        for addr in [p.ipv4.map(IpAddr::V4), p.ipv6.map(IpAddr::V6)]
            .into_iter()
            .flatten()
        {
            let rtype = if addr.is_ipv4() { TYPE_A } else { TYPE_AAAA };
            set.entry((vdns.clone(), zone.clone()))
                .or_default()
                .insert(Record {
                    rtype,
                    name: p.vm_name.clone(),
                    data: addr.to_string(),
                });
            let (rzone, rname) = reverse(addr);
            set.entry((vdns.clone(), rzone))
                .or_default()
                .insert(Record {
                    rtype: TYPE_PTR,
                    name: rname,
                    data: fqdn.clone(),
                });
        }
    }
    set
}

/// Writes the updates that bring a DNS node from `published` to `want` (additions and
/// deletions, ≤ 20 entries per IQ). Returns the number of IQs.
pub fn write_diff(
    out: &mut BytesMut,
    agent: &str,
    published: &RecordSet,
    want: &RecordSet,
    transid: &AtomicU32,
) -> usize {
    let mut n = 0;
    let keys: BTreeSet<&(String, String)> = published.keys().chain(want.keys()).collect();
    let empty = BTreeSet::new();
    for key in keys {
        let old = published.get(key).unwrap_or(&empty);
        let new = want.get(key).unwrap_or(&empty);
        let mut entries: Vec<DnsEntry> = old
            .difference(new)
            .map(|r| entry(r, CLASS_NONE, 0))
            .collect();
        entries.extend(new.difference(old).map(|r| entry(r, CLASS_IN, RECORD_TTL)));
        for u in DnsUpdate::split(&key.0, &key.1, entries, || {
            transid.fetch_add(1, Ordering::Relaxed)
        }) {
            // `split` keeps every update within the entry limit.
            if u.write(out, agent).is_ok() {
                n += 1;
            }
        }
    }
    n
}

fn entry(r: &Record, class: u16, ttl: u32) -> DnsEntry {
    DnsEntry {
        class,
        rtype: r.rtype,
        name: r.name.clone(),
        data: r.data.clone(),
        ttl: Some(ttl),
        priority: None,
    }
}

/// What a DNS channel needs from the agent.
pub trait DnsSource: Send + Sync + 'static {
    /// The records to register now.
    fn records(&self) -> RecordSet;
    /// Waits until the records may have changed.
    fn changed(&self) -> tokio::sync::watch::Receiver<u64>;
    /// Reports a state change for introspection.
    fn report(&self, slot: usize, state: &'static str, error: Option<String>, flapped: bool);
}

/// Settings of one DNS channel.
#[derive(Debug, Clone)]
pub struct DnsChannelSettings {
    /// Slot (0, 1).
    pub slot: usize,
    /// The DNS node's XMPP address.
    pub server: SocketAddr,
    /// Our host name (the stream `from` is `<hostname>/dns`).
    pub hostname: String,
    /// TLS: `Some` exactly when `xmpp_dns_auth_enable=true`.
    pub tls: Option<ClientTls>,
    /// Timers.
    pub timing: xmpp_core::io::Timing,
}

/// Runs one DNS channel until `shutdown`.
pub async fn run(
    s: DnsChannelSettings,
    src: Arc<dyn DnsSource>,
    transid: Arc<AtomicU32>,
    shutdown: tokio_util::sync::CancellationToken,
) {
    let mut attempts = 0u32;
    let span = info_span!("dns-channel", slot = s.slot, server = %s.server);
    async move {
        loop {
            src.report(s.slot, "Active", None, false);
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = sleep(backoff(attempts)) => {}
            }
            attempts += 1;
            src.report(s.slot, "Connect", None, false);
            let budget = backoff(attempts).max(Duration::from_secs(1));
            let tcp = tokio::select! {
                () = shutdown.cancelled() => return,
                r = timeout(budget, TcpStream::connect(s.server)) => r,
            };
            let tcp = match tcp {
                Ok(Ok(t)) => t,
                Ok(Err(e)) => {
                    src.report(s.slot, "Active", Some(format!("connect: {e}")), false);
                    continue;
                }
                Err(_) => {
                    src.report(s.slot, "Active", Some("connect timed out".into()), false);
                    continue;
                }
            };
            let policy = ClientPolicy {
                dialect: Dialect::Contrail,
                tls_required: s.tls.is_some(),
                from: format!("{}/dns", s.hostname),
                to: ns::DNS_JID.to_owned(),
                default_ns: String::new(),
                limits: Limits::default(),
            };
            let tls = match &s.tls {
                None => None,
                Some(t) => match xmpp_core::tls::server_name(&s.server.ip().to_string()) {
                    Ok(name) => Some((t.current(), name)),
                    Err(e) => {
                        src.report(s.slot, "Active", Some(e.to_string()), false);
                        continue;
                    }
                },
            };
            let negotiated = tokio::select! {
                () = shutdown.cancelled() => return,
                r = connect(tcp, policy, tls, s.timing) => r,
            };
            let mut stream = match negotiated {
                Ok(st) => st,
                Err(e) => {
                    warn!(error = %e, tls = s.tls.is_some(), "DNS stream negotiation failed");
                    src.report(s.slot, "Active", Some(e.to_string()), false);
                    continue;
                }
            };
            info!(tls = stream.negotiated().tls, "DNS channel up");
            src.report(s.slot, "Established", None, false);
            let result =
                established(&s, &*src, &transid, &mut stream, &shutdown, &mut attempts).await;
            match result {
                Ok(()) => {
                    stream.close(None).await;
                    return;
                }
                Err(e) => {
                    warn!(error = %e, "DNS channel down");
                    src.report(s.slot, "Active", Some(e.to_string()), true);
                    stream.close(Some(&e)).await;
                }
            }
        }
    }
    .instrument(span)
    .await;
}

async fn established(
    s: &DnsChannelSettings,
    src: &dyn DnsSource,
    transid: &AtomicU32,
    stream: &mut XmppStream<TcpStream>,
    shutdown: &tokio_util::sync::CancellationToken,
    attempts: &mut u32,
) -> Result<(), Error> {
    let mut changed = src.changed();
    // On every (re)connect the DNS node gets the full set (spec §7).
    let mut published = RecordSet::new();
    let want = src.records();
    write_diff(stream.out_mut(), &s.hostname, &published, &want, transid);
    published = want;
    stream.flush().await?;
    let mut keepalives = 0;
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            r = changed.changed() => {
                if r.is_err() {
                    return Ok(());
                }
                let want = src.records();
                let n = write_diff(stream.out_mut(), &s.hostname, &published, &want, transid);
                published = want;
                stream.flush().await?;
                debug!(updates = n, "DNS records updated");
            }
            r = stream.next() => match r? {
                Incoming::Keepalive => {
                    keepalives += 1;
                    if keepalives == 3 {
                        *attempts = 0;
                    }
                }
                // contrail-dns never sends anything back (spec §7).
                Incoming::Element(el) => debug!(element = el.name(), "ignoring element from DNS node"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn port(id: &str, name: &str, v4: &str, v6: Option<&str>) -> Port {
        Port {
            id: id.into(),
            vm_name: name.into(),
            mac: "02:00:00:00:00:01".into(),
            ipv4: Some(v4.parse().expect("v4")),
            ipv6: v6.map(|a| a.parse().expect("v6")),
            vn_name: "default-domain:demo:net-a".into(),
            virtual_dns: Some("default-domain:vdns-1".into()),
            dns_domain: Some("demo.example".into()),
        }
    }

    fn defaults() -> DnsDefaults {
        DnsDefaults {
            virtual_dns: "default-domain:default-vdns".into(),
            domain: "contrail.local".into(),
        }
    }

    #[test]
    fn reverse_names() {
        assert_eq!(
            reverse("10.1.2.3".parse().expect("ip")),
            (
                "2.1.10.in-addr.arpa".to_owned(),
                "3.2.1.10.in-addr.arpa".to_owned()
            )
        );
        let (zone, name) = reverse("fd00::3".parse().expect("ip"));
        assert_eq!(zone, "0.0.0.0.0.0.0.0.0.0.0.0.0.0.d.f.ip6.arpa");
        assert!(name.starts_with("3.0.0.0.") && name.ends_with(".0.0.d.f.ip6.arpa"));
        assert_eq!(name.split('.').count(), 34);
    }

    #[test]
    fn records_for_ports() {
        let ports = [
            port("p1", "vm-a", "10.1.1.3", Some("fd00::3")),
            port("p2", "", "10.1.1.4", None),
        ];
        let set = desired_records(ports.iter(), &defaults());
        let fwd = &set[&(
            "default-domain:vdns-1".to_owned(),
            "demo.example".to_owned(),
        )];
        assert_eq!(fwd.len(), 2);
        let rev = &set[&(
            "default-domain:vdns-1".to_owned(),
            "1.1.10.in-addr.arpa".to_owned(),
        )];
        assert_eq!(
            rev.iter().next(),
            Some(&Record {
                rtype: TYPE_PTR,
                name: "3.1.1.10.in-addr.arpa".into(),
                data: "vm-a.demo.example".into()
            })
        );
        // The unnamed port registers nothing.
        assert_eq!(set.values().map(BTreeSet::len).sum::<usize>(), 4);
    }

    #[test]
    fn diff_adds_deletes_and_chunks() {
        let transid = AtomicU32::new(1);
        let many: Vec<Port> = (0..25)
            .map(|i| {
                port(
                    &format!("p{i}"),
                    &format!("vm-{i}"),
                    &format!("10.9.0.{i}"),
                    None,
                )
            })
            .collect();
        let want = desired_records(many.iter(), &defaults());
        let mut out = BytesMut::new();
        let n = write_diff(&mut out, "compute-1", &RecordSet::new(), &want, &transid);
        // 25 A records → 2 IQs, 25 PTR records in one reverse zone → 2 IQs.
        assert_eq!(n, 4);
        let text = String::from_utf8(out.to_vec()).expect("utf8");
        assert_eq!(text.matches("<class>1</class>").count(), 50);
        assert!(text.contains("from=\"compute-1/dns\""));
        let mut out = BytesMut::new();
        let n = write_diff(&mut out, "compute-1", &want, &RecordSet::new(), &transid);
        assert_eq!(n, 4);
        let text = String::from_utf8(out.to_vec()).expect("utf8");
        assert_eq!(text.matches("<class>254</class>").count(), 50);
        assert_eq!(text.matches("<ttl>0</ttl>").count(), 50);
        let mut out = BytesMut::new();
        assert_eq!(write_diff(&mut out, "compute-1", &want, &want, &transid), 0);
        assert!(out.is_empty());
    }
}
