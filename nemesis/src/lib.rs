//! Fault injection for anykv's locks and elections: a fault-injecting TCP
//! proxy on loopback, real clusters started as child processes, a workload
//! that records every leadership term, and a checker over the recorded
//! history. `scripts/nemesis.sh` drives it.

pub mod cluster;
pub mod proxy;
