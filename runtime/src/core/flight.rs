//! The flight recorder's output: the recorded events of a stretch of time as a [`Trace`] with
//! the names of the threads they are about, and the file written when an incident happens
//! (a worker kept past `max_blocking_time`, a deadlock), so that the seconds before it are
//! kept even if nobody was looking.
//!
//! Incident files go to `GREENHUB_TRACE_DIR`, or else the attach channel's private directory,
//! as `trace-<pid>-<unix seconds>-<n>-<why>.json` in the Trace Event Format (Perfetto and
//! Chrome open them). An automatic one is written at most every [`INCIDENT_EVERY`]; the
//! program asks for others ([`save`]: from its own code, or on a signal). A process keeps its
//! [`INCIDENT_FILES`] newest. A file appears whole (written under a hidden name, then
//! renamed), and each is said in the log.
//!
//! It uses the recorder's rings, the registry (for names) and the report functions. It runs
//! off the workers and off the monitor's ticks (on `greenhub-reports`, or a reader's thread).

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use thiserror::Error;

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
    let records = live.iter().map(|r| (r.id, &r.name, r.site)).chain(
        finished
            .iter()
            .map(|f| (f.identity.id, &f.identity.name, f.identity.site)),
    );
    let mut threads: Vec<TracedThread> = records
        .filter(|(id, _, _)| ids.contains(id))
        .map(|(id, name, site)| TracedThread {
            id,
            name: name.as_deref().map(String::from),
            spawn_site: site.to_string(),
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

/// Why the flight recorder's trace could not be saved.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum SaveTraceError {
    /// The recorder is off, so there is nothing to save.
    #[error(
        "the flight recorder is off: turn it on with Config::flight_recorder(true), \
         GREENHUB_FLIGHT_RECORDER=on or inspect::flight_recorder(true)"
    )]
    Off,
    /// The name given is not a short word: it becomes part of a file name.
    #[error(
        "{why:?} cannot name a trace file: use 1 to {MAX_WHY} lowercase letters, digits or \
         dashes"
    )]
    BadName {
        /// The name given.
        why: String,
    },
    /// The file could not be written.
    #[error(
        "cannot write the trace into {}: {source} (GREENHUB_TRACE_DIR chooses the directory)",
        dir.display()
    )]
    Write {
        /// Where it was to go (`GREENHUB_TRACE_DIR`, or the attach channel's directory).
        dir: PathBuf,
        /// What the system said.
        source: std::io::Error,
    },
}

/// The longest name a saved trace may have.
const MAX_WHY: usize = 32;

/// Writes the last [`INCIDENT_SPAN`] to a file now and returns its path; `why` (a short word
/// of lowercase letters, digits and dashes) goes into its name. Not throttled: the program
/// asked. Blocking (it writes a file): the caller runs it off the workers.
pub(crate) fn save(why: &str) -> Result<PathBuf, SaveTraceError> {
    let ok = (1..=MAX_WHY).contains(&why.len())
        && why
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if !ok {
        return Err(SaveTraceError::BadName {
            why: why.chars().take(2 * MAX_WHY).collect(),
        });
    }
    if !trace::on() {
        return Err(SaveTraceError::Off);
    }
    let path = write_incident(why).map_err(|source| SaveTraceError::Write {
        dir: directory(),
        source,
    })?;
    log::info!(
        "greenhub: the flight recorder's last {} s are in {} (asked for: {why})",
        INCIDENT_SPAN.as_secs(),
        path.display()
    );
    Ok(path)
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
            "greenhub: the flight recorder could not write its trace of this {why}: {e} \
             (GREENHUB_TRACE_DIR chooses the directory)"
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
    // Two files of one second differ by their number.
    static NUMBER: AtomicU64 = AtomicU64::new(0);
    let n = NUMBER.fetch_add(1, Ordering::Relaxed);
    let name = format!("trace-{pid}-{secs}-{n}-{why}.json");
    let path = dir.join(&name);
    let hidden = dir.join(format!(".{name}.part"));
    let text = last(INCIDENT_SPAN).chrome_json();
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&hidden)
        .and_then(|mut file| file.write_all(text.as_bytes()))
        .and_then(|()| std::fs::rename(&hidden, &path));
    if let Err(e) = written {
        let _ = std::fs::remove_file(&hidden);
        return Err(e);
    }
    prune(&dir, pid, &path);
    Ok(path)
}

/// A hidden part left this long is from a write that never finished (the process died).
const STALE_PART: Duration = Duration::from_secs(60);

/// Removes the oldest trace files of this pid beyond [`INCIDENT_FILES`] (never `just`, the
/// one just written, whatever the clock did), and hidden parts of this pid's writes that never
/// finished. Files of the older name, without a number, count as number 0.
fn prune(dir: &std::path::Path, pid: u32, just: &std::path::Path) {
    let prefix = format!("trace-{pid}-");
    let part_prefix = format!(".{prefix}");
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut mine: Vec<((u64, u64), PathBuf)> = entries
        .filter_map(Result::ok)
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            if name.starts_with(&part_prefix) {
                let stale = e
                    .metadata()
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|t| t.elapsed().ok())
                    .is_some_and(|age| age > STALE_PART);
                if stale {
                    let _ = std::fs::remove_file(e.path());
                }
                return None;
            }
            let mut rest = name.strip_prefix(&prefix)?.split('-');
            let secs: u64 = rest.next()?.parse().ok()?;
            let n: u64 = rest.next().and_then(|n| n.parse().ok()).unwrap_or(0);
            let path = e.path();
            (path != just).then_some(((secs, n), path))
        })
        .collect();
    mine.sort();
    // `just` is one of the files kept.
    let extra = mine.len().saturating_sub(INCIDENT_FILES - 1);
    for (_, path) in mine.into_iter().take(extra) {
        let _ = std::fs::remove_file(path);
    }
}
