//! The route table of the reflector: pure logic, no I/O.
//!
//! Per VRF (routing instance): the subscribed sessions with their instance ids, and the
//! routes keyed by (family, prefix), each with one path per publishing session (several
//! agents publishing one prefix is ECMP). Every operation returns the deliveries it causes:
//! for each other subscriber of the VRF, the prefix's new set of paths *excluding the
//! subscriber's own* (an agent never gets its own routes back, as in Contrail), or an
//! unreach when none remain. The membership rules of spec §6.5 are enforced here.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use xmpp_core::contrail::{Family, Prefix};

/// Identifies one XMPP session (a connection, not an agent name: a reconnect is a new one).
pub type SessionId = u64;

/// A route's key within a VRF.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RouteKey {
    /// The family.
    pub family: Family,
    /// The prefix (normalised).
    pub prefix: Prefix,
}

/// A violation of the control node's membership rules (spec §6.5). Each one closes the
/// offending session, as contrail-control does.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MembershipError {
    /// A second subscribe for a VRF the session is subscribed to.
    #[error("duplicate subscribe to {0}")]
    DuplicateSubscribe(String),
    /// Unsubscribe without a subscription.
    #[error("unsubscribe from {0} without a subscription")]
    NotSubscribed(String),
    /// A route published in a VRF the session is not subscribed to.
    #[error("route published in {0} without a subscription")]
    PublishWithoutSubscribe(String),
    /// The subscription carried no instance id, so routes cannot be accepted in it.
    #[error("route published in {0}, subscribed without instance-id")]
    NoInstanceId(String),
}

/// What one subscriber must be told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery<P> {
    /// The route's paths as this subscriber sees them (never empty).
    Reach {
        /// The subscriber.
        to: SessionId,
        /// The VRF.
        vrf: Arc<str>,
        /// The route.
        key: RouteKey,
        /// The paths, by publishing session (the subscriber's own excluded).
        paths: Vec<(SessionId, P)>,
    },
    /// The route is gone for this subscriber.
    Unreach {
        /// The subscriber.
        to: SessionId,
        /// The VRF.
        vrf: Arc<str>,
        /// The route.
        key: RouteKey,
    },
}

impl<P> Delivery<P> {
    /// The recipient.
    pub fn to(&self) -> SessionId {
        match self {
            Delivery::Reach { to, .. } | Delivery::Unreach { to, .. } => *to,
        }
    }
}

#[derive(Debug)]
struct Vrf<P> {
    name: Arc<str>,
    /// Subscribers and their instance ids (`None`: subscribed without one).
    subscribers: BTreeMap<SessionId, Option<i64>>,
    routes: BTreeMap<RouteKey, BTreeMap<SessionId, P>>,
}

/// The table. `P` is the path payload (the published item), cheap to clone (an `Arc`).
#[derive(Debug)]
pub struct Rib<P> {
    vrfs: HashMap<Arc<str>, Vrf<P>>,
    /// Per session: the VRFs it subscribed to.
    sessions: HashMap<SessionId, Vec<Arc<str>>>,
}

impl<P> Default for Rib<P> {
    fn default() -> Self {
        Self {
            vrfs: HashMap::new(),
            sessions: HashMap::new(),
        }
    }
}

/// Counts for introspection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RibStats {
    /// VRFs with at least one subscriber or route.
    pub vrfs: usize,
    /// Distinct (VRF, family, prefix) routes.
    pub routes: usize,
    /// Paths over all routes.
    pub paths: usize,
}

impl<P: Clone> Rib<P> {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// Subscribes `s` to `vrf`. Returns the VRF's current routes as `s` sees them (the
    /// initial dump).
    pub fn subscribe(
        &mut self,
        s: SessionId,
        vrf: &str,
        instance_id: Option<i64>,
    ) -> Result<Vec<Delivery<P>>, MembershipError> {
        let v = self.vrf_mut(vrf);
        if v.subscribers.contains_key(&s) {
            return Err(MembershipError::DuplicateSubscribe(vrf.to_owned()));
        }
        v.subscribers.insert(s, instance_id);
        let name = v.name.clone();
        let dump = v
            .routes
            .iter()
            .filter_map(|(key, paths)| {
                let seen = view(paths, s);
                (!seen.is_empty()).then(|| Delivery::Reach {
                    to: s,
                    vrf: name.clone(),
                    key: key.clone(),
                    paths: seen,
                })
            })
            .collect();
        self.sessions.entry(s).or_default().push(name);
        Ok(dump)
    }

