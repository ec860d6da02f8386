//! The flight recorder writes the seconds before an incident to a file when it happens: here,
//! a green thread that keeps its worker past `max_blocking_time`. Alone in its binary: it
//! sets where the files go before the runtime starts. Turning the recorder off stops it.

use std::time::{Duration, Instant};

#[test]
fn a_blocked_worker_leaves_a_trace_file_and_the_recorder_can_be_turned_off() {
    let dir = std::env::temp_dir().join(format!("greenhub-flight-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    // SAFETY: set before the runtime starts (the init below), with no other thread yet.
    unsafe {
        std::env::set_var("GREENHUB_TRACE_DIR", &dir);
        std::env::set_var("GREENHUB_FLIGHT_RECORDER", "on");
    }
    // The environment turns the recorder on (`from_env`), the code the threshold.
    greenhub::Config::from_env()
        .unwrap()
        .max_blocking_time(Some(Duration::from_millis(50)))
        .attach(false)
        .init()
        .unwrap();
    let napper = greenhub::thread::Builder::new()
        .name("flight-napper")
        .spawn(|| greenhub::sleep(Duration::from_millis(5)))
        .unwrap();
    napper.wait().unwrap().unwrap();
    let blocker = greenhub::thread::Builder::new()
        .name("flight-blocker")
        .spawn(|| std::thread::sleep(Duration::from_millis(400)))
        .unwrap();
    let t0 = Instant::now();
    let file = loop {
        let found = std::fs::read_dir(&dir).ok().and_then(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|e| e.path())
                .find(|p| p.to_string_lossy().contains("blocked-worker"))
        });
        if let Some(f) = found {
            break f;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "no trace file in {}",
            dir.display()
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    blocker.wait().unwrap();
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&file).unwrap().permissions().mode();
    assert_eq!(mode & 0o077, 0, "private: {mode:o}");
    // Written whole before it is named in the log; read it once it parses.
    let t0 = Instant::now();
    let json: serde_json::Value = loop {
        if let Ok(v) = serde_json::from_str(&std::fs::read_to_string(&file).unwrap()) {
            break v;
        }
        assert!(t0.elapsed() < Duration::from_secs(30));
        std::thread::sleep(Duration::from_millis(10));
    };
    let events = json["traceEvents"].as_array().unwrap();
    let named = |name: &str| {
        events.iter().any(|e| {
            e["ph"] == "M"
                && e["args"]["name"]
                    .as_str()
                    .is_some_and(|n| n.starts_with(name))
        })
    };
    assert!(named("flight-napper"), "the seconds before are kept");
    assert!(named("flight-blocker"));
    assert!(
        events.iter().any(|e| e["name"]
            .as_str()
            .is_some_and(|n| n.contains("past max_blocking_time"))),
        "the report is an event of the trace"
    );

    // Off: nothing new is recorded.
    greenhub::inspect::flight_recorder(false);
    assert!(!greenhub::inspect::snapshot().runtime.flight_recorder);
    let quiet = greenhub::spawn(|| greenhub::sleep(Duration::from_millis(1)));
    quiet.wait().unwrap().unwrap();
    let trace = greenhub::inspect::trace(Duration::from_secs(600));
    assert!(trace.events.iter().all(|e| e.thread != quiet.id()));
    greenhub::inspect::flight_recorder(true);
    let heard = greenhub::spawn(|| greenhub::sleep(Duration::from_millis(1)));
    heard.wait().unwrap().unwrap();
    let trace = greenhub::inspect::trace(Duration::from_secs(600));
    assert!(trace.events.iter().any(|e| e.thread == heard.id()));
    let _ = std::fs::remove_dir_all(&dir);
}
