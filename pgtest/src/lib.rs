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

/// A pgbouncer in front of a [`Pg`] server, for one test: its own configuration in a
/// temporary directory, a free loopback port, stopped when dropped. It runs Debian's
/// `pgbouncer` package (`.ci/run` installs it); as root, as the `postgres` user, since
/// pgbouncer refuses root.
pub struct Pgbouncer {
    /// Connection parameters for clients of the pooler.
    pub conninfo: String,
    dir: tempfile::TempDir,
}

impl Pgbouncer {
    /// Starts pgbouncer in `pool_mode` (`session`, `transaction`, `statement`) with at most
    /// `server_connections` connections to the server, and waits until it accepts clients.
    ///
    /// # Panics
    ///
    /// When pgbouncer is missing or does not start: test infrastructure.
    pub fn start(pg: &Pg, pool_mode: &str, server_connections: u32) -> Pgbouncer {
        let param = |key: &str| {
            pg.conninfo
                .split_whitespace()
                .find_map(|kv| kv.strip_prefix(key).and_then(|v| v.strip_prefix('=')))
                .unwrap_or_else(|| panic!("no {key} in {:?}", pg.conninfo))
                .to_string()
        };
        let (host, port, user, password) = (
            param("host"),
            param("port"),
            param("user"),
            param("password"),
        );
        let dir = tempfile::Builder::new()
            .prefix("greenhub-pgbouncer-")
            .tempdir()
            .expect("a temporary directory");
        let listen = free_port();
        let config = format!(
            "[databases]\n\
             * = host={host} port={port} user={user} password={password}\n\
             [pgbouncer]\n\
             listen_addr = 127.0.0.1\n\
             listen_port = {listen}\n\
             unix_socket_dir =\n\
             auth_type = trust\n\
             auth_file = {dir}/users\n\
             pool_mode = {pool_mode}\n\
             default_pool_size = {server_connections}\n\
             max_client_conn = 500\n\
             logfile = {dir}/log\n\
             pidfile = {dir}/pid\n",
            dir = dir.path().display()
        );
        std::fs::write(dir.path().join("pgbouncer.ini"), config).expect("write pgbouncer.ini");
        std::fs::write(dir.path().join("users"), format!("\"{user}\" \"\"\n"))
            .expect("write the users file");
        if is_root() {
            let (uid, gid) = postgres_ids();
            for f in ["", "pgbouncer.ini", "users"] {
                std::os::unix::fs::chown(dir.path().join(f), Some(uid), Some(gid))
                    .expect("chown to postgres");
            }
        }
        // Debian puts it in /usr/sbin, which a user's PATH may lack.
        let binary = if Path::new("/usr/sbin/pgbouncer").exists() {
            "/usr/sbin/pgbouncer"
        } else {
            "pgbouncer"
        };
        let mut command = if is_root() {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--", binary]);
            c
        } else {
            Command::new(binary)
        };
        let out = command
            .arg("-d")
            .arg(dir.path().join("pgbouncer.ini"))
            .output()
            .expect("cannot run pgbouncer: apt-get install pgbouncer (see .ci/run)");
        assert!(
            out.status.success(),
            "pgbouncer did not start: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let began = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", listen)).is_err() {
            assert!(
                began.elapsed() < Duration::from_secs(60),
                "pgbouncer does not listen: {}",
                std::fs::read_to_string(dir.path().join("log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Pgbouncer {
            conninfo: format!(
                "host=127.0.0.1 port={listen} user={user} password={password} dbname=postgres"
            ),
            dir,
        }
    }
}

impl Drop for Pgbouncer {
    fn drop(&mut self) {
        let pid = std::fs::read_to_string(self.dir.path().join("pid"))
            .ok()
            .and_then(|p| p.trim().parse::<i32>().ok());
        if let Some(pid) = pid {
            // SAFETY: kill has no memory preconditions; the pid is the pooler this test
            // started (from its own pid file).
            unsafe {
                libc::kill(pid, libc::SIGTERM);
            }
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
