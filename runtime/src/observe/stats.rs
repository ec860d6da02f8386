//! The HTTP stats endpoint, for monitoring: what `inspector` shows, as JSON and as Prometheus
//! metrics.
//!
//! Off unless an address is configured ([`Config::stats_addr`](crate::Config::stats_addr) or
//! `GREENHUB_STATS_ADDR`; a bare port means loopback). Served by one OS thread
//! (`greenhub-stats`, tiny_http), so it answers while every worker is blocked.
//!
//! | path | answer |
//! |---|---|
//! | `/stats` | the snapshot without its per-thread lists: totals, runtime, workers, blocked-worker reports, objects (pools) |
//! | `/snapshot` | the whole `Snapshot`; `?state=waiting` (or `running`, `scheduled`) and `?name=text` keep only matching threads |
//! | `/metrics` | Prometheus text exposition: green threads by state, spawns and ends, switches, timers, descriptors, blocked workers, and every pool's counts and latency summaries |
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

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::OnceLock;

use serde::Serialize;

use greenhub_snapshot::{
    BlockedInfo, ObjectInfo, RuntimeInfo, Snapshot, ThreadState, Totals, WorkerInfo,
};

use crate::core::report;
use crate::observe::snapshot::{overview, snapshot};

static ADDR: OnceLock<SocketAddr> = OnceLock::new();

/// The address the stats endpoint listens on, once the runtime has started it.
pub(crate) fn local_addr() -> Option<SocketAddr> {
    ADDR.get().copied()
}

pub(crate) fn start(addr: SocketAddr) {
    let server = match tiny_http::Server::http(addr) {
        Ok(s) => s,
        Err(e) => {
            report::warn(&format!(
                "greenhub: cannot serve stats on {addr}: {e} (set GREENHUB_STATS_ADDR to a free \
                 address)"
            ));
            return;
        }
    };
    if let Some(bound) = server.server_addr().to_ip() {
        let _ = ADDR.set(bound);
    }
    let spawned = std::thread::Builder::new()
        .name("greenhub-stats".into())
        .spawn(move || {
            for request in server.incoming_requests() {
                let (status, kind, body) = answer(request.method(), request.url());
                let mut response = tiny_http::Response::from_string(body).with_status_code(status);
                if let Ok(header) = tiny_http::Header::from_bytes("Content-Type", kind) {
                    response = response.with_header(header);
                }
                // A client that hung up loses its answer; the server goes on.
                let _ = request.respond(response);
            }
        });
    if let Err(e) = spawned {
        report::warn(&format!("greenhub: cannot start the stats thread: {e}"));
    }
}

const JSON: &str = "application/json";
const PROMETHEUS: &str = "text/plain; version=0.0.4";

