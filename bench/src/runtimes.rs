//! The measurements, one function per (suite, runtime). Each runs inside its own child process
//! (see main.rs), so every runtime starts fresh with its own worker count.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use greenhub::ext::{ObjectKind, Token, WaitOn, Waiter};
use parking_lot::Mutex;

/// Resident set size of this process, in bytes.
pub fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

/// CPU time (user and system, all threads) of this process so far.
fn process_cpu() -> Duration {
    // SAFETY: getrusage fills the zeroed struct it is given.
    let u = unsafe {
        let mut u: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut u);
        u
    };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(u.ru_utime) + tv(u.ru_stime)
}

/// The CPU time per operation of the timed section of a case, when the case reports one
/// (printed after the figure: the harness shows it instead of the whole process's).
pub static SECTION_CPU_PER_OP: std::sync::OnceLock<f64> = std::sync::OnceLock::new();

/// The timed section of a case whose per-operation CPU is small beside a process's start and
/// warm-up.
pub struct Section(Duration);

impl Section {
    pub fn start() -> Section {
        Section(process_cpu())
    }

    /// The CPU spent since the start.
    pub fn spent(&self) -> Duration {
        process_cpu().saturating_sub(self.0)
    }
}

/// Reports `spent` over `n` operations as the case's CPU per operation, less `baseline` (the
/// CPU of the same loop without the operation) if there is one.
pub fn report_cpu(spent: Duration, baseline: Option<Duration>, n: u64) {
    let spent = spent.saturating_sub(baseline.unwrap_or_default());
    let _ = SECTION_CPU_PER_OP.set(spent.as_nanos() as f64 / n.max(1) as f64);
}

pub fn start_greenhub(workers: usize, stack: Option<usize>) {
    let mut config = greenhub::Config::new().workers(workers);
    if let Some(bytes) = stack {
        config = config.stack_size(bytes);
    }
    match config.init() {
        // A suite that set the runtime up itself (the inspector suites) runs a workload on it.
        Ok(()) | Err(greenhub::config::ConfigError::AlreadyStarted) => {}
        Err(e) => panic!("configure greenhub: {e}"),
    }
}

pub fn start_may(workers: usize) {
    may::config().set_workers(workers).set_worker_pin(false);
}

/// A tokio runtime as applications build it: its timers and I/O driver enabled (without
/// them, a task that sleeps panics, and a case would measure panicked tasks).
/// A tokio runtime of `workers` threads kept for the rest of the process (which ends when the
/// case does), and a listener on a free loopback port made in it: where a case's tokio
/// servers run.
pub fn tokio_listener(
    workers: usize,
) -> (&'static tokio::runtime::Runtime, tokio::net::TcpListener) {
    let rt: &'static tokio::runtime::Runtime = Box::leak(Box::new(
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(workers)
            .enable_all()
            .build()
            .unwrap(),
    ));
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    (rt, listener)
}

fn tokio_rt(workers: usize) -> tokio::runtime::Runtime {
    if workers == 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(workers)
            .enable_all()
            .build()
            .unwrap()
    }
}

// ---------------------------------------------------------------- an idle process

/// Context switches of every thread of this process so far (each one a wake-up).
fn process_switches() -> u64 {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0;
    };
    tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("status")).ok())
        .map(|status| {
            status
                .lines()
                .filter(|l| l.contains("ctxt_switches:"))
                .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
                .sum::<u64>()
        })
        .sum()
}

/// A server at rest: 100 tasks asleep and one waiting in `accept` on loopback, then `seconds`
/// of nothing. Returns the process's wake-ups per second over those seconds, and reports its
/// CPU per second.
pub fn idle_process(runtime: &str, workers: usize, seconds: u64) -> f64 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind loopback");
    let hour = Duration::from_secs(3600);
    let settle = Duration::from_secs(2);
    let measure = || {
        // The readings of /proc are left out of the CPU.
        let switches = process_switches();
        let cpu = Section::start();
        std::thread::sleep(Duration::from_secs(seconds));
        let spent = cpu.spent();
        let woken = process_switches().saturating_sub(switches);
        report_cpu(spent, None, seconds);
        woken as f64 / seconds as f64
    };
    match runtime {
        "greenhub" => {
            start_greenhub(workers, None);
            let listener = greenhub::net::TcpListener::from_std(listener).expect("listener");
            let _acceptor = greenhub::spawn(move || listener.accept().map(drop));
            let _sleepers: Vec<_> = (0..100)
                .map(|_| greenhub::spawn(move || greenhub::sleep(hour)))
                .collect();
            std::thread::sleep(settle);
            measure()
        }
        "may" => {
            start_may(workers);
            drop(listener);
            let listener = may::net::TcpListener::bind("127.0.0.1:0").expect("bind loopback");
            let _acceptor = may_spawn(move || listener.accept().map(drop));
            let _sleepers: Vec<_> = (0..100)
                .map(|_| may_spawn(move || may::coroutine::sleep(hour)))
                .collect();
            std::thread::sleep(settle);
            measure()
        }
        "tokio" => {
            let rt = tokio_rt(workers);
            listener.set_nonblocking(true).expect("nonblocking");
            let listener = {
                let _guard = rt.enter();
                tokio::net::TcpListener::from_std(listener).expect("listener")
            };
            let _acceptor = rt.spawn(async move { listener.accept().await.map(drop) });
            let _sleepers: Vec<_> = (0..100)
                .map(|_| rt.spawn(async move { tokio::time::sleep(hour).await }))
                .collect();
            std::thread::sleep(settle);
            measure()
        }
        other => panic!("unknown runtime {other}"),
    }
}