    /// Unsubscribes `s` from `vrf`, withdrawing its routes there.
    pub fn unsubscribe(
        &mut self,
        s: SessionId,
        vrf: &str,
    ) -> Result<Vec<Delivery<P>>, MembershipError> {
        let subscribed = self
            .vrfs
            .get(vrf)
            .is_some_and(|v| v.subscribers.contains_key(&s));
        if !subscribed {
            return Err(MembershipError::NotSubscribed(vrf.to_owned()));
        }
        let out = self.withdraw_all_in(s, vrf);
        if let Some(v) = self.vrfs.get_mut(vrf) {
            v.subscribers.remove(&s);
        }
        if let Some(list) = self.sessions.get_mut(&s) {
            list.retain(|n| &**n != vrf);
        }
        self.gc(vrf);
        Ok(out)
    }

    /// Adds or replaces (`Some`) or removes (`None`) the path of `s` for `key` in `vrf`.
    pub fn update(
        &mut self,
        s: SessionId,
        vrf: &str,
        key: RouteKey,
        path: Option<P>,
    ) -> Result<Vec<Delivery<P>>, MembershipError> {
        let Some(v) = self.vrfs.get_mut(vrf) else {
            return Err(MembershipError::PublishWithoutSubscribe(vrf.to_owned()));
        };
        match v.subscribers.get(&s) {
            None => return Err(MembershipError::PublishWithoutSubscribe(vrf.to_owned())),
            Some(None) => return Err(MembershipError::NoInstanceId(vrf.to_owned())),
            Some(Some(_)) => {}
        }
        let out = v.change(s, key, path);
        self.gc(vrf);
        Ok(out)
    }

    /// Removes everything of a session that ended: its paths (told to the other
    /// subscribers) and its subscriptions.
    pub fn remove_session(&mut self, s: SessionId) -> Vec<Delivery<P>> {
        let Some(vrfs) = self.sessions.remove(&s) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for name in vrfs {
            out.extend(self.withdraw_all_in(s, &name));
            if let Some(v) = self.vrfs.get_mut(&name) {
                v.subscribers.remove(&s);
            }
            self.gc(&name);
        }
        out
    }

    /// The VRFs `s` is subscribed to.
    pub fn subscriptions(&self, s: SessionId) -> &[Arc<str>] {
        self.sessions.get(&s).map(Vec::as_slice).unwrap_or(&[])
    }

