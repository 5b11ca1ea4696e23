//! Loopback ports for the servers the tests start, chosen outside the
//! kernel's ephemeral range.
//!
//! Asking the kernel for a free port (`bind` to port 0, read it, release it)
//! hands out a port from the ephemeral range, the same range every outgoing
//! connection takes its source port from. Between the release and the
//! server's own `bind`, a client of another server (a Consul agent joining
//! its peers, a ZooKeeper follower dialling the leader) can take that port as
//! the source of a connection, and the server then fails with "address
//! already in use". Ports below the ephemeral range are never handed out
//! that way: only an explicit `bind` takes one.
//!
//! So [`free_loopback_ports`] walks a window below the ephemeral range
//! (read from `/proc/sys/net/ipv4/ip_local_port_range`), from a start that
//! differs per process, and returns ports it could bind for TCP and UDP on
//! 127.0.0.1 a moment ago. A process-wide counter makes sure no two calls of
//! one process return the same port, even before the first caller's server
//! has bound it. The fixed ports of `scripts/services.sh` and
//! `scripts/tls-services.sh` (12xxx–18xxx) are below the window.
//!
//! This file has no dependencies beyond `std`: the test suites of the other
//! crates include it by path.

use std::io;
use std::net::{Ipv4Addr, TcpListener, UdpSocket};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// The lowest port handed out: above every fixed port the scripts use.
pub const WINDOW_LOW: u16 = 20_000;
/// Ports handed out by one process before its walk wraps around.
const WINDOW_MIN_SPAN: u16 = 2_000;

/// Candidates tried by this process so far (its offset into the window).
static TRIED: AtomicU32 = AtomicU32::new(0);

/// `n` distinct loopback ports nothing was bound to a moment ago (TCP and
/// UDP), outside the ephemeral range; different from every port an earlier
/// call in this process returned (until the window wraps).
pub fn free_loopback_ports(n: usize) -> io::Result<Vec<u16>> {
    let (low, high) = window();
    let span = u32::from(high - low);
    let start = process_offset() % span;
    let mut ports = Vec::with_capacity(n);
    // Every candidate in the window at most once per call.
    for _ in 0..span {
        if ports.len() == n {
            break;
        }
        let k = TRIED.fetch_add(1, Ordering::Relaxed);
        let offset = (start + k) % span;
        // `offset < span <= u16::MAX - low`, so the sum fits.
        let port = low + offset as u16;
        if bindable(port) {
            ports.push(port);
        }
    }
    if ports.len() < n {
        return Err(io::Error::new(
            io::ErrorKind::AddrInUse,
            format!("fewer than {n} free loopback ports in {low}..{high}"),
        ));
    }
    Ok(ports)
}

/// One port as [`free_loopback_ports`] picks them.
pub fn free_loopback_port() -> io::Result<u16> {
    free_loopback_ports(1).map(|p| p[0])
}

/// `[low, high)`: below the ephemeral range when there is room there,
/// otherwise above it.
fn window() -> (u16, u16) {
    let (eph_low, eph_high) = ephemeral_range().unwrap_or((32_768, 60_999));
    if eph_low >= WINDOW_LOW.saturating_add(WINDOW_MIN_SPAN) {
        (WINDOW_LOW, eph_low)
    } else if eph_high <= u16::MAX - WINDOW_MIN_SPAN {
        (eph_high + 1, u16::MAX)
    } else {
        // The ephemeral range covers (almost) everything: nothing is safe,
        // take the window anyway.
        (WINDOW_LOW, WINDOW_LOW + WINDOW_MIN_SPAN)
    }
}

/// The kernel's ephemeral port range, where it can be read.
pub fn ephemeral_range() -> Option<(u16, u16)> {
    let text = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").ok()?;
    let mut it = text.split_whitespace().map(|s| s.parse::<u16>().ok());
    Some((it.next()??, it.next()??))
}

/// A start that differs between processes running at the same time.
fn process_offset() -> u32 {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    std::process::id()
        .wrapping_mul(7_919)
        .wrapping_add(nanos / 1_000)
}

fn bindable(port: u16) -> bool {
    TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok()
        && UdpSocket::bind((Ipv4Addr::LOCALHOST, port)).is_ok()
}
