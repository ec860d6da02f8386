//! README's summary of a full run: sentences made from the run's medians, written between
//! README's `bench-summary` markers, so that every figure README quotes comes from the run
//! BENCHMARKS.md shows. Each comparison says who wins and by how much, greenhub's losses in
//! the same words as its wins; a suite that did not run leaves its sentence out.

use std::fmt::Write as _;

use crate::{Report, SUITES, fmt_figure};

/// The markers README's summary sits between.
pub const START: &str = "<!-- bench-summary:start (written by greenhub-bench; do not edit) -->";
/// The end marker.
pub const END: &str = "<!-- bench-summary:end -->";

/// The median and the CPU per operation of one case, in the suite's display unit.
fn case(report: &Report, suite: &str, runtime: &str) -> Option<(f64, Option<f64>)> {
    let scale = SUITES
        .iter()
        .find(|s| s.id == suite)
        .map_or(1.0, |s| s.scale);
    let s = report.suites.iter().find(|s| s.id == suite)?;
    let c = s.cases.iter().find(|c| c.runtime == runtime)?;
    Some((c.median / scale, c.cpu_ns_per_op_median))
}

/// `other` beside greenhub's `mine` where lower is better: "1.57x greenhub's" and who wins.
fn against(mine: f64, other: f64) -> String {
    if mine <= 0.0 || other <= 0.0 {
        return String::new();
    }
    if other >= mine {
        format!("greenhub wins, {:.2}x", other / mine)
    } else {
        format!("greenhub loses, {:.2}x", mine / other)
    }
}

/// One of a case's two figures: its median, or its CPU per operation.
type Pick = fn((f64, Option<f64>)) -> Option<f64>;

/// The median.
const MEDIAN: Pick = |(median, _)| Some(median);
/// The CPU per operation.
const CPU: Pick = |(_, cpu)| cpu;

/// "GREENHUB G; may M (greenhub loses, 1.5x), tokio T (...)" for the runtimes present, over the
/// figure `pick` takes; GREENHUB is the case named `greenhub` (greenhub's own row of the suite).
fn compare(
    report: &Report,
    suite: &str,
    greenhub: &str,
    others: &[&str],
    pick: Pick,
) -> Option<String> {
    let mine = pick(case(report, suite, greenhub)?)?;
    let mut out = format!("{greenhub} {}", fmt_figure(mine));
    for other in others {
        if let Some(theirs) = case(report, suite, other).and_then(pick) {
            let _ = write!(
                out,
                "; {other} {} ({})",
                fmt_figure(theirs),
                against(mine, theirs)
            );
        }
    }
    Some(out)
}

/// The medians.
fn row(report: &Report, suite: &str, greenhub: &str, others: &[&str]) -> Option<String> {
    compare(report, suite, greenhub, others, MEDIAN)
}

/// The CPU per operation.
fn cpu_row(report: &Report, suite: &str, greenhub: &str, others: &[&str]) -> Option<String> {
    compare(report, suite, greenhub, others, CPU)
}

const SEEDS_AND_PEERS: &[&str] = &["may", "tokio", "gevent", "eventlet"];
const POOLS: &[&str] = &[
    "tokio spawn_blocking",
    "blocking crate",
    "gevent threadpool",
    "eventlet tpool",
];

