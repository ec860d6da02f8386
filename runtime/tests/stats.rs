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

/// `promtool check metrics` on an exposition: its complaints (empty when it is valid and
/// follows Prometheus's naming rules).
fn promtool(text: &str) -> String {
    let mut child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool (Debian package `prometheus`) runs the exposition check");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let said =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    if out.status.success() {
        String::new()
    } else {
        said
    }
}

/// The samples of an exposition: series (name and labels) to value.
fn samples(text: &str) -> std::collections::HashMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (series, value) = l.rsplit_once(' ').unwrap();
            (series.to_owned(), value.parse().unwrap())
        })
        .collect()
}

/// A registered object with a latency summary in its detail, as the pools report them.
struct Timed {
    reg: greenhub::ext::Registration,
    name: Option<String>,
}

impl greenhub::ext::Inspect for Timed {
    fn inspect(&self) -> greenhub::ext::ObjectInfo {
        greenhub::ext::ObjectInfo::new(
            greenhub::ext::ObjectKind::named("timed thing"),
            self.reg.id(),
            self.name.as_deref(),
            1,
        )
        .count("level", 2)
        .total("served", 5)
        .with_detail(serde_json::json!({
            "wait": {"count": 4, "sum_us": 2_000_000, "p50_us": 500_000, "p90_us": 600_000,
                     "p99_us": 700_000, "max_us": 700_000},
        }))
    }
}

fn timed(name: Option<&str>) -> std::sync::Arc<Timed> {
    std::sync::Arc::new_cyclic(|weak: &std::sync::Weak<Timed>| Timed {
        reg: greenhub::ext::Registration::new(weak.clone()),
        name: name.map(String::from),
    })
}

#[test]
fn metrics_pass_promtool_and_series_do_not_grow_with_unnamed_objects() {
    setup();
    let queue = greenhub::Queue::<u32>::unbounded().named("metrics-queue");
    queue.put(1).unwrap();
    let (status, before) = get("GET", "/metrics");
    assert_eq!(status, 200);
    let complaints = promtool(&before);
    assert!(complaints.is_empty(), "promtool: {complaints}\n{before}");

    // 10,000 unnamed events and one named: the unnamed ones share one series per family.
    let events: Vec<_> = (0..10_000)
        .map(|_| greenhub::Event::<(), ()>::new())
        .collect();
    let named = greenhub::Event::<(), ()>::new().named("metrics-event");
    let (_, after) = get("GET", "/metrics");
    let complaints = promtool(&after);
    assert!(complaints.is_empty(), "promtool: {complaints}\n{after}");
    let (b, a) = (samples(&before), samples(&after));
    assert!(
        a.len() <= b.len() + 10,
        "series grew from {} to {} with 10,000 unnamed objects",
        b.len(),
        a.len()
    );
    assert!(a["greenhub_objects{kind=\"event\"}"] >= 10_001.0);
    assert_eq!(a["greenhub_event_set{name=\"metrics-event\"}"], 0.0);
    assert!(a.contains_key("greenhub_event_set{name=\"\"}"));
    assert_eq!(a["greenhub_queue_len{name=\"metrics-queue\"}"], 1.0);
    assert_eq!(a["greenhub_queue_puts_total{name=\"metrics-queue\"}"], 1.0);
    for family in [
        "greenhub_threads{state=\"waiting\"}",
        "greenhub_threads_spawned_total",
        "greenhub_switches_total",
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "process_open_fds",
        "process_max_fds",
        "process_start_time_seconds",
    ] {
        assert!(a.contains_key(family), "{family} missing from:\n{after}");
    }
    let start = a["process_start_time_seconds"];
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(
        start <= now + 1.0 && start > now - 3600.0,
        "{start} vs {now}"
    );
    drop((events, named));
    assert_eq!(queue.get().unwrap(), 1);
}

