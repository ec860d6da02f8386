//! A green accept loop when the process runs out of descriptors: `accept` waits instead of
//! failing at once forever, says so once, costs next to no CPU meanwhile, and takes the
//! waiting client as soon as descriptors are free. Alone in its binary: it uses up the
//! process's descriptors.

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use greenhub::net::TcpListener;

/// Keeps the runtime's warnings.
struct Keep(Arc<Mutex<Vec<String>>>);

impl log::Log for Keep {
    fn enabled(&self, _: &log::Metadata) -> bool {
        true
    }
    fn log(&self, record: &log::Record) {
        self.0.lock().unwrap().push(record.args().to_string());
    }
    fn flush(&self) {}
}

/// CPU time of the whole process.
fn cpu() -> Duration {
    // SAFETY: getrusage fills the zeroed struct it is given.
    let u = unsafe {
        let mut u: libc::rusage = std::mem::zeroed();
        assert_eq!(libc::getrusage(libc::RUSAGE_SELF, &mut u), 0);
        u
    };
    let t = |v: libc::timeval| Duration::new(v.tv_sec as u64, v.tv_usec as u32 * 1000);
    t(u.ru_utime) + t(u.ru_stime)
}

#[test]
fn accept_out_of_descriptors_waits_says_so_once_and_takes_the_client_later() {
    let said = Arc::new(Mutex::new(Vec::new()));
    log::set_logger(Box::leak(Box::new(Keep(said.clone())))).unwrap();
    log::set_max_level(log::LevelFilter::Warn);
    greenhub::Config::new().attach(false).init().unwrap();

    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let errors = Arc::new(AtomicUsize::new(0));
    let seen = errors.clone();
    // The loop users write: every error counted, every connection echoed once.
    let acceptor = greenhub::spawn(move || {
        for conn in listener.incoming() {
            match conn {
                Ok(mut conn) => {
                    let mut line = [0u8; 5];
                    conn.read_exact(&mut line).unwrap();
                    conn.write_all(&line).unwrap();
                    return;
                }
                Err(_) => {
                    seen.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    });

    // SAFETY: getrlimit/setrlimit fill and read the struct given.
    unsafe {
        let mut limit: libc::rlimit = std::mem::zeroed();
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit), 0);
        limit.rlim_cur = limit.rlim_cur.min(512);
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &limit), 0);
    }
    let probe = std::fs::File::open("/dev/null").unwrap();
    let mut hoard = Vec::new();
    loop {
        // SAFETY: dup of a descriptor this test owns; the result is owned below.
        let fd = unsafe { libc::dup(probe.as_raw_fd()) };
        if fd < 0 {
            break;
        }
        // SAFETY: `fd` was just returned by dup and nothing else owns it.
        hoard.push(unsafe { OwnedFd::from_raw_fd(fd) });
    }
    hoard.pop();
    let mut client = std::net::TcpStream::connect(addr).expect("the kernel takes the connection");
    client.write_all(b"hello").unwrap();

    let started = Instant::now();
    let cpu_before = cpu();
    let deadline = started + Duration::from_secs(60);
    while !said
        .lock()
        .unwrap()
        .iter()
        .any(|m| m.contains("waiting for descriptors"))
    {
        assert!(
            Instant::now() < deadline,
            "the lack of descriptors was never reported"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(Duration::from_millis(1000));
    let spent = cpu() - cpu_before;
    let elapsed = started.elapsed();
    drop(probe);
    drop(hoard);

    client
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let mut back = [0u8; 5];
    client.read_exact(&mut back).unwrap();
    assert_eq!(&back, b"hello");
    acceptor.wait().unwrap();
    assert_eq!(
        errors.load(Ordering::Relaxed),
        0,
        "accept returned the lack of descriptors"
    );
    let reports = said
        .lock()
        .unwrap()
        .iter()
        .filter(|m| m.contains("waiting for descriptors"))
        .count();
    assert_eq!(reports, 1, "said once a minute, not once per try");
    // A loop retrying at once would burn its worker (or its share of a busy machine).
    assert!(
        spent < elapsed / 4,
        "the accept loop spun: {spent:?} of CPU in {elapsed:?}"
    );
}
