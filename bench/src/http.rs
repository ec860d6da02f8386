//! The HTTP suite: the same endpoints served by greenhub-http, may_minihttp (on the same
//! `may`), axum (hyper on tokio), and the seeds' own servers, gevent's pywsgi and
//! eventlet.wsgi (from PyPI, in a venv the harness makes), loaded by `wrk` from another
//! process at 1, 64 and 256 connections.
//!
//! Every server runs in a process of its own with two worker threads (the Python servers are
//! single-threaded by design), answers `/plaintext` with `Hello, World!` and `/json` with
//! `{"message":"Hello, World!"}`; `/db` (greenhub-http and axum only) reads one random row of
//! a 10,000-row table from the same PostgreSQL server through a pool of 16 connections with
//! cached prepared statements on both sides (dbpool's own cache, deadpool's
//! `prepare_cached`), and answers it as JSON. Before each load the harness checks one answer
//! by hand; a run with socket errors or non-2xx answers fails the suite. The figures: requests
//! per second, the latency percentiles wrk reports, and the server's CPU time per request
//! (from /proc, over the run).
//!
//! All the servers run for the whole suite and take turns back to back within each cell (an
//! endpoint at a number of connections), so that each round pairs them under the same state
//! of the machine; servers are compared by the median of those per-round ratios.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The servers, in the order they take turns.
pub const SERVERS: &[&str] = &[
    "greenhub-http",
    "may_minihttp",
    "axum (tokio)",
    "gevent pywsgi",
    "eventlet.wsgi",
];

const ENDPOINTS: &[&str] = &["/plaintext", "/json", "/db"];
const CONNECTIONS: &[u32] = &[1, 64, 256];

/// One run of wrk against one server.
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
pub struct Run {
    pub rps: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub cpu_us_per_request: f64,
}

/// The runs of one (server, endpoint, connections).
#[derive(Debug, Serialize, Deserialize)]
pub struct Row {
    pub server: String,
    pub endpoint: String,
    pub connections: u32,
    pub runs: Vec<Run>,
}

/// What the suite measured, and what it could not.
#[derive(Debug, Serialize, Deserialize)]
pub struct Report {
    pub seconds_per_run: u64,
    pub rows: Vec<Row>,
    pub skipped: Vec<String>,
}

fn serves_db(server: &str) -> bool {
    matches!(server, "greenhub-http" | "axum (tokio)")
}

// ---------------------------------------------------------------------------------------
// The servers (run as children of the harness).

/// `--child http_server SERVER`: serves on a free loopback port, prints `listening ADDR`,
/// and serves until killed. `/db` uses the PostgreSQL server named by `db::PG_ENV`, if set.
pub fn server(kind: &str) {
    let pg = std::env::var(crate::db::PG_ENV).ok();
    match kind {
        "greenhub-http" => greenhub_server(pg),
        "may_minihttp" => minihttp_server(),
        "axum (tokio)" => axum_server(pg),
        other => panic!("no server {other}"),
    }
}

fn announce(addr: SocketAddr) {
    println!("listening {addr}");
    let _ = std::io::stdout().flush();
}

fn greenhub_server(pg: Option<String>) {
    greenhub::Config::new().workers(2).init().expect("config");
    let db = pg.map(|url| {
        let dir = std::env::temp_dir();
        greenhub_examples::web::Db::open(&dir, Some(&url), 16)
            .expect("open the database")
            .0
    });
    // The flagship's own handler: what a user of the example gets.
    let handler = match db {
        Some(db) => Box::new(greenhub_examples::web::handler(db))
            as Box<dyn Fn(greenhub_http::Request<'_>) -> greenhub_http::Response + Send + Sync>,
        None => Box::new(|req: greenhub_http::Request<'_>| match req.uri().path() {
            "/plaintext" => greenhub_http::response::text("Hello, World!"),
            "/json" => {
                greenhub_http::response::json(&serde_json::json!({"message": "Hello, World!"}))
            }
            _ => greenhub_http::response::status(http::StatusCode::NOT_FOUND),
        }),
    };
    let server = greenhub_http::Builder::new()
        .access_log(false)
        .max_connections(4096)
        .bind("127.0.0.1:0", move |req: greenhub_http::Request<'_>| {
            handler(req)
        })
        .expect("bind");
    announce(server.local_addr());
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

