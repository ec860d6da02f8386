//! Reloads under load: greenhub-serve (its master, from the `greenhub-supervisor` library,
//! running two greenhub-http workers) against gunicorn with two gevent workers (from PyPI, in
//! the harness's venv), both serving the TechEmpower `/plaintext` answer. `wrk` loads each
//! with 64 keep-alive connections, once steadily and once while the master gets SIGHUP ten
//! times (each a rolling reload of every worker), and once while the master's own binary is
//! upgraded (SIGUSR2: greenhub-serve's new master takes the sockets and the old one drains by
//! itself; gunicorn's new master starts beside the old one, which is then sent SIGTERM, as its
//! documentation says). Failed requests are every socket error and non-2xx answer wrk counts.

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// Workers per server.
const WORKERS: usize = 2;

/// SIGHUPs during a reloading run.
const RELOADS: u32 = 10;

/// wrk's connections.
const CONNECTIONS: u32 = 64;

impl Load {
    fn name(self) -> &'static str {
        match self {
            Load::Steady => "steady",
            Load::Reloads => "reloads",
            Load::Upgrade => "binary upgrade",
        }
    }
}

/// One wrk run.
pub type Run = crate::http::WrkOutput;

/// What happens to the server during a run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Load {
    /// Nothing.
    Steady,
    /// [`RELOADS`] SIGHUPs.
    Reloads,
    /// One binary upgrade of the master, half-way through.
    Upgrade,
}

/// The runs of one (server, load).
#[derive(Debug, Serialize, Deserialize)]
pub struct Row {
    pub server: String,
    pub load: Load,
    pub runs: Vec<Run>,
}

/// What the suite measured.
#[derive(Debug, Serialize, Deserialize)]
pub struct Report {
    pub seconds_per_run: u64,
    pub reloads_per_run: u32,
    pub rows: Vec<Row>,
    pub skipped: Vec<String>,
}

/// The greenhub master, in a child process of the harness: `port`, two workers that are
/// this binary again (`--child reload_worker`), one greenhub worker thread each.
pub fn master(port: &str) {
    let pid_file = std::env::var_os("GREENHUB_BENCH_PID_FILE").map(std::path::PathBuf::from);
    let exe = std::env::current_exe().expect("the harness's path");
    let file = greenhub_supervisor::FileConfig {
        command: Some(vec![
            exe.display().to_string(),
            "--child".into(),
            "reload_worker".into(),
        ]),
        env: Some([("GREENHUB_WORKERS".to_string(), "1".to_string())].into()),
        workers: Some(WORKERS),
        listen: Some(vec![format!("127.0.0.1:{port}")]),
        pid_file,
        ..Default::default()
    };
    let cfg = file.finish().expect("a valid configuration");
    greenhub_supervisor::Master::new(cfg)
        .expect("the master starts")
        .run();
}

/// A worker: `/plaintext` on the handed socket; ready at once; drains on SIGTERM.
pub fn worker() {
    let term = greenhub::signal::Signals::new([libc::SIGTERM, libc::SIGINT]).expect("signals");
    let listener = greenhub::net::listen_or_inherit("127.0.0.1:0").expect("a socket");
    let server = greenhub_http::Builder::new()
        .access_log(false)
        .serve(listener, |_req: greenhub_http::Request<'_>| {
            let mut r = greenhub_http::response::text("Hello, World!");
            r.headers_mut().insert(
                "content-type",
                http::HeaderValue::from_static("text/plain; charset=utf-8"),
            );
            r
        })
        .expect("serve");
    let _ = greenhub::notify::ready();
    let _ = term.wait();
    server.stop(Duration::from_secs(30));
}

const GUNICORN_APP: &str = r#"
PLAIN = b"Hello, World!"

def app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain; charset=utf-8"),
                              ("Content-Length", str(len(PLAIN)))])
    return [PLAIN]
"#;

struct Server {
    child: Child,
    addr: SocketAddr,
    /// Where the serving master writes its pid (after an upgrade, not the child's).
    pid_file: PathBuf,
}

