//! The DNS record store: pure logic, no I/O and no clock reads (time is passed in).
//!
//! # What is stored
//!
//! Records are kept per (zone, virtual DNS) and, inside, per agent: every record is tagged
//! with the agent that registered it (spec §7: contrail-dns keeps a per-channel record set
//! keyed by (virtual-dns, zone)). An agent's updates only ever touch its own records: a
//! delete from one agent never removes what another agent registered for the same name.
//! The node serves A, AAAA and PTR (what the vrouter agent sends, spec §7); other entries
//! are rejected one by one, never the whole update.
//!
//! # Names
//!
//! Names are ASCII host names (letters, digits, `-`, `_`), compared case-insensitively and
//! stored in lower case without the trailing dot. An entry's `name` is qualified against
//! the update's `zone`: a name ending in `.` is absolute and must lie in the zone; a name
//! that equals the zone or ends in `.<zone>` is taken as it is (the agent's PTR names,
//! `3.1.1.10.in-addr.arpa` in zone `1.1.10.in-addr.arpa`); any other name is relative to
//! the zone (`vm-a` in `demo.example` is `vm-a.demo.example`); `@` is the zone apex.
//!
//! # Zones
//!
//! A zone is served while at least one agent holds a *claim* on it, i.e. has sent an update
//! for it in its current session or is still within its grace period. Zones nest: a query
//! is answered from the longest served zone that contains the name. When several virtual
//! DNS servers carry the same zone, the zone's answer is the union of all of them (and of
//! all agents), identical records merged with the smallest TTL.
//!
//! # Grace and replacement (an agent's session ends, the agent comes back)
//!
//! 1. When an agent's session ends at `t`, its records (and zone claims) become *stale*,
//!    to be withdrawn at `t + grace`. Stale records are still answered: a brief flap must
//!    not blank DNS.
//! 2. A reconnected agent re-sends all its records (spec §7: "on DNS channel READY the agent
//!    re-sends all records"). On the first update of the new session, the previous set
//!    becomes *pending replacement*: every stale record's deadline is pushed to
//!    `now + grace`, so the agent has one full grace period to finish re-sending, but never
//!    beyond `stale-since + 2 × grace`.
//! 3. A re-sent record becomes fresh again (with the new TTL); a record not re-sent by its
//!    deadline is removed, as are stale records the agent deletes explicitly.
//!
//! Hence the bound: a record disappears at most `2 × grace` after the end of the last
//! session in which its agent sent it, whatever the agent does (flaps, sends nothing, sends
//! part of its set). [`RecordStore::expire`] does the removal; [`RecordStore::next_expiry`]
//! tells the caller when to call it.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use xmpp_core::contrail::dns::{CLASS_ANY, CLASS_IN, CLASS_NONE, DnsEntry, DnsUpdate};

/// An agent's name (the part of its stream `from` before `/`).
pub type AgentName = Arc<str>;

/// Record type codes (RFC 1035, RFC 3596).
pub const TYPE_A: u16 = 1;
/// PTR.
pub const TYPE_PTR: u16 = 12;
/// AAAA.
pub const TYPE_AAAA: u16 = 28;
/// ANY (`*`): in a delete, every record at the name.
pub const TYPE_ANY: u16 = 255;

/// Longest name in presentation form without the trailing dot (RFC 1035 §2.3.4: 255 octets
/// on the wire).
const MAX_NAME_LEN: usize = 253;
/// Longest label (RFC 1035 §2.3.4).
const MAX_LABEL_LEN: usize = 63;
/// TTL used when an entry carries none (Contrail's virtual-DNS `default-ttl-seconds`).
pub const DEFAULT_TTL: u32 = 86_400;
/// TTLs with the top bit set are treated as this (RFC 2181 §8).
const MAX_TTL: u32 = i32::MAX as u32;

/// The record types the node serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub enum RecordType {
    /// IPv4 address.
    A,
    /// IPv6 address.
    #[serde(rename = "AAAA")]
    Aaaa,
    /// Reverse pointer.
    #[serde(rename = "PTR")]
    Ptr,
}

impl RecordType {
    /// The type code.
    pub fn code(self) -> u16 {
        match self {
            RecordType::A => TYPE_A,
            RecordType::Aaaa => TYPE_AAAA,
            RecordType::Ptr => TYPE_PTR,
        }
    }

    /// The served type with this code.
    pub fn from_code(code: u16) -> Option<Self> {
        Some(match code {
            TYPE_A => RecordType::A,
            TYPE_AAAA => RecordType::Aaaa,
            TYPE_PTR => RecordType::Ptr,
            _ => return None,
        })
    }
}

impl fmt::Display for RecordType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RecordType::A => "A",
            RecordType::Aaaa => "AAAA",
            RecordType::Ptr => "PTR",
        })
    }
}

/// A record's data.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RecordData {
    /// An IPv4 address.
    A(Ipv4Addr),
    /// An IPv6 address.
    Aaaa(Ipv6Addr),
    /// A host name (normalised, no trailing dot).
    Ptr(String),
}

impl RecordData {
    /// The type.
    pub fn rtype(&self) -> RecordType {
        match self {
            RecordData::A(_) => RecordType::A,
            RecordData::Aaaa(_) => RecordType::Aaaa,
            RecordData::Ptr(_) => RecordType::Ptr,
        }
    }

    fn parse(rtype: RecordType, data: &str) -> Result<Self, EntryError> {
        let bad = || EntryError::Data {
            rtype,
            data: data.to_owned(),
        };
        let text = data.trim();
        Ok(match rtype {
            RecordType::A => RecordData::A(text.parse().map_err(|_| bad())?),
            RecordType::Aaaa => RecordData::Aaaa(text.parse().map_err(|_| bad())?),
            RecordType::Ptr => RecordData::Ptr(normalize_name(text).map_err(|_| bad())?),
        })
    }
}

impl fmt::Display for RecordData {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RecordData::A(a) => a.fmt(f),
            RecordData::Aaaa(a) => a.fmt(f),
            RecordData::Ptr(n) => write!(f, "{n}."),
        }
    }
}

