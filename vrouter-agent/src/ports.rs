//! Local VM interfaces ("ports"): their JSON form, validation, persistence in the ports
//! directory, and the state derived from them (VRF instance ids, MPLS labels, the routes to
//! publish).
//!
//! A port file / API body (Contrail's port IPC uses the same hyphenated key style):
//!
//! ```json
//! { "id": "6d5f1c2e-0000-4000-8000-000000000001", "vm-name": "vm-a",
//!   "mac-address": "02:00:00:00:00:01", "ip-address": "10.1.1.3",
//!   "ip6-address": "fd00::3", "vn-name": "default-domain:demo:net-a",
//!   "virtual-dns": "default-domain:vdns-1", "dns-domain": "demo.example" }
//! ```
//!
//! `id`, `mac-address`, `vn-name` and at least one address are required; the VRF is the VN
//! name plus `:` plus its last component (spec §6.2).

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use xmpp_core::contrail::{LoadBalance, Mobility, NextHop, Nlri, Prefix, RouteEntry};

/// The largest port file or API body accepted.
pub const MAX_PORT_JSON: usize = 64 * 1024;

/// A local port as configured.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Port {
    /// Port (VM interface) UUID or other id: `[A-Za-z0-9._-]{1,64}`; also the file name.
    pub id: String,
    /// The VM's name (DNS host name).
    #[serde(rename = "vm-name")]
    pub vm_name: String,
    /// The interface MAC.
    #[serde(rename = "mac-address")]
    pub mac: String,
    /// IPv4 address.
    #[serde(rename = "ip-address", skip_serializing_if = "Option::is_none")]
    pub ipv4: Option<Ipv4Addr>,
    /// IPv6 address.
    #[serde(rename = "ip6-address", skip_serializing_if = "Option::is_none")]
    pub ipv6: Option<Ipv6Addr>,
    /// The virtual network's FQ name (`domain:project:network`).
    #[serde(rename = "vn-name")]
    pub vn_name: String,
    /// Virtual DNS for the VM's records (default from the agent's `[DNS] virtual_dns`).
    #[serde(rename = "virtual-dns", skip_serializing_if = "Option::is_none")]
    pub virtual_dns: Option<String>,
    /// DNS zone for the VM's records (default from `[DNS] domain`).
    #[serde(rename = "dns-domain", skip_serializing_if = "Option::is_none")]
    pub dns_domain: Option<String>,
}

/// The JSON as received, before addresses are parsed (so errors can name the field).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPort {
    id: String,
    #[serde(rename = "vm-name", alias = "display-name", default)]
    vm_name: String,
    #[serde(rename = "mac-address")]
    mac: String,
    #[serde(rename = "ip-address", default)]
    ipv4: Option<String>,
    #[serde(rename = "ip6-address", default)]
    ipv6: Option<String>,
    #[serde(rename = "vn-name")]
    vn_name: String,
    #[serde(rename = "virtual-dns", default)]
    virtual_dns: Option<String>,
    #[serde(rename = "dns-domain", default)]
    dns_domain: Option<String>,
}

/// Why a port was refused (HTTP 400 with this text).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PortError {
    /// Not JSON of the expected shape.
    #[error("invalid port JSON: {0}")]
    Json(String),
    /// A field's value is not acceptable.
    #[error("invalid {field}: {reason}")]
    Field {
        /// The JSON key.
        field: &'static str,
        /// Why.
        reason: String,
    },
}

fn field(field: &'static str, reason: impl Into<String>) -> PortError {
    PortError::Field {
        field,
        reason: reason.into(),
    }
}

