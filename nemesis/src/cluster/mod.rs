//! Real clusters started as child processes on loopback, one module per backend.

pub mod consul;