/// Why one entry of an update was not applied. The other entries still are.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EntryError {
    /// Neither an add (class IN) nor a delete (class NONE or ANY with TTL 0).
    #[error("class {class} with ttl {ttl:?} is neither an add (IN) nor a delete (NONE/ANY, ttl 0)")]
    Class {
        /// The class.
        class: u16,
        /// The TTL.
        ttl: Option<u32>,
    },
    /// A record type the node does not serve.
    #[error("record type {0} is not served (A, AAAA and PTR are)")]
    Type(u16),
    /// The name is not a valid host name.
    #[error("name {name:?}: {reason}")]
    Name {
        /// The name as sent.
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// An absolute name outside the update's zone.
    #[error("name {name:?} is outside zone {zone:?}")]
    OutOfZone {
        /// The name.
        name: String,
        /// The zone.
        zone: String,
    },
    /// The data does not fit the type.
    #[error("{rtype} data {data:?} is not valid")]
    Data {
        /// The type.
        rtype: RecordType,
        /// The data as sent.
        data: String,
    },
    /// The zone is not a valid domain name; every entry of the update is refused.
    #[error("zone {zone:?}: {reason}")]
    Zone {
        /// The zone as sent.
        zone: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The agent already has the maximum number of records.
    #[error("agent already has {max} records (max_records_per_agent)")]
    TooMany {
        /// The bound.
        max: usize,
    },
}

/// One entry of an update, typed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Add the record (or refresh its TTL).
    Add {
        /// Fully qualified name.
        name: String,
        /// The data.
        data: RecordData,
        /// The TTL.
        ttl: u32,
    },
    /// Delete one record (class NONE).
    DeleteRecord {
        /// Fully qualified name.
        name: String,
        /// The data.
        data: RecordData,
    },
    /// Delete the records of one type at a name (class ANY, or NONE without data).
    DeleteType {
        /// Fully qualified name.
        name: String,
        /// The type.
        rtype: RecordType,
    },
    /// Delete every record at a name (class ANY/NONE, type ANY).
    DeleteName {
        /// Fully qualified name.
        name: String,
    },
}

impl Change {
    /// Types an entry of an update for `zone` (already normalised). Deletions are class
    /// NONE or ANY with TTL 0 (spec §7, RFC 2136 §2.5).
    pub fn from_entry(zone: &str, e: &DnsEntry) -> Result<Self, EntryError> {
        let delete = e.is_delete();
        if !delete && e.class != CLASS_IN {
            return Err(EntryError::Class {
                class: e.class,
                ttl: e.ttl,
            });
        }
        let name = qualify(&e.name, zone)?;
        if delete && e.rtype == TYPE_ANY {
            return Ok(Change::DeleteName { name });
        }
        let rtype = RecordType::from_code(e.rtype).ok_or(EntryError::Type(e.rtype))?;
        if delete {
            if e.class == CLASS_ANY || (e.class == CLASS_NONE && e.data.trim().is_empty()) {
                return Ok(Change::DeleteType { name, rtype });
            }
            let data = RecordData::parse(rtype, &e.data)?;
            return Ok(Change::DeleteRecord { name, data });
        }
        let data = RecordData::parse(rtype, &e.data)?;
        let ttl = e.ttl.unwrap_or(DEFAULT_TTL);
        let ttl = if ttl > MAX_TTL { 0 } else { ttl };
        Ok(Change::Add { name, data, ttl })
    }
}

/// Normalises a host name: trims blanks and one trailing dot, lower-cases, checks label
/// syntax and lengths.
pub fn normalize_name(raw: &str) -> Result<String, &'static str> {
    let s = raw.trim();
    let s = s.strip_suffix('.').unwrap_or(s);
    if s.is_empty() {
        return Err("empty name");
    }
    if s.len() > MAX_NAME_LEN {
        return Err("longer than 253 characters");
    }
    for label in s.split('.') {
        if label.is_empty() {
            return Err("empty label");
        }
        if label.len() > MAX_LABEL_LEN {
            return Err("label longer than 63 characters");
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err("only letters, digits, '-' and '_' are allowed in a label");
        }
    }
    Ok(s.to_ascii_lowercase())
}

/// Whether `name` is `zone` or inside it (both normalised).
pub fn in_zone(name: &str, zone: &str) -> bool {
    name == zone
        || (name.len() > zone.len()
            && name.ends_with(zone)
            && name.as_bytes()[name.len() - zone.len() - 1] == b'.')
}

/// Qualifies an entry name against its zone (see the module documentation).
fn qualify(raw: &str, zone: &str) -> Result<String, EntryError> {
    let trimmed = raw.trim();
    if trimmed == "@" {
        return Ok(zone.to_owned());
    }
    let bad = |reason| EntryError::Name {
        name: raw.to_owned(),
        reason,
    };
    let name = normalize_name(trimmed).map_err(bad)?;
    if trimmed.ends_with('.') {
        if !in_zone(&name, zone) {
            return Err(EntryError::OutOfZone {
                name: raw.to_owned(),
                zone: zone.to_owned(),
            });
        }
        return Ok(name);
    }
    if in_zone(&name, zone) {
        return Ok(name);
    }
    let full = format!("{name}.{zone}");
    if full.len() > MAX_NAME_LEN {
        return Err(bad(
            "longer than 253 characters once qualified with the zone",
        ));
    }
    Ok(full)
}

/// The key names are stored under: labels in reverse order (`example.demo.vm-a`), so that
/// every name below a node is in one contiguous key range (empty non-terminals, RFC 8020).
fn tree_key(name: &str) -> String {
    let mut key = String::with_capacity(name.len());
    for (i, label) in name.rsplit('.').enumerate() {
        if i > 0 {
            key.push('.');
        }
        key.push_str(label);
    }
    key
}

/// Whether an item is current or on its way out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Liveness {
    /// Sent in the agent's current session.
    Fresh,
    /// Left over from an ended session; answered until `until`.
    Stale {
        /// When the session that last sent it ended.
        since: Instant,
        /// When it is withdrawn.
        until: Instant,
    },
}

impl Liveness {
    fn is_stale(self) -> bool {
        matches!(self, Liveness::Stale { .. })
    }

    fn deadline(self) -> Option<Instant> {
        match self {
            Liveness::Fresh => None,
            Liveness::Stale { until, .. } => Some(until),
        }
    }

    fn expired(self, now: Instant) -> bool {
        self.deadline().is_some_and(|d| d <= now)
    }
}

/// One stored record.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Rr {
    data: RecordData,
    ttl: u32,
    liveness: Liveness,
}

/// The records at one name from one agent in one (zone, virtual DNS).
#[derive(Debug, Clone, PartialEq, Eq)]
struct NameRecords {
    /// The name, forward order.
    name: String,
    rrs: Vec<Rr>,
}

/// One agent's part of one (zone, virtual DNS).
#[derive(Debug)]
struct AgentZone {
    /// The agent's claim on the zone (keeps the zone served while its records come and go).
    claim: Liveness,
    /// By [`tree_key`].
    names: BTreeMap<String, NameRecords>,
}

