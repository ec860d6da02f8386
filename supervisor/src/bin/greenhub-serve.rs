//! `greenhub-serve`: runs a greenhub program as N workers on shared listening sockets (see
//! the crate docs of `greenhub-supervisor`).
//!
//! ```text
//! greenhub-serve --workers 4 --listen 127.0.0.1:8080 -- ./target/release/web
//! greenhub-serve --config serve.toml --check
//! ```

use std::io::Write;
use std::path::PathBuf;

use clap::Parser;
use greenhub_supervisor::{FileConfig, Master};

/// Runs a greenhub program as N workers on shared listening sockets: SIGHUP reloads them one
/// by one gated on readiness, SIGTERM stops gracefully, SIGINT fast, SIGTTIN/SIGTTOU add or
/// remove one.
#[derive(Parser, Debug)]
#[command(name = "greenhub-serve", version)]
struct Args {
    /// A TOML file of settings (the flags below win over it).
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Check the configuration (and that the program can be found), then exit.
    #[arg(long)]
    check: bool,
    /// How many workers serve at once [default: one per core].
    #[arg(long, short)]
    workers: Option<usize>,
    /// A socket to listen on, `[NAME=]HOST:PORT` or `[NAME=]unix:PATH`; repeat for more.
    #[arg(long, short)]
    listen: Vec<String>,
    /// How long a new worker has to say it is ready [default: 30s].
    #[arg(long)]
    ready_timeout: Option<String>,
    /// How long a draining worker has to finish [default: 30s].
    #[arg(long)]
    stop_timeout: Option<String>,
    /// The heartbeat period asked of workers, or `off` [default: 1s].
    #[arg(long)]
    heartbeat: Option<String>,
    /// A silent heartbeat this long marks a worker stuck [default: ten periods, at least 5s].
    #[arg(long)]
    heartbeat_timeout: Option<String>,
    /// A worker thread held this long by one green thread marks a worker stuck, or `off`
    /// [default: 10s].
    #[arg(long)]
    blocked_limit: Option<String>,
    /// Recycle a worker whose resident memory stays over this (`512MiB`).
    #[arg(long)]
    max_memory: Option<String>,
    /// ... for this long [default: 10s].
    #[arg(long)]
    memory_grace: Option<String>,
    /// Recycle a worker after this many requests.
    #[arg(long)]
    max_requests: Option<u64>,
    /// Up to this many more, drawn per worker.
    #[arg(long)]
    max_requests_jitter: Option<u64>,
    /// Recycle a worker after this age (`1h`).
    #[arg(long)]
    max_age: Option<String>,
    /// Up to this much more, drawn per worker.
    #[arg(long)]
    max_age_jitter: Option<String>,
    /// The longest pause before restarting a crashed worker [default: 30s].
    #[arg(long)]
    restart_backoff: Option<String>,
    /// Write the master's pid here.
    #[arg(long)]
    pid_file: Option<PathBuf>,
    /// Serve Prometheus metrics (the master's and its workers') on HOST:PORT.
    #[arg(long)]
    stats: Option<String>,
    /// The worker program and its arguments.
    #[arg(last = true)]
    command: Vec<String>,
}

/// Lines on standard error: time, level, message.
struct Stderr;

impl log::Log for Stderr {
    fn enabled(&self, m: &log::Metadata) -> bool {
        m.level() <= log::Level::Info
    }
    fn log(&self, r: &log::Record) {
        if !self.enabled(r.metadata()) {
            return;
        }
        let now = std::time::SystemTime::now();
        let millis = now
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .subsec_millis();
        // "Mon, 30 Nov 2026 21:06:01.123 GMT": the HTTP date with milliseconds.
        let date = httpdate::fmt_http_date(now);
        let date = date
            .strip_suffix(" GMT")
            .map_or(date.clone(), |d| format!("{d}.{millis:03} GMT"));
        let message = r.args().to_string();
        let text = greenhub_snapshot::escape_controls(&message);
        let _ = writeln!(
            std::io::stderr(),
            "{date} greenhub-serve[{}] {} {}",
            std::process::id(),
            r.level(),
            text
        );
    }
    fn flush(&self) {}
}

fn main() {
    let args = Args::parse();
    let _ = log::set_logger(&Stderr).map(|()| log::set_max_level(log::LevelFilter::Info));
    let from_file = match &args.config {
        Some(path) => match FileConfig::read(path) {
            Ok(f) => f,
            Err(e) => fail(&e.to_string()),
        },
        None => FileConfig::default(),
    };
    let flags = FileConfig {
        command: (!args.command.is_empty()).then_some(args.command),
        env: None,
        workers: args.workers,
        listen: (!args.listen.is_empty()).then_some(args.listen),
        backlog: None,
        ready_timeout: args.ready_timeout,
        stop_timeout: args.stop_timeout,
        heartbeat: args.heartbeat,
        heartbeat_timeout: args.heartbeat_timeout,
        blocked_limit: args.blocked_limit,
        max_memory: args.max_memory,
        memory_grace: args.memory_grace,
        max_requests: args.max_requests,
        max_requests_jitter: args.max_requests_jitter,
        max_age: args.max_age,
        max_age_jitter: args.max_age_jitter,
        restart_backoff: args.restart_backoff,
        crash_loop: None,
        crash_window: None,
        pid_file: args.pid_file,
        stats: args.stats,
    };
    let cfg = match from_file.merge(flags).finish() {
        Ok(c) => c,
        Err(e) => fail(&e.to_string()),
    };
    if args.check {
        match greenhub_supervisor::spawn::Program::resolve(&cfg.command) {
            Ok(p) => {
                println!(
                    "configuration valid: {} workers of {} on {}",
                    cfg.workers,
                    p.shown(),
                    cfg.listen
                        .iter()
                        .map(|l| format!("{}={:?}", l.name, l.addr))
                        .collect::<Vec<_>>()
                        .join(", ")
                );
                return;
            }
            Err(e) => fail(&e.to_string()),
        }
    }
    match Master::new(cfg) {
        Ok(m) => m.run(),
        Err(e) => fail(&e.to_string()),
    }
}

fn fail(message: &str) -> ! {
    eprintln!(
        "greenhub-serve: {}",
        greenhub_snapshot::escape_controls(message)
    );
    std::process::exit(2);
}
