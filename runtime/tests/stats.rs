//! The HTTP stats endpoint on loopback: summary, filtered snapshot, Prometheus metrics, and
//! clear errors for what it does not serve.
#![cfg(feature = "stats")]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Once;
use std::time::Duration;

use greenhub::inspect::{Snapshot, ThreadState};

fn setup() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        greenhub::Config::new()
            .stats_addr(Some("127.0.0.1:0".parse().unwrap()))
            .init()
            .unwrap();
    });
}

/// One HTTP/1.0 exchange: status code and body.
fn get(method: &str, path: &str) -> (u16, String) {
    let addr = greenhub::inspect::stats_addr().expect("the endpoint is up");
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "{method} {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap();
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    (status, body.to_owned())
}

#[test]
fn stats_and_a_filtered_snapshot_show_the_waiting_threads() {
    setup();
    let release = greenhub::Event::<(), ()>::new();
    let waiters: Vec<_> = (0..3)
        .map(|i| {
            let release = release.clone();
            greenhub::thread::Builder::new()
                .name(format!("stats-probe-{i}"))
                .spawn(move || release.wait().is_ok())
                .unwrap()
        })
        .collect();
    let busy = greenhub::thread::Builder::new()
        .name("stats-sleeper")
        .spawn(|| greenhub::sleep(Duration::from_secs(30)))
        .unwrap();

    let (status, body) = get("GET", "/stats");
    assert_eq!(status, 200);
    let stats: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(stats["pid"], std::process::id());
    assert!(stats["totals"]["live"].as_u64().unwrap() >= 4);
    assert!(
        stats.get("threads").is_none(),
        "no per-thread list in /stats"
    );

    let probes = || {
        let (status, body) = get("GET", "/snapshot?state=waiting&name=stats-probe");
        assert_eq!(status, 200);
        serde_json::from_str::<Snapshot>(&body).unwrap()
    };
    let mut snap = probes();
    for _ in 0..500 {
        if snap.threads.len() == 3 {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
        snap = probes();
    }
    assert_eq!(snap.threads.len(), 3, "{:?}", snap.threads);
    assert!(snap.threads.iter().all(|t| t.state == ThreadState::Waiting
        && t.name.as_deref().unwrap().starts_with("stats-probe")));
    // Escaped query values are decoded.
    let (_, body) = get("GET", "/snapshot?name=stats%2Dsleeper");
    let snap: Snapshot = serde_json::from_str(&body).unwrap();
    assert_eq!(snap.threads.len(), 1);

    release.set(()).unwrap();
    for w in waiters {
        assert!(w.wait().unwrap());
    }
    busy.kill();
}

#[test]
fn metrics_are_prometheus_text() {
    setup();
    let queue = greenhub::Queue::<u32>::unbounded().named("metrics-queue");
    queue.put(1).unwrap();
    let (status, body) = get("GET", "/metrics");
    assert_eq!(status, 200);
    let mut typed = std::collections::HashSet::new();
    for line in body.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap();
            assert!(["gauge", "counter", "summary"].contains(&kind), "{line}");
            assert!(typed.insert(name.to_owned()), "{name} typed twice");
            continue;
        }
        if line.starts_with('#') {
            continue;
        }
        // name{labels} value
        let (series, value) = line.rsplit_once(' ').unwrap();
        value
            .parse::<f64>()
            .unwrap_or_else(|_| panic!("not a number in {line}"));
        let name = series.split('{').next().unwrap();
        assert!(
            name.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'),
            "{line}"
        );
        let family = name.strip_suffix("_count").unwrap_or(name);
        assert!(
            typed.contains(name) || typed.contains(family),
            "{name} has no TYPE before it"
        );
    }
    for expected in [
        "greenhub_threads{state=\"waiting\"}",
        "greenhub_threads_spawned_total ",
        "greenhub_switches_total ",
        "greenhub_blocked_workers 0",
        "greenhub_queue_len{name=\"metrics-queue\"",
    ] {
        assert!(body.contains(expected), "{expected} missing from:\n{body}");
    }
    assert_eq!(queue.get().unwrap(), 1);
}

#[test]
fn what_is_not_served_gets_a_clear_error() {
    setup();
    let (status, body) = get("GET", "/nope");
    assert_eq!(status, 404);
    assert!(body.contains("try /stats"), "{body}");
    let (status, _) = get("POST", "/stats");
    assert_eq!(status, 405);
    let (status, body) = get("GET", "/snapshot?state=sleepy");
    assert_eq!(status, 400);
    assert!(
        body.contains("expected running, waiting or scheduled"),
        "{body}"
    );
    let (status, _) = get("GET", "/snapshot?name=%zz");
    assert_eq!(status, 400);
    let (status, _) = get("GET", "/snapshot?colour=blue");
    assert_eq!(status, 400);
    // And it still serves.
    assert_eq!(get("GET", "/stats").0, 200);
}

#[test]
fn stats_totals_count_what_the_full_snapshot_lists() {
    setup();
    let release = greenhub::Event::<(), ()>::new();
    let waiters: Vec<_> = (0..40)
        .map(|_| {
            let release = release.clone();
            greenhub::spawn(move || release.wait().is_ok())
        })
        .collect();
    let sleepers: Vec<_> = (0..10)
        .map(|_| greenhub::spawn(|| greenhub::sleep(Duration::from_secs(30))))
        .collect();
    // /stats counts without listing; the counts must be those of the full lists. Other tests
    // of this file run alongside, so ask until two reads in a row agree.
    let mut agreed = false;
    for _ in 0..500 {
        let (_, stats) = get("GET", "/stats");
        let (_, full) = get("GET", "/snapshot");
        let (_, again) = get("GET", "/stats");
        let stats: serde_json::Value = serde_json::from_str(&stats).unwrap();
        let again: serde_json::Value = serde_json::from_str(&again).unwrap();
        let full: Snapshot = serde_json::from_str(&full).unwrap();
        let listed = [
            full.threads.len(),
            full.threads
                .iter()
                .filter(|t| t.state == ThreadState::Waiting)
                .count(),
            full.timers.len(),
            full.descriptors.len(),
        ];
        let counted = |v: &serde_json::Value| {
            ["live", "waiting", "timers", "descriptors"]
                .map(|k| v["totals"][k].as_u64().unwrap() as usize)
        };
        assert!(counted(&stats)[1] <= counted(&stats)[0]);
        if counted(&stats) == listed && counted(&again) == listed && listed[1] >= 50 {
            assert!(listed[2] >= 10, "the sleepers' timers are counted");
            agreed = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(agreed, "/stats never counted what /snapshot lists");
    release.set(()).unwrap();
    for w in waiters {
        assert!(w.wait().unwrap());
    }
    for s in sleepers {
        s.kill();
    }
}