impl AgentZone {
    fn records(&self) -> impl Iterator<Item = (&NameRecords, &Rr)> {
        self.names
            .values()
            .flat_map(|n| n.rrs.iter().map(move |r| (n, r)))
    }
}

/// Virtual DNS → agent → records.
type ZoneEntry = BTreeMap<String, HashMap<AgentName, AgentZone>>;

#[derive(Debug, Default)]
struct AgentInfo {
    connected: bool,
    /// Reconnected with stale records, no update yet in this session (rule 2).
    awaiting_first_update: bool,
    /// (zone, virtual DNS) pairs the agent has a part in.
    keys: BTreeSet<(String, String)>,
    /// Records held (fresh and stale), for `max_records_per_agent`.
    records: usize,
    /// Earliest stale deadline, if anything is stale.
    next_expiry: Option<Instant>,
}

/// What applying one update did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Applied {
    /// Records added.
    pub added: usize,
    /// Records re-sent or re-added (TTL refreshed, made fresh).
    pub refreshed: usize,
    /// Records deleted.
    pub deleted: usize,
    /// Entries refused, by index in the update.
    pub rejected: Vec<(usize, EntryError)>,
}

/// The answer to a query, before it is put on the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// The name is in no served zone.
    Refused,
    /// The zone has no such name.
    NxDomain {
        /// The zone that answered.
        zone: String,
    },
    /// The name exists (or is the apex, or an empty non-terminal) without records of the
    /// type.
    NoData {
        /// The zone that answered.
        zone: String,
    },
    /// Records of the type, deduplicated, each with its TTL.
    Records {
        /// The zone that answered.
        zone: String,
        /// The records.
        records: Vec<(RecordData, u32)>,
    },
}

/// Per-agent figures for introspection.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct AgentCounts {
    /// Records held.
    pub records: usize,
    /// Of which stale (withdrawn when their deadline passes).
    pub stale: usize,
    /// (zone, virtual DNS) pairs.
    pub zones: usize,
}

/// A zone for introspection.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ZoneSummary {
    /// The zone.
    pub zone: String,
    /// Virtual DNS servers carrying it.
    pub virtual_dns: Vec<String>,
    /// Agents with a claim on it.
    pub agents: usize,
    /// Records (before merging identical ones).
    pub records: usize,
}

/// One record for introspection.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RecordView {
    /// The virtual DNS.
    pub virtual_dns: String,
    /// The agent that registered it.
    pub agent: String,
    /// Fully qualified name, with the trailing dot.
    pub name: String,
    /// The type.
    #[serde(rename = "type")]
    pub rtype: RecordType,
    /// The data.
    pub data: String,
    /// The TTL.
    pub ttl: u32,
    /// Milliseconds until it is withdrawn, when stale.
    pub withdrawn_in_ms: Option<u64>,
}

/// The store. See the module documentation for the semantics.
#[derive(Debug)]
pub struct RecordStore {
    grace: Duration,
    max_records_per_agent: usize,
    /// Zone → virtual DNS → agent → records.
    zones: BTreeMap<String, ZoneEntry>,
    agents: HashMap<AgentName, AgentInfo>,
    /// Bumped on every change: the SOA serial.
    serial: u32,
}

impl RecordStore {
    /// An empty store. `grace`: how long an agent's records outlive its session;
    /// `max_records_per_agent`: further adds from that agent are refused.
    pub fn new(grace: Duration, max_records_per_agent: usize) -> Self {
        Self {
            grace,
            max_records_per_agent,
            zones: BTreeMap::new(),
            agents: HashMap::new(),
            serial: 1,
        }
    }

    /// The SOA serial: changes whenever the data does.
    pub fn serial(&self) -> u32 {
        self.serial
    }

    fn bump(&mut self) {
        self.serial = self.serial.wrapping_add(1).max(1);
    }

    /// An agent's session is up. Its stale records (if any) stay as they are until its
    /// first update (rule 2).
    pub fn agent_up(&mut self, agent: &str) {
        let info = self.agents.entry(Arc::from(agent)).or_default();
        info.connected = true;
        info.awaiting_first_update = info.next_expiry.is_some();
    }

    /// An agent's session ended at `now`: its fresh records and claims become stale, to be
    /// withdrawn at `now + grace` (rule 1). Returns that deadline when there is anything to
    /// withdraw.
    pub fn agent_down(&mut self, agent: &str, now: Instant) -> Option<Instant> {
        let until = now + self.grace;
        let info = self.agents.get_mut(agent)?;
        info.connected = false;
        info.awaiting_first_update = false;
        let stale = Liveness::Stale { since: now, until };
        for (zone, vdns) in &info.keys {
            let Some(az) = self
                .zones
                .get_mut(zone)
                .and_then(|z| z.get_mut(vdns))
                .and_then(|v| v.get_mut(agent))
            else {
                continue;
            };
            if az.claim == Liveness::Fresh {
                az.claim = stale;
            }
            for n in az.names.values_mut() {
                for r in &mut n.rrs {
                    if r.liveness == Liveness::Fresh {
                        r.liveness = stale;
                    }
                }
            }
        }
        if info.keys.is_empty() {
            self.agents.remove(agent);
            return None;
        }
        info.next_expiry = Some(info.next_expiry.map_or(until, |d| d.min(until)));
        info.next_expiry
    }

