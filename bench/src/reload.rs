//! Reloads under load: greenhub-serve (its master, from the `greenhub-supervisor` library,
//! running two greenhub-http workers) against gunicorn with two gevent workers (from PyPI, in
//! the harness's venv), both serving the TechEmpower `/plaintext` answer. `wrk` loads each
//! with 64 keep-alive connections, once steadily and once while the master gets SIGHUP ten
//! times (each a rolling reload of every worker). Failed requests are every socket error and
//! non-2xx answer wrk counts.

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde::Serialize;

/// Workers per server.
const WORKERS: usize = 2;

/// SIGHUPs during a reloading run.
const RELOADS: u32 = 10;

/// wrk's connections.
const CONNECTIONS: u32 = 64;

/// One wrk run.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Run {
    pub rps: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub requests: u64,
    pub failed: u64,
}

/// The runs of one (server, mode).
#[derive(Debug, Serialize)]
pub struct Row {
    pub server: String,
    pub reloading: bool,
    pub runs: Vec<Run>,
}

/// What the suite measured.
#[derive(Debug, Serialize)]
pub struct Report {
    pub seconds_per_run: u64,
    pub reloads_per_run: u32,
    pub rows: Vec<Row>,
    pub skipped: Vec<String>,
}

/// The greenhub master, in a child process of the harness: `port`, two workers that are
/// this binary again (`--child reload_worker`), one greenhub worker thread each.
pub fn master(port: &str) {
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
}

impl Drop for Server {
    fn drop(&mut self) {
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

fn free_port() -> Result<u16, String> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| e.to_string())
}

fn start(server: &str, python: Option<&Path>, dir: &Path) -> Result<Server, String> {
    let port = free_port()?;
    let mut cmd = match server {
        "greenhub-serve" => {
            let mut c = Command::new(std::env::current_exe().map_err(|e| e.to_string())?);
            c.args(["--child", "serve_master", &port.to_string()]);
            c
        }
        _ => {
            let python = python.ok_or("no Python venv")?;
            let mut c = Command::new(python);
            c.args(["-m", "gunicorn", "-k", "gevent", "-w"])
                .arg(WORKERS.to_string())
                .args(["-b", &format!("127.0.0.1:{port}"), "--chdir"])
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
    let s = Server { child, addr };
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

/// wrk for `secs` seconds; with `reload`, SIGHUP to `master` [`RELOADS`] times, spread over
/// the run.
fn load(addr: SocketAddr, secs: u64, reload: Option<u32>) -> Result<Run, String> {
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
    if let Some(master) = reload {
        let every = Duration::from_secs(secs) / (RELOADS + 1);
        for _ in 0..RELOADS {
            std::thread::sleep(every);
            // SAFETY: signals the master this suite started.
            unsafe { libc::kill(master as i32, libc::SIGHUP) };
        }
    }
    let out = wrk.wait_with_output().map_err(|e| format!("wrk: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let field = |prefix: &str| {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(prefix).map(|v| v.trim().to_string()))
    };
    let rps = field("Requests/sec:")
        .and_then(|v| v.parse::<f64>().ok())
        .ok_or_else(|| format!("no Requests/sec in wrk's output:\n{text}"))?;
    let errors: u64 = field("Socket errors:")
        .map(|v| {
            v.split(',')
                .filter_map(|part| part.split_whitespace().last()?.parse::<u64>().ok())
                .sum()
        })
        .unwrap_or(0);
    let non2xx: u64 = field("Non-2xx or 3xx responses:")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let requests = text
        .lines()
        .find(|l| l.contains("requests in"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse::<u64>().ok())
        .unwrap_or(0);
    Ok(Run {
        rps,
        p50_us: field("50%")
            .and_then(|v| crate::http::duration_us(&v))
            .unwrap_or(f64::NAN),
        p99_us: field("99%")
            .and_then(|v| crate::http::duration_us(&v))
            .unwrap_or(f64::NAN),
        requests,
        failed: errors + non2xx,
    })
}

/// Runs the suite: `rounds` rounds, `secs` seconds per wrk run.
pub fn run(root: &Path, rounds: usize, secs: u64) -> Result<Report, String> {
    Command::new("wrk")
        .arg("--version")
        .output()
        .map_err(|_| "wrk is not installed (apt-get install wrk)".to_string())?;
    let mut skipped = Vec::new();
    let python = match crate::http::venv(root) {
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
            [false, true].map(|reloading| Row {
                server: s.to_string(),
                reloading,
                runs: Vec::new(),
            })
        })
        .collect();
    for round in 0..rounds {
        for row in rows.iter_mut() {
            let server = start(&row.server, python.as_deref(), &dir)?;
            let master = row.reloading.then(|| server.child.id());
            let r = load(server.addr, secs, master)?;
            eprintln!(
                "reload: round {}/{rounds}: {} {}: {:.0} req/s, {} failed, p99 {:.0} µs",
                round + 1,
                row.server,
                if row.reloading { "reloading" } else { "steady" },
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
         old ones gracefully). Failed requests are wrk's socket errors and non-2xx answers; \
         medians over the rounds, failures summed.\n",
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
            if r.reloading {
                format!("{} reloads", report.reloads_per_run)
            } else {
                "steady".to_string()
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