fn minihttp_server() {
    use may_minihttp::{HttpServer, HttpService, Request, Response};

    #[derive(Clone)]
    struct Techempower;

    impl HttpService for Techempower {
        fn call(&mut self, req: Request, rsp: &mut Response) -> std::io::Result<()> {
            match req.path() {
                "/plaintext" => {
                    rsp.header("Content-Type: text/plain; charset=utf-8")
                        .body("Hello, World!");
                }
                "/json" => {
                    rsp.header("Content-Type: application/json");
                    let body =
                        serde_json::to_vec(&serde_json::json!({"message": "Hello, World!"}))?;
                    rsp.body_vec(body);
                }
                _ => {
                    rsp.status_code(404, "Not Found");
                }
            }
            Ok(())
        }
    }

    may::config().set_workers(2);
    // may_minihttp has no port 0: a free port is found first.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let server = HttpServer(Techempower).start(addr).expect("start");
    announce(addr);
    let _ = server.join();
}

fn axum_server(pg: Option<String>) {
    use axum::Router;
    use axum::extract::State;
    use axum::routing::get;

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let pool = pg.map(|url| {
            let config: deadpool_postgres::tokio_postgres::Config = url.parse().expect("conninfo");
            let manager = deadpool_postgres::Manager::from_config(
                config,
                deadpool_postgres::tokio_postgres::NoTls,
                deadpool_postgres::ManagerConfig {
                    recycling_method: deadpool_postgres::RecyclingMethod::Fast,
                },
            );
            deadpool_postgres::Pool::builder(manager)
                .max_size(16)
                .build()
                .expect("pool")
        });
        async fn db(
            State(pool): State<Option<deadpool_postgres::Pool>>,
        ) -> axum::response::Response {
            use axum::response::IntoResponse;
            let Some(pool) = pool else {
                return http::StatusCode::NOT_FOUND.into_response();
            };
            let id = random_id();
            let client = match pool.get().await {
                Ok(c) => c,
                Err(_) => return http::StatusCode::SERVICE_UNAVAILABLE.into_response(),
            };
            let st = match client
                .prepare_cached("SELECT id, randomnumber FROM world WHERE id = $1")
                .await
            {
                Ok(st) => st,
                Err(_) => return http::StatusCode::SERVICE_UNAVAILABLE.into_response(),
            };
            match client.query_one(&st, &[&id]).await {
                Ok(row) => axum::Json(serde_json::json!({
                    "id": row.get::<_, i32>(0),
                    "randomNumber": row.get::<_, i32>(1),
                }))
                .into_response(),
                Err(_) => http::StatusCode::SERVICE_UNAVAILABLE.into_response(),
            }
        }
        let app = Router::new()
            .route("/plaintext", get(|| async { "Hello, World!" }))
            .route(
                "/json",
                get(|| async { axum::Json(serde_json::json!({"message": "Hello, World!"})) }),
            )
            .route("/db", get(db))
            .with_state(pool);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        announce(listener.local_addr().expect("addr"));
        axum::serve(listener, app).await.expect("serve");
    });
}

/// A random row id, 1 to 10,000 (xorshift on a shared counter).
fn random_id() -> i32 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0x9E37_79B9_7F4A_7C15);
    let mut x = NEXT.fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed) | 1;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    (x % 10_000) as i32 + 1
}

// ---------------------------------------------------------------------------------------
// The Python servers.

const PY_APP: &str = r#"
import json, os, socket, sys
flavour = sys.argv[1]
if flavour == "gevent":
    from gevent import monkey; monkey.patch_all()
else:
    import eventlet; eventlet.monkey_patch()

PLAIN = b"Hello, World!"

def app(environ, start_response):
    path = environ["PATH_INFO"]
    if path == "/plaintext":
        body, ctype = PLAIN, "text/plain; charset=utf-8"
    elif path == "/json":
        body = json.dumps({"message": "Hello, World!"}, separators=(",", ":")).encode()
        ctype = "application/json"
    else:
        start_response("404 Not Found", [("Content-Length", "0")])
        return [b""]
    start_response("200 OK", [("Content-Type", ctype), ("Content-Length", str(len(body)))])
    return [body]