// ---------------------------------------------------------------- spawn + join

/// Spawns `n` tasks that return their index, then joins them all; ns per task.
pub fn spawn_join(runtime: &str, workers: usize, n: u64) -> f64 {
    let t0;
    let sum: u64 = match runtime {
        "greenhub" => {
            start_greenhub(workers, None);
            greenhub::spawn(|| ()).wait().unwrap();
            t0 = Instant::now();
            let hs: Vec<_> = (0..n).map(|i| greenhub::spawn(move || i)).collect();
            hs.into_iter().map(|h| h.wait().unwrap()).sum()
        }
        "may" => {
            start_may(workers);
            may_spawn(|| ()).join().unwrap();
            t0 = Instant::now();
            let hs: Vec<_> = (0..n).map(|i| may_spawn(move || i)).collect();
            hs.into_iter().map(|h| h.join().unwrap()).sum()
        }
        "tokio" => {
            let rt = tokio_rt(workers);
            rt.block_on(async { tokio::spawn(async {}).await.unwrap() });
            t0 = Instant::now();
            rt.block_on(async move {
                let hs: Vec<_> = (0..n).map(|i| tokio::spawn(async move { i })).collect();
                let mut s = 0;
                for h in hs {
                    s += h.await.unwrap();
                }
                s
            })
        }
        "std::thread" => {
            t0 = Instant::now();
            let hs: Vec<_> = (0..n)
                .map(|i| {
                    std::thread::Builder::new()
                        .stack_size(64 * 1024)
                        .spawn(move || i)
                        .unwrap()
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).sum()
        }
        other => panic!("unknown runtime {other}"),
    };
    let elapsed = t0.elapsed();
    assert_eq!(sum, n * (n - 1) / 2, "lost or duplicated results");
    elapsed.as_nanos() as f64 / n as f64
}

// ---------------------------------------------------------------- burst

/// Bursts of `BURST` tasks, spawned from the main thread, that each wait at a gate (each
/// runtime's own one-shot event) and return their index once it opens; the main thread opens
/// it and joins them all, `n / BURST` times in one process. ns per task.
pub fn burst(runtime: &str, workers: usize, n: u64) -> f64 {
    const BURST: u64 = 20_000;
    let bursts = (n / BURST).max(1);
    let want = BURST * (BURST - 1) / 2;
    let t0;
    match runtime {
        "greenhub" => {
            start_greenhub(workers, None);
            greenhub::spawn(|| ()).wait().unwrap();
            t0 = Instant::now();
            for _ in 0..bursts {
                let gate = greenhub::Event::<()>::new();
                let hs: Vec<_> = (0..BURST)
                    .map(|i| {
                        let gate = gate.clone();
                        greenhub::spawn(move || gate.wait().map(|()| i))
                    })
                    .collect();
                gate.set(()).unwrap();
                let sum: u64 = hs.into_iter().map(|h| h.wait().unwrap().unwrap()).sum();
                assert_eq!(sum, want, "lost or duplicated results");
            }
        }
        "may" => {
            start_may(workers);
            may_spawn(|| ()).join().unwrap();
            t0 = Instant::now();
            for _ in 0..bursts {
                let gate = Arc::new(may::sync::SyncFlag::new());
                let hs: Vec<_> = (0..BURST)
                    .map(|i| {
                        let gate = gate.clone();
                        may_spawn(move || {
                            gate.wait();
                            i
                        })
                    })
                    .collect();
                gate.fire();
                let sum: u64 = hs.into_iter().map(|h| h.join().unwrap()).sum();
                assert_eq!(sum, want, "lost or duplicated results");
            }
        }
        "tokio" => {
            let rt = tokio_rt(workers);
            rt.block_on(async { tokio::spawn(async {}).await.unwrap() });
            t0 = Instant::now();
            for _ in 0..bursts {
                let (open, gate) = tokio::sync::watch::channel(false);
                let hs: Vec<_> = (0..BURST)
                    .map(|i| {
                        let mut gate = gate.clone();
                        rt.spawn(
                            async move { gate.wait_for(|open| *open).await.map(|_| i).unwrap() },
                        )
                    })
                    .collect();
                open.send(true).unwrap();
                let sum = rt.block_on(async move {
                    let mut s = 0;
                    for h in hs {
                        s += h.await.unwrap();
                    }
                    s
                });
                assert_eq!(sum, want, "lost or duplicated results");
            }
        }
        other => panic!("unknown runtime {other}"),
    }
    t0.elapsed().as_nanos() as f64 / (bursts * BURST) as f64
}

// ---------------------------------------------------------------- ping-pong

/// Two parties hand a turn back and forth; each waits (parks) until it is its turn.
/// The same protocol for every runtime, on each runtime's own park/unpark primitive.
trait Parking: Send + Sync + 'static {
    type Handle: Send;
    fn park_slot(slot: &Mutex<Option<Self::Handle>>, turn: &AtomicU64, expect: u64);
    fn wake(handle: Self::Handle);
}

