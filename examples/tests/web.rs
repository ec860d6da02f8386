//! The flagship web service on SQLite and on PostgreSQL: every endpoint answers right, updates
//! are saved, a few hundred connections get every answer right, and the binary runs as a user
//! runs it (`--check`, and a clean stop on SIGTERM).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use greenhub_examples::web::{self, Db, World};
use greenhub_http::client::Client;

/// Debug builds need more stack than greenhub's default for an HTTP client and JSON.
fn setup() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        greenhub::Config::new()
            .stack_size(256 * 1024)
            .init()
            .unwrap()
    });
}

fn serve(db: Db) -> greenhub_http::Server {
    greenhub_http::Builder::new()
        .access_log(false)
        .bind("127.0.0.1:0", web::handler(db))
        .unwrap()
}

fn exercise(db: Db) {
    let server = serve(db.clone());
    let base = format!("http://{}", server.local_addr());
    web::check(&base).unwrap();
    let client = Client::new();
    // Updates are saved: the rows read back have the new numbers.
    let updated: Vec<World> = client
        .get(&format!("{base}/updates?n=10"))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(updated.len(), 10);
    let ids: Vec<i32> = updated.iter().map(|w| w.id).collect();
    let saved = db.rows(ids).unwrap();
    // A row drawn twice keeps the number of its last update.
    for w in &saved {
        let last = updated.iter().rev().find(|u| u.id == w.id).unwrap();
        assert_eq!(w.random_number, last.random_number, "{w:?}");
    }
    // Counts outside 1..=500 are clamped, as TechEmpower asks.
    for (q, n) in [("n=0", 1), ("queries=501", 500), ("n=abc", 1), ("", 1)] {
        let rows: Vec<World> = client
            .get(&format!("{base}/queries?{q}"))
            .send()
            .unwrap()
            .json()
            .unwrap();
        assert_eq!(rows.len(), n, "{q}");
    }
    assert_eq!(
        client
            .get(&format!("{base}/nothing"))
            .send()
            .unwrap()
            .status(),
        404
    );
    assert_eq!(
        client.post(&format!("{base}/db")).send().unwrap().status(),
        405
    );

    let wrong = Arc::new(AtomicUsize::new(0));
    let users: Vec<_> =
        (0..200)
            .map(|i| {
                let (client, base, wrong) = (client.clone(), base.clone(), wrong.clone());
                greenhub::spawn(move || {
                    for j in 0..10 {
                        let ok =
                            match (i + j) % 4 {
                                0 => client
                                    .get(&format!("{base}/plaintext"))
                                    .send()
                                    .is_ok_and(|r| r.text() == "Hello, World!"),
                                1 => client.get(&format!("{base}/json")).send().is_ok_and(|r| {
                                    r.json::<serde_json::Value>()
                                        .is_ok_and(|v| v["message"] == "Hello, World!")
                                }),
                                2 => client.get(&format!("{base}/db")).send().is_ok_and(|r| {
                                    r.json::<World>()
                                        .is_ok_and(|w| (1..=web::ROWS).contains(&w.id))
                                }),
                                _ => client.get(&format!("{base}/queries?n=3")).send().is_ok_and(
                                    |r| r.json::<Vec<World>>().is_ok_and(|rows| rows.len() == 3),
                                ),
                            };
                        if !ok {
                            wrong.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                })
            })
            .collect();
    for u in users {
        u.wait().unwrap();
    }
    assert_eq!(wrong.load(Ordering::SeqCst), 0);
    server.stop(Duration::from_secs(10));
}

#[test]
fn the_service_on_sqlite() {
    setup();
    let dir = tempfile::tempdir().unwrap();
    let (db, which) = Db::open(dir.path(), None, 4).unwrap();
    assert!(which.starts_with("SQLite"));
    exercise(db);
}

#[test]
fn the_service_on_postgresql() {
    setup();
    let pg = greenhub_pgtest::Pg::start();
    let dir = tempfile::tempdir().unwrap();
    let (db, which) = Db::open(dir.path(), Some(&pg.conninfo), 8).unwrap();
    assert!(which.starts_with("PostgreSQL"));
    // Opening again finds the table filled and leaves it.
    let (again, _) = Db::open(dir.path(), Some(&pg.conninfo), 2).unwrap();
    assert_eq!(again.rows(vec![1, web::ROWS]).unwrap().len(), 2);
    exercise(db);
}

#[test]
fn the_binary_checks_itself_and_stops_cleanly_on_sigterm() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_web"))
        .args(["--addr", "127.0.0.1:0", "--check"])
        .env_remove("DATABASE_URL")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("every endpoint answered as it should"),
        "{stdout}"
    );

    use std::io::{BufRead, BufReader};
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_web"))
        .args(["--addr", "127.0.0.1:0", "--duration", "120"])
        .env_remove("DATABASE_URL")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = lines.next().unwrap().unwrap();
    assert!(
        first.starts_with("web service on http://127.0.0.1:"),
        "{first}"
    );
    // SAFETY: kill sends a signal to the child this test started.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    let status = child.wait().unwrap();
    assert!(status.success(), "{rest:?}");
    assert!(rest.iter().any(|l| l == "stopping on SIGTERM"), "{rest:?}");
    assert!(rest.iter().any(|l| l.starts_with("stopped:")), "{rest:?}");
}
