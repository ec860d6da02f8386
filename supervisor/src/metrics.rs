//! The master's Prometheus endpoint (`stats` in the configuration): the master's own series
//! (workers by state, starts, exits, recycles, reloads, watchdog kills, and requests served
//! by every worker there has been, so the total survives reloads), each live worker's
//! (requests, resident memory, a held worker thread), and every worker's own `/metrics`
//! merged in with `worker` and `generation` labels. The workers' endpoints are on loopback
//! ports the master asks for (`GREENHUB_STATS_ADDR=127.0.0.1:0`) and learns from their
//! heartbeats.
//!
//! Served by `greenhub-stats-http` on a thread of its own, from the copy of the state the
//! master's loop publishes: a scrape never holds the master up. Each worker's metrics are
//! fetched with a short time limit; a worker that does not answer in time is left out of
//! that scrape (its master-side series stay).
//!
//! It uses `status.rs` (the published state).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use greenhub_stats_http::{Answer, Limits};

use crate::status::Published;

/// How long one worker's metrics may take to fetch.
const FETCH_LIMIT: Duration = Duration::from_millis(1500);

/// The largest worker exposition read.
const MAX_WORKER_BYTES: u64 = 16 << 20;

/// Counts that only grow, kept by the master.
#[derive(Clone, Debug, Default)]
pub struct Counters {
    /// Workers started.
    pub starts: u64,
    /// Workers that ended after a drain.
    pub drained: u64,
    /// Workers that exited or were killed without being asked to stop.
    pub failed: u64,
    /// Workers replaced, by reason (`reload`, `memory`, `requests`, `age`).
    pub recycled: BTreeMap<&'static str, u64>,
    /// Reloads finished and stopped.
    pub reloads_done: u64,
    /// See [`Counters::reloads_done`].
    pub reloads_stopped: u64,
    /// Workers the watchdog killed.
    pub watchdog_kills: u64,
    /// Requests served by workers that have ended (their last heartbeat's count).
    pub retired_requests: u64,
}

/// Starts the endpoint on `addr`; returns the address it listens on.
pub fn start(addr: SocketAddr, state: Arc<Mutex<Published>>) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr)?;
    let bound = listener.local_addr()?;
    std::thread::Builder::new()
        .name("greenhub-serve-metrics".into())
        .spawn(move || {
            let last = std::cell::RefCell::new(None);
            greenhub_stats_http::serve(
                listener,
                Limits::default(),
                |target: &str| answer(target, &state, &mut last.borrow_mut()),
                |trouble: &str| log::warn!("metrics endpoint: {trouble}"),
            )
        })?;
    Ok(bound)
}

/// A scrape is reused for this long: scrapes that come faster (or pipelined by one client)
/// do not multiply the load on the workers.
const REUSE: Duration = Duration::from_secs(1);

fn answer(target: &str, state: &Mutex<Published>, last: &mut Option<(Instant, String)>) -> Answer {
    let path = target.split('?').next().unwrap_or("");
    if path != "/metrics" {
        return Answer {
            status: 404,
            content_type: "text/plain; charset=utf-8",
            body: "greenhub-serve serves /metrics\n".into(),
        };
    }
    let body = match last {
        Some((at, body)) if at.elapsed() < REUSE => body.clone(),
        _ => {
            let published = state.lock().unwrap_or_else(|e| e.into_inner()).clone();
            let body = exposition(&published, fetch_all);
            *last = Some((Instant::now(), body.clone()));
            body
        }
    };
    Answer {
        status: 200,
        content_type: "text/plain; version=0.0.4; charset=utf-8",
        body,
    }
}

/// Every worker's `/metrics` at once, within one [`FETCH_LIMIT`]; a worker whose address is
/// not on loopback (only a worker's own heartbeat names it) is not asked.
fn fetch_all(addrs: &[Option<SocketAddr>]) -> Vec<Option<String>> {
    std::thread::scope(|scope| {
        let asks: Vec<_> = addrs
            .iter()
            .map(|a| {
                let a = a.filter(|a| a.ip().is_loopback());
                scope.spawn(move || a.and_then(fetch))
            })
            .collect();
        asks.into_iter().map(|t| t.join().ok().flatten()).collect()
    })
}