struct Baton<P: Parking> {
    turn: AtomicU64,
    slots: [Mutex<Option<P::Handle>>; 2],
}

impl<P: Parking> Baton<P> {
    fn new() -> Arc<Self> {
        Arc::new(Baton {
            turn: AtomicU64::new(0),
            slots: [Mutex::new(None), Mutex::new(None)],
        })
    }

    fn play(&self, me: usize, rounds: u64) {
        for r in 0..rounds {
            let expect = 2 * r + me as u64;
            P::park_slot(&self.slots[me], &self.turn, expect);
            self.turn.store(expect + 1, Ordering::Release);
            if let Some(h) = self.slots[1 - me].lock().take() {
                P::wake(h);
            }
        }
    }
}

struct GreenhubParking;

impl Parking for GreenhubParking {
    type Handle = Arc<Token>;
    fn park_slot(slot: &Mutex<Option<Arc<Token>>>, turn: &AtomicU64, expect: u64) {
        while turn.load(Ordering::Acquire) != expect {
            let w = Waiter::new(
                WaitOn::Object {
                    object: ObjectKind::OTHER,
                    id: 0,
                },
                None,
            );
            *slot.lock() = Some(w.token().clone());
            if turn.load(Ordering::Acquire) == expect {
                break;
            }
            w.wait().unwrap();
        }
    }
    fn wake(h: Arc<Token>) {
        h.wake();
    }
}

struct MayParking;

impl Parking for MayParking {
    type Handle = may::coroutine::Coroutine;
    fn park_slot(slot: &Mutex<Option<Self::Handle>>, turn: &AtomicU64, expect: u64) {
        while turn.load(Ordering::Acquire) != expect {
            *slot.lock() = Some(may::coroutine::current());
            if turn.load(Ordering::Acquire) == expect {
                break;
            }
            may::coroutine::park();
        }
    }
    fn wake(h: Self::Handle) {
        h.unpark();
    }
}

struct StdParking;

impl Parking for StdParking {
    type Handle = std::thread::Thread;
    fn park_slot(slot: &Mutex<Option<Self::Handle>>, turn: &AtomicU64, expect: u64) {
        while turn.load(Ordering::Acquire) != expect {
            *slot.lock() = Some(std::thread::current());
            if turn.load(Ordering::Acquire) == expect {
                break;
            }
            std::thread::park();
        }
    }
    fn wake(h: Self::Handle) {
        h.unpark();
    }
}

/// The ping-pong on two greenhub green threads, parking through `P`.
fn greenhub_rounds<P: Parking>(workers: usize, rounds: u64) -> Duration {
    start_greenhub(workers, None);
    let b = Baton::<P>::new();
    let (b2, b3) = (b.clone(), b.clone());
    let t0 = Instant::now();
    let other = greenhub::spawn(move || b2.play(1, rounds));
    greenhub::spawn(move || b3.play(0, rounds)).wait().unwrap();
    other.wait().unwrap();
    t0.elapsed()
}