impl Port {
    /// Parses and validates a JSON body.
    pub fn from_json(bytes: &[u8]) -> Result<Port, PortError> {
        if bytes.len() > MAX_PORT_JSON {
            return Err(PortError::Json(format!(
                "larger than {MAX_PORT_JSON} bytes"
            )));
        }
        let raw: RawPort =
            serde_json::from_slice(bytes).map_err(|e| PortError::Json(e.to_string()))?;
        let addr = |name: &'static str, v: Option<String>| -> Result<Option<IpAddr>, PortError> {
            v.filter(|s| !s.is_empty())
                .map(|s| {
                    s.parse::<IpAddr>()
                        .map_err(|_| field(name, format!("{s:?} is not an IP address")))
                })
                .transpose()
        };
        let ipv4 = match addr("ip-address", raw.ipv4)? {
            None => None,
            Some(IpAddr::V4(a)) => Some(a),
            Some(IpAddr::V6(_)) => return Err(field("ip-address", "must be IPv4")),
        };
        let ipv6 = match addr("ip6-address", raw.ipv6)? {
            None => None,
            Some(IpAddr::V6(a)) => Some(a),
            Some(IpAddr::V4(_)) => return Err(field("ip6-address", "must be IPv6")),
        };
        let p = Port {
            id: raw.id,
            vm_name: raw.vm_name,
            mac: raw.mac,
            ipv4,
            ipv6,
            vn_name: raw.vn_name,
            virtual_dns: raw.virtual_dns,
            dns_domain: raw.dns_domain,
        };
        p.validate()?;
        Ok(p)
    }

    /// Checks every field.
    pub fn validate(&self) -> Result<(), PortError> {
        let id_ok = !self.id.is_empty()
            && self.id.len() <= 64
            && self
                .id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
            && !self.id.starts_with('.');
        if !id_ok {
            return Err(field(
                "id",
                "1 to 64 of [A-Za-z0-9._-], not starting with '.'",
            ));
        }
        let mac_ok = self.mac.len() == 17
            && self.mac.split(':').count() == 6
            && self
                .mac
                .split(':')
                .all(|o| o.len() == 2 && o.bytes().all(|b| b.is_ascii_hexdigit()));
        if !mac_ok {
            return Err(field(
                "mac-address",
                format!("{:?} is not xx:xx:xx:xx:xx:xx", self.mac),
            ));
        }
        if self.ipv4.is_none() && self.ipv6.is_none() {
            return Err(field(
                "ip-address",
                "a port needs ip-address and/or ip6-address",
            ));
        }
        if self
            .ipv4
            .is_some_and(|a| a.is_unspecified() || a.is_multicast() || a.is_broadcast())
        {
            return Err(field("ip-address", "not a unicast address"));
        }
        if self
            .ipv6
            .is_some_and(|a| a.is_unspecified() || a.is_multicast())
        {
            return Err(field("ip6-address", "not a unicast address"));
        }
        let parts: Vec<&str> = self.vn_name.split(':').collect();
        if parts.len() < 2 || parts.iter().any(|p| p.is_empty()) || self.vn_name.len() > 512 {
            return Err(field(
                "vn-name",
                format!(
                    "{:?} is not a FQ name like domain:project:network",
                    self.vn_name
                ),
            ));
        }
        let dns_ok = |s: &str| {
            !s.is_empty()
                && s.len() <= 253
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_')
        };
        if !self.vm_name.is_empty() && !dns_ok(&self.vm_name) {
            return Err(field("vm-name", "letters, digits, '-', '_' and '.' only"));
        }
        if self.dns_domain.as_deref().is_some_and(|d| !dns_ok(d)) {
            return Err(field("dns-domain", "not a DNS name"));
        }
        Ok(())
    }

    /// The routing instance: the VN name plus `:` plus its last component (spec §6.2).
    pub fn vrf(&self) -> String {
        let last = self.vn_name.rsplit(':').next().unwrap_or_default();
        format!("{}:{last}", self.vn_name)
    }
}

/// Reads every `*.json` file of the ports directory. Files that fail to parse are
/// reported and skipped (one bad file must not hide the others).
pub fn load_dir(dir: &Path) -> (Vec<Port>, Vec<String>) {
    let mut ports = Vec::new();
    let mut errors = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return (ports, errors),
        Err(e) => {
            errors.push(format!("{}: {e}", dir.display()));
            return (ports, errors);
        }
    };
    let mut paths: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    paths.sort();
    for path in paths {
        let parsed = std::fs::read(&path)
            .map_err(|e| e.to_string())
            .and_then(|b| Port::from_json(&b).map_err(|e| e.to_string()));
        match parsed {
            Ok(p) => ports.push(p),
            Err(e) => errors.push(format!("{}: {e}", path.display())),
        }
    }
    (ports, errors)
}

/// Writes a port's file atomically (temporary file, then rename).
pub fn save(dir: &Path, port: &Port) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let body = serde_json::to_vec_pretty(port).map_err(std::io::Error::other)?;
    let tmp = dir.join(format!(".{}.json.tmp", port.id));
    std::fs::write(&tmp, body)?;
    std::fs::rename(&tmp, dir.join(format!("{}.json", port.id)))
}

