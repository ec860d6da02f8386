//! The README's first command: the demo runs briefly, does visible work through green
//! threads, tpool and the database pool, and checks the database itself.

use std::process::Command;

#[test]
fn the_demo_runs_and_loses_no_job_and_no_confirmed_write() {
    let out = Command::new(env!("CARGO_BIN_EXE_demo"))
        .args(["--duration", "2", "--sessions", "300"])
        .env_remove("DATABASE_URL")
        .output()
        .expect("run the demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "demo failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("database: SQLite at"), "{stdout}");
    // At least one progress line with jobs done and database writes made.
    let progress: Vec<&str> = stdout.lines().filter(|l| l.starts_with("t=")).collect();
    assert!(!progress.is_empty(), "{stdout}");
    let last = progress.last().unwrap();
    let field = |name: &str| -> u64 {
        last.split(name)
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no {name:?} in {last:?}"))
    };
    assert!(field("jobs ") > 0, "{last}");
    assert!(field("db writes ") > 0, "{last}");
    // The run info tree shows the idle sessions by name.
    assert!(
        stdout.contains("\"session-0\" waiting on sleep"),
        "{stdout}"
    );
    assert!(stdout.contains("writes confirmed: none lost"), "{stdout}");
    assert!(
        stdout.contains("jobs started") && !stdout.contains("jobs lost"),
        "{stdout}"
    );
}
