//! The program asks for the flight recorder's last seconds: `inspect::save_trace` writes them
//! now, `signal::save_trace_on` on each signal. Names that cannot be file names are refused,
//! nothing is written while the recorder is off, files appear whole and private, and a
//! process keeps its newest eight. Alone in its binary: it sets where the files go before the
//! runtime starts.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use greenhub::inspect::SaveTraceError;

/// This process's trace files in `dir`.
fn traces(dir: &Path) -> Vec<PathBuf> {
    let prefix = format!("trace-{}-", std::process::id());
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| {
                    p.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.starts_with(&prefix))
                })
                .collect()
        })
        .unwrap_or_default();
    found.sort();
    found
}

/// The thread names a trace file holds (its metadata events).
fn named_threads(path: &Path) -> Vec<String> {
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).expect("a whole file");
    json["traceEvents"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["ph"] == "M")
        .filter_map(|e| e["args"]["name"].as_str().map(String::from))
        .collect()
}

#[test]
fn saved_traces_are_whole_private_files_named_as_asked_on_request_and_on_a_signal() {
    let dir = std::env::temp_dir().join(format!("greenhub-saved-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    // SAFETY: set before the runtime starts (the init below), with no other thread yet.
    unsafe { std::env::set_var("GREENHUB_TRACE_DIR", &dir) };
    greenhub::Config::from_env()
        .unwrap()
        .attach(false)
        .init()
        .unwrap();

    // Off: nothing to save, and nothing written.
    assert!(matches!(
        greenhub::inspect::save_trace("early"),
        Err(SaveTraceError::Off)
    ));
    assert!(traces(&dir).is_empty());

    greenhub::inspect::flight_recorder(true);
    for bad in [
        "",
        "Slow",
        "a/b",
        "../up",
        "a b",
        "\u{1b}[31mred",
        "é",
        &"x".repeat(33),
    ] {
        match greenhub::inspect::save_trace(bad) {
            Err(e @ SaveTraceError::BadName { .. }) => {
                assert!(!e.to_string().contains('\u{1b}'), "escaped: {e}");
            }
            other => panic!("{bad:?} was taken as a name: {other:?}"),
        }
    }
    assert!(traces(&dir).is_empty(), "a refused name writes nothing");

    // Asked for from a green thread: the file is written off the workers.
    let saved = greenhub::thread::Builder::new()
        .name("saver")
        .spawn(|| {
            greenhub::thread::Builder::new()
                .name("before-the-save")
                .spawn(|| greenhub::sleep(Duration::from_millis(2)))
                .unwrap()
                .wait()
                .unwrap()
                .unwrap();
            greenhub::inspect::save_trace("slow-request")
        })
        .unwrap()
        .wait()
        .unwrap()
        .unwrap();
    assert_eq!(saved.parent(), Some(dir.as_path()));
    let name = saved.file_name().unwrap().to_str().unwrap();
    assert!(name.ends_with("-slow-request.json"), "{name}");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&saved).unwrap().permissions().mode();
    assert_eq!(mode & 0o077, 0, "private: {mode:o}");
    let names = named_threads(&saved);
    assert!(
        names.iter().any(|n| n.starts_with("before-the-save")),
        "the seconds before the save are in it: {names:?}"
    );
    let everything: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(
        everything,
        vec![saved.clone()],
        "one file, no hidden part left"
    );

    // On a signal.
    let handler = greenhub::signal::save_trace_on(libc::SIGUSR2).unwrap();
    // SAFETY: kill on our own pid with a signal the handler above takes.
    assert_eq!(unsafe { libc::kill(libc::getpid(), libc::SIGUSR2) }, 0);
    let deadline = Instant::now() + Duration::from_secs(60);
    let on_signal = loop {
        if let Some(p) = traces(&dir)
            .into_iter()
            .find(|p| p.to_string_lossy().ends_with("-signal.json"))
        {
            break p;
        }
        assert!(Instant::now() < deadline, "no trace file after SIGUSR2");
        std::thread::sleep(Duration::from_millis(5));
    };
    assert!(
        !named_threads(&on_signal).is_empty(),
        "the signal's file is a whole trace"
    );
    handler.cancel();

    // A directory others may write into (here: opened to everyone) is refused, not used.
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    let before = std::fs::read_dir(&dir).unwrap().count();
    match greenhub::inspect::save_trace("exposed") {
        Err(e @ SaveTraceError::Write { .. }) => {
            let text = e.to_string();
            assert!(text.contains("0700"), "{text}");
            assert!(text.contains("GREENHUB_TRACE_DIR"), "{text}");
        }
        other => panic!("saved into a directory open to all: {other:?}"),
    }
    assert_eq!(
        std::fs::read_dir(&dir).unwrap().count(),
        before,
        "nothing written"
    );
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();

    // Left by an older version (no number in the name) and by writes that never finished.
    let pid = std::process::id();
    let old_style = dir.join(format!("trace-{pid}-1-signal.json"));
    std::fs::write(&old_style, "{}").unwrap();
    let stale_part = dir.join(format!(".trace-{pid}-1-0-crash.json.part"));
    let stale = std::fs::File::create(&stale_part).unwrap();
    stale
        .set_modified(std::time::SystemTime::now() - Duration::from_secs(600))
        .unwrap();
    drop(stale);
    let fresh_part = dir.join(format!(".trace-{pid}-2-0-writing.json.part"));
    std::fs::write(&fresh_part, "").unwrap();

    // Many saves in one second: each its own file, and only the newest eight stay.
    let mut last = None;
    for _ in 0..12 {
        last = Some(greenhub::inspect::save_trace("burst").unwrap());
    }
    let kept = traces(&dir);
    assert_eq!(kept.len(), 8, "{kept:?}");
    assert!(kept.contains(&last.unwrap()), "the newest is kept");
    assert!(!kept.contains(&saved), "the oldest goes");
    assert!(
        !old_style.exists(),
        "a file of the older name is pruned as the oldest"
    );
    assert!(
        !stale_part.exists(),
        "a part left by a dead write is removed"
    );
    assert!(fresh_part.exists(), "a part being written is not");
    let _ = std::fs::remove_dir_all(&dir);
}
