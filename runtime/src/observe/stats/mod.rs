//! The HTTP stats endpoint, for monitoring: what `inspector` shows, as JSON and as Prometheus
//! metrics.
//!
//! Off unless an address is configured ([`Config::stats_addr`](crate::Config::stats_addr) or
//! `GREENHUB_STATS_ADDR`; a bare port means loopback). Served by one OS thread
//! (`greenhub-stats`), so it answers while every worker is blocked, and no client can hold
//! it: see `http.rs` for the limits each connection lives by.
//!
//! Anyone who can connect to the address reads it: on loopback, every local user. It shows
//! thread and object names, spawn sites and counts, never data the threads hold. Binding
//! another address is reported as a warning.
//!
//! | path | answer |
//! |---|---|
//! | `/stats` | the snapshot without its per-thread lists: totals, runtime, workers, blocked-worker reports, objects (pools) |
//! | `/snapshot` | the whole `Snapshot`; `?state=waiting` (or `running`, `scheduled`) and `?name=text` keep only matching threads |
//! | `/metrics` | Prometheus text exposition (`metrics.rs`): green threads by state, spawns and ends, switches, timers, descriptors, blocked workers, objects by kind and name, pools' latencies, and the `process_*` metrics |
//!
//! The JSON is the `Snapshot` schema, versioned by `SCHEMA_VERSION`.
//!
//! ```no_run
//! greenhub::Config::new()
//!     .stats_addr(Some("127.0.0.1:9100".parse().unwrap()))
//!     .init()
//!     .unwrap();
//! // curl 127.0.0.1:9100/metrics
//! ```

mod metrics;
mod process;

use std::net::{SocketAddr, TcpListener};
use std::sync::{LazyLock, OnceLock};

use parking_lot::Mutex;

use serde::Serialize;

use greenhub_snapshot::{
    BlockedInfo, ObjectInfo, RuntimeInfo, Snapshot, ThreadState, Totals, WorkerInfo,
};

use crate::core::quiescence;
use crate::core::report;
use crate::observe::snapshot::{overview, snapshot};

use greenhub_stats_http::{Answer, Limits};

static ADDR: OnceLock<SocketAddr> = OnceLock::new();

/// The address the stats endpoint listens on, once the runtime has started it.
pub(crate) fn local_addr() -> Option<SocketAddr> {
    ADDR.get().copied()
}

pub(crate) fn start(addr: SocketAddr) {
    let listener = match TcpListener::bind(addr) {
        Ok(l) => l,
        Err(e) => {
            report::warn(&format!(
                "greenhub: cannot serve stats on {addr}: {e} (set GREENHUB_STATS_ADDR to a free \
                 address)"
            ));
            return;
        }
    };
    let bound = listener.local_addr().unwrap_or(addr);
    let _ = ADDR.set(bound);
    if let Some(warning) = exposure(bound) {
        report::warn(&warning);
    }
    let spawned = std::thread::Builder::new()
        .name("greenhub-stats".into())
        .spawn(move || {
            let _own = quiescence::own_thread();
            greenhub_stats_http::serve(listener, Limits::default(), answer, report::warn)
        });
    if let Err(e) = spawned {
        report::warn(&format!("greenhub: cannot start the stats thread: {e}"));
    }
}

/// The warning for an address others than local users can reach.
fn exposure(bound: SocketAddr) -> Option<String> {
    (!bound.ip().is_loopback()).then(|| {
        format!(
            "greenhub: the stats endpoint listens on {bound}, not on loopback: whoever can reach \
             that address can read every thread's name and spawn site (bind 127.0.0.1 and put \
             an authenticating proxy in front to publish it)"
        )
    })
}

const JSON: &str = "application/json";
const PROMETHEUS: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The answer to a GET or HEAD request for `target`.
fn answer(target: &str) -> Answer {
    let (status, content_type, body) = route(target);
    Answer {
        status,
        content_type,
        body,
    }
}

fn route(target: &str) -> (u16, &'static str, String) {
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    match path {
        "/stats" => (200, JSON, to_json(&Stats::from(overview()))),
        "/snapshot" => match filtered(query) {
            Ok(snap) => (200, JSON, to_json(&snap)),
            Err(why) => (400, JSON, error(&why)),
        },
        "/metrics" => {
            // Only the stats thread scrapes: the lock is never contended.
            static LEDGER: LazyLock<Mutex<metrics::Ledger>> = LazyLock::new(Default::default);
            let text = metrics::metrics(&overview(), &mut LEDGER.lock());
            (200, PROMETHEUS, text)
        }
        _ => (
            404,
            JSON,
            error("no such path: try /stats, /snapshot or /metrics"),
        ),
    }
}

fn to_json<T: Serialize>(value: &T) -> String {
    serde_json::to_string(value).unwrap_or_else(|e| error(&format!("cannot encode: {e}")))
}

fn error(message: &str) -> String {
    serde_json::json!({ "error": message }).to_string()
}

/// The summary `/stats` serves.
#[derive(Serialize)]
struct Stats {
    schema_version: u32,
    pid: u32,
    process: String,
    uptime_us: u64,
    runtime: RuntimeInfo,
    totals: Totals,
    workers: Vec<WorkerInfo>,
    blocked: Vec<BlockedInfo>,
    objects: Vec<ObjectInfo>,
}

impl From<Snapshot> for Stats {
    fn from(s: Snapshot) -> Stats {
        Stats {
            schema_version: s.schema_version,
            pid: s.pid,
            process: s.process,
            uptime_us: s.uptime_us,
            runtime: s.runtime,
            totals: s.totals,
            workers: s.workers,
            blocked: s.blocked,
            objects: s.objects,
        }
    }
}

/// The snapshot with only the threads the query asks for.
fn filtered(query: &str) -> Result<Snapshot, String> {
    let mut state = None;
    let mut name = None;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let value = decode(value)?;
        match key {
            "state" => {
                state = Some(match value.as_str() {
                    "running" => ThreadState::Running,
                    "waiting" => ThreadState::Waiting,
                    "scheduled" => ThreadState::Scheduled,
                    other => {
                        return Err(format!(
                            "state `{other}`: expected running, waiting or scheduled"
                        ));
                    }
                })
            }
            "name" => name = Some(value),
            other => {
                return Err(format!(
                    "unknown parameter `{other}`: expected state or name"
                ));
            }
        }
    }
    let mut snap = snapshot();
    snap.threads.retain(|t| {
        state.is_none_or(|s| t.state == s)
            && name
                .as_deref()
                .is_none_or(|n| t.name.as_deref().is_some_and(|tn| tn.contains(n)))
    });
    Ok(snap)
}

/// Percent-decoding of a query value (`+` is a space).
fn decode(value: &str) -> Result<String, String> {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = bytes
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or_else(|| format!("bad escape in `{value}`"))?;
                out.push(hex);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).map_err(|_| format!("`{value}` is not UTF-8"))
}

#[cfg(test)]
mod tests {
    #[test]
    fn an_address_beyond_loopback_is_warned_about() {
        for quiet in ["127.0.0.1:9100", "[::1]:9100", "127.8.0.1:1"] {
            assert_eq!(super::exposure(quiet.parse().unwrap()), None, "{quiet}");
        }
        for open in ["0.0.0.0:9100", "[::]:9100", "192.0.2.7:80"] {
            let warning = super::exposure(open.parse().unwrap()).expect(open);
            assert!(warning.contains("not on loopback"), "{warning}");
        }
    }
}