# TCP_NODELAY on the listener, which accepted connections inherit, as the Rust servers set it
# on theirs: without it a head and body written apart meet delayed ACKs (40 ms a request).
sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
sock.bind(("127.0.0.1", 0))
sock.listen(1024)
print("listening 127.0.0.1:%d" % sock.getsockname()[1], flush=True)
if flavour == "gevent":
    from gevent.pywsgi import WSGIServer
    WSGIServer(sock, app, log=None, error_log=None).serve_forever()
else:
    from eventlet import wsgi
    wsgi.server(sock, app, log=open(os.devnull, "w"), log_output=False, max_size=10000)
"#;

// ---------------------------------------------------------------------------------------
// Load.

struct Running {
    child: Child,
    addr: SocketAddr,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(server: &str, python: Option<&Path>, app: &Path) -> Result<Running, String> {
    let mut cmd = match server {
        "gevent pywsgi" | "eventlet.wsgi" => {
            let python = python.ok_or("no Python venv")?;
            let mut c = Command::new(python);
            // eventlet warns on stderr that it is in maintenance mode.
            c.env("PYTHONWARNINGS", "ignore")
                .arg(app)
                .arg(if server.starts_with("gevent") {
                    "gevent"
                } else {
                    "eventlet"
                });
            c
        }
        _ => {
            let mut c = Command::new(std::env::current_exe().map_err(|e| e.to_string())?);
            c.args(["--child", "http_server", server]);
            c
        }
    };
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| format!("{server}: {e}"))?;
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .map_err(|e| format!("{server}: {e}"))?;
    let addr = line
        .trim()
        .strip_prefix("listening ")
        .and_then(|a| a.parse().ok())
        .ok_or_else(|| format!("{server} did not say where it listens: {line:?}"))?;
    Ok(Running { child, addr })
}

