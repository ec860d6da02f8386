//! A worker the OS keeps off its CPU is not reported against the green thread it runs: the
//! green thread computed for a few milliseconds, the OS stretched that to far past
//! `max_blocking_time`, and the monitor says the machine is busy instead of blaming the
//! thread. Its own process: it starves its only worker on purpose.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use greenhub::Config;
use greenhub::inspect::snapshot;

mod common;

/// Pins the thread `tid` (0: the caller) to `cpu`.
fn pin(tid: i32, cpu: usize) {
    // SAFETY: a zeroed cpu_set_t is empty; CPU_SET and sched_setaffinity read a valid set.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        assert_eq!(
            libc::sched_setaffinity(tid, std::mem::size_of::<libc::cpu_set_t>(), &set),
            0,
            "pin {tid} to CPU {cpu}"
        );
    }
}

/// The first CPU this process may run on.
fn first_cpu() -> usize {
    // SAFETY: sched_getaffinity fills the zeroed set it is given.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        assert_eq!(
            libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set),
            0
        );
        (0..libc::CPU_SETSIZE as usize)
            .find(|c| libc::CPU_ISSET(*c, &set))
            .expect("some CPU")
    }
}

#[test]
fn a_worker_starved_by_the_os_is_not_blamed_on_its_green_thread() {
    let logs = common::capture_logs(log::LevelFilter::Warn);
    Config::new()
        .workers(1)
        .max_blocking_time(Some(Duration::from_millis(50)))
        .init()
        .unwrap();
    if !std::path::Path::new("/proc/thread-self/schedstat").exists() {
        eprintln!("skipped: this kernel keeps no scheduler statistics");
        return;
    }
    let worker = greenhub::spawn(|| ())
        .wait()
        .map(|_| snapshot().workers[0].tid);
    let tid = worker.unwrap();
    let cpu = first_cpu();
    // The worker at the lowest priority, sharing one CPU with two spinning threads: it gets
    // a sliver of the CPU, so a few milliseconds of work take hundreds of wall milliseconds.
    pin(tid, cpu);
    // SAFETY: setpriority on a thread of this process.
    let lowered = unsafe { libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, 19) };
    assert_eq!(lowered, 0);
    static SPIN: AtomicBool = AtomicBool::new(true);
    let hogs: Vec<_> = (0..2)
        .map(|_| {
            std::thread::spawn(move || {
                pin(0, cpu);
                let mut x = 0u64;
                while SPIN.load(Ordering::Relaxed) {
                    x = std::hint::black_box(x.wrapping_add(1));
                }
            })
        })
        .collect();

    let started = Instant::now();
    let t = greenhub::thread::Builder::new()
        .name("short job")
        .spawn(|| {
            let start = common::thread_cpu();
            let mut x = 0u64;
            while common::thread_cpu() - start < Duration::from_millis(5) {
                x = std::hint::black_box(x.wrapping_add(1));
            }
        })
        .unwrap();
    let id = t.id();
    t.wait().unwrap();
    let wall = started.elapsed();
    SPIN.store(false, Ordering::Relaxed);
    for h in hogs {
        h.join().unwrap();
    }
    // Let the monitor see the switch and close anything it opened.
    std::thread::sleep(Duration::from_millis(100));

    if wall < Duration::from_millis(200) {
        // The scheduler did not starve the worker here (another scheduler policy, say): the
        // case this test is about did not happen.
        eprintln!("skipped: the worker was not starved ({wall:?})");
        return;
    }
    let s = snapshot();
    assert!(
        !s.blocked.iter().any(|b| b.thread == id),
        "a thread that computed 5 ms was blamed for {wall:?} of OS starvation: {:?}",
        s.blocked
    );
    let logs = logs.lock().unwrap();
    assert!(
        logs.iter()
            .any(|l| l.contains("waited") && l.contains("for a CPU")),
        "the starvation was not said: {logs:?}"
    );
}