    /// Applies an update from `agent` (whose session is up) at `now`.
    pub fn apply(&mut self, agent: &str, update: &DnsUpdate, now: Instant) -> Applied {
        let mut out = Applied::default();
        let zone = match normalize_name(&update.zone) {
            Ok(z) => z,
            Err(reason) => {
                let err = EntryError::Zone {
                    zone: update.zone.clone(),
                    reason,
                };
                out.rejected = (0..update.entries.len())
                    .map(|i| (i, err.clone()))
                    .collect();
                return out;
            }
        };
        let vdns = update.virtual_dns.trim().to_owned();
        let agent: AgentName = match self.agents.get_key_value(agent) {
            Some((k, _)) => k.clone(),
            None => Arc::from(agent),
        };
        if self
            .agents
            .get(&agent)
            .is_some_and(|i| i.awaiting_first_update)
        {
            self.begin_replacement(&agent, now);
        }
        let info = self.agents.entry(agent.clone()).or_default();
        info.keys.insert((zone.clone(), vdns.clone()));
        let az = self
            .zones
            .entry(zone.clone())
            .or_default()
            .entry(vdns)
            .or_default()
            .entry(agent.clone())
            .or_insert_with(|| AgentZone {
                claim: Liveness::Fresh,
                names: BTreeMap::new(),
            });
        az.claim = Liveness::Fresh;
        for (i, entry) in update.entries.iter().enumerate() {
            let change = match Change::from_entry(&zone, entry) {
                Ok(c) => c,
                Err(e) => {
                    out.rejected.push((i, e));
                    continue;
                }
            };
            match change {
                Change::Add { name, data, ttl } => {
                    let key = tree_key(&name);
                    let existing = az
                        .names
                        .get_mut(&key)
                        .and_then(|n| n.rrs.iter_mut().find(|r| r.data == data));
                    if let Some(r) = existing {
                        r.ttl = ttl;
                        r.liveness = Liveness::Fresh;
                        out.refreshed += 1;
                        continue;
                    }
                    if info.records >= self.max_records_per_agent {
                        out.rejected.push((
                            i,
                            EntryError::TooMany {
                                max: self.max_records_per_agent,
                            },
                        ));
                        continue;
                    }
                    az.names
                        .entry(key)
                        .or_insert_with(|| NameRecords {
                            name,
                            rrs: Vec::new(),
                        })
                        .rrs
                        .push(Rr {
                            data,
                            ttl,
                            liveness: Liveness::Fresh,
                        });
                    info.records += 1;
                    out.added += 1;
                }
                Change::DeleteRecord { name, data } => {
                    out.deleted += remove_where(az, &name, |r| r.data == data);
                }
                Change::DeleteType { name, rtype } => {
                    out.deleted += remove_where(az, &name, |r| r.data.rtype() == rtype);
                }
                Change::DeleteName { name } => {
                    out.deleted += remove_where(az, &name, |_| true);
                }
            }
        }
        info.records -= out.deleted;
        if out.added + out.refreshed + out.deleted > 0 {
            self.bump();
        }
        out
    }

    /// Rule 2: the first update after a reconnect gives the stale set one more grace period
    /// from now, capped at `since + 2 × grace`.
    fn begin_replacement(&mut self, agent: &AgentName, now: Instant) {
        let grace = self.grace;
        // Items already past their deadline (the expiry pass has not run yet) are not
        // revived: they go at the next pass.
        let extend = |l: &mut Liveness| {
            if let Liveness::Stale { since, until } = *l
                && until > now
            {
                let cap = since + grace * 2;
                *l = Liveness::Stale {
                    since,
                    until: until.max((now + grace).min(cap)),
                };
            }
        };
        let Some(info) = self.agents.get_mut(agent) else {
            return;
        };
        info.awaiting_first_update = false;
        let mut next: Option<Instant> = None;
        for (zone, vdns) in &info.keys {
            let Some(az) = self
                .zones
                .get_mut(zone)
                .and_then(|z| z.get_mut(vdns))
                .and_then(|v| v.get_mut(agent))
            else {
                continue;
            };
            extend(&mut az.claim);
            next = min_opt(next, az.claim.deadline());
            for n in az.names.values_mut() {
                for r in &mut n.rrs {
                    extend(&mut r.liveness);
                    next = min_opt(next, r.liveness.deadline());
                }
            }
        }
        info.next_expiry = next;
    }

    /// When [`expire`](Self::expire) next has work, if ever.
    pub fn next_expiry(&self) -> Option<Instant> {
        self.agents.values().filter_map(|i| i.next_expiry).min()
    }

    /// Withdraws every stale record and claim whose deadline is `now` or earlier; a zone
    /// without claims is no longer served. Returns how many records were withdrawn.
    pub fn expire(&mut self, now: Instant) -> usize {
        let due: Vec<AgentName> = self
            .agents
            .iter()
            .filter(|(_, i)| i.next_expiry.is_some_and(|d| d <= now))
            .map(|(a, _)| a.clone())
            .collect();
        let mut removed = 0;
        for agent in due {
            let Some(info) = self.agents.get_mut(&agent) else {
                continue;
            };
            let mut next: Option<Instant> = None;
            let mut gone_keys = Vec::new();
            let mut mine = 0;
            for key in &info.keys {
                let (zone, vdns) = key;
                let Some(z) = self.zones.get_mut(zone) else {
                    gone_keys.push(key.clone());
                    continue;
                };
                let Some(v) = z.get_mut(vdns) else {
                    gone_keys.push(key.clone());
                    continue;
                };
                let Some(az) = v.get_mut(&agent) else {
                    gone_keys.push(key.clone());
                    continue;
                };
                if az.claim.expired(now) {
                    mine += az.records().count();
                    v.remove(&agent);
                    gone_keys.push(key.clone());
                } else {
                    next = min_opt(next, az.claim.deadline());
                    az.names.retain(|_, n| {
                        n.rrs.retain(|r| {
                            let keep = !r.liveness.expired(now);
                            if keep {
                                next = min_opt(next, r.liveness.deadline());
                            } else {
                                mine += 1;
                            }
                            keep
                        });
                        !n.rrs.is_empty()
                    });
                }
                if v.is_empty() {
                    z.remove(vdns);
                }
                if z.is_empty() {
                    self.zones.remove(zone);
                }
            }
            for k in gone_keys {
                info.keys.remove(&k);
            }
            info.next_expiry = next;
            info.records = info.records.saturating_sub(mine);
            removed += mine;
            if !info.connected && info.keys.is_empty() {
                self.agents.remove(&agent);
            }
        }
        if removed > 0 {
            self.bump();
        }
        removed
    }

    /// The most specific served zone containing `name` (normalised, no trailing dot).
    pub fn zone_of(&self, name: &str) -> Option<&str> {
        let mut rest = name;
        loop {
            if let Some((z, _)) = self.zones.get_key_value(rest) {
                return Some(z);
            }
            rest = rest.split_once('.')?.1;
        }
    }