/// The summary's paragraphs, in Markdown.
pub fn summary(report: &Report) -> String {
    let mut md = String::new();
    let _ = writeln!(
        md,
        "From the harness's run of {} (at least {} rounds, more where a table says so; \
         medians, {} cores; lower is better; \"greenhub wins, 2x\" means the other side's \
         figure is twice greenhub's). Tables and what each case does: \
         [BENCHMARKS.md](BENCHMARKS.md).\n",
        report.date,
        report.rounds,
        report.machine.get("cores").map_or("?", |c| c.as_str())
    );
    let mut items: Vec<String> = Vec::new();
    let mut add = |label: &str, text: Option<String>| {
        if let Some(text) = text {
            items.push(format!("- **{label}**: {text}."));
        }
    };
    add(
        "Switch (ping-pong round trip, one worker, ns)",
        row(report, "ping_pong_1", "greenhub", SEEDS_AND_PEERS),
    );
    add(
        "Spawn + join (ns per task)",
        row(report, "spawn_join", "greenhub", SEEDS_AND_PEERS),
    );
    add(
        "Bursts of 20,000 tasks waiting at a gate, then joined (ns per task)",
        row(report, "burst", "greenhub", SEEDS_AND_PEERS),
    );
    add(
        "Memory per sleeping task (KiB)",
        row(report, "idle_memory", "greenhub", SEEDS_AND_PEERS),
    );
    add(
        "An idle process (wake-ups per second)",
        row(report, "idle_process", "greenhub", SEEDS_AND_PEERS),
    );
    add(
        "An idle process (CPU ns per second)",
        cpu_row(report, "idle_process", "greenhub", SEEDS_AND_PEERS),
    );
    add(
        "Thread pool, back-to-back calls (p50 ns)",
        row(report, "tpool_rtt_p50", "greenhub tpool", POOLS),
    );
    add(
        "Thread pool, back-to-back calls (CPU ns per call)",
        cpu_row(report, "tpool_rtt_p50", "greenhub tpool", POOLS),
    );
    add(
        "Thread pool, one call per ms (CPU ns per call beyond the sleep's)",
        cpu_row(report, "tpool_spaced", "greenhub tpool", POOLS),
    );
    add(
        "Thread pool beside two CPU-bound processes (p99 ns)",
        row(report, "tpool_busy_p99", "greenhub tpool", POOLS),
    );
    for (suite, conns) in [
        ("echo_remote_1", "1 connection"),
        ("echo_remote_100", "100 connections"),
        ("echo_remote_1000", "1,000 connections"),
    ] {
        add(
            &format!("Echo, clients in another process, {conns} (ns per round trip)"),
            row(report, suite, "greenhub", SEEDS_AND_PEERS),
        );
        add(
            &format!("Echo server CPU, {conns} (ns per round trip)"),
            cpu_row(report, suite, "greenhub", SEEDS_AND_PEERS),
        );
    }
    for (suite, conns) in [
        ("proxy_1", "1 connection"),
        ("proxy_100", "100 connections"),
    ] {
        add(
            &format!("Proxy between two processes, {conns} (ns per round trip)"),
            row(report, suite, "greenhub", SEEDS_AND_PEERS),
        );
        add(
            &format!("Proxy CPU, {conns} (ns per round trip)"),
            cpu_row(report, suite, "greenhub", SEEDS_AND_PEERS),
        );
    }
    // greenhub's own PostgreSQL client; dbpool (the driver on pool threads) is the row of the
    // suites where callers abandon slow statements, which greenhub-pg does not run.
    let db_peers = &[
        "r2d2 + postgres, query_typed_one (64 OS threads)",
        "deadpool-postgres, prepare_cached (tokio)",
    ];
    add(
        "PostgreSQL `SELECT 1` through a pool of 8, one round trip each (µs per query)",
        row(report, "db_select1", "greenhub-pg", db_peers),
    );
    add(
        "The same, client CPU (ns per query)",
        cpu_row(report, "db_select1", "greenhub-pg", db_peers),
    );
    add(
        "The same, p50 latency (µs)",
        row(report, "db_select1_p50", "greenhub-pg", db_peers),
    );
    add(
        "The same, p99 latency (µs)",
        row(report, "db_select1_p99", "greenhub-pg", db_peers),
    );
    let abandon_peers = &[
        "r2d2 + postgres (64 OS threads)",
        "deadpool-postgres (tokio)",
    ];
    add(
        "`SELECT 1` while half the callers abandon slow statements (µs per query)",
        row(report, "db_abandon", "greenhub dbpool", abandon_peers),
    );
    add(
        "The same, p99 latency (µs)",
        row(report, "db_abandon_p99", "greenhub dbpool", abandon_peers),
    );
    if let Some(http) = &report.http {
        for (endpoint, conns) in [("/plaintext", 64), ("/db", 64)] {
            let rps = |server: &str| {
                let row = http.rows.iter().find(|r| {
                    r.server == server && r.endpoint == endpoint && r.connections == conns
                })?;
                let med = |f: fn(&crate::http::Run) -> f64| {
                    crate::http::median_of(row.runs.iter().map(f))
                };
                Some((
                    med(|r| r.rps),
                    med(|r| r.p99_us),
                    med(|r| r.cpu_us_per_request),
                ))
            };
            let Some((mine, p99, cpu)) = rps("greenhub-http") else {
                continue;
            };
            let mut text = format!(
                "greenhub-http {:.0} requests/s (p99 {} µs, {} µs of server CPU each)",
                mine,
                fmt_figure(p99),
                fmt_figure(cpu)
            );
            for server in [
                "may_minihttp",
                "axum (tokio)",
                "gevent pywsgi",
                "eventlet.wsgi",
            ] {
                if let Some((theirs, their_p99, their_cpu)) = rps(server) {
                    // Compared round by round (the two ran back to back); higher is better
                    // for requests/s, so the ratio is a cost the other way round.
                    let pair = crate::http::paired_ratio(http, server, endpoint, conns, |r| r.rps)
                        .map(|(q, lo, hi)| {
                            format!(
                                "{}; by round {lo:.2}x to {hi:.2}x greenhub's rate",
                                against(q, 1.0)
                            )
                        })
                        .unwrap_or_default();
                    // Lower is better for a latency: the ratio reads as it is.
                    let p99_pair =
                        crate::http::paired_ratio(http, server, endpoint, conns, |r| r.p99_us)
                            .map(|(q, lo, hi)| {
                                format!(", by round {q:.2}x greenhub's ({lo:.2}x to {hi:.2}x)")
                            })
                            .unwrap_or_default();
                    let _ = write!(
                        text,
                        "; {server} {theirs:.0} ({pair}; p99 {} µs{p99_pair}, CPU {} µs)",
                        fmt_figure(their_p99),
                        fmt_figure(their_cpu)
                    );
                }
            }
            add(
                &format!("HTTP `{endpoint}` under wrk, {conns} connections"),
                Some(text),
            );
        }
    }
    if let Some(reload) = &report.reload {
        let mut text = String::new();
        for row in reload
            .rows
            .iter()
            .filter(|r| matches!(r.load, crate::reload::Load::Reloads))
        {
            let failed: u64 = row.runs.iter().map(|r| r.failed).sum();
            let requests: u64 = row.runs.iter().map(|r| r.requests).sum();
            let rps = crate::http::median_of(row.runs.iter().map(|r| r.rps));
            let p99 = crate::http::median_of(row.runs.iter().map(|r| r.p99_us));
            if !text.is_empty() {
                text.push_str("; ");
            }
            let _ = write!(
                text,
                "{} failed {failed} of {requests} requests, {rps:.0} requests/s, p99 {} µs",
                row.server,
                fmt_figure(p99)
            );
        }
        if !text.is_empty() {
            add(
                &format!(
                    "Reloads under load ({} SIGHUPs a run)",
                    reload.reloads_per_run
                ),
                Some(text),
            );
        }
    }
    md.push_str(&items.join("\n"));
    md.push('\n');
    md
}

/// README's text with the part between the markers replaced by `summary`; `None` if README has
/// no markers.
pub fn into_readme(readme: &str, summary: &str) -> Option<String> {
    let start = readme.find(START)? + START.len();
    let end = start + readme[start..].find(END)?;
    Some(format!(
        "{}\n\n{}\n{}",
        &readme[..start],
        summary.trim_end(),
        &readme[end..]
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wins_and_losses_are_said_the_same_way() {
        assert_eq!(against(100.0, 150.0), "greenhub wins, 1.50x");
        assert_eq!(against(150.0, 100.0), "greenhub loses, 1.50x");
    }

    #[test]
    fn only_the_part_between_the_markers_is_replaced() {
        let readme = format!("a\n{START}\nold\n{END}\nb\n");
        assert_eq!(
            into_readme(&readme, "new\n").unwrap(),
            format!("a\n{START}\n\nnew\n{END}\nb\n")
        );
        assert_eq!(into_readme("no markers", "new"), None);
    }
}
