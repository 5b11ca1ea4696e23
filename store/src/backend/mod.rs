//! Backend implementations, one module per backend, each behind the cargo
//! feature of the same name (`memory` is always compiled).

pub mod memory;

#[cfg(feature = "consul")]
pub mod consul;
#[cfg(feature = "etcd")]
pub mod etcd;
#[cfg(feature = "redis")]
pub mod redis;
#[cfg(feature = "zookeeper")]
pub mod zookeeper;
