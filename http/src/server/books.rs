//! What the server knows of itself: each connection's phase (what the inspector shows and
//! what a graceful stop reads), the counts, and the latency histograms by status class.

use std::net::SocketAddr;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use greenhub::GreenThread;
use hdrhistogram::Histogram;
use http::{Method, Uri};
use parking_lot::Mutex;

/// Where a connection is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Phase {
    /// The TLS handshake.
    Handshake,
    /// Waiting for a request: a graceful stop may close it now.
    Idle,
    /// Reading a request head.
    Reading,
    /// A handler runs (the request is in `Connection::request`).
    Handling,
    /// Writing the response.
    Writing,
    /// Handed over by an upgrade (a WebSocket): the handler's function runs.
    Upgraded,
    /// Closing: the last answer is out, what the client still sends is read and dropped for
    /// up to two seconds, so that a reset does not destroy the answer before the client has
    /// read it. A graceful stop lets it end by itself.
    Closing,
    /// Claimed by a graceful stop, which kills it: the connection takes no more requests.
    Stopping,
}

impl Phase {
    const ALL: [Phase; 8] = [
        Phase::Handshake,
        Phase::Idle,
        Phase::Reading,
        Phase::Handling,
        Phase::Writing,
        Phase::Upgraded,
        Phase::Closing,
        Phase::Stopping,
    ];

    fn name(self) -> &'static str {
        match self {
            Phase::Handshake => "handshake",
            Phase::Idle => "idle",
            Phase::Reading => "reading",
            Phase::Handling => "handling",
            Phase::Writing => "writing",
            Phase::Upgraded => "upgraded",
            Phase::Closing => "closing",
            Phase::Stopping => "stopping",
        }
    }
}

/// The request a handler is answering.
#[derive(Clone, Debug)]
pub(crate) struct InFlight {
    pub method: Method,
    pub uri: Uri,
    pub since: Instant,
}

/// One connection, shared by its green thread and the server.
///
/// The phase is an atomic that a graceful stop reads without a lock. Once its grace for idle
/// connections has passed, a stop claims an idle (or handshaking) connection by swapping its
/// phase to `Stopping`, and the connection leaves `Idle` for `Reading` by a swap too: only
/// one of them wins, so a connection that has started on a request is never killed for being
/// idle.
pub(crate) struct Connection {
    pub id: u64,
    pub peer: SocketAddr,
    pub since: Instant,
    /// Its green thread, to kill on a stop.
    pub thread: OnceLock<GreenThread<()>>,
    phase: AtomicU8,
    /// The request in flight, valid while the phase is `Handling`.
    pub request: Mutex<Option<InFlight>>,
    pub requests: AtomicU64,
}

impl Connection {
    pub(crate) fn new(id: u64, peer: SocketAddr) -> Connection {
        Connection {
            id,
            peer,
            since: Instant::now(),
            thread: OnceLock::new(),
            phase: AtomicU8::new(Phase::Handshake as u8),
            request: Mutex::new(None),
            requests: AtomicU64::new(0),
        }
    }

    pub(crate) fn set(&self, phase: Phase) {
        self.phase.store(phase as u8, Ordering::SeqCst);
    }

    pub(crate) fn phase(&self) -> Phase {
        Phase::ALL[self.phase.load(Ordering::SeqCst) as usize]
    }

    /// The connection leaves `Idle` for `Reading`; false if a stop claimed it first.
    pub(crate) fn start_reading(&self) -> bool {
        self.phase
            .compare_exchange(
                Phase::Idle as u8,
                Phase::Reading as u8,
                Ordering::SeqCst,
                Ordering::SeqCst,
            )
            .is_ok()
    }

    /// A graceful stop claims the connection if it is idle or handshaking (then it may be
    /// killed); false if it is busy with a request or closing.
    pub(crate) fn claim_for_stop(&self) -> bool {
        [Phase::Idle, Phase::Handshake].into_iter().any(|from| {
            self.phase
                .compare_exchange(
                    from as u8,
                    Phase::Stopping as u8,
                    Ordering::SeqCst,
                    Ordering::SeqCst,
                )
                .is_ok()
        })
    }

    /// Enters `Handling` for this request.
    pub(crate) fn handling(&self, request: InFlight) {
        *self.request.lock() = Some(request);
        self.set(Phase::Handling);
    }
}

/// Latency histograms are kept in this many shards (a connection records into one, by its
/// id), so that connections on different workers rarely share a lock.
const SHARDS: usize = 8;

/// Counts and latency histograms (microseconds) by status class.
pub(crate) struct Books {
    pub accepted: AtomicU64,
    pub requests: AtomicU64,
    /// Requests refused before a handler saw them (malformed, too large, too slow).
    pub refused: AtomicU64,
    pub panics: AtomicU64,
    shards: [Mutex<[Histogram<u64>; 5]>; SHARDS],
}

impl Books {
    pub(crate) fn new() -> Books {
        let h = || Histogram::new_with_bounds(1, 3_600_000_000, 2).expect("valid bounds");
        Books {
            accepted: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            panics: AtomicU64::new(0),
            shards: std::array::from_fn(|_| Mutex::new([h(), h(), h(), h(), h()])),
        }
    }

    /// A response went out on connection `conn` with `status` after `took`.
    pub(crate) fn answered(&self, conn: u64, status: u16, took: Duration) {
        let class = (usize::from(status / 100)).clamp(1, 5) - 1;
        let us = u64::try_from(took.as_micros()).unwrap_or(u64::MAX).max(1);
        self.shards[conn as usize % SHARDS].lock()[class].saturating_record(us);
    }

    /// The shards merged.
    fn classes(&self) -> [Histogram<u64>; 5] {
        let mut all: [Histogram<u64>; 5] = std::array::from_fn(|_| {
            Histogram::new_with_bounds(1, 3_600_000_000, 2).expect("valid bounds")
        });
        for shard in &self.shards {
            let shard = shard.lock();
            for (sum, h) in all.iter_mut().zip(shard.iter()) {
                let _ = sum.add(h);
            }
        }
        all
    }

    /// The detail of the snapshot: latency by class, requests in flight, connections.
    pub(crate) fn detail(&self, conns: &[std::sync::Arc<Connection>]) -> serde_json::Value {
        let now = Instant::now();
        let latency: serde_json::Map<String, serde_json::Value> = self
            .classes()
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
            let phase = c.phase();
            let request = c.request.lock().clone();
            if let (Phase::Handling, Some(r)) = (phase, request) {
                in_flight.push(serde_json::json!({
                    "connection": c.id,
                    "thread": c.thread.get().map(|t| t.id()),
                    "peer": c.peer.to_string(),
                    "method": r.method.as_str(),
                    "target": r.uri.to_string(),
                    "for_us": now.saturating_duration_since(r.since).as_micros() as u64,
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
        let classes = self.classes();
        std::array::from_fn(|i| classes[i].len())
    }
}