/// Removes a port's file (absent is fine).
pub fn remove(dir: &Path, id: &str) -> std::io::Result<()> {
    match std::fs::remove_file(dir.join(format!("{id}.json"))) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// One route the agent publishes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalRoute {
    /// The VRF.
    pub vrf: String,
    /// The entry, as sent.
    pub entry: RouteEntry,
}

/// What the agent wants every control node to know: VRFs with instance ids, and routes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Desired {
    /// VRF → instance id.
    pub vrfs: BTreeMap<String, i64>,
    /// (VRF, prefix) → route.
    pub routes: BTreeMap<(String, Prefix), RouteEntry>,
}

/// The local ports and what is derived from them. Instance ids and labels are stable for
/// the life of the process: a VRF keeps its id while it has ports, a port keeps its label.
#[derive(Debug)]
pub struct PortTable {
    ports: BTreeMap<String, Port>,
    vrf_ids: HashMap<String, i64>,
    next_vrf_id: i64,
    labels: HashMap<String, u32>,
    next_label: u32,
    vhost_ip: IpAddr,
}

/// First MPLS label handed to ports (0–15 are reserved).
const FIRST_LABEL: u32 = 16;

impl PortTable {
    /// An empty table; `vhost_ip` is the next-hop of every route.
    pub fn new(vhost_ip: IpAddr) -> Self {
        Self {
            ports: BTreeMap::new(),
            vrf_ids: HashMap::new(),
            next_vrf_id: 1, // 0 is the fabric VRF in Contrail
            labels: HashMap::new(),
            next_label: FIRST_LABEL,
            vhost_ip,
        }
    }

    /// Adds or replaces a port.
    pub fn upsert(&mut self, port: Port) {
        let vrf = port.vrf();
        if !self.vrf_ids.contains_key(&vrf) {
            self.vrf_ids.insert(vrf, self.next_vrf_id);
            self.next_vrf_id += 1;
        }
        if !self.labels.contains_key(&port.id) {
            self.labels.insert(port.id.clone(), self.next_label);
            self.next_label = if self.next_label >= xmpp_core::contrail::route::MAX_LABEL {
                FIRST_LABEL
            } else {
                self.next_label + 1
            };
        }
        self.ports.insert(port.id.clone(), port);
    }

    /// Removes a port; `None` when unknown.
    pub fn remove(&mut self, id: &str) -> Option<Port> {
        let p = self.ports.remove(id)?;
        self.labels.remove(id);
        let vrf = p.vrf();
        if !self.ports.values().any(|q| q.vrf() == vrf) {
            self.vrf_ids.remove(&vrf);
        }
        Some(p)
    }

    /// The ports, by id.
    pub fn ports(&self) -> impl Iterator<Item = &Port> {
        self.ports.values()
    }

    /// A port's MPLS label.
    pub fn label(&self, id: &str) -> Option<u32> {
        self.labels.get(id).copied()
    }

    /// The VRFs and routes to advertise.
    pub fn desired(&self) -> Desired {
        let mut d = Desired::default();
        for p in self.ports.values() {
            let vrf = p.vrf();
            let Some(&instance) = self.vrf_ids.get(&vrf) else {
                continue;
            };
            d.vrfs.insert(vrf.clone(), instance);
            let label = self.labels.get(&p.id).copied().unwrap_or(FIRST_LABEL);
            for addr in [p.ipv4.map(IpAddr::V4), p.ipv6.map(IpAddr::V6)]
                .into_iter()
                .flatten()
            {
                let entry = self.route_entry(p, addr, label);
                d.routes.insert((vrf.clone(), entry.nlri.prefix), entry);
            }
        }
        d
    }

