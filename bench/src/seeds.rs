//! The seeds' own systems, eventlet and gevent (from PyPI, in a venv the harness makes under
//! `target/`), as rows of the runtime suites whose shape they share (`seeds.py`: spawn + join,
//! ping-pong, idle memory, thread-pool round trips), and the venv the HTTP and reload suites
//! run their Python servers from.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The script run for the seeds' rows: `python seeds.py SUITE LIBRARY N` prints one figure.
const SCRIPT: &str = include_str!("seeds.py");

/// The Python library a case's runtime name stands for, if it is one of the seeds'.
pub fn library(runtime: &str) -> Option<&'static str> {
    if runtime.starts_with("gevent") {
        Some("gevent")
    } else if runtime.starts_with("eventlet") {
        Some("eventlet")
    } else {
        None
    }
}

/// The venv's Python, made on first use; why not if it cannot be made.
pub fn python(root: &Path) -> Result<&'static Path, String> {
    static PYTHON: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    PYTHON
        .get_or_init(|| venv(root))
        .as_deref()
        .map_err(Clone::clone)
}

/// The command that measures `suite` for the seeds' `runtime` with `n` operations.
pub fn command(python: &Path, suite: &str, runtime: &str, n: u64) -> Command {
    let mut c = Command::new(python);
    // The echo suites start the harness's own client process.
    if let Ok(exe) = std::env::current_exe() {
        c.env("GREENHUB_BENCH_EXE", exe);
    }
    c.args([
        "-c",
        SCRIPT,
        suite,
        library(runtime).unwrap_or(runtime),
        &n.to_string(),
    ]);
    c
}

/// A venv with gevent, eventlet and gunicorn under `target/`, made once; why not if
/// python3's venv or pip fails.
pub(crate) fn venv(root: &Path) -> Result<PathBuf, String> {
    let dir = root.join("target/bench-venv");
    let python = dir.join("bin/python");
    let ready = Command::new(&python)
        .args(["-c", "import gevent, eventlet, gunicorn.workers.ggevent"])
        .output()
        .is_ok_and(|o| o.status.success());
    if ready {
        return Ok(python);
    }
    let made = Command::new("python3")
        .args(["-m", "venv"])
        .arg(&dir)
        .status()
        .map_err(|e| format!("python3 -m venv: {e}"))?;
    if !made.success() {
        return Err("python3 -m venv failed".into());
    }
    let pip = Command::new(dir.join("bin/pip"))
        .args([
            "install",
            "-q",
            "gevent",
            "eventlet",
            "gunicorn",
            "packaging",
        ])
        .status()
        .map_err(|e| format!("pip: {e}"))?;
    if !pip.success() {
        return Err("pip install gevent eventlet gunicorn packaging failed".into());
    }
    Ok(python)
}
