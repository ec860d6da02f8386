//! What a stuck worker was doing, read before it is killed: its snapshot over its attach
//! socket (served by an OS thread of the worker, so it answers even when every worker
//! thread is stuck), written to the log as run info. Bounded in size, and in time per read
//! ([`LIMIT`]): a worker that does not answer costs the master a few seconds at most.
//!
//! It uses nothing else of the crate.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use greenhub_snapshot::Snapshot;
use greenhub_snapshot::attach;

/// How long a connect, write or read may wait.
pub const LIMIT: Duration = Duration::from_secs(3);

/// The largest snapshot read.
const MAX_BYTES: u64 = 256 << 20;

/// Reads the snapshot of `pid`.
pub fn run_info(pid: u32) -> Result<String, String> {
    let path = attach::socket_path(pid);
    let stream = UnixStream::connect(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let me = nix::unistd::geteuid().as_raw();
    let peer = attach::peer_uid(&stream).map_err(|e| e.to_string())?;
    if peer != me {
        return Err(format!(
            "{} belongs to uid {peer}, not this user",
            path.display()
        ));
    }
    stream
        .set_read_timeout(Some(LIMIT))
        .and_then(|()| stream.set_write_timeout(Some(LIMIT)))
        .map_err(|e| e.to_string())?;
    (&stream)
        .write_all(format!("{}\n", attach::REQUEST_SNAPSHOT).as_bytes())
        .map_err(|e| e.to_string())?;
    let mut line = String::new();
    BufReader::new((&stream).take(MAX_BYTES))
        .read_line(&mut line)
        .map_err(|e| e.to_string())?;
    let snap: Snapshot = serde_json::from_str(&line).map_err(|e| format!("its answer: {e}"))?;
    Ok(snap.format_run_info())
}

/// Logs the run info of `pid`, or why it could not be read.
pub fn log_run_info(pid: u32, why: &str) {
    match run_info(pid) {
        Ok(info) => {
            log::error!("worker pid {pid} ({why}): what its green threads are doing:");
            for line in info.lines() {
                log::error!("  {line}");
            }
        }
        Err(e) => log::error!("worker pid {pid} ({why}): no run info: {e}"),
    }
}
