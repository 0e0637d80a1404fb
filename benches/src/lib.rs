//! End-to-end throughput benchmarks: the `loadgen` load generator and its parts, plus the
//! criterion micro-benchmarks in `benches/` (route-stream decode and encode).
//!
//! `loadgen` simulates N vrouter agents (or N RFC 6120 pubsub clients) over real TCP, with
//! TLS on or off, against a server it starts itself (our control node, Prosody or ejabberd)
//! pinned to one core, and reports set-up rate, convergence time, deliveries per second,
//! publish-to-delivery latency, the server's CPU seconds and memory, and bytes on the wire.
//!
//! - [`plan`]: scenarios and what each agent does and must receive;
//! - [`coord`]: the coordinator process (server, workers, phases, figures);
//! - [`worker`]: a worker process running a slice of the agents;
//! - [`agent`]: one simulated agent; [`client`]: its connection and negotiation;
//! - [`scan`]: the light route-notification scanner agents read with;
//! - [`servers`]: starting and stopping the servers; [`procstat`]: `/proc` figures;
//! - [`pki`]: cached certificates; [`hist`]: latency histograms; [`report`]: output;
//! - [`chart`]: the SVG chart of the side-by-side comparison.
//!
//! See `benches/README.md` for the scenarios, the commands and the results.

pub mod agent;
pub mod chart;
pub mod client;
pub mod coord;
pub mod hist;
pub mod pki;
pub mod plan;
pub mod procstat;
pub mod report;
pub mod scan;
pub mod servers;
pub mod worker;
