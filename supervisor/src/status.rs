//! The master's attach socket: where `inspector list` and `inspector attach <master pid>`
//! find it and its workers. It speaks the attach protocol of `greenhub-snapshot` on an OS
//! thread of its own, from a copy of the workers' state the master's loop publishes each
//! tick, so an inspector never holds the master up: a summary (with the workers) is
//! answered; a snapshot is refused, since the master runs no green threads.
//!
//! The same rules as a greenhub process's attach channel: the socket sits in the user's
//! private attach directory, mode 0600; only this user and root are served; a request is one
//! line of at most `MAX_REQUEST` bytes; a silent connection is closed after a while; at most
//! `MAX_CLIENTS` are served at once, and a newcomer past that is told so.
//!
//! It uses `metrics.rs` (the counters it publishes).

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use greenhub_snapshot::SCHEMA_VERSION;
use greenhub_snapshot::attach::{
    self, MAX_CLIENTS, MAX_REQUEST, REQUEST_SNAPSHOT, REQUEST_SUMMARY, Summary, WorkerProcess,
};

/// How long a connection may stay silent.
const IDLE: Duration = Duration::from_secs(30);

/// The state inspectors and scrapes see, replaced by the master's loop.
#[derive(Clone, Default)]
pub struct Published {
    /// The workers.
    pub workers: Vec<WorkerProcess>,
    /// Each worker's stats endpoint, in the order of `workers`, once its heartbeat said it.
    pub stats: Vec<Option<std::net::SocketAddr>>,
    /// Workers wanted.
    pub target: usize,
    /// The generation new workers start in.
    pub generation: u32,
    /// The master's counters.
    pub counters: crate::metrics::Counters,
}

/// The attach socket; removed when dropped.
pub struct Status {
    path: PathBuf,
}

impl Status {
    /// Binds the socket and starts its thread, which reads `shared`.
    pub fn start(shared: Arc<Mutex<Published>>) -> std::io::Result<Status> {
        let dir = attach::directory();
        attach::private_directory(&dir)?;
        let path = attach::socket_path(std::process::id());
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        let listener = UnixListener::bind(&path)?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
        let state = shared.clone();
        let started = Instant::now();
        std::thread::Builder::new()
            .name("greenhub-serve-attach".into())
            .spawn(move || serve(listener, state, started))?;
        Ok(Status { path })
    }
}

impl Drop for Status {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

fn serve(listener: UnixListener, state: Arc<Mutex<Published>>, started: Instant) {
    let busy = Arc::new(AtomicUsize::new(0));
    for conn in listener.incoming() {
        let Ok(mut conn) = conn else { continue };
        let me = nix::unistd::geteuid().as_raw();
        match attach::peer_uid(&conn) {
            Ok(uid) if uid == me || uid == 0 => {}
            Ok(uid) => {
                let _ = reply(
                    &mut conn,
                    &error(&format!(
                        "permission denied: uid {uid} may not inspect a process of uid {me}"
                    )),
                );
                continue;
            }
            Err(_) => continue,
        }
        if busy.fetch_add(1, Ordering::SeqCst) >= MAX_CLIENTS {
            busy.fetch_sub(1, Ordering::SeqCst);
            let _ = reply(
                &mut conn,
                &error(&format!("{MAX_CLIENTS} inspectors are reading already")),
            );
            continue;
        }
        let (state, place) = (state.clone(), busy.clone());
        let spawned = std::thread::Builder::new()
            .name("greenhub-serve-attach-client".into())
            .spawn(move || {
                let _ = client(conn, &state, started);
                place.fetch_sub(1, Ordering::SeqCst);
            });
        if spawned.is_err() {
            // The closure, and the connection with it, is gone: its place comes back here.
            busy.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

fn client(conn: UnixStream, state: &Mutex<Published>, started: Instant) -> std::io::Result<()> {
    conn.set_read_timeout(Some(IDLE))?;
    conn.set_write_timeout(Some(IDLE))?;
    let mut out = conn.try_clone()?;
    let mut reader = BufReader::new(conn);
    let mut line = Vec::new();
    loop {
        line.clear();
        let n = (&mut reader)
            .take(MAX_REQUEST as u64 + 1)
            .read_until(b'\n', &mut line)?;
        if n == 0 {
            return Ok(());
        }
        if line.last() != Some(&b'\n') {
            return reply(
                &mut out,
                &error("request too long or not ended by a newline"),
            );
        }
        let answer = match std::str::from_utf8(&line).map(str::trim) {
            Ok(REQUEST_SUMMARY) => {
                let workers = state
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .workers
                    .clone();
                serde_json::to_string(&Summary {
                    schema_version: SCHEMA_VERSION,
                    pid: std::process::id(),
                    process: "greenhub-serve".into(),
                    threads: 0,
                    uptime_us: started.elapsed().as_micros() as u64,
                    supervised: None,
                    workers: Some(workers),
                })
                .unwrap_or_else(|e| error(&e.to_string()))
            }
            Ok(REQUEST_SNAPSHOT) => error(
                "this is a greenhub-serve master: it runs no green threads; attach to one of its workers (see `inspector list`)",
            ),
            Ok(other) => error(&format!(
                "unknown request `{}`: expected `summary`",
                other.escape_debug()
            )),
            Err(_) => error("the request is not UTF-8"),
        };
        reply(&mut out, &answer)?;
    }
}

fn error(message: &str) -> String {
    serde_json::json!({ "error": message }).to_string()
}

fn reply(out: &mut UnixStream, line: &str) -> std::io::Result<()> {
    out.write_all(line.as_bytes())?;
    out.write_all(b"\n")
}