/// Asks `path` once by hand and checks the answer's status and body.
pub(crate) fn check_answer(server: &str, addr: SocketAddr, path: &str) -> Result<(), String> {
    let mut s = std::net::TcpStream::connect(addr).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| e.to_string())?;
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    let ok = answer.starts_with("HTTP/1.1 200")
        && match path {
            "/plaintext" => answer.ends_with("Hello, World!"),
            "/json" => answer.contains(r#"{"message":"Hello, World!"}"#),
            _ => answer.contains(r#""randomNumber""#),
        };
    if ok {
        Ok(())
    } else {
        Err(format!("{server} answered {path} wrongly: {answer:?}"))
    }
}

/// The process's CPU time (user and system) so far, from /proc, in microseconds.
fn cpu_us(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // After the command name in parentheses: fields 14 and 15 are utime and stime.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = fields
        .get(11..13)
        .map(|f| f.iter().filter_map(|v| v.parse::<f64>().ok()).sum())
        .unwrap_or(0.0);
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    ticks / hz * 1e6
}

pub(crate) fn duration_us(s: &str) -> Option<f64> {
    let s = s.trim();
    let (num, mult) = if let Some(v) = s.strip_suffix("us") {
        (v, 1.0)
    } else if let Some(v) = s.strip_suffix("ms") {
        (v, 1e3)
    } else if let Some(v) = s.strip_suffix('s') {
        (v, 1e6)
    } else {
        (s, 1.0)
    };
    num.parse::<f64>().ok().map(|v| v * mult)
}

fn wrk(
    addr: SocketAddr,
    path: &str,
    connections: u32,
    secs: u64,
) -> Result<(f64, f64, f64, u64), String> {
    let out = Command::new("wrk")
        .args([
            "-t1",
            &format!("-c{connections}"),
            &format!("-d{secs}s"),
            "--latency",
            "--timeout",
            "10s",
            &format!("http://{addr}{path}"),
        ])
        .output()
        .map_err(|e| format!("wrk: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    if text.contains("Socket errors") || text.contains("Non-2xx") {
        return Err(format!("wrk saw errors against {addr}{path}:\n{text}"));
    }
    let w = parse_wrk(&text)?;
    Ok((w.rps, w.p50_us, w.p99_us, w.requests))
}

/// Fails with what to install when wrk is missing.
pub(crate) fn require_wrk() -> Result<(), String> {
    Command::new("wrk")
        .arg("--version")
        .output()
        .map(drop)
        .map_err(|_| "wrk is not installed (apt-get install wrk)".to_string())
}

/// What wrk printed: rate, latency percentiles, requests, and requests that failed (socket
/// errors of every kind and non-2xx answers).
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
pub(crate) struct WrkOutput {
    pub rps: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub requests: u64,
    pub failed: u64,
}

pub(crate) fn parse_wrk(text: &str) -> Result<WrkOutput, String> {
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
    Ok(WrkOutput {
        rps,
        p50_us: field("50%")
            .and_then(|v| duration_us(&v))
            .unwrap_or(f64::NAN),
        p99_us: field("99%")
            .and_then(|v| duration_us(&v))
            .unwrap_or(f64::NAN),
        requests,
        failed: errors + non2xx,
    })
}

/// Runs the suite: `rounds` rounds after a warm-up, `secs` seconds per wrk run.
pub fn run(root: &Path, rounds: usize, secs: u64) -> Result<Report, String> {
    require_wrk()?;
    let mut skipped = Vec::new();
    let python = match crate::seeds::venv(root) {
        Ok(p) => Some(p),
        Err(e) => {
            skipped.push(format!("gevent pywsgi and eventlet.wsgi: {e}"));
            None
        }
    };
    let app = root.join("target/bench-http-app.py");
    std::fs::write(&app, PY_APP).map_err(|e| e.to_string())?;
    // One PostgreSQL server for the /db rows, with the world table made once.
    let pg = greenhub_pgtest::Pg::start();
    // SAFETY: the harness's main thread is its only thread (servers are child processes).
    unsafe { std::env::set_var(crate::db::PG_ENV, &pg.conninfo) };
    // Every server runs for the whole suite, and the servers of one cell (endpoint and
    // connections) take turns back to back: what drifts on the machine over minutes (the
    // database's state, the neighbours of a virtual machine) reaches every server of a cell
    // alike, so a round's ratio between two servers is a fair pair.
    let mut servers: Vec<(&str, Running)> = Vec::new();
    for server in SERVERS {
        if server.contains("wsgi") && python.is_none() {
            continue;
        }
        servers.push((server, start(server, python.as_deref(), &app)?));
    }
    let mut rows: Vec<Row> = Vec::new();
    for round in 0..=rounds {
        let cells = ENDPOINTS
            .iter()
            .flat_map(|e| CONNECTIONS.iter().map(move |&c| (*e, c)));
        for (cell, (endpoint, c)) in cells.enumerate() {
            let serving: Vec<&(&str, Running)> = servers
                .iter()
                .filter(|(s, _)| endpoint != "/db" || serves_db(s))
                .collect();
            // Each cell of each round starts with another server, so that none always runs
            // first (right after the previous cell's heaviest load) or last.
            let first = (round + cell) % serving.len();
            for k in 0..serving.len() {
                let (server, running) = serving[(first + k) % serving.len()];
                check_answer(server, running.addr, endpoint)?;
                let before = cpu_us(running.child.id());
                let (rps, p50, p99, total) = wrk(running.addr, endpoint, c, secs)?;
                let cpu = cpu_us(running.child.id()) - before;
                let run = Run {
                    rps,
                    p50_us: p50,
                    p99_us: p99,
                    cpu_us_per_request: cpu / total.max(1) as f64,
                };
                eprintln!(
                    "http: round {round}/{rounds} {server} {endpoint} c={c}: {rps:.0} req/s, p50 {p50:.0} us, p99 {p99:.0} us, {:.1} us CPU/req",
                    run.cpu_us_per_request
                );
                // Round 0 warms up and is thrown away.
                if round == 0 {
                    continue;
                }
                match rows
                    .iter_mut()
                    .find(|r| r.server == *server && r.endpoint == endpoint && r.connections == c)
                {
                    Some(r) => r.runs.push(run),
                    None => rows.push(Row {
                        server: server.to_string(),
                        endpoint: endpoint.to_string(),
                        connections: c,
                        runs: vec![run],
                    }),
                }
            }
        }
    }
    drop(servers);
    skipped.push(
        "/db on may_minihttp, gevent and eventlet: not measured (no pool of the same shape \
         on them here)"
            .into(),
    );
    Ok(Report {
        seconds_per_run: secs,
        rows,
        skipped,
    })
}

pub(crate) fn median_of(v: impl Iterator<Item = f64>) -> f64 {
    let v: Vec<f64> = v.filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return f64::NAN;
    }
    crate::median(&v)
}

/// `server`'s `figure` (requests/s, a latency) over greenhub-http's in one cell, round by
/// round (each round ran the two back to back): the median of those ratios, and their lowest
/// and highest. `None` if either has no runs there.
pub(crate) fn paired_ratio(
    report: &Report,
    server: &str,
    endpoint: &str,
    connections: u32,
    figure: fn(&Run) -> f64,
) -> Option<(f64, f64, f64)> {
    let runs = |s: &str| {
        report
            .rows
            .iter()
            .find(|r| r.server == s && r.endpoint == endpoint && r.connections == connections)
            .map(|r| r.runs.iter().map(figure).collect::<Vec<f64>>())
    };
    crate::round_by_round(&runs(server)?, &runs("greenhub-http")?)
}

/// The suite as Markdown: a table per endpoint.
pub fn markdown(report: &Report) -> String {
    use std::fmt::Write as _;
    let mut md = String::new();
    let _ = writeln!(
        md,
        "\n## HTTP servers under wrk\n\nEach server in its own process with two workers (the \
         Python ones single-threaded), keep-alive connections, no pipelining; `/plaintext` and \
         `/json` the TechEmpower answers, `/db` one random row of a 10,000-row table through a \
         pool of 16 connections with cached prepared statements on both sides; before each \
         load one answer is checked by hand and a run with socket errors or non-2xx answers \
         fails the suite. wrk runs {} s per figure with one thread, on the same two cores as \
         the server (so a server that needs less CPU leaves more to wrk); the servers take \
         turns within a round, each round starting with the next one; medians over the \
         rounds, and the range of req/s beside them. Every server runs throughout, and the \
         servers of one row group (endpoint and connections) take turns back to back, each \
         round starting with another: the last column divides each round's req/s by \
         greenhub-http's in the same round and gives the median of those ratios and their \
         range (a range that spans 1.00x is the machine's noise, not a difference), and the \
         column before it does the same with the p99 latencies. Higher req/s is better; lower \
         latency and CPU are better.\n",
        report.seconds_per_run
    );
    for endpoint in ENDPOINTS {
        let _ = writeln!(md, "\n### `{endpoint}`\n");
        let _ = writeln!(
            md,
            "| server | connections | req/s | req/s min–max | p50 (µs) | p99 (µs) | server CPU per request (µs) | p99 vs greenhub-http, round by round (median, min–max) | req/s vs greenhub-http, round by round (median, min–max) |"
        );
        let _ = writeln!(md, "|---|---:|---:|---:|---:|---:|---:|---:|---:|");
        for &c in CONNECTIONS {
            // In the suite's order of servers, whichever started the first round.
            let mut rows: Vec<&Row> = report
                .rows
                .iter()
                .filter(|r| r.endpoint == *endpoint && r.connections == c)
                .collect();
            rows.sort_by_key(|r| SERVERS.iter().position(|s| *s == r.server));
            for r in rows {
                let rps = median_of(r.runs.iter().map(|x| x.rps));
                let rel = |figure: fn(&Run) -> f64| {
                    if r.server == "greenhub-http" {
                        "1.00x".to_string()
                    } else {
                        paired_ratio(report, &r.server, endpoint, c, figure)
                            .map(|(q, lo, hi)| format!("{q:.2}x ({lo:.2}–{hi:.2}x)"))
                            .unwrap_or_default()
                    }
                };
                let (lo, hi) = r.runs.iter().fold((f64::INFINITY, 0.0f64), |(lo, hi), x| {
                    (lo.min(x.rps), hi.max(x.rps))
                });
                let _ = writeln!(
                    md,
                    "| {} | {} | {:.0} | {:.0}–{:.0} | {:.0} | {:.0} | {:.1} | {} | {} |",
                    r.server,
                    c,
                    rps,
                    lo,
                    hi,
                    median_of(r.runs.iter().map(|x| x.p50_us)),
                    median_of(r.runs.iter().map(|x| x.p99_us)),
                    median_of(r.runs.iter().map(|x| x.cpu_us_per_request)),
                    rel(|run| run.p99_us),
                    rel(|run| run.rps)
                );
            }
        }
    }
    for s in &report.skipped {
        let _ = writeln!(md, "\nNot measured: {s}.");
    }
    md
}