impl Drop for Server {
    fn drop(&mut self) {
        // After an upgrade the master that serves is another process: stopped first (gunicorn's
        // new master writes `<pid file>.2` until the old one has gone).
        let upgraded = [self.pid_file.clone(), second_pid_file(&self.pid_file)]
            .iter()
            .filter_map(|p| read_pid(p))
            .find(|p| *p != self.child.id());
        if let Some(pid) = upgraded {
            // SAFETY: signals the master the upgrade started.
            unsafe { libc::kill(pid as i32, libc::SIGTERM) };
            let t0 = Instant::now();
            while std::path::Path::new(&format!("/proc/{pid}")).exists()
                && t0.elapsed() < Duration::from_secs(30)
            {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        // SAFETY: signals the server this suite started.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let t0 = Instant::now();
        while self.child.try_wait().ok().flatten().is_none() {
            if t0.elapsed() > Duration::from_secs(30) {
                let _ = self.child.kill();
                let _ = self.child.wait();
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn second_pid_file(path: &Path) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(".2");
    PathBuf::from(p)
}

fn read_pid(path: &Path) -> Option<u32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

fn free_port() -> Result<u16, String> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| e.to_string())
}

fn start(server: &str, python: Option<&Path>, dir: &Path) -> Result<Server, String> {
    let port = free_port()?;
    let pid_file = dir.join(format!("master-{port}.pid"));
    let mut cmd = match server {
        "greenhub-serve" => {
            let mut c = Command::new(std::env::current_exe().map_err(|e| e.to_string())?);
            c.args(["--child", "serve_master", &port.to_string()])
                .env("GREENHUB_BENCH_PID_FILE", &pid_file);
            c
        }
        _ => {
            // The venv's `gunicorn` script, not `python -m gunicorn`: its binary upgrade
            // re-executes the command it was started with, and `-m` would come back as a
            // script path that shadows the standard library's `http` with gunicorn's.
            let python = python.ok_or("no Python venv")?;
            let mut c = Command::new(python.with_file_name("gunicorn"));
            c.args(["-k", "gevent", "-w"])
                .arg(WORKERS.to_string())
                .args(["-b", &format!("127.0.0.1:{port}"), "--pid"])
                .arg(&pid_file)
                .arg("--chdir")
                .arg(dir)
                .args([
                    "--graceful-timeout",
                    "30",
                    "--log-level",
                    "warning",
                    "--worker-connections",
                    "10000",
                    "reload_app:app",
                ]);
            c
        }
    };
    let child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| format!("{server}: {e}"))?;
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("an address");
    let s = Server {
        child,
        addr,
        pid_file,
    };
    // Ready once every worker can answer: a handful of answers in a row.
    let t0 = Instant::now();
    let mut ok = 0;
    while ok < 20 {
        if t0.elapsed() > Duration::from_secs(60) {
            return Err(format!("{server} did not answer within 60 s"));
        }
        if crate::http::check_answer(server, addr, "/plaintext").is_ok() {
            ok += 1;
        } else {
            ok = 0;
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    Ok(s)
}

/// wrk for `secs` seconds against `server`, with `what` happening meanwhile.
fn load(server: &Server, kind: &str, secs: u64, what: Load) -> Result<Run, String> {
    let addr = server.addr;
    let wrk = Command::new("wrk")
        .args([
            "-t1",
            &format!("-c{CONNECTIONS}"),
            &format!("-d{secs}s"),
            "--latency",
            "--timeout",
            "10s",
            &format!("http://{addr}/plaintext"),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("wrk: {e}"))?;
    let master = server.child.id();
    match what {
        Load::Steady => {}
        Load::Reloads => {
            let every = Duration::from_secs(secs) / (RELOADS + 1);
            for _ in 0..RELOADS {
                std::thread::sleep(every);
                // SAFETY: signals the master this suite started.
                unsafe { libc::kill(master as i32, libc::SIGHUP) };
            }
        }
        Load::Upgrade => {
            std::thread::sleep(Duration::from_secs(secs) / 2);
            // SAFETY: signals the master this suite started.
            unsafe { libc::kill(master as i32, libc::SIGUSR2) };
            if kind != "greenhub-serve" {
                // gunicorn: once the new master has written its pid (to `<pid file>.2`), the
                // old one is told to stop gracefully (greenhub-serve's old master does this
                // by itself).
                let t0 = Instant::now();
                while read_pid(&second_pid_file(&server.pid_file)).is_none()
                    && t0.elapsed() < Duration::from_secs(10)
                {
                    std::thread::sleep(Duration::from_millis(20));
                }
                // The new master's workers boot; then the old master goes.
                std::thread::sleep(Duration::from_secs(1));
                // SAFETY: signals the master this suite started.
                unsafe { libc::kill(master as i32, libc::SIGTERM) };
            }
        }
    }
    let out = wrk.wait_with_output().map_err(|e| format!("wrk: {e}"))?;
    crate::http::parse_wrk(&String::from_utf8_lossy(&out.stdout))
}

/// Runs the suite: `rounds` rounds, `secs` seconds per wrk run.
pub fn run(root: &Path, rounds: usize, secs: u64) -> Result<Report, String> {
    crate::http::require_wrk()?;
    let mut skipped = Vec::new();
    let python = match crate::seeds::venv(root) {
        Ok(p) => Some(p),
        Err(e) => {
            skipped.push(format!("gunicorn: {e}"));
            None
        }
    };
    let dir: PathBuf = std::env::temp_dir().join(format!("greenhub-reload-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    std::fs::File::create(dir.join("reload_app.py"))
        .and_then(|mut f| f.write_all(GUNICORN_APP.as_bytes()))
        .map_err(|e| e.to_string())?;
    let servers: Vec<&str> = if python.is_some() {
        vec!["greenhub-serve", "gunicorn -k gevent"]
    } else {
        vec!["greenhub-serve"]
    };
    let mut rows: Vec<Row> = servers
        .iter()
        .flat_map(|s| {
            [Load::Steady, Load::Reloads, Load::Upgrade].map(|load| Row {
                server: s.to_string(),
                load,
                runs: Vec::new(),
            })
        })
        .collect();
    for round in 0..rounds {
        for row in rows.iter_mut() {
            let server = start(&row.server, python.as_deref(), &dir)?;
            let r = load(&server, &row.server, secs, row.load)?;
            eprintln!(
                "reload: round {}/{rounds}: {} {}: {:.0} req/s, {} failed, p99 {:.0} µs",
                round + 1,
                row.server,
                row.load.name(),
                r.rps,
                r.failed,
                r.p99_us
            );
            row.runs.push(r);
            drop(server);
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(Report {
        seconds_per_run: secs,
        reloads_per_run: RELOADS,
        rows,
        skipped,
    })
}

/// The suite as Markdown.
pub fn markdown(report: &Report) -> String {
    use std::fmt::Write as _;
    let mut md = String::new();
    let _ = writeln!(
        md,
        "\n## Reloads under load\n\nA master with {WORKERS} worker processes (one event loop \
         each: `GREENHUB_WORKERS=1` for greenhub) serving `/plaintext`: greenhub-serve with \
         greenhub-http workers against gunicorn with gevent workers. wrk runs {} s with \
         {CONNECTIONS} keep-alive connections, once steadily and once while the master gets \
         SIGHUP {} times (each a rolling reload of every worker: greenhub-serve drains an old \
         worker once its replacement says it is ready; gunicorn starts new workers and stops the \
         old ones gracefully), and once with an upgrade of the master's binary half-way \
         (SIGUSR2: greenhub-serve's new master takes the sockets over and the old one drains by \
         itself; gunicorn's new master starts beside the old one, which gets SIGTERM a second \
         after the new one has written its pid file, as gunicorn's documentation describes). \
         Failed requests are wrk's socket errors and non-2xx answers; medians over the rounds, \
         failures summed.\n",
        report.seconds_per_run, report.reloads_per_run
    );
    let _ = writeln!(
        md,
        "| server | load | req/s | failed requests | of | p50 (µs) | p99 (µs) |"
    );
    let _ = writeln!(md, "|---|---|---:|---:|---:|---:|---:|");
    let median = |v: Vec<f64>| crate::http::median_of(v.into_iter());
    for r in &report.rows {
        let _ = writeln!(
            md,
            "| {} | {} | {:.0} | {} | {} | {:.0} | {:.0} |",
            r.server,
            match r.load {
                Load::Reloads => format!("{} reloads", report.reloads_per_run),
                other => other.name().to_string(),
            },
            median(r.runs.iter().map(|x| x.rps).collect()),
            r.runs.iter().map(|x| x.failed).sum::<u64>(),
            r.runs.iter().map(|x| x.requests).sum::<u64>(),
            median(r.runs.iter().map(|x| x.p50_us).collect()),
            median(r.runs.iter().map(|x| x.p99_us).collect()),
        );
    }
    for s in &report.skipped {
        let _ = writeln!(md, "\nNot measured: {s}.");
    }
    md
}
