//! `inspector`: list the greenhub processes of this user, dump one's green threads as a tree,
//! print its snapshot as JSON, profile it, or act on it (kill a green thread, change a
//! setting, resize a pool).

use std::io::Write as _;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use greenhub_inspector::{Client, list};
use greenhub_snapshot::format_us;

#[derive(Parser)]
#[command(
    name = "inspector",
    version,
    about = "See inside a live greenhub process"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// A live view of a process: threads (sort, filter, tree, details), timers, descriptors,
    /// pools, blocked workers.
    Attach {
        /// The process id.
        pid: u32,
    },
    /// The inspectable processes of this user: pid, name, green threads, uptime.
    List,
    /// All green threads of a process as a tree by parent, with state, wait and spawn site.
    Dump {
        /// The process id.
        pid: u32,
        /// Each parked thread's stack under it (function, file and line; greenhub's own
        /// frames folded away).
        #[arg(long)]
        stacks: bool,
    },
    /// Profile a process: where its green threads spend CPU time (the workers sampled, each
    /// sample charged to the green thread it interrupted) and where they wait. Prints folded
    /// stacks (one line per stack, rooted at the spawn site: `flamegraph.pl`, inferno and
    /// speedscope read them), or the top functions, or the whole profile as JSON.
    Profile {
        /// The process id.
        pid: u32,
        /// How long to sample.
        #[arg(long, default_value_t = 10.0)]
        seconds: f64,
        /// Samples per second of each worker's CPU time (1 to 1000).
        #[arg(long, default_value_t = greenhub_snapshot::attach::DEFAULT_PROFILE_HZ)]
        hz: u32,
        /// Folded stacks of where the parked green threads wait (weighted by microseconds
        /// waited) instead of where CPU time goes.
        #[arg(long)]
        off_cpu: bool,
        /// The top functions of both halves, as text.
        #[arg(long, conflicts_with_all = ["json", "off_cpu"])]
        top: Option<usize>,
        /// The whole profile as JSON.
        #[arg(long, conflicts_with = "off_cpu")]
        json: bool,
    },
    /// The flight recorder's last seconds of a process: every green thread's runs, waits (on
    /// what), wakes (by whom), spawns, kills and ends, in the Trace Event Format that Perfetto
    /// (ui.perfetto.dev) and chrome://tracing open. The recorder is on unless the process
    /// turned it off (`inspector set <pid> flight_recorder on`).
    Trace {
        /// The process id.
        pid: u32,
        /// How far back, in seconds.
        #[arg(long, default_value_t = 5.0)]
        last: f64,
        /// The file to write (standard output without it).
        #[arg(long, short)]
        output: Option<std::path::PathBuf>,
        /// greenhub's own JSON (the `Trace` schema) instead of the Trace Event Format.
        #[arg(long)]
        json: bool,
    },
    /// Kill a green thread of a process (as `GreenThread::kill` would: it unwinds at its next
    /// wait). The process logs who asked.
    Kill {
        /// The process id.
        pid: u32,
        /// The green thread's id (as `inspector dump` shows it).
        thread: u64,
        /// Also every live green thread it spawned, theirs included.
        #[arg(long)]
        tree: bool,
    },
    /// Change a setting of a running process: `max_blocking_time <ms|off>` (the blocked-worker
    /// threshold) or `log_level <off|error|warn|info|debug|trace>`. The process logs who asked.
    Set {
        /// The process id.
        pid: u32,
        /// `max_blocking_time` or `log_level`.
        setting: String,
        /// The new value.
        value: String,
    },
    /// Resize a pool of a running process: a tpool's threads, a green pool's slots, an item
    /// pool's items (its id as `inspector dump` lists the objects). The process logs who asked.
    Resize {
        /// The process id.
        pid: u32,
        /// The pool's object id.
        object: u64,
        /// The new size.
        size: usize,
    },
    /// The full snapshot of a process as JSON (versioned schema).
    Json {
        /// The process id.
        pid: u32,
        /// Indented, for reading.
        #[arg(long)]
        pretty: bool,
        /// With each parked thread's stack.
        #[arg(long)]
        stacks: bool,
    },
}

/// `inspector list`: one row per process; a `greenhub-serve` master's workers under it, a
/// worker's place beside its name.
fn listing(found: &[greenhub_inspector::Listed]) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:>8}  {:<16} {:>9}  {:>10}  ROLE",
        "PID", "NAME", "THREADS", "UPTIME"
    );
    for p in found {
        let s = match &p.summary {
            Ok(s) => s,
            Err(e) => {
                let _ = writeln!(out, "{:>8}  ({e})", p.pid);
                continue;
            }
        };
        let role = match (&s.workers, &s.supervised) {
            (Some(w), _) => format!("master of {} workers", w.len()),
            (None, Some(sv)) => format!(
                "worker {} (generation {}) of master {}",
                sv.worker, sv.generation, sv.master
            ),
            (None, None) => String::new(),
        };
        let _ = writeln!(
            out,
            "{:>8}  {:<16} {:>9}  {:>10}  {}",
            p.pid,
            greenhub_snapshot::escape_controls(&s.process),
            if s.workers.is_some() {
                "-".to_string()
            } else {
                s.threads.to_string()
            },
            format_us(s.uptime_us),
            role
        );
        for w in s.workers.iter().flatten() {
            let _ = writeln!(
                out,
                "{:>8}  ├ worker {} generation {}: {}, up {}, {} requests, {} MiB{}{}",
                w.pid,
                w.id,
                w.generation,
                greenhub_snapshot::escape_controls(&w.state),
                format_us(w.age_us),
                w.requests,
                w.rss_bytes >> 20,
                if w.blocked_ms > 0 {
                    format!(", a worker thread held {} ms", w.blocked_ms)
                } else {
                    String::new()
                },
                w.retiring
                    .as_deref()
                    .map(|r| format!(", retiring: {}", greenhub_snapshot::escape_controls(r)))
                    .unwrap_or_default()
            );
        }
    }
    out
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("inspector: {message}");
            ExitCode::FAILURE
        }
    }
}