/// One worker's `/metrics`, or `None` if it does not answer in time.
fn fetch(addr: SocketAddr) -> Option<String> {
    let deadline = Instant::now() + FETCH_LIMIT;
    let mut s = TcpStream::connect_timeout(&addr, FETCH_LIMIT).ok()?;
    s.set_write_timeout(Some(FETCH_LIMIT)).ok()?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: worker\r\nConnection: close\r\n\r\n")
        .ok()?;
    let mut raw = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        let left = deadline.checked_duration_since(Instant::now())?;
        s.set_read_timeout(Some(left)).ok()?;
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                raw.extend_from_slice(&buf[..n]);
                if raw.len() as u64 > MAX_WORKER_BYTES {
                    return None;
                }
            }
            Err(_) => return None,
        }
    }
    let text = String::from_utf8(raw).ok()?;
    let (head, body) = text.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.1 200").then(|| body.to_string())
}

/// The whole exposition; `fetch` reads the workers' (in the order of `p.stats`).
pub fn exposition(
    p: &Published,
    fetch: impl Fn(&[Option<SocketAddr>]) -> Vec<Option<String>>,
) -> String {
    let mut out = String::new();
    let family = |out: &mut String, name: &str, kind: &str, help: &str| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    };
    family(
        &mut out,
        "greenhub_serve_workers",
        "gauge",
        "Workers by state.",
    );
    for state in ["starting", "ready", "draining", "killed"] {
        let n = p.workers.iter().filter(|w| w.state == state).count();
        let _ = writeln!(out, "greenhub_serve_workers{{state=\"{state}\"}} {n}");
    }
    family(
        &mut out,
        "greenhub_serve_target_workers",
        "gauge",
        "Workers wanted.",
    );
    let _ = writeln!(out, "greenhub_serve_target_workers {}", p.target);
    family(
        &mut out,
        "greenhub_serve_generation",
        "gauge",
        "The reload generation new workers start in.",
    );
    let _ = writeln!(out, "greenhub_serve_generation {}", p.generation);
    let c = &p.counters;
    family(
        &mut out,
        "greenhub_serve_worker_starts_total",
        "counter",
        "Workers started.",
    );
    let _ = writeln!(out, "greenhub_serve_worker_starts_total {}", c.starts);
    family(
        &mut out,
        "greenhub_serve_worker_exits_total",
        "counter",
        "Workers ended, by how.",
    );
    let _ = writeln!(
        out,
        "greenhub_serve_worker_exits_total{{how=\"drained\"}} {}",
        c.drained
    );
    let _ = writeln!(
        out,
        "greenhub_serve_worker_exits_total{{how=\"failed\"}} {}",
        c.failed
    );
    family(
        &mut out,
        "greenhub_serve_recycles_total",
        "counter",
        "Workers replaced, by reason.",
    );
    for reason in ["reload", "memory", "requests", "age"] {
        let n = c.recycled.get(reason).copied().unwrap_or(0);
        let _ = writeln!(
            out,
            "greenhub_serve_recycles_total{{reason=\"{reason}\"}} {n}"
        );
    }
    family(
        &mut out,
        "greenhub_serve_reloads_total",
        "counter",
        "Rolling reloads, by outcome.",
    );
    let _ = writeln!(
        out,
        "greenhub_serve_reloads_total{{outcome=\"done\"}} {}",
        c.reloads_done
    );
    let _ = writeln!(
        out,
        "greenhub_serve_reloads_total{{outcome=\"stopped\"}} {}",
        c.reloads_stopped
    );
    family(
        &mut out,
        "greenhub_serve_watchdog_kills_total",
        "counter",
        "Stuck workers killed.",
    );
    let _ = writeln!(
        out,
        "greenhub_serve_watchdog_kills_total {}",
        c.watchdog_kills
    );
    let live: u64 = p.workers.iter().map(|w| w.requests).sum();
    family(
        &mut out,
        "greenhub_serve_requests_total",
        "counter",
        "Requests served by every worker there has been (from their heartbeats).",
    );
    let _ = writeln!(
        out,
        "greenhub_serve_requests_total {}",
        c.retired_requests + live
    );
    type Read = fn(&greenhub_snapshot::attach::WorkerProcess) -> f64;
    let per_worker: [(&str, &str, &str, Read); 3] = [
        (
            "greenhub_serve_worker_requests_total",
            "counter",
            "Requests a worker has served.",
            |w| w.requests as f64,
        ),
        (
            "greenhub_serve_worker_resident_bytes",
            "gauge",
            "A worker's resident memory.",
            |w| w.rss_bytes as f64,
        ),
        (
            "greenhub_serve_worker_blocked_seconds",
            "gauge",
            "How long a green thread has held one of a worker's threads (0: none).",
            |w| w.blocked_ms as f64 / 1000.0,
        ),
    ];
    for (name, kind, help, value) in per_worker {
        family(&mut out, name, kind, help);
        for w in &p.workers {
            let _ = writeln!(
                out,
                "{name}{{worker=\"{}\",generation=\"{}\",pid=\"{}\"}} {}",
                w.id,
                w.generation,
                w.pid,
                value(w)
            );
        }
    }
    let mut merged = Merged::default();
    for (w, text) in p.workers.iter().zip(fetch(&p.stats)) {
        if let Some(text) = text {
            merged.add(
                &text,
                &format!("worker=\"{}\",generation=\"{}\"", w.id, w.generation),
            );
        }
    }
    merged.write(&mut out);
    out
}