/// The status, content type and body for a request.
fn answer(method: &tiny_http::Method, url: &str) -> (u16, &'static str, String) {
    if *method != tiny_http::Method::Get && *method != tiny_http::Method::Head {
        return (405, JSON, error("only GET is served"));
    }
    let (path, query) = url.split_once('?').unwrap_or((url, ""));
    match path {
        "/stats" => (200, JSON, to_json(&Stats::from(overview()))),
        "/snapshot" => match filtered(query) {
            Ok(snap) => (200, JSON, to_json(&snap)),
            Err(why) => (400, JSON, error(&why)),
        },
        "/metrics" => (200, PROMETHEUS, metrics(&overview())),
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

/// The Prometheus text exposition of a snapshot.
pub(crate) fn metrics(s: &Snapshot) -> String {
    let mut m = Metrics::default();
    let t = &s.totals;
    for (state, n) in [
        ("running", t.running),
        ("waiting", t.waiting),
        ("scheduled", t.scheduled),
    ] {
        m.add(
            "greenhub_threads",
            "gauge",
            "Live green threads by state.",
            &[("state", state)],
            n as f64,
        );
    }
    let counters = [
        (
            "greenhub_threads_spawned_total",
            "Green threads spawned.",
            t.spawned,
        ),
        (
            "greenhub_threads_finished_total",
            "Green threads ended.",
            t.finished,
        ),
        (
            "greenhub_threads_panicked_total",
            "Green threads that panicked.",
            t.panicked,
        ),
        (
            "greenhub_threads_killed_total",
            "Green threads killed.",
            t.killed,
        ),
        (
            "greenhub_switches_total",
            "Waits and yields of all green threads.",
            t.switches,
        ),
        (
            "greenhub_blocked_reports_total",
            "Reports of a green thread keeping its worker busy.",
            s.blocked.iter().map(|b| b.seq).max().unwrap_or(0),
        ),
    ];
    for (name, help, v) in counters {
        m.add(name, "counter", help, &[], v as f64);
    }
    let gauges = [
        ("greenhub_timers", "Pending timers.", t.timers),
        (
            "greenhub_descriptors",
            "Descriptors green threads wait on.",
            t.descriptors,
        ),
        (
            "greenhub_blocked_workers",
            "Workers held by a green thread now.",
            t.blocked_now,
        ),
        ("greenhub_workers", "Worker OS threads.", s.runtime.workers),
    ];
    for (name, help, v) in gauges {
        m.add(name, "gauge", help, &[], v as f64);
    }
    m.add(
        "greenhub_uptime_seconds",
        "gauge",
        "Time since the runtime started.",
        &[],
        s.uptime_us as f64 / 1e6,
    );
    for o in &s.objects {
        let kind = metric_part(o.kind.name());
        let id = o.id.to_string();
        let name = o.name.clone().unwrap_or_default();
        let labels = [("name", name.as_str()), ("id", id.as_str())];
        m.add(
            &format!("greenhub_{kind}_waiting"),
            "gauge",
            "Green threads waiting on the object.",
            &labels,
            o.waiters as f64,
        );
        for (count, v) in &o.counts {
            m.add(
                &format!("greenhub_{kind}_{}", metric_part(count)),
                "gauge",
                "A count the object reports (see its crate's documentation).",
                &labels,
                *v as f64,
            );
        }
        // Latency summaries in the detail: {count, p50_us, p90_us, p99_us}.
        let Some(serde_json::Value::Object(detail)) = &o.detail else {
            continue;
        };
        for (field, value) in detail {
            let Some(count) = value.get("count").and_then(|c| c.as_u64()) else {
                continue;
            };
            let metric = format!("greenhub_{kind}_{}_seconds", metric_part(field));
            for (q, key) in [("0.5", "p50_us"), ("0.9", "p90_us"), ("0.99", "p99_us")] {
                if let Some(us) = value.get(key).and_then(|v| v.as_u64()) {
                    let mut l = labels.to_vec();
                    l.push(("quantile", q));
                    m.add(&metric, "summary", "Durations.", &l, us as f64 / 1e6);
                }
            }
            m.add(&format!("{metric}_count"), "", "", &labels, count as f64);
        }
    }
    m.text()
}

/// Lower-case letters, digits and underscores, as metric names need.
fn metric_part(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect()
}

/// Samples grouped by metric, each metric's HELP and TYPE written once.
#[derive(Default)]
struct Metrics {
    families: BTreeMap<String, (String, String, Vec<String>)>,
}

impl Metrics {
    fn add(&mut self, name: &str, kind: &str, help: &str, labels: &[(&str, &str)], value: f64) {
        // A summary's `_count` belongs to the summary's family.
        let family = name
            .strip_suffix("_count")
            .filter(|_| kind.is_empty())
            .unwrap_or(name);
        let entry = self
            .families
            .entry(family.to_owned())
            .or_insert_with(|| (kind.to_owned(), help.to_owned(), Vec::new()));
        let mut line = name.to_owned();
        if !labels.is_empty() {
            let parts: Vec<String> = labels
                .iter()
                .map(|(k, v)| {
                    let v = v
                        .replace('\\', "\\\\")
                        .replace('"', "\\\"")
                        .replace('\n', "\\n");
                    format!("{k}=\"{v}\"")
                })
                .collect();
            let _ = write!(line, "{{{}}}", parts.join(","));
        }
        let _ = write!(line, " {value}");
        entry.2.push(line);
    }

    fn text(&self) -> String {
        let mut out = String::new();
        for (name, (kind, help, lines)) in &self.families {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} {kind}");
            for l in lines {
                out.push_str(l);
                out.push('\n');
            }
        }
        out
    }
}
