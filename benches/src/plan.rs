//! Scenarios and the per-agent plan derived from them: which VRF (or pubsub node) each
//! simulated agent joins, which routes it publishes, and how many it must end up holding.
//!
//! Agent `i` is named `bench-agent-<i>`; route `k` is the host route `10.0.0.0 + k + 1`
//! (see [`crate::scan::route_prefix`]); agent `i` publishes routes `i*M .. i*M+M` (in
//! fan-out only agent 0 publishes). The plan is sent to worker processes as JSON.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// The load shapes (README "Scenarios").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Scenario {
    /// One publisher, N subscribers, one VRF: N × M deliveries.
    Fanout,
    /// N agents in one VRF, each publishing M routes: N × (N−1) × M deliveries.
    Mesh,
    /// N agents spread round-robin over V VRFs, each publishing M routes.
    Vrfs,
    /// As `vrfs` (mutual TLS), then every agent drops its connection at once and reconnects;
    /// measures the time until every agent holds every route again.
    Storm,
    /// N agents connect and subscribe (V VRFs), publish nothing: set-up rate and memory per
    /// session on the server.
    Idle,
}

impl Scenario {
    /// The name used in reports.
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Fanout => "fanout",
            Scenario::Mesh => "mesh",
            Scenario::Vrfs => "vrfs",
            Scenario::Storm => "storm",
            Scenario::Idle => "idle",
        }
    }
}

/// The stream profile the simulated clients speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Profile {
    /// The Contrail agent dialect (subscribe to VRFs, publish/collection IQ pairs).
    Contrail,
    /// RFC 6120 + XEP-0060: SASL EXTERNAL, bind, pubsub subscribe/publish to one node.
    Rfc,
}

/// Everything a worker needs to run its slice of agents.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Plan {
    /// The scenario.
    pub scenario: Scenario,
    /// Agents in the whole run (fan-out: subscribers + the publisher).
    pub agents: u32,
    /// Routes (items) per publishing agent.
    pub routes: u32,
    /// VRFs (`vrfs`, `storm`, `idle`).
    pub vrfs: u32,
    /// STARTTLS with client certificates.
    pub tls: bool,
    /// Client profile.
    pub profile: Profile,
    /// The server.
    pub server: SocketAddr,
    /// Time origin shared by all processes (µs since the Unix epoch); publish timestamps are
    /// µs since this, carried in each route's `sequence-number`.
    pub epoch_us: u64,
    /// PKI directory (see [`crate::pki`]).
    pub pki_dir: PathBuf,
    /// RFC profile: the login domain.
    pub domain: String,
    /// RFC profile: the pubsub service JID.
    pub pubsub: String,
    /// RFC profile: the node subscribers subscribe to (Prosody, ejabberd: `bench`; our
    /// control node: the VRF name).
    pub node: String,
    /// RFC profile: the node items are published to (our control node: `1/1/<VRF>`).
    pub publish_node: String,
    /// RFC profile: the publisher subscribes too (our control node accepts routes only in a
    /// VRF the client subscribed to, spec §6.5) and the node is not created first.
    pub publisher_subscribes: bool,
    /// RFC profile: publishes in flight before waiting for results.
    pub window: u32,
    /// Publisher pacing in routes per second (0: as fast as the socket takes them).
    pub rate: u32,
    /// Everything ends after this many seconds.
    pub timeout_s: u64,
    /// Keepalive period in seconds (hold time / 3).
    pub keepalive_s: u64,
    /// This worker's agents: `lo..hi`.
    pub lo: u32,
    /// See `lo`.
    pub hi: u32,
}

impl Plan {
    /// Agent `i`'s name (certificate CN, stream `from`, JID local part).
    pub fn agent_name(i: u32) -> String {
        format!("bench-agent-{i}")
    }

    /// The VRF (routing instance) name of VRF `v`.
    pub fn vrf_name(v: u32) -> String {
        format!("default-domain:bench:vn-{v}:vn-{v}")
    }

    fn vrf_count(&self) -> u32 {
        match self.scenario {
            Scenario::Fanout | Scenario::Mesh => 1,
            _ => self.vrfs.max(1),
        }
    }

    /// The VRF agent `i` joins.
    pub fn vrf_of(&self, i: u32) -> u32 {
        i % self.vrf_count()
    }

    /// How many routes agent `i` publishes.
    pub fn publishes(&self, i: u32) -> u32 {
        match self.scenario {
            Scenario::Fanout => {
                if i == 0 {
                    self.routes
                } else {
                    0
                }
            }
            Scenario::Mesh | Scenario::Vrfs | Scenario::Storm => self.routes,
            Scenario::Idle => 0,
        }
    }

    /// The index of agent `i`'s first route.
    pub fn route_base(&self, i: u32) -> u32 {
        i * self.routes
    }

    /// Route indexes in the whole run (the size of each agent's route bitmap).
    pub fn total_routes(&self) -> u32 {
        self.agents * self.routes
    }

    fn agents_in_vrf(&self, v: u32) -> u32 {
        let n = self.vrf_count();
        self.agents / n + u32::from(v < self.agents % n)
    }

    /// Routes agent `i` must hold at convergence: every route of every other agent in its
    /// VRF (a control node never reflects an agent's own routes).
    pub fn expected(&self, i: u32) -> u64 {
        match self.scenario {
            Scenario::Fanout => {
                if i == 0 {
                    0
                } else {
                    u64::from(self.routes)
                }
            }
            Scenario::Idle => 0,
            _ => u64::from(self.agents_in_vrf(self.vrf_of(i)) - 1) * u64::from(self.routes),
        }
    }

    /// Deliveries in the whole run (one phase).
    pub fn total_expected(&self) -> u64 {
        (0..self.agents).map(|i| self.expected(i)).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(scenario: Scenario, agents: u32, routes: u32, vrfs: u32) -> Plan {
        Plan {
            scenario,
            agents,
            routes,
            vrfs,
            tls: false,
            profile: Profile::Contrail,
            server: "127.0.0.1:1".parse().expect("addr"),
            epoch_us: 0,
            pki_dir: PathBuf::new(),
            domain: String::new(),
            pubsub: String::new(),
            node: String::new(),
            publish_node: String::new(),
            publisher_subscribes: false,
            window: 50,
            rate: 0,
            timeout_s: 1,
            keepalive_s: 30,
            lo: 0,
            hi: agents,
        }
    }

    #[test]
    fn expected_deliveries_per_scenario() {
        assert_eq!(plan(Scenario::Fanout, 11, 7, 1).total_expected(), 70);
        assert_eq!(plan(Scenario::Mesh, 10, 3, 1).total_expected(), 10 * 9 * 3);
        // 1000 agents over 100 VRFs: 10 per VRF.
        assert_eq!(plan(Scenario::Vrfs, 1000, 2, 100).expected(5), 18);
        // Uneven split: 7 agents over 3 VRFs (3, 2, 2).
        let p = plan(Scenario::Storm, 7, 1, 3);
        assert_eq!((p.expected(0), p.expected(1), p.expected(2)), (2, 1, 1));
        assert_eq!(plan(Scenario::Idle, 100, 5, 10).total_expected(), 0);
    }
}
