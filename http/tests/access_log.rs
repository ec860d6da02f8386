//! The access log: one Common Log Format line per answer through `log` (target
//! `greenhub_http::access`), refused requests included, nothing when it is turned off. Alone
//! in its binary: it installs the logger.

mod common;

use std::sync::Mutex;
use std::time::{Duration, Instant};

use greenhub_http::{Builder, Request, response};

static LINES: Mutex<Vec<(String, String)>> = Mutex::new(Vec::new());

struct Capture;

impl log::Log for Capture {
    fn enabled(&self, _: &log::Metadata) -> bool {
        true
    }
    fn log(&self, r: &log::Record) {
        LINES
            .lock()
            .unwrap()
            .push((r.target().to_string(), r.args().to_string()));
    }
    fn flush(&self) {}
}

fn access_lines() -> Vec<String> {
    LINES
        .lock()
        .unwrap()
        .iter()
        .filter(|(t, _)| t == "greenhub_http::access")
        .map(|(_, l)| l.clone())
        .collect()
}

fn wait_for(n: usize) -> Vec<String> {
    let t0 = Instant::now();
    loop {
        let lines = access_lines();
        if lines.len() >= n {
            return lines;
        }
        assert!(t0.elapsed() < Duration::from_secs(10), "{lines:?}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn each_answer_is_one_common_log_format_line() {
    log::set_logger(&Capture).unwrap();
    log::set_max_level(log::LevelFilter::Info);
    let server = Builder::new()
        .bind("127.0.0.1:0", |_req: Request<'_>| {
            response::text("Hello, World!")
        })
        .unwrap();
    let mut c = common::Client::connect(server.local_addr());
    assert_eq!(c.get("/a/b?x=1&y=%22q%22").status, 200);
    let lines = wait_for(1);
    let line = &lines[0];
    // 127.0.0.1 - - [30/Nov/2026:17:48:18 +0000] "GET /a/b?x=1&y=%22q%22 HTTP/1.1" 200 13
    let (host, rest) = line.split_once(" - - [").unwrap();
    assert_eq!(host, "127.0.0.1");
    let (time, rest) = rest.split_once("] ").unwrap();
    assert_eq!(time.len(), "30/Nov/2026:17:48:18 +0000".len(), "{line}");
    assert!(time.ends_with(" +0000"), "{line}");
    assert_eq!(rest, "\"GET /a/b?x=1&y=%22q%22 HTTP/1.1\" 200 13");

    // A refused request is logged too, with no request line to quote.
    let mut bad = common::Client::connect(server.local_addr());
    bad.send(b"NOT HTTP\r\n\r\n");
    assert_eq!(bad.read(false).status, 400);
    let lines = wait_for(2);
    assert!(lines[1].starts_with("127.0.0.1 - - ["), "{lines:?}");
    assert!(lines[1].contains("] \"-\" 400 "), "{lines:?}");
    server.stop(Duration::from_secs(5));

    // Turned off: nothing.
    let quiet = Builder::new()
        .access_log(false)
        .bind("127.0.0.1:0", |_req: Request<'_>| response::text("shh"))
        .unwrap();
    let before = access_lines().len();
    let mut c = common::Client::connect(quiet.local_addr());
    assert_eq!(c.get("/").text(), "shh");
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(access_lines().len(), before);
    quiet.stop(Duration::from_secs(5));
}
