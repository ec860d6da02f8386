//! The stats endpoint when the process runs out of descriptors: it does not die, does not spin,
//! says so once, and serves again as soon as descriptors are free. Alone in its binary: it
//! uses up the process's descriptors.
#![cfg(feature = "stats")]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

mod common;

/// The CPU time of one thread of this process, read through a file opened beforehand (reading
/// needs no new descriptor, so it works while none is free).
struct ThreadCpu(std::fs::File);

impl ThreadCpu {
    /// The thread named `name` (a new thread names itself once it runs: it is waited for).
    fn of(name: &str) -> ThreadCpu {
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            for task in std::fs::read_dir("/proc/self/task").unwrap() {
                let dir = task.unwrap().path();
                let comm = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
                if comm.trim() == name {
                    return ThreadCpu(std::fs::File::open(dir.join("stat")).unwrap());
                }
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        panic!("no thread named {name}");
    }

    fn now(&self) -> Duration {
        use std::os::unix::fs::FileExt;
        let mut buf = [0u8; 1024];
        let n = self.0.read_at(&mut buf, 0).unwrap();
        let stat = String::from_utf8_lossy(&buf[..n]);
        let after = &stat[stat.rfind(')').unwrap() + 1..];
        // Fields 14 and 15: user and system time, in clock ticks.
        let ticks: u64 = after
            .split_whitespace()
            .skip(11)
            .take(2)
            .map(|f| f.parse::<u64>().unwrap())
            .sum();
        // SAFETY: sysconf has no memory effects.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
        Duration::from_millis(ticks * 1000 / hz)
    }
}

#[test]
fn out_of_descriptors_the_endpoint_waits_says_so_once_and_comes_back() {
    let said = common::capture_logs(log::LevelFilter::Warn);
    greenhub::Config::new()
        .stats_addr(Some("127.0.0.1:0".parse().unwrap()))
        .attach(false)
        .init()
        .unwrap();
    let addr = greenhub::inspect::stats_addr().expect("the endpoint is up");

    let cpu = ThreadCpu::of("greenhub-stats");
    let mut hoard = common::use_up_descriptors();
    let mut client = TcpStream::connect(addr).expect("the kernel takes the connection");
    client
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    client
        .write_all(b"GET /stats HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();

    // The endpoint cannot accept: it waits and says so, without spinning.
    let cpu_before = cpu.now();
    let started = Instant::now();
    let deadline = started + Duration::from_secs(60);
    while !said
        .lock()
        .unwrap()
        .iter()
        .any(|m| m.contains("cannot accept"))
    {
        assert!(
            Instant::now() < deadline,
            "the lack of descriptors was never reported"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(Duration::from_millis(1000));
    let spent = cpu.now() - cpu_before;
    let elapsed = started.elapsed();
    hoard.truncate(hoard.len().saturating_sub(64));
    let reports = said
        .lock()
        .unwrap()
        .iter()
        .filter(|m| m.contains("cannot accept"))
        .count();
    assert_eq!(reports, 1, "reported once per minute, not per try");
    // A thread retrying `accept` in a loop would burn the whole second (or its share of a
    // busy machine); retrying every 100 ms costs next to nothing.
    assert!(
        spent < elapsed / 4,
        "the endpoint spun: {spent:?} of CPU in {elapsed:?}"
    );

    // Descriptors are free again: the waiting client is answered.
    let mut answer = String::new();
    client.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    drop(hoard);
    // And new clients too.
    let mut again = TcpStream::connect(addr).unwrap();
    again.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").unwrap();
    let mut answer = String::new();
    again.read_to_string(&mut answer).unwrap();
    assert!(answer.contains("greenhub_threads"), "{answer}");
}
