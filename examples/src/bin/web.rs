//! The flagship web service: `/plaintext`, `/json`, `/db`, `/queries?n=20`,
//! `/updates?n=20` and a WebSocket echo at `/ws`, on greenhub-http with dbpool underneath
//! (see `src/web.rs`).
//!
//! Run it with `cargo run --release --bin web`, then try `curl localhost:8080/queries?n=5`
//! or load it with `wrk -c 256 -d 10 http://127.0.0.1:8080/db`. It uses an embedded SQLite
//! file by default, PostgreSQL when `DATABASE_URL` is set. `-- --addr 127.0.0.1:9000` listens
//! elsewhere, `-- --duration 10` stops after ten seconds, `-- --check` asks every endpoint
//! once, checks the answers and stops. Ctrl-C or SIGTERM stops it gracefully: requests in
//! flight finish, idle connections close.
//!
//! It is also a worker for `greenhub-serve`, which hands it its socket and reloads it
//! without dropping a request: `cargo build --release --bin web --bin greenhub-serve`, then
//! `target/release/greenhub-serve --workers 2 --listen 127.0.0.1:8080 -- target/release/web`
//! and `kill -HUP <master pid>`.

use std::time::Duration;

use greenhub_examples::web::{self, Db};

struct Args {
    addr: String,
    duration: Option<Duration>,
    check: bool,
    connections: u32,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        addr: "127.0.0.1:8080".into(),
        duration: None,
        check: false,
        connections: 16,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--addr" => a.addr = args.next().ok_or("--addr needs HOST:PORT")?,
            "--duration" => {
                let secs = args
                    .next()
                    .and_then(|s| s.parse().ok())
                    .ok_or("--duration needs a whole number of seconds")?;
                a.duration = Some(Duration::from_secs(secs));
            }
            "--connections" => {
                a.connections = args
                    .next()
                    .and_then(|s| s.parse().ok())
                    .filter(|n| *n > 0)
                    .ok_or("--connections needs a positive whole number")?;
            }
            "--check" => a.check = true,
            _ => {
                return Err("usage: web [--addr HOST:PORT] [--duration SECONDS] [--connections N] [--check]".into());
            }
        }
    }
    Ok(a)
}

fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    if let Err(e) = greenhub::Config::from_env().and_then(|c| c.init()) {
        eprintln!("error: {e}");
        std::process::exit(2);
    }
    let stop = match greenhub_examples::stop::on_signal() {
        Ok(stop) => stop,
        Err(e) => {
            eprintln!("error: cannot handle Ctrl-C and SIGTERM: {e}");
            std::process::exit(1);
        }
    };
    let dir = match tempfile::Builder::new().prefix("greenhub-web-").tempdir() {
        Ok(d) => d,
        Err(e) => {
            eprintln!("error: cannot make a directory for the database: {e}");
            std::process::exit(1);
        }
    };
    let url = std::env::var("DATABASE_URL").ok();
    let (db, which) = match Db::open(dir.path(), url.as_deref(), args.connections) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("error: cannot open the database: {e}");
            std::process::exit(1);
        }
    };
    // A handler's stack: JSON, the database pool and a WebSocket fit in 256 KiB even in a
    // debug build (greenhub's default of 64 KiB is for small green threads); only the pages
    // a connection touches cost memory.
    // The socket greenhub-serve (or systemd) handed over, else our own.
    let listener = match greenhub::net::listen_or_inherit(args.addr.clone()) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    };
    let server = match greenhub_http::Builder::new()
        .name("web")
        .stack_size(256 * 1024)
        .serve(listener, web::handler(db))
    {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: cannot serve: {e}");
            std::process::exit(1);
        }
    };
    // The database is open and the server accepts: a supervisor may drain an old worker now.
    if let Err(e) = greenhub::notify::ready() {
        eprintln!("warning: {e}");
    }
    let base = format!("http://{}", server.local_addr());
    println!(
        "web service on {base} (pid {}), database: {which}",
        std::process::id()
    );
    println!("try: curl {base}/queries?n=5   or   wrk -c 256 -d 10 {base}/db");
    println!(
        "watch it live: cargo run --release --bin inspector -- attach {}",
        std::process::id()
    );
    let mut failed = false;
    if args.check {
        match web::check(&base) {
            Ok(()) => println!("every endpoint answered as it should"),
            Err(e) => {
                eprintln!("check failed: {e}");
                failed = true;
            }
        }
    } else {
        let stopped = match args.duration {
            Some(d) => stop.wait_timeout(d).ok(),
            None => stop.wait().ok(),
        };
        if let Some(signal) = stopped {
            println!("stopping on {}", greenhub::signal::name(signal));
        }
    }
    let _ = greenhub::notify::stopping();
    // Under greenhub-serve, its stop timeout; alone, ten seconds.
    let grace = std::env::var("GREENHUB_SERVE_STOP_TIMEOUT_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .map_or(Duration::from_secs(10), Duration::from_millis);
    let stopped = server.stop(grace);
    println!(
        "stopped: {} connections finished, {} cut at the deadline",
        stopped.finished, stopped.killed
    );
    if failed {
        std::process::exit(1);
    }
}