/// Round trips between two tasks; ns per round trip (two wake-ups and two waits).
pub fn ping_pong(runtime: &str, workers: usize, rounds: u64) -> f64 {
    let elapsed: Duration = match runtime {
        "greenhub" => greenhub_rounds::<GreenhubParking>(workers, rounds),
        // Every switch and wake timed (what an attached inspector turns on).
        "greenhub, timing on" => {
            let _timing = greenhub::inspect::time_threads();
            greenhub_rounds::<GreenhubParking>(workers, rounds)
        }
        // What the flight recorder costs while it records.
        "greenhub, flight recorder on" => {
            start_greenhub(workers, None);
            greenhub::inspect::flight_recorder(true);
            greenhub_rounds::<GreenhubParking>(workers, rounds)
        }
        // greenhub's green threads (registry, monitor, context) parking through may directly:
        // the difference to "greenhub" is what greenhub's wait primitive costs.
        "greenhub threads, may park" => greenhub_rounds::<MayParking>(workers, rounds),
        "may" => {
            start_may(workers);
            let b = Baton::<MayParking>::new();
            let (b2, b3) = (b.clone(), b.clone());
            let t0 = Instant::now();
            let other = may_spawn(move || b2.play(1, rounds));
            may_spawn(move || b3.play(0, rounds)).join().unwrap();
            other.join().unwrap();
            t0.elapsed()
        }
        "tokio" => {
            let rt = tokio_rt(workers);
            rt.block_on(async move {
                let ping = Arc::new(tokio::sync::Notify::new());
                let pong = Arc::new(tokio::sync::Notify::new());
                let (ping2, pong2) = (ping.clone(), pong.clone());
                let t0 = Instant::now();
                let other = tokio::spawn(async move {
                    for _ in 0..rounds {
                        ping2.notified().await;
                        pong2.notify_one();
                    }
                });
                let me = tokio::spawn(async move {
                    for _ in 0..rounds {
                        ping.notify_one();
                        pong.notified().await;
                    }
                });
                me.await.unwrap();
                other.await.unwrap();
                t0.elapsed()
            })
        }
        "std::thread" => {
            let b = Baton::<StdParking>::new();
            let (b2, b3) = (b.clone(), b.clone());
            let t0 = Instant::now();
            let other = std::thread::spawn(move || b2.play(1, rounds));
            std::thread::spawn(move || b3.play(0, rounds))
                .join()
                .unwrap();
            other.join().unwrap();
            t0.elapsed()
        }
        other => panic!("unknown runtime {other}"),
    };
    elapsed.as_nanos() as f64 / rounds as f64
}

// ---------------------------------------------------------------- memory

/// Resident bytes per idle task: `n` tasks that all wait, RSS measured before and after.
pub fn idle_memory(runtime: &str, n: u64) -> f64 {
    let workers = 2;
    let (before, after) = match runtime {
        "greenhub" | "greenhub (16 KiB stack)" | "greenhub, 200,000 tasks" => {
            let stack = runtime.contains("16 KiB").then_some(16 * 1024);
            start_greenhub(workers, stack);
            greenhub::spawn(|| ()).wait().unwrap();
            let before = rss_bytes();
            let hs: Vec<_> = (0..n)
                .map(|_| greenhub::spawn(|| greenhub::sleep(Duration::from_secs(3600))))
                .collect();
            settle(|| greenhub::inspect::snapshot().totals.waiting as u64 >= n);
            let after = rss_bytes();
            for h in &hs {
                h.kill();
            }
            (before, after)
        }
        "may" => {
            start_may(workers);
            may_spawn(|| ()).join().unwrap();
            let parked = Arc::new(AtomicU64::new(0));
            let before = rss_bytes();
            let hs: Vec<_> = (0..n)
                .map(|_| {
                    let p = parked.clone();
                    may_spawn(move || {
                        p.fetch_add(1, Ordering::Relaxed);
                        may::coroutine::sleep(Duration::from_secs(3600))
                    })
                })
                .collect();
            settle(|| parked.load(Ordering::Relaxed) >= n);
            std::thread::sleep(Duration::from_millis(50));
            let after = rss_bytes();
            std::mem::forget(hs);
            (before, after)
        }
        "tokio" => {
            let rt = tokio_rt(workers);
            rt.block_on(async { tokio::spawn(async {}).await.unwrap() });
            let parked = Arc::new(AtomicU64::new(0));
            let before = rss_bytes();
            let hs: Vec<_> = (0..n)
                .map(|_| {
                    let p = parked.clone();
                    rt.spawn(async move {
                        p.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(Duration::from_secs(3600)).await
                    })
                })
                .collect();
            settle(|| parked.load(Ordering::Relaxed) >= n);
            let after = rss_bytes();
            // Every task must be asleep, as the case says: one that ended (a panic, say)
            // would make the figure meaningless.
            let ended = hs.iter().filter(|h| h.is_finished()).count();
            assert_eq!(
                ended, 0,
                "{ended} of {n} tokio tasks ended instead of sleeping"
            );
            for h in hs {
                h.abort();
            }
            (before, after)
        }
        "std::thread (64 KiB stack)" => {
            let parked = Arc::new(AtomicU64::new(0));
            let before = rss_bytes();
            let hs: Vec<_> = (0..n)
                .map(|_| {
                    let p = parked.clone();
                    std::thread::Builder::new()
                        .stack_size(64 * 1024)
                        .spawn(move || {
                            p.fetch_add(1, Ordering::Relaxed);
                            std::thread::park();
                        })
                        .unwrap()
                })
                .collect();
            settle(|| parked.load(Ordering::Relaxed) >= n);
            let after = rss_bytes();
            for h in &hs {
                h.thread().unpark();
            }
            (before, after)
        }
        other => panic!("unknown runtime {other}"),
    };
    after.saturating_sub(before) as f64 / n as f64
}