/// Workers' expositions merged family by family (Prometheus wants a family's samples
/// together, after its one `# TYPE`).
#[derive(Default)]
struct Merged {
    order: Vec<String>,
    families: BTreeMap<String, (Vec<String>, Vec<String>)>,
}

impl Merged {
    fn add(&mut self, text: &str, labels: &str) {
        let mut current = String::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# ") {
                let mut parts = rest.splitn(3, ' ');
                let (Some(kind), Some(name)) = (parts.next(), parts.next()) else {
                    continue;
                };
                if kind != "HELP" && kind != "TYPE" {
                    continue;
                }
                current = name.to_string();
                let entry = self.entry(&current);
                if !entry.0.iter().any(|l| l.starts_with(&format!("# {kind} "))) {
                    entry.0.push(line.to_string());
                }
                continue;
            }
            if line.trim().is_empty() || line.starts_with('#') {
                continue;
            }
            let sample = with_labels(line, labels);
            let family = if current.is_empty() {
                line.split(['{', ' ']).next().unwrap_or("").to_string()
            } else {
                current.clone()
            };
            self.entry(&family).1.push(sample);
        }
    }

    fn entry(&mut self, name: &str) -> &mut (Vec<String>, Vec<String>) {
        if !self.families.contains_key(name) {
            self.order.push(name.to_string());
        }
        self.families.entry(name.to_string()).or_default()
    }

    fn write(&self, out: &mut String) {
        for name in &self.order {
            let (meta, samples) = &self.families[name];
            for l in meta.iter().chain(samples) {
                out.push_str(l);
                out.push('\n');
            }
        }
    }
}

/// `labels` added to a sample line.
fn with_labels(line: &str, labels: &str) -> String {
    match line.find(['{', ' ']) {
        Some(i) if line.as_bytes()[i] == b'{' => {
            let rest = &line[i + 1..];
            if rest.starts_with('}') {
                format!("{}{{{labels}{rest}", &line[..i])
            } else {
                format!("{}{{{labels},{rest}", &line[..i])
            }
        }
        Some(i) => format!("{}{{{labels}}}{}", &line[..i], &line[i..]),
        None => line.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worker_series_get_their_labels_and_families_stay_together() {
        assert_eq!(with_labels("a 1", "w=\"1\""), "a{w=\"1\"} 1");
        assert_eq!(with_labels("a{} 1", "w=\"1\""), "a{w=\"1\"} 1");
        assert_eq!(
            with_labels("a{x=\"y\"} 1", "w=\"1\""),
            "a{w=\"1\",x=\"y\"} 1"
        );
        let mut m = Merged::default();
        let text =
            "# HELP t Things.\n# TYPE t counter\nt 3\n# TYPE h summary\nh_sum 1\nh_count 2\n";
        m.add(text, "worker=\"1\"");
        m.add(text, "worker=\"2\"");
        let mut out = String::new();
        m.write(&mut out);
        assert_eq!(
            out,
            "# HELP t Things.\n# TYPE t counter\nt{worker=\"1\"} 3\nt{worker=\"2\"} 3\n# TYPE h summary\nh_sum{worker=\"1\"} 1\nh_count{worker=\"1\"} 2\nh_sum{worker=\"2\"} 1\nh_count{worker=\"2\"} 2\n"
        );
    }
}
