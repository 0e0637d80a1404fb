//! The operators' kit: `pki` creates a CA and issues node certificates where the Contrail
//! keys expect them; `lab` (with the daemons) runs a local control node, DNS node and agents.

pub mod lab;
pub mod pki;
pub mod reference;