pub fn settle(done: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !done() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(done(), "tasks did not all reach their wait");
}

// ---------------------------------------------------------------- sync primitives

const PRODUCERS: u64 = 4;

/// Producer `p`'s share of the items.
fn produce(p: u64, per: u64, mut send: impl FnMut(u64)) {
    (p * per..(p + 1) * per).for_each(&mut send);
}

/// The count and sum of what a consumer received.
fn tally(items: impl Iterator<Item = u64>) -> (u64, u64) {
    items.fold((0, 0), |(c, s), v| (c + 1, s + v))
}

/// Four producers put `n` items in all into one channel; one consumer takes them. Checks that
/// every item arrived exactly once (by sum and count); ns per item.
pub fn queue_4to1(runtime: &str, workers: usize, n: u64) -> f64 {
    let per = n / PRODUCERS;
    let n = per * PRODUCERS;
    let expect_sum = n * (n - 1) / 2;
    let t0;
    let (count, sum) = match runtime {
        "greenhub" | "greenhub bounded" => {
            start_greenhub(workers, None);
            let q: greenhub::Queue<u64> = if runtime == "greenhub" {
                greenhub::Queue::unbounded()
            } else {
                greenhub::Queue::bounded(1024)
            };
            greenhub::spawn(|| ()).wait().unwrap();
            t0 = Instant::now();
            let consumer = {
                let q = q.clone();
                greenhub::spawn(move || tally(std::iter::from_fn(|| q.get().ok())))
            };
            let producers: Vec<_> = (0..PRODUCERS)
                .map(|p| {
                    let q = q.clone();
                    greenhub::spawn(move || produce(p, per, |i| q.put(i).unwrap()))
                })
                .collect();
            for p in producers {
                p.wait().unwrap();
            }
            q.close();
            consumer.wait().unwrap()
        }
        "may" => {
            start_may(workers);
            let (tx, rx) = may::sync::mpsc::channel::<u64>();
            may_spawn(|| ()).join().unwrap();
            t0 = Instant::now();
            let consumer = may_spawn(move || tally(std::iter::from_fn(|| rx.recv().ok())));
            let producers: Vec<_> = (0..PRODUCERS)
                .map(|p| {
                    let tx = tx.clone();
                    may_spawn(move || produce(p, per, |i| tx.send(i).unwrap()))
                })
                .collect();
            drop(tx);
            for p in producers {
                p.join().unwrap();
            }
            consumer.join().unwrap()
        }
        "tokio" | "tokio bounded" => {
            let rt = tokio_rt(workers);
            rt.block_on(async { tokio::spawn(async {}).await.unwrap() });
            t0 = Instant::now();
            let bounded = runtime == "tokio bounded";
            rt.block_on(async move {
                let (utx, mut urx) = tokio::sync::mpsc::unbounded_channel::<u64>();
                let (btx, mut brx) = tokio::sync::mpsc::channel::<u64>(1024);
                let consumer = tokio::spawn(async move {
                    let (mut c, mut s) = (0u64, 0u64);
                    loop {
                        let v = if bounded {
                            brx.recv().await
                        } else {
                            urx.recv().await
                        };
                        let Some(v) = v else { break };
                        c += 1;
                        s += v;
                    }
                    (c, s)
                });
                let producers: Vec<_> = (0..PRODUCERS)
                    .map(|p| {
                        let (utx, btx) = (utx.clone(), btx.clone());
                        tokio::spawn(async move {
                            for i in p * per..(p + 1) * per {
                                if bounded {
                                    btx.send(i).await.unwrap();
                                } else {
                                    utx.send(i).unwrap();
                                }
                            }
                        })
                    })
                    .collect();
                drop((utx, btx));
                for p in producers {
                    p.await.unwrap();
                }
                consumer.await.unwrap()
            })
        }
        "crossbeam (OS threads)" | "crossbeam bounded (OS threads)" => {
            let (tx, rx) = if runtime.contains("bounded") {
                crossbeam_channel::bounded::<u64>(1024)
            } else {
                crossbeam_channel::unbounded::<u64>()
            };
            t0 = Instant::now();
            let consumer = std::thread::spawn(move || tally(rx.iter()));
            let producers: Vec<_> = (0..PRODUCERS)
                .map(|p| {
                    let tx = tx.clone();
                    std::thread::spawn(move || produce(p, per, |i| tx.send(i).unwrap()))
                })
                .collect();
            drop(tx);
            for p in producers {
                p.join().unwrap();
            }
            consumer.join().unwrap()
        }
        other => panic!("unknown runtime {other}"),
    };
    let elapsed = t0.elapsed();
    assert_eq!((count, sum), (n, expect_sum), "lost or duplicated items");
    elapsed.as_nanos() as f64 / n as f64
}

