//! Retry pacing between failed store calls: the store's own
//! [`anykv::retry::Backoff`], so every retry loop shares one policy.

pub(crate) use anykv::retry::Backoff;