    /// Answers a query for `name` (normalised, no trailing dot) and type code `qtype`
    /// (`255` = every served type).
    pub fn lookup(&self, name: &str, qtype: u16) -> Lookup {
        let Some(zone) = self.zone_of(name) else {
            return Lookup::Refused;
        };
        let Some(entry) = self.zones.get(zone) else {
            return Lookup::Refused;
        };
        let key = tree_key(name);
        let below = format!("{key}.");
        let mut exists = name == zone;
        let mut found: BTreeMap<RecordData, u32> = BTreeMap::new();
        for az in entry.values().flat_map(HashMap::values) {
            if let Some(n) = az.names.get(&key) {
                exists = true;
                for r in &n.rrs {
                    if qtype == TYPE_ANY || r.data.rtype().code() == qtype {
                        found
                            .entry(r.data.clone())
                            .and_modify(|t| *t = (*t).min(r.ttl))
                            .or_insert(r.ttl);
                    }
                }
            } else if !exists
                && az
                    .names
                    .range(below.clone()..)
                    .next()
                    .is_some_and(|(k, _)| k.starts_with(&below))
            {
                exists = true;
            }
        }
        let zone = zone.to_owned();
        if !found.is_empty() {
            return Lookup::Records {
                zone,
                records: found.into_iter().collect(),
            };
        }
        if exists {
            Lookup::NoData { zone }
        } else {
            Lookup::NxDomain { zone }
        }
    }

    /// An agent's figures, `None` if the store holds nothing of it.
    pub fn agent_counts(&self, agent: &str) -> Option<AgentCounts> {
        let info = self.agents.get(agent)?;
        let mut c = AgentCounts {
            zones: info.keys.len(),
            ..AgentCounts::default()
        };
        for az in self.agent_zones(agent, info) {
            for (_, r) in az.records() {
                c.records += 1;
                c.stale += usize::from(r.liveness.is_stale());
            }
        }
        Some(c)
    }

    fn agent_zones<'a>(
        &'a self,
        agent: &'a str,
        info: &'a AgentInfo,
    ) -> impl Iterator<Item = &'a AgentZone> {
        info.keys.iter().filter_map(move |(zone, vdns)| {
            self.zones
                .get(zone)
                .and_then(|z| z.get(vdns))
                .and_then(|v| v.get(agent))
        })
    }

    /// Agents the store holds something of, with whether their session is up.
    pub fn agents(&self) -> Vec<(AgentName, bool)> {
        let mut v: Vec<_> = self
            .agents
            .iter()
            .map(|(a, i)| (a.clone(), i.connected))
            .collect();
        v.sort();
        v
    }

    /// The served zones.
    pub fn zones(&self) -> Vec<ZoneSummary> {
        self.zones
            .iter()
            .map(|(zone, entry)| ZoneSummary {
                zone: zone.clone(),
                virtual_dns: entry.keys().cloned().collect(),
                agents: entry
                    .values()
                    .flat_map(HashMap::keys)
                    .collect::<BTreeSet<_>>()
                    .len(),
                records: entry
                    .values()
                    .flat_map(HashMap::values)
                    .map(|az| az.records().count())
                    .sum(),
            })
            .collect()
    }

    /// Every record of a zone (exact zone name), `None` if it is not served.
    pub fn zone_records(&self, zone: &str, now: Instant) -> Option<Vec<RecordView>> {
        let entry = self.zones.get(zone)?;
        let mut out = Vec::new();
        for (vdns, agents) in entry {
            for (agent, az) in agents {
                for (n, r) in az.records() {
                    out.push(RecordView {
                        virtual_dns: vdns.clone(),
                        agent: agent.to_string(),
                        name: format!("{}.", n.name),
                        rtype: r.data.rtype(),
                        data: r.data.to_string(),
                        ttl: r.ttl,
                        withdrawn_in_ms: r.liveness.deadline().map(|d| {
                            u64::try_from(d.saturating_duration_since(now).as_millis())
                                .unwrap_or(u64::MAX)
                        }),
                    });
                }
            }
        }
        out.sort_by(|a, b| (&a.name, a.rtype, &a.agent).cmp(&(&b.name, b.rtype, &b.agent)));
        Some(out)
    }

    /// Totals: (zones, records).
    pub fn totals(&self) -> (usize, usize) {
        (
            self.zones.len(),
            self.agents.values().map(|i| i.records).sum(),
        )
    }
}

fn min_opt(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(x), Some(y)) => Some(x.min(y)),
        (x, None) => x,
        (None, y) => y,
    }
}

