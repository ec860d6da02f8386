//! A green accept loop when the process runs out of descriptors: `accept` waits instead of
//! failing at once forever, says so once, costs next to no CPU meanwhile, and takes the
//! waiting client as soon as descriptors are free. Alone in its binary: it uses up the
//! process's descriptors.

use std::io::{Read, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use greenhub::net::TcpListener;

mod common;

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
    let said = common::capture_logs(log::LevelFilter::Warn);
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

    // The client's socket is made before the descriptors run out (its connect needs none),
    // and the last free descriptor is taken too: the accept must find none at all.
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    let mut hoard = common::use_up_descriptors();
    if let Ok(last) = std::fs::File::open("/dev/null") {
        hoard.push(last.into());
    }
    socket
        .connect(&addr.into())
        .expect("the kernel takes the connection");
    let mut client: std::net::TcpStream = socket.into();
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