const CONTENDERS: u64 = 64;
const PERMITS: usize = 4;

/// 64 tasks share 4 permits; each acquisition is held across a yield. Checks that the permits
/// were never exceeded and the count is exact; ns per acquisition.
pub fn semaphore(runtime: &str, workers: usize, n: u64) -> f64 {
    let per = n / CONTENDERS;
    let n = per * CONTENDERS;
    let inside = Arc::new(AtomicU64::new(0));
    let peak = Arc::new(AtomicU64::new(0));
    let enter = {
        let (inside, peak) = (inside.clone(), peak.clone());
        move || {
            let now = inside.fetch_add(1, Ordering::Relaxed) + 1;
            peak.fetch_max(now, Ordering::Relaxed);
        }
    };
    let leave = {
        let inside = inside.clone();
        move || {
            inside.fetch_sub(1, Ordering::Relaxed);
        }
    };
    let t0;
    let total: u64 = match runtime {
        "greenhub" => {
            start_greenhub(workers, None);
            let sem = greenhub::Semaphore::new(PERMITS);
            greenhub::spawn(|| ()).wait().unwrap();
            t0 = Instant::now();
            let hs: Vec<_> = (0..CONTENDERS)
                .map(|_| {
                    let (sem, enter, leave) = (sem.clone(), enter.clone(), leave.clone());
                    greenhub::spawn(move || {
                        for _ in 0..per {
                            let _p = sem.acquire().unwrap();
                            enter();
                            greenhub::yield_now();
                            leave();
                        }
                        per
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.wait().unwrap()).sum()
        }
        "may" => {
            start_may(workers);
            let sem = Arc::new(may::sync::Semphore::new(PERMITS));
            may_spawn(|| ()).join().unwrap();
            t0 = Instant::now();
            let hs: Vec<_> = (0..CONTENDERS)
                .map(|_| {
                    let (sem, enter, leave) = (sem.clone(), enter.clone(), leave.clone());
                    may_spawn(move || {
                        for _ in 0..per {
                            sem.wait();
                            enter();
                            may::coroutine::yield_now();
                            leave();
                            sem.post();
                        }
                        per
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).sum()
        }
        "tokio" => {
            let rt = tokio_rt(workers);
            rt.block_on(async { tokio::spawn(async {}).await.unwrap() });
            t0 = Instant::now();
            rt.block_on(async move {
                let sem = Arc::new(tokio::sync::Semaphore::new(PERMITS));
                let hs: Vec<_> = (0..CONTENDERS)
                    .map(|_| {
                        let (sem, enter, leave) = (sem.clone(), enter.clone(), leave.clone());
                        tokio::spawn(async move {
                            for _ in 0..per {
                                let _p = sem.acquire().await.unwrap();
                                enter();
                                tokio::task::yield_now().await;
                                leave();
                            }
                            per
                        })
                    })
                    .collect();
                let mut total = 0;
                for h in hs {
                    total += h.await.unwrap();
                }
                total
            })
        }
        other => panic!("unknown runtime {other}"),
    };
    let elapsed = t0.elapsed();
    assert_eq!(total, n, "acquisitions lost");
    assert!(
        peak.load(Ordering::Relaxed) <= PERMITS as u64,
        "permits exceeded"
    );
    elapsed.as_nanos() as f64 / n as f64
}

/// How many calls make one block of a spaced case, and how many sleeps alone follow each.
const SPACED_BLOCK: u64 = 100;

/// The timed calls of a round-trip case: `n` calls of `call` (which checks its answer),
/// `spacing` of `sleep` before each, and their latencies in ns. Reports the calls' CPU per
/// call; with a spacing, beyond that of the sleeps: each block of [`SPACED_BLOCK`] calls is
/// followed by as many sleeps alone, and the sleeps' CPU is subtracted, so that a change in
/// the machine's state during the run (where the OS puts the threads, a neighbour's load)
/// falls on the calls and on the sleeps alike.
async fn timed_calls(
    n: u64,
    spacing: Option<Duration>,
    mut sleep: impl AsyncFnMut(Duration),
    mut call: impl AsyncFnMut(),
) -> Vec<u64> {
    let mut samples = Vec::with_capacity(n as usize);
    let (mut calls, mut sleeps) = (Duration::ZERO, Duration::ZERO);
    while (samples.len() as u64) < n {
        let block = match spacing {
            Some(_) => SPACED_BLOCK.min(n - samples.len() as u64),
            None => n,
        };
        let section = Section::start();
        for _ in 0..block {
            if let Some(pause) = spacing {
                sleep(pause).await;
            }
            let t = Instant::now();
            call().await;
            samples.push(t.elapsed().as_nanos() as u64);
        }
        calls += section.spent();
        if let Some(pause) = spacing {
            let alone = Section::start();
            for _ in 0..block {
                sleep(pause).await;
            }
            sleeps += alone.spent();
        }
    }
    report_cpu(calls, spacing.map(|_| sleeps), n);
    samples
}

/// [`timed_calls`] where sleeping and calling block the thread (a green thread, an OS
/// thread): the future never waits, so one poll runs it to the end.
fn blocking_timed_calls(
    n: u64,
    spacing: Option<Duration>,
    mut sleep: impl FnMut(Duration),
    mut call: impl FnMut(),
) -> Vec<u64> {
    let calls = timed_calls(n, spacing, async |pause| sleep(pause), async || call());
    let mut calls = std::pin::pin!(calls);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match calls.as_mut().poll(&mut cx) {
        std::task::Poll::Ready(samples) => samples,
        std::task::Poll::Pending => unreachable!("blocking calls never leave the future pending"),
    }
}

/// `n` calls handed from this thread to another OS thread and answered, each after `spacing`
/// of sleep (`std::thread::sleep`); the latencies. Both threads park on condvars while idle.
fn os_thread_handoffs(n: u64, spacing: Option<Duration>) -> Vec<u64> {
    use std::sync::{Arc, Condvar, Mutex};
    /// Calls asked and answered, and a job's value.
    struct Line {
        asked: u64,
        answered: u64,
        value: u64,
    }
    let shared = Arc::new((
        Mutex::new(Line {
            asked: 0,
            answered: 0,
            value: 0,
        }),
        Condvar::new(),
        Condvar::new(),
    ));
    let other = shared.clone();
    std::thread::spawn(move || {
        let (line, ask, answer) = &*other;
        let mut l = line.lock().unwrap();
        loop {
            while l.asked == l.answered {
                l = ask.wait(l).unwrap();
            }
            l.value = std::hint::black_box(1);
            l.answered = l.asked;
            answer.notify_one();
        }
    });
    let (line, ask, answer) = &*shared;
    let call = || {
        let mut l = line.lock().unwrap();
        l.asked += 1;
        ask.notify_one();
        while l.answered != l.asked {
            l = answer.wait(l).unwrap();
        }
        l.value
    };
    for _ in 0..1000 {
        call();
    }
    blocking_timed_calls(n, spacing, std::thread::sleep, || assert_eq!(call(), 1))
}

/// Sequential round trips of a trivial call through a thread pool, from one task, with the
/// task sleeping `spacing` before each timed call: returns the `quantile` of the per-call
/// latencies in ns, and reports the timed calls' CPU per call (see [`timed_calls`]).
pub fn tpool_rtt(
    runtime: &str,
    workers: usize,
    n: u64,
    quantile: f64,
    spacing: Option<Duration>,
) -> f64 {
    let mut samples = match runtime {
        "greenhub tpool" => {
            start_greenhub(workers, None);
            greenhub::spawn(move || {
                // Warm-up: threads started, hub running.
                for _ in 0..1000 {
                    greenhub_tpool::execute(|| ()).unwrap();
                }
                blocking_timed_calls(
                    n,
                    spacing,
                    |pause| greenhub::sleep(pause).unwrap(),
                    || {
                        let v = greenhub_tpool::execute(|| std::hint::black_box(1)).unwrap();
                        assert_eq!(v, 1);
                    },
                )
            })
            .wait()
            .unwrap()
        }
        "two OS threads, condvar (the floor)" => {
            // No runtime: the caller hands the call to one other OS thread through a mutex
            // and condvars, both parked while idle. What a hand-off to another thread and
            // back costs on this machine when neither polls.
            os_thread_handoffs(n, spacing)
        }
        "tokio spawn_blocking" => tokio_rt(workers).block_on(async move {
            for _ in 0..1000 {
                tokio::task::spawn_blocking(|| ()).await.unwrap();
            }
            timed_calls(
                n,
                spacing,
                async |pause| tokio::time::sleep(pause).await,
                async || {
                    let v = tokio::task::spawn_blocking(|| std::hint::black_box(1))
                        .await
                        .unwrap();
                    assert_eq!(v, 1);
                },
            )
            .await
        }),
        "blocking crate" => {
            // Driven by tokio's scheduler: the pool and the wake path are the blocking crate's.
            tokio_rt(workers).block_on(async move {
                for _ in 0..1000 {
                    blocking::unblock(|| ()).await;
                }
                timed_calls(
                    n,
                    spacing,
                    async |pause| tokio::time::sleep(pause).await,
                    async || {
                        let v = blocking::unblock(|| std::hint::black_box(1)).await;
                        assert_eq!(v, 1);
                    },
                )
                .await
            })
        }
        other => panic!("unknown runtime {other}"),
    };
    samples.sort_unstable();
    let i = ((samples.len() as f64 - 1.0) * quantile).round() as usize;
    samples[i] as f64
}

/// Sequential `greenhub::block_on` calls from one green thread: the median latency in ns.
pub fn block_on_rtt(case: &str, workers: usize, n: u64) -> f64 {
    start_greenhub(workers, None);
    let case = case.to_owned();
    let mut samples: Vec<u64> = greenhub::spawn(move || {
        let call = || -> u64 {
            let t = Instant::now();
            if case.contains("ready") {
                let v = greenhub::block_on(async { std::hint::black_box(1) });
                assert_eq!(v, Ok(1), "the future's value");
            } else if case.contains("pending") {
                greenhub::block_on(tokio::task::yield_now()).expect("no deadline");
            } else {
                greenhub_tpool::execute(|| std::hint::black_box(1)).expect("a pool thread");
            }
            t.elapsed().as_nanos() as u64
        };
        for _ in 0..1000 {
            call();
        }
        (0..n).map(|_| call()).collect::<Vec<u64>>()
    })
    .wait()
    .expect("the caller ends");
    samples.sort_unstable();
    samples[samples.len() / 2] as f64
}

/// `callers` tasks make `n` trivial pool calls in all: ns per call.
pub fn tpool_throughput(runtime: &str, workers: usize, n: u64, callers: u64) -> f64 {
    let per = n / callers;
    let n = per * callers;
    let t0;
    let total: u64 = match runtime {
        "greenhub tpool" => {
            start_greenhub(workers, None);
            greenhub::spawn(|| greenhub_tpool::execute(|| ()).unwrap())
                .wait()
                .unwrap();
            t0 = Instant::now();
            let hs: Vec<_> = (0..callers)
                .map(|_| {
                    greenhub::spawn(move || {
                        let mut sum = 0;
                        for _ in 0..per {
                            sum += greenhub_tpool::execute(|| std::hint::black_box(1u64)).unwrap();
                        }
                        sum
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.wait().unwrap()).sum()
        }
        "tokio spawn_blocking" | "blocking crate" => {
            let rt = tokio_rt(workers);
            let tokio_pool = runtime == "tokio spawn_blocking";
            let (start, sum) = rt.block_on(async move {
                let start = Instant::now();
                let hs: Vec<_> = (0..callers)
                    .map(|_| {
                        tokio::spawn(async move {
                            let mut sum = 0;
                            for _ in 0..per {
                                sum += if tokio_pool {
                                    tokio::task::spawn_blocking(|| std::hint::black_box(1u64))
                                        .await
                                        .unwrap()
                                } else {
                                    blocking::unblock(|| std::hint::black_box(1u64)).await
                                };
                            }
                            sum
                        })
                    })
                    .collect();
                let mut sum = 0;
                for h in hs {
                    sum += h.await.unwrap();
                }
                (start, sum)
            });
            t0 = start;
            sum
        }
        other => panic!("unknown runtime {other}"),
    };
    assert_eq!(total, n, "lost calls");
    t0.elapsed().as_nanos() as f64 / n as f64
}

/// Spawns a bare `may` coroutine for the `may` cases.
fn may_spawn<F, T>(f: F) -> may::coroutine::JoinHandle<T>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    // SAFETY: `may` asks that a coroutine keep no thread-local across a switch and fit its
    // stack; every closure the harness spawns only moves values, sends on channels, parks and
    // counts, and its stack (may's default) is far larger than these bodies need.
    unsafe { may::coroutine::spawn(f) }
}
