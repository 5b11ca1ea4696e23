//! Real clusters started as child processes, one module per backend.

pub mod zookeeper;