#[test]
fn latencies_are_summaries_with_sum_and_count_and_names_are_escaped() {
    setup();
    let one = timed(Some("solo \"pool\"\n"));
    let twins = [timed(Some("twin")), timed(Some("twin"))];
    let (_, text) = get("GET", "/metrics");
    let complaints = promtool(&text);
    assert!(complaints.is_empty(), "promtool: {complaints}\n{text}");
    let s = samples(&text);
    let solo = "name=\"solo \\\"pool\\\"\\n\"";
    assert_eq!(
        s[&format!("greenhub_timed_thing_wait_seconds{{{solo},quantile=\"0.5\"}}")],
        0.5
    );
    assert_eq!(
        s[&format!("greenhub_timed_thing_wait_seconds_sum{{{solo}}}")],
        2.0
    );
    assert_eq!(
        s[&format!("greenhub_timed_thing_wait_seconds_count{{{solo}}}")],
        4.0
    );
    assert_eq!(
        s[&format!("greenhub_timed_thing_served_total{{{solo}}}")],
        5.0
    );
    // Two objects under one name: summed, without quantiles that cannot be summed.
    assert_eq!(
        s["greenhub_timed_thing_wait_seconds_count{name=\"twin\"}"],
        8.0
    );
    assert_eq!(s["greenhub_timed_thing_level{name=\"twin\"}"], 4.0);
    assert_eq!(s["greenhub_timed_thing_waiting{name=\"twin\"}"], 2.0);
    assert!(!s.contains_key("greenhub_timed_thing_wait_seconds{name=\"twin\",quantile=\"0.5\"}"));
    assert_eq!(
        text.matches("# HELP greenhub_timed_thing_wait_seconds ")
            .count(),
        1,
        "{text}"
    );
    drop((one, twins));
}

#[test]
fn a_client_that_never_reads_does_not_hold_the_endpoint() {
    setup();
    // Enough threads that a snapshot is larger than the socket buffers.
    let release = greenhub::Event::<(), ()>::new();
    let waiters: Vec<_> = (0..3000)
        .map(|i| {
            let release = release.clone();
            greenhub::thread::Builder::new()
                .name(format!("never-read-{i}-{}", "x".repeat(100)))
                .spawn(move || release.wait().is_ok())
                .unwrap()
        })
        .collect();
    let addr = greenhub::inspect::stats_addr().unwrap();
    let mut hogs = Vec::new();
    for _ in 0..4 {
        let mut hog = TcpStream::connect(addr).unwrap();
        for _ in 0..20 {
            hog.write_all(b"GET /snapshot HTTP/1.1\r\nHost: x\r\n\r\n")
                .unwrap();
        }
        hogs.push(hog);
    }
    for _ in 0..5 {
        assert_eq!(get("GET", "/stats").0, 200);
    }
    drop(hogs);
    release.set(()).unwrap();
    for w in waiters {
        assert!(w.wait().unwrap());
    }
}

#[test]
fn half_sent_requests_cost_no_thread_and_lock_nobody_out() {
    setup();
    let addr = greenhub::inspect::stats_addr().unwrap();
    let tasks = || std::fs::read_dir("/proc/self/task").unwrap().count();
    let before = tasks();
    let half: Vec<TcpStream> = (0..300)
        .map(|_| {
            let mut s = TcpStream::connect(addr).unwrap();
            s.write_all(b"GET /stats HTTP/1.1\r\nHost: loc").unwrap();
            s
        })
        .collect();
    assert_eq!(get("GET", "/stats").0, 200);
    // Green threads of other tests start workers' helpers at most; not one per connection.
    assert!(tasks() < before + 100, "{before} -> {}", tasks());
    drop(half);
    // An endless header line is refused at the bound, not buffered.
    let mut endless = TcpStream::connect(addr).unwrap();
    endless
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    endless.write_all(b"GET /stats HTTP/1.1\r\nX: ").unwrap();
    let line = vec![b'a'; 64 * 1024];
    let _ = endless.write_all(&line);
    let mut answer = String::new();
    let _ = endless.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");
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

#[test]
fn counters_of_objects_that_leave_never_go_down() {
    setup();
    let series = "greenhub_timed_thing_served_total{name=\"leaver\"}";
    let count = "greenhub_timed_thing_wait_seconds_count{name=\"leaver\"}";
    let first = timed(Some("leaver"));
    let (_, text) = get("GET", "/metrics");
    assert_eq!(samples(&text)[series], 5.0);
    drop(first);
    let (_, text) = get("GET", "/metrics");
    let s = samples(&text);
    assert_eq!(s[series], 5.0, "the total of a dropped object stays");
    assert_eq!(s[count], 4.0);
    let second = timed(Some("leaver"));
    let (_, text) = get("GET", "/metrics");
    assert_eq!(samples(&text)[series], 10.0, "the new one adds to it");
    let complaints = promtool(&text);
    assert!(complaints.is_empty(), "promtool: {complaints}");
    drop(second);
}