fn run(command: Command) -> Result<(), String> {
    match command {
        Command::Attach { pid } => greenhub_inspector::tui::run(pid),
        Command::List => {
            let found = list().map_err(|e| {
                format!(
                    "cannot read {}: {e}",
                    greenhub_snapshot::attach::directory().display()
                )
            })?;
            print!("{}", listing(&found));
            Ok(())
        }
        Command::Profile {
            pid,
            seconds,
            hz,
            off_cpu,
            top,
            json,
        } => {
            let max = greenhub_snapshot::attach::MAX_PROFILE_SECONDS as f64;
            if !(seconds > 0.0 && seconds <= max) {
                return Err(format!("--seconds takes more than 0 and at most {max}"));
            }
            if !(1..=1000).contains(&hz) {
                return Err("--hz takes 1 to 1000".into());
            }
            let profile = Client::connect(pid)
                .and_then(|mut c| c.profile(seconds, hz))
                .map_err(|e| e.to_string())?;
            let text = match (top, json, off_cpu) {
                (Some(n), _, _) => profile.summary(n),
                (None, true, _) => {
                    serde_json::to_string(&profile).map_err(|e| e.to_string())? + "\n"
                }
                (None, false, true) => profile.folded(greenhub_snapshot::Half::OffCpu),
                (None, false, false) => profile.folded(greenhub_snapshot::Half::OnCpu),
            };
            emit(&text)
        }
        Command::Dump { pid, stacks } => emit(&fetch(pid, stacks)?.format_run_info()),
        Command::Trace {
            pid,
            last,
            output,
            json,
        } => {
            let max = greenhub_snapshot::attach::MAX_TRACE_SECONDS as f64;
            if !(last > 0.0 && last <= max) {
                return Err(format!(
                    "--last takes more than 0 and at most {max} seconds"
                ));
            }
            let trace = Client::connect(pid)
                .and_then(|mut c| c.trace(last))
                .map_err(|e| e.to_string())?;
            let text = if json {
                serde_json::to_string(&trace).map_err(|e| e.to_string())?
            } else {
                trace.chrome_json()
            };
            match output {
                Some(path) => {
                    std::fs::write(&path, text + "\n")
                        .map_err(|e| format!("{}: {e}", path.display()))?;
                    eprintln!(
                        "inspector: {} events over {} ms{} in {}",
                        trace.events.len(),
                        trace.span_ns / 1_000_000,
                        if trace.dropped > 0 {
                            format!(" ({} older ones overwritten)", trace.dropped)
                        } else {
                            String::new()
                        },
                        path.display()
                    );
                    Ok(())
                }
                None => emit(&(text + "\n")),
            }
        }
        Command::Kill { pid, thread, tree } => acted(pid, |c| c.kill(thread, tree)),
        Command::Set {
            pid,
            setting,
            value,
        } => acted(pid, |c| c.set(&setting, &value)),
        Command::Resize { pid, object, size } => acted(pid, |c| c.resize(object, size)),
        Command::Json {
            pid,
            pretty,
            stacks,
        } => {
            let snap = fetch(pid, stacks)?;
            let text = if pretty {
                serde_json::to_string_pretty(&snap)
            } else {
                serde_json::to_string(&snap)
            }
            .map_err(|e| e.to_string())?;
            emit(&format!("{text}\n"))
        }
    }
}

/// Sends a request that acts and prints what the process says it did.
fn acted(
    pid: u32,
    ask: impl FnOnce(
        &mut Client,
    ) -> Result<greenhub_snapshot::attach::Acted, greenhub_inspector::InspectError>,
) -> Result<(), String> {
    let mut client = Client::connect(pid).map_err(|e| e.to_string())?;
    let acted = ask(&mut client).map_err(|e| e.to_string())?;
    let mut text = greenhub_snapshot::escape_controls(&acted.done).into_owned();
    if !acted.killed.is_empty() {
        let ids: Vec<String> = acted.killed.iter().map(|id| format!("#{id}")).collect();
        text.push_str(&format!(": {}", ids.join(" ")));
    }
    emit(&format!("{text}\n"))
}

fn fetch(pid: u32, stacks: bool) -> Result<greenhub_snapshot::Snapshot, String> {
    let mut client = Client::connect(pid).map_err(|e| e.to_string())?;
    if stacks {
        client.snapshot_with_stacks()
    } else {
        client.snapshot()
    }
    .map_err(|e| e.to_string())
}

/// Writes to stdout; a reader that has gone (`inspector dump | head`) is not an error.
fn emit(text: &str) -> Result<(), String> {
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(format!("stdout: {e}")),
        _ => Ok(()),
    }
}
