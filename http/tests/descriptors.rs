//! The server when the process runs out of descriptors: it does not spin, says so once, and
//! answers the clients that waited as soon as descriptors are free. Alone in its binary: it
//! uses up the process's descriptors.

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use greenhub_http::{Request, response};

static LOGS: Mutex<Vec<String>> = Mutex::new(Vec::new());

struct Capture;

impl log::Log for Capture {
    fn enabled(&self, _: &log::Metadata) -> bool {
        true
    }
    fn log(&self, r: &log::Record) {
        LOGS.lock().unwrap().push(r.args().to_string());
    }
    fn flush(&self) {}
}

fn said(text: &str) -> usize {
    LOGS.lock()
        .unwrap()
        .iter()
        .filter(|l| l.contains(text))
        .count()
}

/// The CPU time of this whole process so far.
fn process_cpu() -> Duration {
    // SAFETY: getrusage fills the struct it is given.
    let usage = unsafe {
        let mut u: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut u);
        u
    };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

/// Lowers the open-files limit to 512 and opens descriptors until none is left but one.
fn use_up_descriptors() -> Vec<OwnedFd> {
    // SAFETY: getrlimit/setrlimit fill and read the struct given.
    unsafe {
        let mut limit: libc::rlimit = std::mem::zeroed();
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit), 0);
        limit.rlim_cur = limit.rlim_cur.min(512);
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &limit), 0);
    }
    let probe: OwnedFd = std::fs::File::open("/dev/null").unwrap().into();
    let mut hoard = Vec::new();
    loop {
        // SAFETY: dup of a descriptor this function owns; the result is owned below.
        let fd = unsafe { libc::dup(probe.as_raw_fd()) };
        if fd < 0 {
            break;
        }
        // SAFETY: `fd` was just returned by dup and nothing else owns it.
        hoard.push(unsafe { OwnedFd::from_raw_fd(fd) });
    }
    hoard.pop();
    hoard.push(probe);
    hoard
}

#[test]
fn out_of_descriptors_the_server_waits_without_spinning_and_serves_again() {
    log::set_logger(&Capture).unwrap();
    log::set_max_level(log::LevelFilter::Warn);
    let server =
        greenhub_http::serve("127.0.0.1:0", |_req: Request<'_>| response::text("ok")).unwrap();
    let addr = server.local_addr();
    // Every worker takes its slot (and opens its scheduler-state file) when it first runs a
    // green thread: that must happen before the descriptors run out, not between the last
    // one's release and the client's connect.
    let give_up = Instant::now() + Duration::from_secs(30);
    loop {
        let snap = greenhub::inspect::snapshot();
        if snap.workers.len() >= snap.runtime.workers {
            break;
        }
        assert!(Instant::now() < give_up, "the workers never all ran");
        let busy: Vec<_> = (0..16)
            .map(|_| {
                greenhub::spawn(|| {
                    for _ in 0..100 {
                        greenhub::yield_now();
                    }
                })
            })
            .collect();
        busy.into_iter().for_each(|t| t.wait().unwrap());
    }
    let hoard = use_up_descriptors();
    // The last descriptor: the client's. The server cannot accept it.
    let mut client = std::net::TcpStream::connect(addr).expect("the kernel takes the connection");
    client
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    client
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let t0 = Instant::now();
    while said("waiting for descriptors") == 0 {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "the lack of descriptors was never said"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let cpu0 = process_cpu();
    let wall0 = Instant::now();
    std::thread::sleep(Duration::from_secs(1));
    let (spent, elapsed) = (process_cpu() - cpu0, wall0.elapsed());
    assert_eq!(
        said("waiting for descriptors"),
        1,
        "said once a minute, not per try"
    );
    assert!(
        spent < elapsed / 4,
        "the server spun: {spent:?} of CPU in {elapsed:?}"
    );
    drop(hoard);
    let mut answer = String::new();
    client.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.ends_with("ok"), "{answer}");
    server.stop(Duration::from_secs(5));
}
