//! The flight recorder's output: the recorded events of a stretch of time as a [`Trace`] with
//! the names of the threads they are about, and the file written when an incident happens
//! (a worker kept past `max_blocking_time`, a deadlock), so that the seconds before it are
//! kept even if nobody was looking.
//!
//! Incident files go to `GREENHUB_TRACE_DIR`, or else the attach channel's private directory,
//! as `trace-<pid>-<unix seconds>-<why>.json` in the Trace Event Format (Perfetto and Chrome
//! open them). One is written at most every [`INCIDENT_EVERY`], and a process keeps its
//! [`INCIDENT_FILES`] newest. Each is said in the log.
//!
//! It uses the recorder's rings, the registry (for names) and the report functions. It runs
//! off the workers and off the monitor's ticks (on `greenhub-reports`, or a reader's thread).

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

use greenhub_snapshot::{Trace, TraceKind, TracedThread};

use crate::core::registry::registry;
use crate::core::report::{self, Throttle};
use crate::core::trace;

/// The stretch an incident file covers: the seconds before it.
pub(crate) const INCIDENT_SPAN: Duration = Duration::from_secs(5);

/// At most one incident file per this long.
pub(crate) const INCIDENT_EVERY: Duration = Duration::from_secs(10);

/// Incident files a process keeps (the oldest beyond go).
pub(crate) const INCIDENT_FILES: usize = 8;

/// The events of the last `span`, with the threads they name.
pub(crate) fn last(span: Duration) -> Trace {
    let (events, dropped) = trace::last(span.as_nanos().min(u128::from(u64::MAX)) as u64);
    let mut ids: BTreeSet<u64> = BTreeSet::new();
    for e in &events {
        if e.thread != 0 {
            ids.insert(e.thread);
        }
        match &e.kind {
            TraceKind::Spawn { parent: Some(p) } => {
                ids.insert(*p);
            }
            TraceKind::Wake { by: Some(b) } | TraceKind::Kill { by: Some(b) } => {
                ids.insert(*b);
            }
            _ => {}
        }
    }
    let reg = registry();
    let (live, _) = reg.live_threads();
    let finished = reg.finished();
    let records = live.iter().chain(finished.iter().map(|(r, _, _)| r));
    let mut threads: Vec<TracedThread> = records
        .filter(|r| ids.contains(&r.id))
        .map(|r| TracedThread {
            id: r.id,
            name: r.name.as_deref().map(String::from),
            spawn_site: r.site.to_string(),
        })
        .collect();
    threads.sort_by_key(|t| t.id);
    threads.dedup_by_key(|t| t.id);
    let span_ns = match (events.first(), events.last()) {
        (Some(a), Some(b)) => b.at_ns - a.at_ns,
        _ => 0,
    };
    Trace {
        pid: std::process::id(),
        process: std::fs::read_to_string("/proc/self/comm")
            .map(|s| s.trim().to_string())
            .unwrap_or_default(),
        span_ns,
        dropped,
        threads,
        events,
    }
}

/// Writes the last [`INCIDENT_SPAN`] to an incident file, when the recorder is on and no
/// file was written in the last [`INCIDENT_EVERY`]; `why` names the incident (a word).
pub(crate) fn incident(why: &str) {
    static WRITTEN: Throttle = Throttle::new();
    if !trace::on() || !WRITTEN.allow(INCIDENT_EVERY) {
        return;
    }
    match write_incident(why) {
        Ok(path) => report::warn(&format!(
            "greenhub: the flight recorder's last {} s before this {why} are in {} (open it \
             in ui.perfetto.dev or chrome://tracing)",
            INCIDENT_SPAN.as_secs(),
            path.display()
        )),
        Err(e) => report::warn(&format!(
            "greenhub: the flight recorder could not write its trace of this {why}: {e}"
        )),
    }
}

fn directory() -> PathBuf {
    std::env::var_os("GREENHUB_TRACE_DIR")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(greenhub_snapshot::attach::directory)
}

fn write_incident(why: &str) -> std::io::Result<PathBuf> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let dir = directory();
    greenhub_snapshot::attach::private_directory(&dir)?;
    let pid = std::process::id();
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let path = dir.join(format!("trace-{pid}-{secs}-{why}.json"));
    let text = last(INCIDENT_SPAN).chrome_json();
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&path)?;
    file.write_all(text.as_bytes())?;
    prune(&dir, pid);
    Ok(path)
}

/// Removes this process's oldest incident files beyond [`INCIDENT_FILES`].
fn prune(dir: &std::path::Path, pid: u32) {
    let prefix = format!("trace-{pid}-");
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut mine: Vec<(u64, PathBuf)> = entries
        .filter_map(Result::ok)
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let rest = name.strip_prefix(&prefix)?;
            let secs: u64 = rest.split('-').next()?.parse().ok()?;
            Some((secs, e.path()))
        })
        .collect();
    mine.sort();
    let extra = mine.len().saturating_sub(INCIDENT_FILES);
    for (_, path) in mine.into_iter().take(extra) {
        let _ = std::fs::remove_file(path);
    }
}
