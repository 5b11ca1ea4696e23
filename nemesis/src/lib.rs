//! Fault injection for anykv's locks and elections: a fault-injecting TCP
//! proxy on loopback, real clusters started as child processes, a workload
//! that records every leadership term, and a checker over the recorded
//! history. `scripts/nemesis.sh` drives it.

pub mod checker;
pub mod cluster;
pub mod driver;
pub mod history;
pub mod ports;
pub mod proxy;
pub mod report;
pub mod resource;
pub mod target;
pub mod workload;