/// Removes the records at `name` that match; returns how many.
fn remove_where(az: &mut AgentZone, name: &str, pred: impl Fn(&Rr) -> bool) -> usize {
    let key = tree_key(name);
    let Some(n) = az.names.get_mut(&key) else {
        return 0;
    };
    let before = n.rrs.len();
    n.rrs.retain(|r| !pred(r));
    let removed = before - n.rrs.len();
    if n.rrs.is_empty() {
        az.names.remove(&key);
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    const GRACE: Duration = Duration::from_secs(30);

    fn entry(class: u16, rtype: u16, name: &str, data: &str, ttl: Option<u32>) -> DnsEntry {
        DnsEntry {
            class,
            rtype,
            name: name.into(),
            data: data.into(),
            ttl,
            priority: Some(0),
        }
    }

    fn a(name: &str, ip: &str) -> DnsEntry {
        entry(CLASS_IN, TYPE_A, name, ip, Some(3600))
    }

    fn update(vdns: &str, zone: &str, entries: Vec<DnsEntry>) -> DnsUpdate {
        DnsUpdate {
            transid: 1,
            virtual_dns: vdns.into(),
            zone: zone.into(),
            entries,
        }
    }

    fn store() -> RecordStore {
        RecordStore::new(GRACE, 1000)
    }

    fn addrs(l: &Lookup) -> Vec<String> {
        match l {
            Lookup::Records { records, .. } => records.iter().map(|(d, _)| d.to_string()).collect(),
            other => panic!("expected records, got {other:?}"),
        }
    }

    fn nx(zone: &str) -> Lookup {
        Lookup::NxDomain { zone: zone.into() }
    }

    #[test]
    fn names_are_qualified_against_the_zone() {
        let z = "demo.example";
        assert_eq!(qualify("vm-a", z), Ok("vm-a.demo.example".into()));
        assert_eq!(
            qualify("VM-A.Demo.Example", z),
            Ok("vm-a.demo.example".into())
        );
        assert_eq!(
            qualify("vm-a.demo.example.", z),
            Ok("vm-a.demo.example".into())
        );
        assert_eq!(qualify("@", z), Ok(z.into()));
        assert_eq!(
            qualify("3.1.1.10.in-addr.arpa", "1.1.10.in-addr.arpa"),
            Ok("3.1.1.10.in-addr.arpa".into())
        );
        assert!(matches!(
            qualify("vm.other.", z),
            Err(EntryError::OutOfZone { .. })
        ));
        assert!(matches!(qualify("a..b", z), Err(EntryError::Name { .. })));
        assert!(matches!(qualify("a b", z), Err(EntryError::Name { .. })));
        assert!(matches!(
            qualify(&"x".repeat(64), z),
            Err(EntryError::Name { .. })
        ));
        assert!(!in_zone("xdemo.example", z));
        assert!(in_zone("a.demo.example", z));
    }

    #[test]
    fn entries_are_typed() {
        let z = "demo.example";
        assert_eq!(
            Change::from_entry(z, &a("vm-a", "10.1.1.3")),
            Ok(Change::Add {
                name: "vm-a.demo.example".into(),
                data: RecordData::A("10.1.1.3".parse().expect("ip")),
                ttl: 3600
            })
        );
        let no_ttl = entry(CLASS_IN, TYPE_AAAA, "vm-a", "fd00::3", None);
        assert!(matches!(
            Change::from_entry(z, &no_ttl),
            Ok(Change::Add {
                ttl: DEFAULT_TTL,
                ..
            })
        ));
        let del = entry(CLASS_NONE, TYPE_A, "vm-a", "10.1.1.3", Some(0));
        assert!(matches!(
            Change::from_entry(z, &del),
            Ok(Change::DeleteRecord { .. })
        ));
        let del_set = entry(CLASS_ANY, TYPE_A, "vm-a", "", Some(0));
        assert!(matches!(
            Change::from_entry(z, &del_set),
            Ok(Change::DeleteType {
                rtype: RecordType::A,
                ..
            })
        ));
        let del_all = entry(CLASS_ANY, TYPE_ANY, "vm-a", "", Some(0));
        assert!(matches!(
            Change::from_entry(z, &del_all),
            Ok(Change::DeleteName { .. })
        ));
        // NONE with a non-zero TTL is not a delete, and not an add either.
        let odd = entry(CLASS_NONE, TYPE_A, "vm-a", "10.1.1.3", Some(5));
        assert!(matches!(
            Change::from_entry(z, &odd),
            Err(EntryError::Class { .. })
        ));
        let mx = entry(CLASS_IN, 15, "vm-a", "mail", Some(5));
        assert_eq!(Change::from_entry(z, &mx), Err(EntryError::Type(15)));
        let bad_ip = a("vm-a", "10.1.1");
        assert!(matches!(
            Change::from_entry(z, &bad_ip),
            Err(EntryError::Data { .. })
        ));
        let v6_in_a = a("vm-a", "fd00::1");
        assert!(matches!(
            Change::from_entry(z, &v6_in_a),
            Err(EntryError::Data { .. })
        ));
    }

    #[test]
    fn add_lookup_nxdomain_refused_and_delete() {
        let mut s = store();
        let now = Instant::now();
        s.agent_up("c1");
        let applied = s.apply(
            "c1",
            &update(
                "d:v",
                "demo.example",
                vec![
                    a("vm-a", "10.1.1.3"),
                    entry(CLASS_IN, TYPE_AAAA, "vm-a", "fd00::3", Some(60)),
                    a("vm-b", "10.1.1.4"),
                    entry(CLASS_IN, 15, "vm-b", "x", Some(5)),
                ],
            ),
            now,
        );
        assert_eq!(applied.added, 3);
        assert_eq!(applied.rejected.len(), 1);
        assert_eq!(applied.rejected[0].0, 3);
        assert_eq!(addrs(&s.lookup("vm-a.demo.example", TYPE_A)), ["10.1.1.3"]);
        assert_eq!(
            addrs(&s.lookup("vm-a.demo.example", TYPE_AAAA)),
            ["fd00::3"]
        );
        assert_eq!(s.lookup("vm-a.demo.example", TYPE_ANY).clone(), {
            Lookup::Records {
                zone: "demo.example".into(),
                records: vec![
                    (RecordData::A("10.1.1.3".parse().expect("ip")), 3600),
                    (RecordData::Aaaa("fd00::3".parse().expect("ip")), 60),
                ],
            }
        });
        assert_eq!(
            s.lookup("vm-a.demo.example", TYPE_PTR),
            Lookup::NoData {
                zone: "demo.example".into()
            }
        );
        assert_eq!(
            s.lookup("demo.example", TYPE_A),
            Lookup::NoData {
                zone: "demo.example".into()
            }
        );
        assert_eq!(s.lookup("vm-z.demo.example", TYPE_A), nx("demo.example"));
        assert_eq!(s.lookup("example", TYPE_A), Lookup::Refused);
        assert_eq!(s.lookup("vm-a.other.example", TYPE_A), Lookup::Refused);

        let serial = s.serial();
        let del = s.apply(
            "c1",
            &update(
                "d:v",
                "demo.example",
                vec![entry(CLASS_NONE, TYPE_A, "vm-a", "10.1.1.3", Some(0))],
            ),
            now,
        );
        assert_eq!(del.deleted, 1);
        assert!(s.serial() != serial);
        // The AAAA record keeps the name alive.
        assert_eq!(
            s.lookup("vm-a.demo.example", TYPE_A),
            Lookup::NoData {
                zone: "demo.example".into()
            }
        );
        s.apply(
            "c1",
            &update(
                "d:v",
                "demo.example",
                vec![entry(CLASS_ANY, TYPE_ANY, "vm-a", "", Some(0))],
            ),
            now,
        );
        assert_eq!(s.lookup("vm-a.demo.example", TYPE_A), nx("demo.example"));
        // The zone is still served (the agent's claim), so unknown names are NXDOMAIN.
        s.apply(
            "c1",
            &update(
                "d:v",
                "demo.example",
                vec![entry(CLASS_ANY, TYPE_A, "vm-b", "", Some(0))],
            ),
            now,
        );
        assert_eq!(s.lookup("vm-b.demo.example", TYPE_A), nx("demo.example"));
        assert_eq!(s.agent_counts("c1").map(|c| c.records), Some(0));
    }

    #[test]
    fn re_adding_refreshes_instead_of_duplicating() {
        let mut s = store();
        let now = Instant::now();
        s.agent_up("c1");
        let u = |ttl| {
            update(
                "d:v",
                "z.example",
                vec![entry(CLASS_IN, TYPE_A, "h", "10.0.0.1", Some(ttl))],
            )
        };
        assert_eq!(s.apply("c1", &u(10), now).added, 1);
        let again = s.apply("c1", &u(20), now);
        assert_eq!((again.added, again.refreshed), (0, 1));
        assert_eq!(
            s.lookup("h.z.example", TYPE_A),
            Lookup::Records {
                zone: "z.example".into(),
                records: vec![(RecordData::A("10.0.0.1".parse().expect("ip")), 20)]
            }
        );
        assert_eq!(s.agent_counts("c1").map(|c| c.records), Some(1));
    }

    #[test]
    fn reverse_zones_and_empty_non_terminals() {
        let mut s = store();
        let now = Instant::now();
        s.agent_up("c1");
        s.apply(
            "c1",
            &update(
                "d:v",
                "10.in-addr.arpa",
                vec![
                    entry(
                        CLASS_IN,
                        TYPE_PTR,
                        "3.1.1.10.in-addr.arpa",
                        "vm-a.demo.example",
                        Some(60),
                    ),
                    entry(
                        CLASS_IN,
                        TYPE_PTR,
                        "4.1.1.10.in-addr.arpa",
                        "bad name!",
                        None,
                    ),
                ],
            ),
            now,
        );
        assert_eq!(
            addrs(&s.lookup("3.1.1.10.in-addr.arpa", TYPE_PTR)),
            ["vm-a.demo.example."]
        );
        // 1.1.10.in-addr.arpa has no records but a name below it: NODATA, not NXDOMAIN.
        assert_eq!(
            s.lookup("1.1.10.in-addr.arpa", TYPE_PTR),
            Lookup::NoData {
                zone: "10.in-addr.arpa".into()
            }
        );
        assert_eq!(
            s.lookup("2.1.10.in-addr.arpa", TYPE_PTR),
            nx("10.in-addr.arpa")
        );
        assert_eq!(s.lookup("3.1.1.11.in-addr.arpa", TYPE_PTR), Lookup::Refused);
    }

    #[test]
    fn nested_zones_answer_from_the_most_specific() {
        let mut s = store();
        let now = Instant::now();
        s.agent_up("c1");
        s.apply(
            "c1",
            &update("v", "example", vec![a("x.demo", "10.0.0.1")]),
            now,
        );
        s.apply(
            "c1",
            &update("v", "demo.example", vec![a("y", "10.0.0.2")]),
            now,
        );
        assert_eq!(s.zone_of("x.demo.example"), Some("demo.example"));
        // x.demo.example was registered in the parent zone, but the child zone is
        // authoritative for it.
        assert_eq!(s.lookup("x.demo.example", TYPE_A), nx("demo.example"));
        assert_eq!(addrs(&s.lookup("y.demo.example", TYPE_A)), ["10.0.0.2"]);
    }

    #[test]
    fn several_agents_and_virtual_dns_servers_share_a_zone() {
        let mut s = store();
        let now = Instant::now();
        for agent in ["c1", "c2"] {
            s.agent_up(agent);
        }
        s.apply(
            "c1",
            &update("d:v1", "demo.example", vec![a("vm", "10.0.0.1")]),
            now,
        );
        s.apply(
            "c2",
            &update(
                "d:v2",
                "demo.example",
                vec![a("vm", "10.0.0.2"), a("vm", "10.0.0.1")],
            ),
            now,
        );
        // Union, identical records merged.
        assert_eq!(
            addrs(&s.lookup("vm.demo.example", TYPE_A)),
            ["10.0.0.1", "10.0.0.2"]
        );
        // A delete only touches the sender's own records.
        s.apply(
            "c1",
            &update(
                "d:v1",
                "demo.example",
                vec![entry(CLASS_ANY, TYPE_A, "vm", "", Some(0))],
            ),
            now,
        );
        assert_eq!(
            addrs(&s.lookup("vm.demo.example", TYPE_A)),
            ["10.0.0.1", "10.0.0.2"]
        );
        let zones = s.zones();
        assert_eq!(zones.len(), 1);
        assert_eq!(zones[0].virtual_dns, ["d:v1", "d:v2"]);
        assert_eq!(zones[0].agents, 2);
        assert_eq!(zones[0].records, 2);
        // One agent leaving withdraws only its records.
        s.agent_down("c2", now);
        assert_eq!(s.expire(now + GRACE), 2);
        assert_eq!(s.lookup("vm.demo.example", TYPE_A), nx("demo.example"));
        assert_eq!(s.zones()[0].virtual_dns, ["d:v1"]);
    }

    #[test]
    fn session_end_withdraws_after_the_grace_period() {
        let mut s = store();
        let t0 = Instant::now();
        s.agent_up("c1");
        s.apply(
            "c1",
            &update("v", "demo.example", vec![a("vm", "10.0.0.1")]),
            t0,
        );
        assert_eq!(s.next_expiry(), None);
        let down = t0 + Duration::from_secs(1);
        assert_eq!(s.agent_down("c1", down), Some(down + GRACE));
        assert_eq!(s.next_expiry(), Some(down + GRACE));
        // Still answered during the grace period.
        assert_eq!(s.expire(down + GRACE - Duration::from_millis(1)), 0);
        assert_eq!(addrs(&s.lookup("vm.demo.example", TYPE_A)), ["10.0.0.1"]);
        assert_eq!(
            s.agent_counts("c1"),
            Some(AgentCounts {
                records: 1,
                stale: 1,
                zones: 1
            })
        );
        let views = s.zone_records("demo.example", down).expect("zone");
        assert_eq!(views[0].withdrawn_in_ms, Some(30_000));
        // Gone after it, with the zone and the agent.
        assert_eq!(s.expire(down + GRACE), 1);
        assert_eq!(s.lookup("vm.demo.example", TYPE_A), Lookup::Refused);
        assert!(s.zones().is_empty());
        assert!(s.agents().is_empty());
        assert_eq!(s.next_expiry(), None);
    }

    #[test]
    fn reconnect_replaces_the_old_set() {
        let mut s = store();
        let t0 = Instant::now();
        s.agent_up("c1");
        s.apply(
            "c1",
            &update(
                "v",
                "demo.example",
                vec![a("keep", "10.0.0.1"), a("drop", "10.0.0.2")],
            ),
            t0,
        );
        let down = t0 + Duration::from_secs(10);
        s.agent_down("c1", down);
        // Reconnect; nothing changes until the first update.
        let up = down + Duration::from_secs(5);
        s.agent_up("c1");
        assert_eq!(s.next_expiry(), Some(down + GRACE));
        // First update 20 s into the grace period: the stale set gets until first + grace.
        let first = down + Duration::from_secs(20);
        s.apply(
            "c1",
            &update("v", "demo.example", vec![a("keep", "10.0.0.1")]),
            first,
        );
        assert_eq!(s.next_expiry(), Some(first + GRACE));
        assert_eq!(
            s.agent_counts("c1"),
            Some(AgentCounts {
                records: 2,
                stale: 1,
                zones: 1
            })
        );
        // The old deadline passes: nothing is withdrawn yet, the agent is still re-sending.
        assert_eq!(s.expire(down + GRACE), 0);
        assert_eq!(addrs(&s.lookup("drop.demo.example", TYPE_A)), ["10.0.0.2"]);
        // End of the replacement period: the record not re-sent is gone, the other stays.
        assert_eq!(s.expire(first + GRACE), 1);
        assert_eq!(s.lookup("drop.demo.example", TYPE_A), nx("demo.example"));
        assert_eq!(addrs(&s.lookup("keep.demo.example", TYPE_A)), ["10.0.0.1"]);
        assert_eq!(s.next_expiry(), None);
        let _ = up;
    }

    #[test]
    fn replacement_is_bounded_by_twice_the_grace_period() {
        let mut s = store();
        let t0 = Instant::now();
        s.agent_up("c1");
        s.apply(
            "c1",
            &update("v", "z.example", vec![a("old", "10.0.0.1")]),
            t0,
        );
        s.agent_down("c1", t0);
        s.agent_up("c1");
        // First update just before the deadline: extended, but capped at t0 + 2 × grace.
        let first = t0 + GRACE - Duration::from_millis(1);
        s.apply(
            "c1",
            &update("v", "z.example", vec![a("new", "10.0.0.2")]),
            first,
        );
        // The new session ends quickly, and the agent flaps again and again, each time
        // sending something else first: "old" is never re-sent and must go by t0 + 2G.
        let mut t = first;
        for i in 0..5 {
            t += Duration::from_millis(10);
            s.agent_down("c1", t);
            s.agent_up("c1");
            s.apply(
                "c1",
                &update("v", "z.example", vec![a(&format!("n{i}"), "10.0.0.3")]),
                t,
            );
        }
        assert!(s.next_expiry().is_some_and(|d| d <= t0 + GRACE * 2));
        s.expire(t0 + GRACE * 2);
        assert_eq!(s.lookup("old.z.example", TYPE_A), nx("z.example"));
        assert_eq!(addrs(&s.lookup("n4.z.example", TYPE_A)), ["10.0.0.3"]);
    }

    #[test]
    fn reconnect_without_updates_keeps_the_original_deadline() {
        let mut s = store();
        let t0 = Instant::now();
        s.agent_up("c1");
        s.apply(
            "c1",
            &update("v", "z.example", vec![a("h", "10.0.0.1")]),
            t0,
        );
        s.agent_down("c1", t0);
        s.agent_up("c1");
        assert_eq!(s.expire(t0 + GRACE), 1);
        // The zone is gone (the claim was stale too) but the connected agent is kept.
        assert_eq!(s.lookup("h.z.example", TYPE_A), Lookup::Refused);
        assert_eq!(s.agents(), vec![(AgentName::from("c1"), true)]);
        assert_eq!(s.agent_counts("c1").map(|c| c.records), Some(0));
    }

    #[test]
    fn overdue_records_are_not_revived_by_the_first_update() {
        let mut s = store();
        let t0 = Instant::now();
        s.agent_up("c1");
        s.apply(
            "c1",
            &update("v", "z.example", vec![a("old", "10.0.0.1")]),
            t0,
        );
        s.agent_down("c1", t0);
        s.agent_up("c1");
        // The first update arrives after the deadline, before the expiry pass ran.
        let late = t0 + GRACE + Duration::from_millis(5);
        s.apply(
            "c1",
            &update("v", "z.example", vec![a("new", "10.0.0.2")]),
            late,
        );
        assert_eq!(s.next_expiry(), Some(t0 + GRACE));
        assert_eq!(s.expire(late), 1);
        assert_eq!(s.lookup("old.z.example", TYPE_A), nx("z.example"));
        assert_eq!(addrs(&s.lookup("new.z.example", TYPE_A)), ["10.0.0.2"]);
    }

    #[test]
    fn deleting_a_stale_record_in_the_new_session() {
        let mut s = store();
        let t0 = Instant::now();
        s.agent_up("c1");
        s.apply(
            "c1",
            &update("v", "z.example", vec![a("h", "10.0.0.1")]),
            t0,
        );
        s.agent_down("c1", t0);
        s.agent_up("c1");
        let del = s.apply(
            "c1",
            &update(
                "v",
                "z.example",
                vec![entry(CLASS_NONE, TYPE_A, "h", "10.0.0.1", Some(0))],
            ),
            t0,
        );
        assert_eq!(del.deleted, 1);
        assert_eq!(s.lookup("h.z.example", TYPE_A), nx("z.example"));
        assert_eq!(s.agent_counts("c1").map(|c| c.records), Some(0));
    }

    #[test]
    fn record_bound_per_agent() {
        let mut s = RecordStore::new(GRACE, 2);
        let now = Instant::now();
        s.agent_up("c1");
        let applied = s.apply(
            "c1",
            &update(
                "v",
                "z.example",
                vec![a("a", "10.0.0.1"), a("b", "10.0.0.2"), a("c", "10.0.0.3")],
            ),
            now,
        );
        assert_eq!(applied.added, 2);
        assert_eq!(applied.rejected, vec![(2, EntryError::TooMany { max: 2 })]);
        // Refreshing an existing record is not an add.
        assert_eq!(
            s.apply(
                "c1",
                &update("v", "z.example", vec![a("a", "10.0.0.1")]),
                now
            )
            .refreshed,
            1
        );
        // Another agent has its own budget.
        s.agent_up("c2");
        assert_eq!(
            s.apply(
                "c2",
                &update("v", "z.example", vec![a("c", "10.0.0.3")]),
                now
            )
            .added,
            1
        );
    }

    #[test]
    fn bad_zone_rejects_every_entry() {
        let mut s = store();
        s.agent_up("c1");
        let applied = s.apply(
            "c1",
            &update(
                "v",
                "bad zone",
                vec![a("a", "10.0.0.1"), a("b", "10.0.0.2")],
            ),
            Instant::now(),
        );
        assert_eq!(applied.rejected.len(), 2);
        assert!(s.zones().is_empty());
    }

    #[test]
    fn zero_grace_withdraws_at_once() {
        let mut s = RecordStore::new(Duration::ZERO, 10);
        let now = Instant::now();
        s.agent_up("c1");
        s.apply(
            "c1",
            &update("v", "z.example", vec![a("h", "10.0.0.1")]),
            now,
        );
        s.agent_down("c1", now);
        assert_eq!(s.expire(now), 1);
        assert!(s.zones().is_empty());
    }
}
