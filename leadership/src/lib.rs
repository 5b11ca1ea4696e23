//! Leader election over any [`anykv::Store`].
//!
//! This crate will hold `Candidate` (campaign for a key, stream elected /
//! deposed events, fencing token per term) and `Follower` (stream the current
//! leader of a key). It builds on [`anykv::Lock`], so it works unchanged on
//! every backend.

pub use anykv;
