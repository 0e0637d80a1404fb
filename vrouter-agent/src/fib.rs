//! Routes learned from control nodes, per channel, with a grace period when a channel goes
//! down. Pure logic: time is passed in.
//!
//! Each channel has an epoch that advances when it comes up. A route carries the epoch in
//! which it was last received. When a channel goes down its routes stay (other agents' VMs
//! stay reachable through a brief flap); once the grace period since the down has passed,
//! every route of an older epoch is removed — whether the channel is still down or came
//! back and did not re-send that route.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use xmpp_core::contrail::message::RouteEvent;
use xmpp_core::contrail::{Family, Prefix, RouteEntry};

/// Identifies a channel (its slot: 0 and 1 for the two control nodes).
pub type ChannelId = usize;

#[derive(Debug, Clone, PartialEq, Eq)]
struct Learned {
    entry: RouteEntry,
    epoch: u64,
}

#[derive(Debug, Default)]
struct ChannelRoutes {
    epoch: u64,
    /// Since when routes of older epochs are stale.
    stale_since: Option<Instant>,
    routes: BTreeMap<(String, Prefix), Learned>,
}

/// The learned-route table.
#[derive(Debug, Default)]
pub struct Fib {
    channels: HashMap<ChannelId, ChannelRoutes>,
}

/// A learned route as seen across channels.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RouteView {
    /// The prefix.
    pub prefix: String,
    /// The family (`inet`, `inet6`).
    pub family: String,
    /// Next-hops, merged over channels (deduplicated).
    pub next_hops: Vec<NextHopView>,
    /// The channels that taught it.
    pub channels: Vec<ChannelId>,
    /// True when every channel's copy is stale (kept only by the grace period).
    pub stale: bool,
}

/// One next-hop of a learned route.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
pub struct NextHopView {
    /// Tunnel endpoint.
    pub address: IpAddr,
    /// MPLS label.
    pub label: u32,
    /// Encapsulations.
    pub encapsulations: Vec<String>,
}

impl Fib {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// A channel reached Established: later routes belong to a new epoch.
    pub fn channel_up(&mut self, ch: ChannelId) {
        let c = self.channels.entry(ch).or_default();
        c.epoch += 1;
    }

    /// A channel went down: its routes become stale now.
    pub fn channel_down(&mut self, ch: ChannelId, now: Instant) {
        let c = self.channels.entry(ch).or_default();
        // Each drop restarts the grace period: routes learned in a short session between
        // two flaps get a full grace period too.
        if !c.routes.is_empty() {
            c.stale_since = Some(now);
        }
        // Routes received from now on belong to the next session.
        c.epoch += 1;
    }

    /// Applies a route message received on `ch`. Returns how many routes changed.
    pub fn apply(&mut self, ch: ChannelId, event: &RouteEvent) -> usize {
        let c = self.channels.entry(ch).or_default();
        let RouteEvent::Routes {
            vrf,
            items,
            retracts,
            ..
        } = event
        else {
            return 0;
        };
        let mut changed = 0;
        if !retracts.is_empty() {
            // Spec §6.6: a message with retracts is a withdrawal; items are ignored.
            for p in retracts {
                if c.routes.remove(&(vrf.clone(), *p)).is_some() {
                    changed += 1;
                }
            }
            return changed;
        }
        for (_, entry) in items {
            let key = (vrf.clone(), entry.nlri.prefix);
            let learned = Learned {
                entry: entry.clone(),
                epoch: c.epoch,
            };
            if c.routes.insert(key, learned).is_none() {
                changed += 1;
            }
        }
        changed
    }

    /// Forgets what `ch` learned in the VRFs for which `subscribed` is false: control sends
    /// no retracts to an agent that unsubscribes, and the C++ agent deletes the VRF with
    /// its routes. Returns how many routes were removed.
    pub fn retain_vrfs(&mut self, ch: ChannelId, subscribed: impl Fn(&str) -> bool) -> usize {
        let Some(c) = self.channels.get_mut(&ch) else {
            return 0;
        };
        let before = c.routes.len();
        c.routes.retain(|(vrf, _), _| subscribed(vrf));
        before - c.routes.len()
    }

    /// Removes routes whose grace period has passed. Returns how many were removed.
    pub fn sweep(&mut self, now: Instant, grace: Duration) -> usize {
        let mut removed = 0;
        for c in self.channels.values_mut() {
            let Some(since) = c.stale_since else { continue };
            if now.duration_since(since) < grace {
                continue;
            }
            let epoch = c.epoch;
            let before = c.routes.len();
            c.routes.retain(|_, r| r.epoch == epoch);
            removed += before - c.routes.len();
            c.stale_since = None;
        }
        removed
    }

    /// Routes per VRF, merged over channels.
    pub fn view(&self) -> BTreeMap<String, Vec<RouteView>> {
        let mut merged: BTreeMap<(String, Prefix), RouteView> = BTreeMap::new();
        let mut chans: Vec<_> = self.channels.iter().collect();
        chans.sort_by_key(|(id, _)| **id);
        for (id, c) in chans {
            for ((vrf, prefix), r) in &c.routes {
                let v = merged
                    .entry((vrf.clone(), *prefix))
                    .or_insert_with(|| RouteView {
                        prefix: prefix.to_string(),
                        family: match r.entry.family() {
                            Some(Family::Inet6) => "inet6".into(),
                            _ => "inet".into(),
                        },
                        next_hops: Vec::new(),
                        channels: Vec::new(),
                        stale: true,
                    });
                v.channels.push(*id);
                v.stale &= r.epoch != c.epoch;
                for nh in &r.entry.next_hops {
                    let n = NextHopView {
                        address: nh.address,
                        label: nh.label,
                        encapsulations: nh.encapsulations.clone(),
                    };
                    if !v.next_hops.contains(&n) {
                        v.next_hops.push(n);
                    }
                }
            }
        }
        let mut out: BTreeMap<String, Vec<RouteView>> = BTreeMap::new();
        for ((vrf, _), mut v) in merged {
            v.next_hops.sort();
            out.entry(vrf).or_default().push(v);
        }
        out
    }