    /// Every route of a VRF with all its paths, for introspection.
    pub fn routes(&self, vrf: &str) -> Vec<(RouteKey, Vec<(SessionId, P)>)> {
        self.vrfs
            .get(vrf)
            .map(|v| {
                v.routes
                    .iter()
                    .map(|(k, p)| (k.clone(), p.iter().map(|(s, p)| (*s, p.clone())).collect()))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// VRF names with their subscriber counts, sorted.
    pub fn vrf_names(&self) -> Vec<(Arc<str>, usize)> {
        let mut v: Vec<_> = self
            .vrfs
            .values()
            .map(|v| (v.name.clone(), v.subscribers.len()))
            .collect();
        v.sort();
        v
    }

    /// Table size.
    pub fn stats(&self) -> RibStats {
        let mut st = RibStats {
            vrfs: self.vrfs.len(),
            ..RibStats::default()
        };
        for v in self.vrfs.values() {
            st.routes += v.routes.len();
            st.paths += v.routes.values().map(BTreeMap::len).sum::<usize>();
        }
        st
    }

    fn vrf_mut(&mut self, vrf: &str) -> &mut Vrf<P> {
        if !self.vrfs.contains_key(vrf) {
            let name: Arc<str> = Arc::from(vrf);
            self.vrfs.insert(
                name.clone(),
                Vrf {
                    name,
                    subscribers: BTreeMap::new(),
                    routes: BTreeMap::new(),
                },
            );
        }
        // Inserted above when missing.
        self.vrfs.get_mut(vrf).expect("vrf present")
    }

    fn withdraw_all_in(&mut self, s: SessionId, vrf: &str) -> Vec<Delivery<P>> {
        let Some(v) = self.vrfs.get_mut(vrf) else {
            return Vec::new();
        };
        let keys: Vec<RouteKey> = v
            .routes
            .iter()
            .filter(|(_, paths)| paths.contains_key(&s))
            .map(|(k, _)| k.clone())
            .collect();
        let mut out = Vec::new();
        for k in keys {
            out.extend(v.change(s, k, None));
        }
        out
    }

    /// Drops a VRF with neither subscribers nor routes.
    fn gc(&mut self, vrf: &str) {
        if self
            .vrfs
            .get(vrf)
            .is_some_and(|v| v.subscribers.is_empty() && v.routes.is_empty())
        {
            self.vrfs.remove(vrf);
        }
    }
}

impl<P: Clone> Vrf<P> {
    /// Applies one path change and computes what each other subscriber must be told.
    fn change(&mut self, s: SessionId, key: RouteKey, path: Option<P>) -> Vec<Delivery<P>> {
        let paths = self.routes.entry(key.clone()).or_default();
        let had_before: Vec<SessionId> = paths.keys().copied().collect();
        match path {
            Some(p) => {
                paths.insert(s, p);
            }
            None => {
                if paths.remove(&s).is_none() {
                    if paths.is_empty() {
                        self.routes.remove(&key);
                    }
                    return Vec::new(); // withdrawing a path that was never there
                }
            }
        }
        let mut out = Vec::with_capacity(self.subscribers.len());
        for &to in self.subscribers.keys() {
            if to == s {
                continue; // its own path: its view of the route did not change
            }
            let seen = view(paths, to);
            if seen.is_empty() {
                let saw_before = had_before.iter().any(|p| *p != to);
                if saw_before {
                    out.push(Delivery::Unreach {
                        to,
                        vrf: self.name.clone(),
                        key: key.clone(),
                    });
                }
            } else {
                out.push(Delivery::Reach {
                    to,
                    vrf: self.name.clone(),
                    key: key.clone(),
                    paths: seen,
                });
            }
        }
        if paths.is_empty() {
            self.routes.remove(&key);
        }
        out
    }
}

/// The paths of a route as subscriber `to` sees them: all but its own.
fn view<P: Clone>(paths: &BTreeMap<SessionId, P>, to: SessionId) -> Vec<(SessionId, P)> {
    paths
        .iter()
        .filter(|(s, _)| **s != to)
        .map(|(s, p)| (*s, p.clone()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(p: &str) -> RouteKey {
        RouteKey {
            family: Family::Inet,
            prefix: p.parse().expect("prefix"),
        }
    }

    fn reach_to(d: &[Delivery<&'static str>]) -> Vec<(SessionId, Vec<&'static str>)> {
        d.iter()
            .filter_map(|d| match d {
                Delivery::Reach { to, paths, .. } => {
                    Some((*to, paths.iter().map(|(_, p)| *p).collect()))
                }
                Delivery::Unreach { .. } => None,
            })
            .collect()
    }

    fn unreach_to(d: &[Delivery<&'static str>]) -> Vec<SessionId> {
        d.iter()
            .filter_map(|d| match d {
                Delivery::Unreach { to, .. } => Some(*to),
                Delivery::Reach { .. } => None,
            })
            .collect()
    }

    #[test]
    fn publish_reaches_other_subscribers_not_self() {
        let mut rib = Rib::new();
        assert!(rib.subscribe(1, "red", Some(1)).expect("sub").is_empty());
        assert!(rib.subscribe(2, "red", Some(1)).expect("sub").is_empty());
        rib.subscribe(3, "blue", Some(2)).expect("sub");
        let d = rib
            .update(1, "red", key("10.0.0.1/32"), Some("a"))
            .expect("pub");
        assert_eq!(reach_to(&d), vec![(2, vec!["a"])]);
    }

    #[test]
    fn subscribe_dumps_existing_routes_of_others() {
        let mut rib = Rib::new();
        rib.subscribe(1, "red", Some(1)).expect("sub");
        rib.update(1, "red", key("10.0.0.1/32"), Some("a"))
            .expect("pub");
        rib.update(1, "red", key("10.0.0.2/32"), Some("b"))
            .expect("pub");
        let dump = rib.subscribe(2, "red", Some(1)).expect("sub");
        assert_eq!(reach_to(&dump), vec![(2, vec!["a"]), (2, vec!["b"])]);
    }

    #[test]
    fn ecmp_paths_and_partial_withdraw() {
        let mut rib = Rib::new();
        for s in 1..=3 {
            rib.subscribe(s, "red", Some(1)).expect("sub");
        }
        rib.update(1, "red", key("10.0.0.9/32"), Some("a"))
            .expect("pub");
        let d = rib
            .update(2, "red", key("10.0.0.9/32"), Some("b"))
            .expect("pub");
        // 1 now sees b (its own excluded), 3 sees both; 2 is not told about its own path.
        assert_eq!(reach_to(&d), vec![(1, vec!["b"]), (3, vec!["a", "b"])]);
        let d = rib
            .update(1, "red", key("10.0.0.9/32"), None)
            .expect("withdraw");
        assert_eq!(reach_to(&d), vec![(3, vec!["b"])]);
        // 2 saw a before and sees nothing now.
        assert_eq!(unreach_to(&d), vec![2]);
        assert_eq!(rib.stats().paths, 1);
    }

    #[test]
    fn membership_violations() {
        let mut rib: Rib<&str> = Rib::new();
        assert_eq!(
            rib.update(1, "red", key("10.0.0.1/32"), Some("a")),
            Err(MembershipError::PublishWithoutSubscribe("red".into()))
        );
        rib.subscribe(1, "red", Some(1)).expect("sub");
        assert_eq!(
            rib.subscribe(1, "red", Some(1)),
            Err(MembershipError::DuplicateSubscribe("red".into()))
        );
        assert_eq!(
            rib.unsubscribe(1, "blue"),
            Err(MembershipError::NotSubscribed("blue".into()))
        );
        rib.subscribe(1, "green", None).expect("sub without id");
        assert_eq!(
            rib.update(1, "green", key("10.0.0.1/32"), Some("a")),
            Err(MembershipError::NoInstanceId("green".into()))
        );
    }

    #[test]
    fn session_down_withdraws_everything_and_forgets_it() {
        let mut rib = Rib::new();
        rib.subscribe(1, "red", Some(1)).expect("sub");
        rib.subscribe(1, "blue", Some(2)).expect("sub");
        rib.subscribe(2, "red", Some(1)).expect("sub");
        rib.subscribe(2, "blue", Some(2)).expect("sub");
        rib.update(1, "red", key("10.0.0.1/32"), Some("a"))
            .expect("pub");
        rib.update(1, "blue", key("10.0.0.1/32"), Some("a"))
            .expect("pub");
        let d = rib.remove_session(1);
        assert_eq!(unreach_to(&d), vec![2, 2]);
        assert_eq!(rib.stats().routes, 0);
        assert!(rib.subscriptions(1).is_empty());
        // A new session may subscribe again; no stale state.
        assert!(rib.subscribe(1, "red", Some(1)).expect("sub").is_empty());
    }

    #[test]
    fn unsubscribe_withdraws_routes_in_that_vrf_only() {
        let mut rib = Rib::new();
        rib.subscribe(1, "red", Some(1)).expect("sub");
        rib.subscribe(1, "blue", Some(2)).expect("sub");
        rib.subscribe(2, "red", Some(1)).expect("sub");
        rib.update(1, "red", key("10.0.0.1/32"), Some("a"))
            .expect("pub");
        rib.update(1, "blue", key("10.0.0.2/32"), Some("b"))
            .expect("pub");
        let d = rib.unsubscribe(1, "red").expect("unsub");
        assert_eq!(unreach_to(&d), vec![2]);
        assert_eq!(rib.stats().routes, 1);
        assert_eq!(
            rib.update(1, "red", key("10.0.0.1/32"), Some("a")),
            Err(MembershipError::PublishWithoutSubscribe("red".into()))
        );
    }

    #[test]
    fn withdrawing_unknown_path_is_silent() {
        let mut rib: Rib<&str> = Rib::new();
        rib.subscribe(1, "red", Some(1)).expect("sub");
        rib.subscribe(2, "red", Some(1)).expect("sub");
        assert!(
            rib.update(1, "red", key("10.0.0.1/32"), None)
                .expect("ok")
                .is_empty()
        );
        assert_eq!(rib.stats().routes, 0);
    }
}
