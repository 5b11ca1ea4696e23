//! Real clusters on loopback, one module per backend, with the same shape:
//! start in a directory, per-member client proxies, minority partitions
//! where the store has peers, process faults on every member.

pub mod consul;
pub mod etcd;
pub mod process;
pub mod redis;
pub mod zookeeper;
