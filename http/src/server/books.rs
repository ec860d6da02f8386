//! What the server knows of itself: each connection's phase (what the inspector shows and
//! what a graceful stop reads), the counts, and the latency histograms by status class.

use std::net::SocketAddr;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use greenhub::GreenThread;
use hdrhistogram::Histogram;
use http::{Method, Uri};
use parking_lot::Mutex;

/// Where a connection is in its life.
#[derive(Clone, Debug)]
pub(crate) enum Phase {
    /// The TLS handshake.
    Handshake,
    /// Waiting for a request: a graceful stop may close it now.
    Idle,
    /// Reading a request head.
    Reading,
    /// A handler runs.
    Handling {
        method: Method,
        uri: Uri,
        since: Instant,
    },
    /// Writing the response.
    Writing,
    /// Handed over by an upgrade (a WebSocket): the handler's function runs.
    Upgraded,
    /// Closing: the last answer is out, what the client still sends is read and dropped. A
    /// graceful stop may close it now.
    Closing,
}

impl Phase {
    fn name(&self) -> &'static str {
        match self {
            Phase::Handshake => "handshake",
            Phase::Idle => "idle",
            Phase::Reading => "reading",
            Phase::Handling { .. } => "handling",
            Phase::Writing => "writing",
            Phase::Closing => "closing",
            Phase::Upgraded => "upgraded",
        }
    }
}

/// One connection, shared by its green thread and the server.
pub(crate) struct Connection {
    pub id: u64,
    pub peer: SocketAddr,
    pub since: Instant,
    /// Its green thread, to kill on a stop.
    pub thread: OnceLock<GreenThread<()>>,
    pub phase: Mutex<Phase>,
    pub requests: AtomicU64,
}

impl Connection {
    pub(crate) fn new(id: u64, peer: SocketAddr) -> Connection {
        Connection {
            id,
            peer,
            since: Instant::now(),
            thread: OnceLock::new(),
            phase: Mutex::new(Phase::Handshake),
            requests: AtomicU64::new(0),
        }
    }

    pub(crate) fn set(&self, phase: Phase) {
        *self.phase.lock() = phase;
    }
}

/// Counts and latency histograms (microseconds) by status class.
pub(crate) struct Books {
    pub accepted: AtomicU64,
    pub requests: AtomicU64,
    /// Requests refused before a handler saw them (malformed, too large, too slow).
    pub refused: AtomicU64,
    pub panics: AtomicU64,
    classes: Mutex<[Histogram<u64>; 5]>,
}

impl Books {
    pub(crate) fn new() -> Books {
        let h = || Histogram::new_with_bounds(1, 3_600_000_000, 2).expect("valid bounds");
        Books {
            accepted: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            panics: AtomicU64::new(0),
            classes: Mutex::new([h(), h(), h(), h(), h()]),
        }
    }

    /// A response went out with `status` after `took`.
    pub(crate) fn answered(&self, status: u16, took: Duration) {
        let class = (usize::from(status / 100)).clamp(1, 5) - 1;
        let us = u64::try_from(took.as_micros()).unwrap_or(u64::MAX).max(1);
        self.classes.lock()[class].saturating_record(us);
    }

    /// The detail of the snapshot: latency by class, requests in flight, connections.
    pub(crate) fn detail(&self, conns: &[std::sync::Arc<Connection>]) -> serde_json::Value {
        let now = Instant::now();
        let latency: serde_json::Map<String, serde_json::Value> = self
            .classes
            .lock()
            .iter()
            .enumerate()
            .filter(|(_, h)| !h.is_empty())
            .map(|(i, h)| {
                (
                    format!("{}xx", i + 1),
                    serde_json::json!({
                        "count": h.len(),
                        "p50_us": h.value_at_quantile(0.5),
                        "p99_us": h.value_at_quantile(0.99),
                        "max_us": h.max(),
                    }),
                )
            })
            .collect();
        let mut in_flight = Vec::new();
        let mut connections = Vec::new();
        for c in conns {
            let phase = c.phase.lock().clone();
            if let Phase::Handling { method, uri, since } = &phase {
                in_flight.push(serde_json::json!({
                    "connection": c.id,
                    "thread": c.thread.get().map(|t| t.id()),
                    "peer": c.peer.to_string(),
                    "method": method.as_str(),
                    "target": uri.to_string(),
                    "for_us": now.saturating_duration_since(*since).as_micros() as u64,
                }));
            }
            if connections.len() < 1000 {
                connections.push(serde_json::json!({
                    "id": c.id,
                    "thread": c.thread.get().map(|t| t.id()),
                    "peer": c.peer.to_string(),
                    "phase": phase.name(),
                    "requests": c.requests.load(Ordering::Relaxed),
                    "age_us": now.saturating_duration_since(c.since).as_micros() as u64,
                }));
            }
        }
        serde_json::json!({
            "latency": latency,
            "in_flight": in_flight,
            "connections": connections,
        })
    }

    /// Responses by class, as totals.
    pub(crate) fn by_class(&self) -> [u64; 5] {
        let classes = self.classes.lock();
        std::array::from_fn(|i| classes[i].len())
    }
}