    /// The item the C++ agent builds for a VM address (spec §6.4): next-hop = vhost
    /// address (af 1 even for IPv6 routes when the vhost is IPv4), encapsulations gre and
    /// udp, local preference 100, sub-protocol `interface`.
    fn route_entry(&self, p: &Port, addr: IpAddr, label: u32) -> RouteEntry {
        let (af, _) = match addr {
            IpAddr::V4(_) => (1, 1),
            IpAddr::V6(_) => (2, 1),
        };
        RouteEntry {
            nlri: Nlri {
                af,
                safi: 1,
                prefix: Prefix::host(addr),
            },
            next_hops: vec![NextHop {
                af: if self.vhost_ip.is_ipv4() { 1 } else { 2 },
                address: self.vhost_ip,
                mac: String::new(),
                label,
                vni: 0,
                encapsulations: vec!["gre".into(), "udp".into()],
                virtual_network: p.vn_name.clone(),
                tags: Vec::new(),
            }],
            version: 1,
            virtual_network: p.vn_name.clone(),
            mobility: Mobility::default(),
            sequence_number: 0,
            security_groups: Vec::new(),
            community_tags: Vec::new(),
            local_preference: 100,
            med: 0,
            load_balance: LoadBalance {
                fields: Vec::new(),
                decision: "field-hash".into(),
            },
            sub_protocol: "interface".into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn port_json(id: &str, ip: &str) -> String {
        format!(
            r#"{{"id":"{id}","vm-name":"vm-{id}","mac-address":"02:00:00:00:00:01","ip-address":"{ip}","vn-name":"default-domain:demo:net-a"}}"#
        )
    }

    #[test]
    fn parses_and_derives_vrf() {
        let p = Port::from_json(port_json("p1", "10.1.1.3").as_bytes()).expect("port");
        assert_eq!(p.vrf(), "default-domain:demo:net-a:net-a");
        assert_eq!(p.ipv4, Some(Ipv4Addr::new(10, 1, 1, 3)));
    }

    #[test]
    fn rejects_bad_input_with_reason() {
        for (body, needle) in [
            (port_json("../etc", "10.1.1.3"), "id"),
            (port_json("p1", "300.1.1.3"), "ip"),
            (
                r#"{"id":"p","mac-address":"zz","ip-address":"10.0.0.1","vn-name":"a:b"}"#.into(),
                "mac-address",
            ),
            (
                r#"{"id":"p","mac-address":"02:00:00:00:00:01","vn-name":"a:b"}"#.into(),
                "ip-address",
            ),
            (
                r#"{"id":"p","mac-address":"02:00:00:00:00:01","ip-address":"10.0.0.1","vn-name":"net"}"#
                    .into(),
                "vn-name",
            ),
            (r#"{"id":"p","bogus":1}"#.into(), "bogus"),
            ("not json".into(), "JSON"),
        ] {
            let err = Port::from_json(body.as_bytes()).expect_err("must be refused");
            assert!(err.to_string().contains(needle), "{err} (wanted {needle})");
        }
    }

    #[test]
    fn desired_routes_labels_and_instance_ids() {
        let mut t = PortTable::new("192.168.0.11".parse().expect("ip"));
        t.upsert(Port::from_json(port_json("p1", "10.1.1.3").as_bytes()).expect("p1"));
        let mut p2 = Port::from_json(port_json("p2", "10.2.2.3").as_bytes()).expect("p2");
        p2.vn_name = "default-domain:demo:net-b".into();
        p2.ipv6 = Some("fd00::3".parse().expect("v6"));
        t.upsert(p2);
        let d = t.desired();
        assert_eq!(d.vrfs.len(), 2);
        assert_eq!(d.vrfs["default-domain:demo:net-a:net-a"], 1);
        assert_eq!(d.vrfs["default-domain:demo:net-b:net-b"], 2);
        assert_eq!(d.routes.len(), 3);
        let r = &d.routes[&(
            "default-domain:demo:net-a:net-a".to_owned(),
            "10.1.1.3/32".parse().expect("prefix"),
        )];
        assert_eq!(r.next_hops[0].label, 16);
        assert_eq!(r.next_hops[0].address.to_string(), "192.168.0.11");
        assert_eq!(r.next_hops[0].encapsulations, vec!["gre", "udp"]);
        assert!(
            r.validate_publish(xmpp_core::contrail::Family::Inet, false)
                .is_ok()
        );
        assert_eq!(t.label("p2"), Some(17));
        t.remove("p2").expect("p2 known");
        assert_eq!(t.desired().vrfs.len(), 1);
        assert!(t.remove("p2").is_none());
    }

    #[test]
    fn directory_round_trip_and_bad_files() {
        let dir = std::env::temp_dir().join(format!("agent-ports-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let p = Port::from_json(port_json("p1", "10.1.1.3").as_bytes()).expect("p1");
        save(&dir, &p).expect("save");
        std::fs::write(dir.join("broken.json"), b"{").expect("write");
        let (ports, errors) = load_dir(&dir);
        assert_eq!(ports, vec![p]);
        assert_eq!(errors.len(), 1);
        assert!(errors[0].contains("broken.json"));
        remove(&dir, "p1").expect("remove");
        remove(&dir, "p1").expect("absent is fine");
        assert!(load_dir(&dir).0.is_empty());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
