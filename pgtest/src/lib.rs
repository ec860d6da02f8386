//! A throwaway PostgreSQL cluster for greenhub's tests and benchmarks: `initdb` into a
//! temporary directory, a free loopback port, password authentication, stopped (and deleted)
//! when dropped. It runs the server binaries of Debian's `postgresql` package (`.ci/run`
//! installs it); as root, through `runuser -u postgres`, since the server refuses root.
//!
//! With `DATABASE_URL` set, [`Pg::start`] uses that server instead, and callers skip what
//! needs control over it ([`Pg::controlled`]).
//!
//! ```no_run
//! let pg = greenhub_pgtest::Pg::start();
//! println!("connect with: {}", pg.conninfo);
//! // stopped and deleted when `pg` drops
//! ```

#![warn(missing_docs)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// The superuser's password in a cluster this crate starts.
pub const PASSWORD: &str = "greenhub-test";

/// A PostgreSQL server for one test or benchmark.
pub struct Pg {
    /// Connection parameters (`host=... port=... user=... password=...`).
    pub conninfo: String,
    cluster: Option<Cluster>,
}

struct Cluster {
    dir: tempfile::TempDir,
    bin: PathBuf,
    port: u16,
}

fn bin_dir() -> PathBuf {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL server binaries not found under /usr/lib/postgresql: apt-get install postgresql (see .ci/run)")
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|p| p.join("initdb").exists())
        .collect();
    dirs.sort();
    dirs.pop()
        .expect("no initdb under /usr/lib/postgresql/*/bin")
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Runs a server binary; as root, as the `postgres` user (initdb and postgres refuse root).
fn command(bin: &Path, tool: &str) -> Command {
    let path = bin.join(tool);
    if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(&path);
        c
    } else {
        Command::new(&path)
    }
}

fn run(bin: &Path, tool: &str, args: &[&str]) -> Output {
    let out = command(bin, tool)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {tool}: {e}"));
    assert!(
        out.status.success(),
        "{tool} {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

impl Pg {
    /// A fresh cluster (or the server at `DATABASE_URL`).
    ///
    /// # Panics
    ///
    /// When the server binaries are missing or the cluster cannot start: this is test
    /// infrastructure, and the message says what to install.
    pub fn start() -> Pg {
        if let Ok(url) = std::env::var("DATABASE_URL") {
            return Pg {
                conninfo: url,
                cluster: None,
            };
        }
        let bin = bin_dir();
        let dir = tempfile::Builder::new()
            .prefix("greenhub-pg-")
            .tempdir()
            .expect("a temporary directory");
        if is_root() {
            let (uid, gid) = postgres_ids();
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid)).expect("chown to postgres");
        }
        let pwfile = dir.path().join("pw");
        std::fs::write(&pwfile, PASSWORD).expect("write the password file");
        if is_root() {
            let (uid, gid) = postgres_ids();
            std::os::unix::fs::chown(&pwfile, Some(uid), Some(gid)).expect("chown");
        }
        let data = dir.path().join("data");
        run(
            &bin,
            "initdb",
            &[
                "-D",
                data.to_str().unwrap(),
                "-U",
                "postgres",
                "--auth=scram-sha-256",
                "--pwfile",
                pwfile.to_str().unwrap(),
                "--no-sync",
                "--no-instructions",
            ],
        );
        let cluster = Cluster {
            dir,
            bin,
            port: free_port(),
        };
        cluster.start();
        Pg {
            conninfo: format!(
                "host=127.0.0.1 port={} user=postgres password={PASSWORD} dbname=postgres",
                cluster.port
            ),
            cluster: Some(cluster),
        }
    }

    /// Whether this test controls the server (it can stop and start it).
    pub fn controlled(&self) -> bool {
        self.cluster.is_some()
    }

    /// The same parameters with another password.
    pub fn with_password(&self, password: &str) -> String {
        format!("{} password={password}", self.conninfo)
    }

    /// Stops the server (fast shutdown); a no-op on a server this crate did not start.
    pub fn stop(&self) {
        if let Some(c) = &self.cluster {
            c.stop("fast");
        }
    }

    /// Starts the stopped server again on the same port.
    pub fn start_again(&self) {
        if let Some(c) = &self.cluster {
            c.start();
        }
    }
}

impl Cluster {
    fn data(&self) -> String {
        self.dir.path().join("data").to_str().unwrap().to_string()
    }

    fn start(&self) {
        let log = self.dir.path().join("log");
        let opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200",
            self.port,
            self.dir.path().display()
        );
        let began = Instant::now();
        run(
            &self.bin,
            "pg_ctl",
            &[
                "-D",
                &self.data(),
                "-o",
                &opts,
                "-l",
                log.to_str().unwrap(),
                "-w",
                "-t",
                "60",
                "start",
            ],
        );
        assert!(began.elapsed() < Duration::from_secs(60));
    }

    fn stop(&self, mode: &str) {
        run(
            &self.bin,
            "pg_ctl",
            &["-D", &self.data(), "-m", mode, "-w", "stop"],
        );
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let data = self.data();
        // Best effort: the server may be stopped already.
        let _ = command(&self.bin, "pg_ctl")
            .args(["-D", data.as_str(), "-m", "immediate", "-w", "stop"])
            .output();
    }
}

fn postgres_ids() -> (u32, u32) {
    (id_of_postgres("-u"), id_of_postgres("-g"))
}

fn id_of_postgres(flag: &str) -> u32 {
    let out = Command::new("id")
        .args([flag, "postgres"])
        .output()
        .expect("run id");
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("the postgres user's ids (apt-get install postgresql creates it)")
}