    /// How many routes a channel holds.
    pub fn count(&self, ch: ChannelId) -> usize {
        self.channels.get(&ch).map_or(0, |c| c.routes.len())
    }

    /// Total distinct (VRF, prefix) routes.
    pub fn total(&self) -> usize {
        self.view().values().map(Vec::len).sum()
    }
}

#[cfg(test)]
mod tests {
    use xmpp_core::contrail::{LoadBalance, Mobility, NextHop, Nlri};

    use super::*;

    fn entry(prefix: &str, nh: &str) -> RouteEntry {
        let prefix: Prefix = prefix.parse().expect("prefix");
        RouteEntry {
            nlri: Nlri {
                af: 1,
                safi: 1,
                prefix,
            },
            next_hops: vec![NextHop {
                af: 1,
                address: nh.parse().expect("ip"),
                mac: String::new(),
                label: 20,
                vni: 0,
                encapsulations: vec!["gre".into()],
                virtual_network: "d:p:n".into(),
                tags: vec![],
            }],
            version: 1,
            virtual_network: "d:p:n".into(),
            mobility: Mobility::default(),
            sequence_number: 0,
            security_groups: vec![],
            community_tags: vec![],
            local_preference: 100,
            med: 0,
            load_balance: LoadBalance::default(),
            sub_protocol: "interface".into(),
        }
    }

    fn items(vrf: &str, list: &[(&str, &str)]) -> RouteEvent {
        RouteEvent::Routes {
            vrf: vrf.into(),
            family: Family::Inet,
            items: list
                .iter()
                .map(|(p, nh)| (p.to_string(), entry(p, nh)))
                .collect(),
            retracts: vec![],
        }
    }

    fn retracts(vrf: &str, list: &[&str]) -> RouteEvent {
        RouteEvent::Routes {
            vrf: vrf.into(),
            family: Family::Inet,
            items: vec![],
            retracts: list.iter().map(|p| p.parse().expect("prefix")).collect(),
        }
    }

    #[test]
    fn learn_merge_and_retract() {
        let mut f = Fib::new();
        f.channel_up(0);
        f.channel_up(1);
        f.apply(0, &items("red", &[("10.0.0.1/32", "192.168.0.2")]));
        f.apply(1, &items("red", &[("10.0.0.1/32", "192.168.0.2")]));
        let v = f.view();
        assert_eq!(v["red"].len(), 1);
        assert_eq!(v["red"][0].channels, vec![0, 1]);
        assert_eq!(v["red"][0].next_hops.len(), 1);
        assert_eq!(f.apply(0, &retracts("red", &["10.0.0.1/32"])), 1);
        assert_eq!(f.view()["red"][0].channels, vec![1]);
    }

    #[test]
    fn routes_survive_a_flap_within_grace_and_go_after_it() {
        let t0 = Instant::now();
        let grace = Duration::from_secs(30);
        let mut f = Fib::new();
        f.channel_up(0);
        f.apply(
            0,
            &items(
                "red",
                &[
                    ("10.0.0.1/32", "192.168.0.2"),
                    ("10.0.0.2/32", "192.168.0.3"),
                ],
            ),
        );
        f.channel_down(0, t0);
        assert_eq!(f.sweep(t0 + Duration::from_secs(10), grace), 0);
        assert!(f.view()["red"].iter().all(|r| r.stale));
        // Reconnect; control re-sends only one of the two.
        f.channel_up(0);
        f.apply(0, &items("red", &[("10.0.0.1/32", "192.168.0.2")]));
        assert_eq!(f.sweep(t0 + Duration::from_secs(29), grace), 0);
        assert_eq!(f.sweep(t0 + Duration::from_secs(30), grace), 1);
        let v = f.view();
        assert_eq!(v["red"].len(), 1);
        assert!(!v["red"][0].stale);
    }

    #[test]
    fn unsubscribed_vrfs_are_forgotten_per_channel() {
        let mut f = Fib::new();
        f.channel_up(0);
        f.channel_up(1);
        f.apply(0, &items("red", &[("10.0.0.1/32", "192.168.0.2")]));
        f.apply(0, &items("blue", &[("10.0.0.2/32", "192.168.0.2")]));
        f.apply(1, &items("blue", &[("10.0.0.2/32", "192.168.0.2")]));
        assert_eq!(f.retain_vrfs(0, |v| v == "red"), 1);
        assert_eq!(f.view()["blue"][0].channels, vec![1]);
        assert_eq!(f.retain_vrfs(7, |_| false), 0);
    }

    #[test]
    fn channel_down_for_good_empties_it_after_grace() {
        let t0 = Instant::now();
        let mut f = Fib::new();
        f.channel_up(0);
        f.channel_up(1);
        f.apply(0, &items("red", &[("10.0.0.1/32", "192.168.0.2")]));
        f.apply(1, &items("red", &[("10.0.0.1/32", "192.168.0.2")]));
        f.channel_down(0, t0);
        assert_eq!(
            f.sweep(t0 + Duration::from_secs(31), Duration::from_secs(30)),
            1
        );
        // Still known through channel 1.
        assert_eq!(f.view()["red"][0].channels, vec![1]);
        assert_eq!(f.count(0), 0);
    }
}
