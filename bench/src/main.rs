//! The side-by-side benchmark harness: `cargo run --release -p greenhub-bench`.
//!
//! Every figure is measured in a fresh child process (this binary, run with `--child`), so that
//! each runtime gets its own configuration and none inherits another's threads or memory. The
//! runtimes of a suite take turns within each round, each round starting with the next one,
//! so that a noisy moment of the shared machine hits all of them alike. After a warm-up round that is thrown away, each figure is
//! the median of the rounds, shown with its min and max. The harness writes `BENCHMARKS.md`
//! and `bench/results.json` at the workspace root.

mod db;
mod echo;
mod http;
mod idle;
mod inspect;
mod proxy;
mod reload;
mod runtimes;
mod seeds;
mod summary;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// One benchmark: the same work on several runtimes.
struct Suite {
    id: &'static str,
    title: &'static str,
    unit: &'static str,
    what: &'static str,
    workers: usize,
    cases: &'static [(&'static str, u64)],
    /// Divide the raw figure by this for display (bytes to KiB, ...).
    scale: f64,
    /// CPU-bound processes the harness runs beside each case (as many as it has cores would
    /// be a loaded machine).
    busy: usize,
    /// The fewest rounds the suite runs, whatever `--rounds` says: for cheap figures whose
    /// processes land in a fast or a slow mode by how the OS places their threads, where a
    /// median of three decides nothing.
    min_rounds: usize,
}

/// Cases of the two round-trip suites (median and 99th percentile).
const TPOOL_RTT_CASES: &[(&str, u64)] = &[
    ("greenhub tpool", 20_000),
    ("tokio spawn_blocking", 20_000),
    ("blocking crate", 20_000),
    ("gevent threadpool", 20_000),
    ("eventlet tpool", 20_000),
];

/// What every thread-pool round-trip suite measures.
const TPOOL_RTT_WHAT: &str = "one task calls a trivial function through the thread pool N \
    times (2 workers), after 1,000 warm-up calls, timing each call: greenhub's tpool::execute, \
    tokio's spawn_blocking, the blocking crate's unblock (driven by tokio), gevent's hub \
    threadpool (`apply`) and eventlet's `tpool.execute` (one Python thread runs the tasks; \
    their pools have 10 and 20 threads)";

const ECHO_WHAT: &str = "clients send 64 bytes and read them back, N round trips in all \
    over the connections, against an echo server (a task per connection) in the same process \
    on loopback (2 workers); wall time per round trip; at least 7 rounds, as the rows differ \
    by less than the machine's noise";

/// The rounds of the HTTP suite, whatever `--rounds` says: its rows are close, and a round
/// takes minutes.
const HTTP_ROUNDS: usize = 5;

/// The fewest rounds of the echo suites: their rows are close, and each costs a second.
const ECHO_ROUNDS: usize = 7;

/// Cases of the three database suites (same server, same pool size).
const DB_CASES: &[(&str, u64)] = &[
    ("greenhub dbpool", 64_000),
    ("greenhub-pg", 64_000),
    ("r2d2 + postgres (64 OS threads)", 64_000),
    ("r2d2 + postgres, query_typed_one (64 OS threads)", 64_000),
    ("deadpool-postgres (tokio)", 64_000),
    ("deadpool-postgres, prepare_cached (tokio)", 64_000),
];

const DB_WHAT: &str = "64 tasks run N `SELECT 1` queries in all through a pool of 8 connections \
    to the same local PostgreSQL server (a throwaway cluster the harness starts), each query a \
    checkout, the query and the return (2 workers); greenhub's dbpool on green threads, r2d2 \
    with the postgres driver on 64 OS threads (no test on checkout, as dbpool's default within \
    500 ms of idleness; the driver has no statement cache, so plain `query_one` prepares its \
    statement: two round trips; `query_typed_one` sends it unnamed with its types: one), \
    deadpool-postgres on tokio (fast recycling), with plain \
    `query_one` (two round trips) and with its opt-in `prepare_cached` (one); dbpool's \
    `query_one` keeps prepared statements per connection by itself (one), and so does \
    greenhub-pg, which speaks the protocol on the green threads' own sockets (no pool thread)";

/// Cases of the two suites where half the callers abandon slow statements.
const DB_ABANDON_CASES: &[(&str, u64)] = &[
    ("greenhub dbpool", 1_000),
    ("r2d2 + postgres (64 OS threads)", 1_000),
    ("deadpool-postgres (tokio)", 1_000),
];

const DB_ABANDON_WHAT: &str = "64 tasks share a pool of 8 connections to the same server: 32 \
    run N `SELECT 1` queries in all (one round trip each: dbpool's and deadpool's cached \
    statements, r2d2's unnamed typed query) while the other 32 keep sending a 50 ms statement \
    (`pg_sleep(0.05)`) and give up on it after 10 ms, each in its runtime's own way: greenhub's \
    deadline scope (dbpool sends the server a cancel request and takes the connection back \
    once the statement has stopped), r2d2's OS threads with `SET LOCAL statement_timeout` in \
    the same round trip (a blocked thread cannot leave, so the server bounds the statement), \
    deadpool with `tokio::time::timeout` (the future is dropped; the statement runs on and \
    its connection serves the next caller only after it); wall time per `SELECT 1` (2 workers)";

const ECHO_REMOTE_WHAT: &str = "the echo server alone in its process (a task per \
    connection; 2 workers, eventlet and gevent on their one thread), its clients in another: \
    one tokio thread that opens the connections, then sends 64 bytes on each and checks what \
    comes back, N round trips in all; the client's wall time per round trip. The CPU column is \
    the server's CPU per round trip (its timed run only), the figure to compare; at least 7 \
    rounds";

const PROXY_WHAT: &str = "a proxy alone in its process (a task per client connection, each \
    with its own connection to the backend; 2 workers, eventlet and gevent on their one \
    thread) between two others: the client process (one tokio thread that sends 64 bytes on \
    each connection and checks what comes back, N round trips in all) and an echo backend \
    (one tokio thread, the same for every row). Each round trip is a read from the client, a \
    write and a read on the backend connection and a write to the client: a task that waits \
    on two sockets in turn. The client's wall time per round trip; the CPU column is the \
    proxy's CPU per round trip, the figure to compare";

/// Cases of the echo suites with the clients in another process.
const ECHO_REMOTE_CASES: &[(&str, u64)] = &[
    ("greenhub", 100_000),
    ("may", 100_000),
    ("tokio", 100_000),
    ("gevent", 100_000),
    ("eventlet", 100_000),
];

const SUITES: &[Suite] = &[
    Suite {
        id: "spawn_join",
        title: "Spawn + join",
        unit: "ns per task",
        what: "spawn N tasks that return their index from the main thread, then join them all \
               (2 workers; greenhub with its registry on; gevent and eventlet on their one \
               Python thread, joinall and wait); at least 15 rounds: the spawner and two \
               workers share two cores, and a process runs fast or slow by how the OS places \
               them, for every runtime alike",
        workers: 2,
        cases: &[
            ("greenhub", 100_000),
            ("may", 100_000),
            ("tokio", 100_000),
            ("std::thread", 5_000),
            ("gevent", 100_000),
            ("eventlet", 100_000),
        ],
        scale: 1.0,
        busy: 0,
        min_rounds: 15,
    },
    Suite {
        id: "burst",
        title: "Bursts: spawn, wait at a gate, join",
        unit: "ns per task",
        what: "five bursts in one process: 20,000 tasks spawned from the main thread, each \
               waiting at a gate (each runtime's own one-shot event: greenhub's Event, may's \
               SyncFlag, a tokio watch channel, gevent's and eventlet's Event) and returning \
               its index once the main thread opens it; then the main thread joins them all \
               (2 workers). eventlet's spawn-then-joinall, with every task alive at once: a \
               runtime that maps a stack per task pays for them once per burst",
        workers: 2,
        cases: &[
            ("greenhub", 100_000),
            ("may", 100_000),
            ("tokio", 100_000),
            ("gevent", 100_000),
            ("eventlet", 100_000),
        ],
        scale: 1.0,
        busy: 0,
        min_rounds: 0,
    },
    Suite {
        id: "ping_pong_1",
        title: "Ping-pong switch, one worker",
        unit: "ns per round trip",
        what: "two tasks hand a turn back and forth, each parking until its turn (two waits and \
               two wake-ups per round trip); greenhub through its wait primitive with registry \
               bookkeeping, may through coroutine park/unpark, tokio through Notify on a \
               current-thread runtime. \"greenhub threads, may park\" runs greenhub's green \
               threads parking through may directly: what is left between it and \"greenhub\" \
               is the cost of greenhub's wait (the token hand-off, the registry's state, the \
               monitor's worker slot, deadline scopes and kill); gevent and eventlet through \
               a Semaphore each way; \"greenhub, timing on\" with every switch and wake timed, \
               as while an inspector is attached; \"greenhub, flight recorder on\" with every \
               run, wait and wake recorded",
        workers: 1,
        cases: &[
            ("greenhub", 200_000),
            ("greenhub, flight recorder on", 200_000),
            ("greenhub, timing on", 200_000),
            ("greenhub threads, may park", 200_000),
            ("may", 200_000),
            ("tokio", 200_000),
            ("gevent", 200_000),
            ("eventlet", 200_000),
        ],
        scale: 1.0,
        busy: 0,
        min_rounds: 0,
    },
    Suite {
        id: "ping_pong_2",
        title: "Ping-pong switch, two workers",
        unit: "ns per round trip",
        what: "as above with 2 workers (the two tasks may sit on different workers); \
               std::thread uses two OS threads with park/unpark",
        workers: 2,
        cases: &[
            ("greenhub", 100_000),
            ("greenhub threads, may park", 100_000),
            ("may", 100_000),
            ("tokio", 100_000),
            ("std::thread", 20_000),
        ],
        scale: 1.0,
        busy: 0,
        min_rounds: 0,
    },
    Suite {
        id: "idle_memory",
        title: "Memory per idle task",
        unit: "KiB resident per task",
        what: "resident memory added by N tasks that all wait (sleep or park), divided by N \
               (gevent and eventlet: greenlets asleep in their hub); 200,000 greenhub threads \
               run under the default vm.max_map_count where stacks share mappings (Linux 6.13+)",
        workers: 2,
        cases: &[
            ("greenhub", 20_000),
            ("greenhub (16 KiB stack)", 20_000),
            ("greenhub, 200,000 tasks", 200_000),
            ("may", 20_000),
            ("tokio", 20_000),
            ("std::thread (64 KiB stack)", 2_000),
            ("gevent", 20_000),
            ("eventlet", 20_000),
        ],
        scale: 1024.0,
        busy: 0,
        min_rounds: 0,
    },
    Suite {
        id: "idle_process",
        title: "An idle process",
        unit: "wake-ups per second",
        what: "a server at rest: 100 tasks asleep for an hour and one waiting in accept on a \
               loopback socket, then N seconds of nothing (2 workers; eventlet and gevent on \
               their one thread); the context switches of all the process's threads per \
               second. The CPU column is the CPU spent per second of idling (1,000,000 ns is \
               0.1% of a core)",
        workers: 2,
        cases: &[
            ("greenhub", 10),
            ("may", 10),
            ("tokio", 10),
            ("gevent", 10),
            ("eventlet", 10),
        ],
        scale: 1.0,
        busy: 0,
        min_rounds: 0,
    },
    Suite {
        id: "queue_4to1",
        title: "Queue: four producers, one consumer",
        unit: "ns per item",
        what: "four producer tasks put N items in all into one channel that one consumer task \
               drains (2 workers); greenhub's Queue, may's mpsc channel, tokio's mpsc, and \
               crossbeam-channel between OS threads; bounded variants hold 1024 items",
        workers: 2,
        cases: &[
            ("greenhub", 1_000_000),
            ("greenhub bounded", 1_000_000),
            ("may", 1_000_000),
            ("tokio", 1_000_000),
            ("tokio bounded", 1_000_000),
            ("crossbeam (OS threads)", 1_000_000),
            ("crossbeam bounded (OS threads)", 1_000_000),
        ],
        scale: 1.0,
        busy: 0,
        min_rounds: 0,
    },
    Suite {
        id: "semaphore",
        title: "Semaphore under contention",
        unit: "ns per acquisition",
        what: "64 tasks share 4 permits; each takes a permit, yields while holding it, and gives \
               it back, N acquisitions in all (2 workers); greenhub's Semaphore, may's Semphore, \
               tokio's Semaphore",
        workers: 2,
        cases: &[("greenhub", 200_000), ("may", 200_000), ("tokio", 200_000)],
        scale: 1.0,
        busy: 0,
        min_rounds: 0,
    },
    Suite {
        id: "tpool_rtt_p50",
        title: "Thread pool round trip, median",
        unit: "ns per call (p50)",
        what: TPOOL_RTT_WHAT,
        workers: 2,
        cases: TPOOL_RTT_CASES,
        scale: 1.0,
        busy: 0,
        min_rounds: 0,
    },
    Suite {
        id: "block_on",
        title: "Async futures from a green thread",
        unit: "ns per call (p50)",
        what: "one green thread calls greenhub::block_on N times in a row (2 workers), after \
               1,000 warm-up calls; the median of the N latencies: a future ready at once, and \
               one pending once (tokio's yield_now, which wakes itself through the waker \
               before the green thread parks: a second poll, the wait named in the registry, \
               no park); beside it, the same thread's tpool round trip to an OS thread",
        workers: 2,
        cases: &[
            ("block_on, ready future", 200_000),
            ("block_on, pending once", 200_000),
            ("tpool round trip", 200_000),
        ],
        scale: 1.0,
        busy: 0,
        min_rounds: 0,
    },
    Suite {
        id: "tpool_rtt_p99",
        title: "Thread pool round trip, 99th percentile",
        unit: "ns per call (p99)",
        what: "the same runs, the 99th percentile of the N latencies",
        workers: 2,
        cases: TPOOL_RTT_CASES,
        scale: 1.0,
        busy: 0,
        min_rounds: 0,
    },
    Suite {
        id: "tpool_spaced",
        title: "Thread pool round trip, one call per millisecond, median",
        unit: "ns per call (p50)",
        what: "as the round trips above, with the task sleeping 1 ms before each call (each \
               runtime's own sleep): the pool's threads and the caller are idle between calls, \
               so polling for the next call or the result costs CPU without paying. The CPU \
               column is the CPU per call beyond that of the sleeps: each block of 100 calls is \
               followed by 100 1 ms sleeps alone, whose CPU is subtracted (a sleep's wake-ups \
               cost tens of µs of CPU each on this virtual machine, and what a wake-up costs \
               drifts with where the OS puts the threads). The last row is no pool: a plain OS \
               thread hands each call to another through a mutex and condvars, both parked \
               while idle; the least a hand-off that does not poll costs here; at least 7 \
               rounds",
        workers: 2,
        cases: &[
            ("greenhub tpool", 2_000),
            ("tokio spawn_blocking", 2_000),
            ("blocking crate", 2_000),
            ("gevent threadpool", 2_000),
            ("eventlet tpool", 2_000),
            ("two OS threads, condvar (the floor)", 2_000),
        ],
        scale: 1.0,
        busy: 0,
        min_rounds: 7,
    },
    Suite {
        id: "tpool_busy_p99",
        title: "Thread pool round trip beside two CPU-bound processes, 99th percentile",
        unit: "ns per call (p99)",
        what: "the back-to-back round trips while two other processes keep both cores busy \
               (each a loop of arithmetic, started before the case and stopped after it; their \
               CPU is not counted): a pool that polls takes CPU from the threads that answer; \
               at least 9 rounds, as a case depends on where the OS puts the two busy processes",
        workers: 2,
        cases: TPOOL_RTT_CASES,
        scale: 1.0,
        busy: 2,
        min_rounds: 9,
    },
    Suite {
        id: "tpool_throughput",
        title: "Thread pool throughput, 1,000 concurrent callers",
        unit: "ns per call",
        what: "1,000 tasks make N trivial pool calls in all (2 workers); wall time divided by N",
        workers: 2,
        cases: &[
            ("greenhub tpool", 200_000),
            ("tokio spawn_blocking", 200_000),
            ("blocking crate", 200_000),
        ],
        scale: 1.0,
        busy: 0,
        min_rounds: 0,
    },
    Suite {
        id: "echo_1",
        title: "Echo round trips, 1 connection",
        unit: "ns per round trip",
        what: ECHO_WHAT,
        workers: 2,
        cases: &[("greenhub", 20_000), ("may", 20_000), ("tokio", 20_000)],
        scale: 1.0,
        busy: 0,
        min_rounds: ECHO_ROUNDS,
    },
    Suite {
        id: "echo_100",
        title: "Echo round trips, 100 connections",
        unit: "ns per round trip",
        what: ECHO_WHAT,
        workers: 2,
        cases: &[("greenhub", 100_000), ("may", 100_000), ("tokio", 100_000)],
        scale: 1.0,
        busy: 0,
        min_rounds: ECHO_ROUNDS,
    },
    Suite {
        id: "echo_1000",
        title: "Echo round trips, 1,000 connections",
        unit: "ns per round trip",
        what: ECHO_WHAT,
        workers: 2,
        cases: &[("greenhub", 100_000), ("may", 100_000), ("tokio", 100_000)],
        scale: 1.0,
        busy: 0,
        min_rounds: ECHO_ROUNDS,
    },
    Suite {
        id: "echo_remote_1",
        title: "Echo round trips, clients in another process, 1 connection",
        unit: "ns per round trip",
        what: ECHO_REMOTE_WHAT,
        workers: 2,
        cases: &[
            ("greenhub", 20_000),
            ("may", 20_000),
            ("tokio", 20_000),
            ("gevent", 20_000),
            ("eventlet", 20_000),
        ],
        scale: 1.0,
        busy: 0,
        min_rounds: ECHO_ROUNDS,
    },
    Suite {
        id: "echo_remote_100",
        title: "Echo round trips, clients in another process, 100 connections",
        unit: "ns per round trip",
        what: ECHO_REMOTE_WHAT,
        workers: 2,
        cases: ECHO_REMOTE_CASES,
        scale: 1.0,
        busy: 0,
        min_rounds: ECHO_ROUNDS,
    },
    Suite {
        id: "echo_remote_1000",
        title: "Echo round trips, clients in another process, 1,000 connections",
        unit: "ns per round trip",
        what: ECHO_REMOTE_WHAT,
        workers: 2,
        cases: ECHO_REMOTE_CASES,
        scale: 1.0,
        busy: 0,
        min_rounds: ECHO_ROUNDS,
    },
    Suite {
        id: "proxy_1",
        title: "Proxy round trips, 1 connection",
        unit: "ns per round trip",
        what: PROXY_WHAT,
        workers: 2,
        cases: &[
            ("greenhub", 20_000),
            ("may", 20_000),
            ("tokio", 20_000),
            ("gevent", 20_000),
            ("eventlet", 20_000),
        ],
        scale: 1.0,
        busy: 0,
        min_rounds: 0,
    },
    Suite {
        id: "proxy_100",
        title: "Proxy round trips, 100 connections",
        unit: "ns per round trip",
        what: PROXY_WHAT,
        workers: 2,
        cases: ECHO_REMOTE_CASES,
        scale: 1.0,
        busy: 0,
        min_rounds: 0,
    },
    Suite {
        id: "proxy_1000",
        title: "Proxy round trips, 1,000 connections",
        unit: "ns per round trip",
        what: PROXY_WHAT,
        workers: 2,
        cases: ECHO_REMOTE_CASES,
        scale: 1.0,
        busy: 0,
        min_rounds: 0,
    },
    Suite {
        id: "db_select1",
        title: "Database pool: SELECT 1 throughput",
        unit: "µs per query",
        what: DB_WHAT,
        workers: 2,
        cases: DB_CASES,
        scale: 1000.0,
        busy: 0,
        min_rounds: 0,
    },
    Suite {
        id: "db_select1_p50",
        title: "Database pool: SELECT 1 latency, median",
        unit: "µs per query (p50)",
        what: "the same runs, the median latency of a query from asking for a connection to \
               holding the result",
        workers: 2,
        cases: DB_CASES,
        scale: 1000.0,
        busy: 0,
        min_rounds: 0,
    },
    Suite {
        id: "db_select1_p99",
        title: "Database pool: SELECT 1 latency, 99th percentile",
        unit: "µs per query (p99)",
        what: "the same runs, the 99th percentile",
        workers: 2,
        cases: DB_CASES,
        scale: 1000.0,
        busy: 0,
        min_rounds: 0,
    },
    Suite {
        id: "db_abandon",
        title: "Database pool: SELECT 1 while half the callers abandon slow statements",
        unit: "µs per SELECT 1",
        what: DB_ABANDON_WHAT,
        workers: 2,
        cases: DB_ABANDON_CASES,
        scale: 1000.0,
        busy: 0,
        min_rounds: 0,
    },
    Suite {
        id: "db_abandon_p99",
        title: "Database pool: SELECT 1 latency while half the callers abandon, 99th percentile",
        unit: "µs per SELECT 1 (p99)",
        what: "the same runs, the 99th percentile of a `SELECT 1` from asking for a connection \
               to holding the result",
        workers: 2,
        cases: DB_ABANDON_CASES,
        scale: 1000.0,
        busy: 0,
        min_rounds: 0,
    },
    Suite {
        id: "snapshot_10k",
        title: "Snapshot of 10,000 green threads",
        unit: "ms per snapshot",
        what: "the registry's snapshot of a process with N green threads parked on an event \
               (the median of 15), alone, turned into JSON as the attach channel and the \
               stats endpoint serve it, and with the stack of every thread (read, symbolized \
               and folded; every stack checked to name the function the thread waits in)",
        workers: 2,
        cases: &[
            ("snapshot()", 10_000),
            ("snapshot() + JSON", 10_000),
            ("snapshot_with_stacks()", 10_000),
        ],
        scale: 1e6,
        busy: 0,
        min_rounds: 0,
    },
    Suite {
        id: "snapshot_100k",
        title: "Snapshot of 100,000 green threads",
        unit: "ms per snapshot",
        what: "as above with N = 100,000 (16 KiB stacks; before Linux 6.13 it needs \
               vm.max_map_count above 200,000: two mappings per stack)",
        workers: 2,
        cases: &[
            ("snapshot()", 100_000),
            ("snapshot() + JSON", 100_000),
            ("snapshot_with_stacks()", 100_000),
        ],
        scale: 1e6,
        busy: 0,
        min_rounds: 0,
    },
    Suite {
        id: "snapshot_pause_10k",
        title: "Worst pause a snapshot causes, 10,000 green threads",
        unit: "ms of worst lateness of a 1 ms sleep",
        what: "a process with N green threads parked and four green threads sleeping 1 ms in a \
               loop: the worst lateness of their wake-ups over 2 s without snapshots, and over \
               20 snapshots taken 50 ms apart, without and with every thread's stack (how long \
               a snapshot keeps a worker from switching, plus the machine's own noise)",
        workers: 2,
        cases: &[
            ("no snapshot", 10_000),
            ("20 snapshots", 10_000),
            ("20 snapshots with stacks", 10_000),
        ],
        scale: 1e6,
        busy: 0,
        min_rounds: 0,
    },
    Suite {
        id: "snapshot_pause_100k",
        title: "Worst pause a snapshot causes, 100,000 green threads",
        unit: "ms of worst lateness of a 1 ms sleep",
        what: "as above with N = 100,000 (16 KiB stacks; before Linux 6.13 it needs \
               vm.max_map_count above 220,000)",
        workers: 2,
        cases: &[
            ("no snapshot", 100_000),
            ("20 snapshots", 100_000),
            ("20 snapshots with stacks", 100_000),
        ],
        scale: 1e6,
        busy: 0,
        min_rounds: 0,
    },
    Suite {
        id: "inspector_attached",
        title: "Overhead of an attached inspector",
        unit: "ns per round trip",
        what: "the two-worker ping-pong with 10,000 more green threads parked, with no \
               inspector, and with one reading a full snapshot through the attach socket every \
               100 ms (what `inspector attach` does at its fastest refresh)",
        workers: 2,
        cases: &[
            ("greenhub, no inspector", 2_000_000),
            ("greenhub, inspector attached (100 ms)", 2_000_000),
        ],
        scale: 1.0,
        busy: 0,
        min_rounds: 0,
    },
    Suite {
        id: "watched_memory",
        title: "Target memory while watched",
        unit: "MiB added to the target's resident memory",
        what: "a process with N green threads parked; an inspector reads 500 full snapshots \
               back to back through the attach socket; how much the target's resident memory \
               grew over the first 100 reads (the reply buffers reaching their size) and from \
               the 100th read to the 500th (what watching keeps costing: aim 0)",
        workers: 2,
        cases: &[("reads 1-100", 10_000), ("reads 100-500", 10_000)],
        scale: 1_048_576.0,
        busy: 0,
        min_rounds: 0,
    },
    Suite {
        id: "tui_100k",
        title: "inspector attach on 100,000 green threads",
        unit: "ms per step",
        what: "the TUI's steps against a process with N green threads parked (16 KiB stacks; \
               before Linux 6.13 it needs vm.max_map_count above 200,000): reading a full snapshot through the \
               attach socket and decoding it (on the TUI's reader thread, so keys do not wait \
               for it), taking it into the view (rows filtered and sorted once per snapshot), \
               a key that changes the sort column (each column in turn), the first character \
               of a filter after a new snapshot (the search texts are made then), and drawing \
               a 200x60 frame; medians of 9",
        workers: 2,
        cases: &[
            ("read + decode a snapshot", 100_000),
            ("take it into the view", 100_000),
            ("key: next sort column", 100_000),
            ("key: first filter character", 100_000),
            ("draw a frame", 100_000),
        ],
        scale: 1e6,
        busy: 0,
        min_rounds: 0,
    },
];

#[derive(Serialize, Deserialize)]
struct CaseResult {
    runtime: String,
    n: u64,
    samples: Vec<f64>,
    median: f64,
    min: f64,
    max: f64,
    /// CPU time (user and system, all threads) of the measuring process per operation, in
    /// nanoseconds: its whole run divided by N, set-up included; per round, and the median.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    cpu_ns_per_op: Vec<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    cpu_ns_per_op_median: Option<f64>,
}

#[derive(Serialize, Deserialize)]
struct SuiteResult {
    id: String,
    title: String,
    unit: String,
    what: String,
    cases: Vec<CaseResult>,
}

#[derive(Serialize, Deserialize)]
struct Report {
    /// What this run measured, if the caller said (`--label`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    label: Option<String>,
    date: String,
    machine: BTreeMap<String, String>,
    rounds: usize,
    suites: Vec<SuiteResult>,
    /// The HTTP servers under wrk (`http.rs`), if that suite ran.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    http: Option<http::Report>,
    /// Reloads under load (`reload.rs`), if that suite ran.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    reload: Option<reload::Report>,
}

fn child(args: &[String]) {
    match args {
        // The servers and helpers; each returns when its work is done.
        [s] if s == "idle_server" => return idle::server(),
        [s] if s == "busy" => return busy(),
        [s] if s == "echo_backend" => return proxy::backend(),
        [s, addr, conns, per] if s == "echo_client" => {
            return echo::client(
                addr,
                conns.parse().expect("conns"),
                per.parse().expect("per"),
            );
        }
        [s, kind] if s == "http_server" => return http::server(kind),
        [s, port] if s == "serve_master" => return reload::master(port),
        [s] if s == "reload_worker" => return reload::worker(),
        [s, addr, n] if s == "idle_clients" => {
            return idle::clients(addr, n.parse().expect("n"));
        }
        [s, n] if s == "watched_target" => {
            return inspect::watched_target(n.parse().expect("n"));
        }
        _ => {}
    }
    let [suite, runtime, workers, n] = args else {
        eprintln!("usage: --child SUITE RUNTIME WORKERS N");
        std::process::exit(2);
    };
    let workers: usize = workers.parse().expect("workers");
    let n: u64 = n.parse().expect("n");
    let figure = match suite.as_str() {
        "spawn_join" => runtimes::spawn_join(runtime, workers, n),
        "burst" => runtimes::burst(runtime, workers, n),
        "ping_pong_1" | "ping_pong_2" => runtimes::ping_pong(runtime, workers, n),
        "idle_memory" => runtimes::idle_memory(runtime, n),
        "idle_process" => runtimes::idle_process(runtime, workers, n),
        "queue_4to1" => runtimes::queue_4to1(runtime, workers, n),
        "semaphore" => runtimes::semaphore(runtime, workers, n),
        "tpool_rtt_p50" => runtimes::tpool_rtt(runtime, workers, n, 0.5, None),
        "block_on" => runtimes::block_on_rtt(runtime, workers, n),
        "tpool_rtt_p99" | "tpool_busy_p99" => runtimes::tpool_rtt(runtime, workers, n, 0.99, None),
        "tpool_spaced" => {
            runtimes::tpool_rtt(runtime, workers, n, 0.5, Some(Duration::from_millis(1)))
        }
        "tpool_throughput" => runtimes::tpool_throughput(runtime, workers, n, 1000),
        "echo_1" => echo::echo(runtime, workers, 1, n),
        "echo_100" => echo::echo(runtime, workers, 100, n),
        "echo_1000" => echo::echo(runtime, workers, 1000, n),
        "echo_remote_1" => echo::remote(runtime, workers, 1, n),
        "echo_remote_100" => echo::remote(runtime, workers, 100, n),
        "echo_remote_1000" => echo::remote(runtime, workers, 1000, n),
        "proxy_1" => proxy::proxy(runtime, workers, 1, n),
        "proxy_100" => proxy::proxy(runtime, workers, 100, n),
        "proxy_1000" => proxy::proxy(runtime, workers, 1000, n),
        "db_select1" => db::select1(runtime, workers, n, db::Figure::PerQuery),
        "db_select1_p50" => db::select1(runtime, workers, n, db::Figure::Latency(0.5)),
        "db_select1_p99" => db::select1(runtime, workers, n, db::Figure::Latency(0.99)),
        "db_abandon" => db::abandoning(runtime, workers, n, db::Figure::PerQuery),
        "db_abandon_p99" => db::abandoning(runtime, workers, n, db::Figure::Latency(0.99)),
        "snapshot_10k" | "snapshot_100k" => inspect::snapshot_cost(runtime, n),
        "snapshot_pause_10k" | "snapshot_pause_100k" => inspect::snapshot_pause(runtime, n),
        "inspector_attached" => inspect::attached(runtime, n),
        "tui_100k" => inspect::tui(runtime, n),
        "watched_memory" => inspect::watched_memory(runtime, n),
        other => panic!("unknown suite {other}"),
    };
    match runtimes::SECTION_CPU_PER_OP.get() {
        Some(cpu) => println!("{figure} {cpu}"),
        None => println!("{figure}"),
    }
    // Leave without tearing down thousands of parked tasks.
    std::process::exit(0);
}

/// The CPU time (user and system) of this process's children that have ended and been
/// waited for.
fn children_cpu() -> std::time::Duration {
    // SAFETY: getrusage fills the struct it is given.
    let usage = unsafe {
        let mut u: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_CHILDREN, &mut u);
        u
    };
    let tv = |t: libc::timeval| {
        std::time::Duration::new(t.tv_sec as u64, (t.tv_usec as u32).saturating_mul(1000))
    };
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

/// How far greenhub may be from bare `may` in a suite, by the issues that set the aims: a
/// spawn and a switch carry greenhub's bookkeeping (issue 25), a server's CPU barely any
/// (issue 18).
fn may_aim(suite: &str) -> f64 {
    match suite {
        "spawn_join" | "burst" => 1.15,
        "ping_pong_1" | "ping_pong_2" => 1.2,
        _ => 1.05,
    }
}

/// A CPU-bound process beside a case (`Suite::busy`): arithmetic until it is killed, or for
/// ten minutes at most if nobody does.
fn busy() {
    let until = Instant::now() + Duration::from_secs(600);
    let mut x = 1u64;
    while Instant::now() < until {
        for _ in 0..1_000_000 {
            x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
        }
    }
}

/// The busy processes of a case; killed (and waited for) when dropped.
struct Busy(Vec<std::process::Child>);

impl Busy {
    fn start(n: usize) -> Result<Busy, String> {
        let exe = std::env::current_exe().map_err(|e| e.to_string())?;
        let children = (0..n)
            .map(|_| {
                Command::new(&exe)
                    .args(["--child", "busy"])
                    .spawn()
                    .map_err(|e| format!("start a busy process: {e}"))
            })
            .collect::<Result<_, _>>()?;
        Ok(Busy(children))
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A figure and the CPU time its child spent per operation (ns): of its timed section if it
/// reports one, else of its whole run. The busy processes beside it are waited for after the
/// child's CPU time is read, so theirs is not counted.
fn measure(suite: &Suite, runtime: &str, n: u64) -> Result<(f64, f64), String> {
    let busy = Busy::start(suite.busy)?;
    let before = children_cpu();
    let (figure, section_cpu) = measure_figure(suite, runtime, n)?;
    let cpu = children_cpu().saturating_sub(before);
    drop(busy);
    Ok((
        figure,
        section_cpu.unwrap_or(cpu.as_nanos() as f64 / n.max(1) as f64),
    ))
}

/// The figure a child printed, and the CPU per operation of its timed section if it printed
/// one after the figure.
fn measure_figure(suite: &Suite, runtime: &str, n: u64) -> Result<(f64, Option<f64>), String> {
    let mut command = if seeds::library(runtime).is_some() {
        seeds::command(seeds::python(&root())?, suite.id, runtime, n)
    } else {
        let mut c = Command::new(std::env::current_exe().map_err(|e| e.to_string())?);
        c.args([
            "--child",
            suite.id,
            runtime,
            &suite.workers.to_string(),
            &n.to_string(),
        ]);
        c
    };
    let out = command
        .env_remove("GREENHUB_WORKERS")
        .env_remove("GREENHUB_STACK_SIZE")
        .output()
        .map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(format!(
            "{} / {runtime} failed: {}",
            suite.id,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let mut last = stdout
        .trim()
        .lines()
        .last()
        .unwrap_or("")
        .split_whitespace();
    let figure = last.next().and_then(|v| v.parse::<f64>().ok());
    let section_cpu = last.next().and_then(|v| v.parse::<f64>().ok());
    figure
        .map(|f| (f, section_cpu))
        .ok_or_else(|| format!("{} / {runtime}: no figure in the output", suite.id))
}

/// `mine` over `theirs` round by round (both sides measured in each round, one after the
/// other): the median of the per-round ratios, the lowest and the highest; none when the
/// rounds do not pair up. Paired rounds keep a drift of the machine's speed out of the ratio,
/// which a ratio of medians taken at different moments carries.
fn round_by_round(mine: &[f64], theirs: &[f64]) -> Option<(f64, f64, f64)> {
    if mine.len() != theirs.len() || mine.is_empty() {
        return None;
    }
    let ratios: Vec<f64> = mine
        .iter()
        .zip(theirs)
        .map(|(a, b)| a / b)
        .filter(|q| q.is_finite() && *q > 0.0)
        .collect();
    if ratios.is_empty() {
        return None;
    }
    let lo = ratios.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = ratios.iter().copied().fold(0.0, f64::max);
    Some((median(&ratios), lo, hi))
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let m = s.len() / 2;
    if !s.len().is_multiple_of(2) {
        s[m]
    } else {
        (s[m - 1] + s[m]) / 2.0
    }
}

fn command_output(cmd: &str, args: &[&str]) -> String {
    Command::new(cmd)
        .args(args)
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".into())
}

fn machine() -> BTreeMap<String, String> {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|l| l.trim_start_matches([' ', '\t', ':']).to_string())
        .unwrap_or_else(|| "unknown".into());
    let mut m = BTreeMap::new();
    m.insert("cpu".into(), model);
    m.insert(
        "cores".into(),
        std::thread::available_parallelism()
            .map(|n| n.get().to_string())
            .unwrap_or_else(|_| "?".into()),
    );
    m.insert("kernel".into(), command_output("uname", &["-r"]));
    m.insert("rustc".into(), command_output("rustc", &["--version"]));
    m.insert(
        "vm.max_map_count".into(),
        std::fs::read_to_string("/proc/sys/vm/max_map_count")
            .map(|s| s.trim().to_string())
            .unwrap_or_default(),
    );
    m
}

fn fmt_figure(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// The medians of an earlier run (`--baseline`), shown beside this run's as "before".
struct Baseline {
    label: String,
    date: String,
    /// (suite, runtime) -> (median, CPU per op median)
    medians: BTreeMap<(String, String), (f64, Option<f64>)>,
}

impl Baseline {
    fn load(path: &str) -> Result<Baseline, String> {
        let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
        let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| e.to_string())?;
        let suites = v["suites"]
            .as_array()
            .ok_or("not a results file: no \"suites\" list")?;
        let mut medians = BTreeMap::new();
        for suite in suites {
            let id = suite["id"].as_str().unwrap_or_default();
            for case in suite["cases"].as_array().into_iter().flatten() {
                let (Some(runtime), Some(median)) =
                    (case["runtime"].as_str(), case["median"].as_f64())
                else {
                    continue;
                };
                let cpu = case["cpu_ns_per_op_median"].as_f64();
                medians.insert((id.to_string(), runtime.to_string()), (median, cpu));
            }
        }
        Ok(Baseline {
            label: v["label"].as_str().unwrap_or("an earlier run").to_string(),
            date: v["date"].as_str().unwrap_or("an unknown date").to_string(),
            medians,
        })
    }
}

fn markdown(report: &Report, baseline: Option<&Baseline>) -> String {
    let mut md = String::new();
    let _ = writeln!(md, "# Benchmarks\n");
    let _ = writeln!(
        md,
        "Produced by `cargo run --release -p greenhub-bench` on {}; do not edit by hand. \
         Each figure is measured in a fresh process; the runtimes of a table take turns in \
         each of {} rounds (more where a suite says so; after a warm-up round), each round \
         starting with the next runtime, and the table shows the median with the min and max. Lower is better everywhere. Where the figure \
         is a time per operation, the last column is the CPU time the measuring process spent \
         per operation: all its threads (workers, spinning pool threads, the runtime's own) \
         over its whole run, set-up included, divided by N; a runtime that is fast by burning \
         more cores shows it there. \
         Cases that time one section of their run count that section's CPU only (start and \
         warm-up left out, where an operation's CPU is small beside a process's start): the \
         thread-pool round trips, the idle process, and the echo servers with their clients \
         in another process (the server's CPU). Raw samples: `bench/results.json`.\n",
        report.date, report.rounds
    );
    let _ = writeln!(
        md,
        "Machine (shared, so expect noise; compare within a table):\n"
    );
    for (k, v) in &report.machine {
        let _ = writeln!(md, "- {k}: {v}");
    }
    if let Some(label) = &report.label {
        let _ = writeln!(md, "\nThis run: {label}.");
    }
    if let Some(b) = baseline {
        let _ = writeln!(
            md,
            "\nThe **before** column is the median of {} (measured {} on this machine, by \
             the same harness); **change** is this run's median over it.",
            b.label, b.date
        );
    }
    for suite in &report.suites {
        let _ = writeln!(md, "\n## {}\n\n{}.\n", suite.title, suite.what);
        let base = suite
            .cases
            .iter()
            .find(|c| c.runtime.starts_with("greenhub"))
            .map(|c| c.median);
        // CPU per operation, where the figure is a time per operation.
        let with_cpu = suite.unit.starts_with("ns") || suite.unit.starts_with("µs");
        let before_of = |runtime: &str| {
            baseline.and_then(|b| b.medians.get(&(suite.id.clone(), runtime.to_string())))
        };
        let with_before = suite.cases.iter().any(|c| before_of(&c.runtime).is_some());
        let _ = writeln!(
            md,
            "| runtime | N | median ({}) | min | max | relative to greenhub |{}{}",
            suite.unit,
            if with_cpu {
                " CPU per op (ns, all threads) |"
            } else {
                ""
            },
            if with_before {
                if with_cpu {
                    " before | change | CPU before |"
                } else {
                    " before | change |"
                }
            } else {
                ""
            }
        );
        let _ = writeln!(
            md,
            "|---|---:|---:|---:|---:|---:|{}{}",
            if with_cpu { "---:|" } else { "" },
            match (with_before, with_cpu) {
                (true, true) => "---:|---:|---:|",
                (true, false) => "---:|---:|",
                (false, _) => "",
            }
        );
        let scale = SUITES
            .iter()
            .find(|s| s.id == suite.id)
            .map_or(1.0, |s| s.scale);
        for c in &suite.cases {
            let rel = base
                .filter(|b| *b > 0.0)
                .map(|b| format!("{:.2}x", c.median / b))
                .unwrap_or_default();
            let cpu = match (with_cpu, c.cpu_ns_per_op_median) {
                (true, Some(ns)) => format!(" {} |", fmt_figure(ns)),
                (true, None) => " |".to_string(),
                (false, _) => String::new(),
            };
            let before = if with_before {
                match before_of(&c.runtime) {
                    Some((b, b_cpu)) => {
                        let change = if *b > 0.0 {
                            format!("{:.2}x", c.median / b)
                        } else {
                            String::new()
                        };
                        let cpu = if with_cpu {
                            format!(" {} |", b_cpu.map(fmt_figure).unwrap_or_default())
                        } else {
                            String::new()
                        };
                        format!(" {} | {change} |{cpu}", fmt_figure(b / scale))
                    }
                    None if with_cpu => " | | |".to_string(),
                    None => " | |".to_string(),
                }
            } else {
                String::new()
            };
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {} | {} |{cpu}{before}",
                c.runtime,
                c.n,
                fmt_figure(c.median / scale),
                fmt_figure(c.min / scale),
                fmt_figure(c.max / scale),
                rel
            );
        }
        let greenhub = suite.cases.iter().find(|c| c.runtime == "greenhub");
        let may = suite.cases.iter().find(|c| c.runtime == "may");
        if let (Some(g), Some(m)) = (greenhub, may)
            && suite.unit.starts_with("ns")
            && let Some(wall) = round_by_round(&g.samples, &m.samples)
        {
            let cpu = round_by_round(&g.cpu_ns_per_op, &m.cpu_ns_per_op)
                .map(|(q, lo, hi)| format!(", CPU **{q:.2}** ({lo:.2}–{hi:.2})"))
                .unwrap_or_default();
            let (q, lo, hi) = wall;
            let _ = writeln!(
                md,
                "\ngreenhub / bare may, round by round (the median of the rounds' ratios, and \
                 their range): wall **{q:.2}** ({lo:.2}–{hi:.2}){cpu}. The cost of greenhub's \
                 bookkeeping; the aim is at most {:.2}.",
                may_aim(&suite.id)
            );
        }
    }
    if let Some(h) = &report.http {
        md.push_str(&http::markdown(h));
    }
    if let Some(r) = &report.reload {
        md.push_str(&reload::markdown(r));
    }
    md
}

/// The chat server's idle connections: a few runs (each opens thousands of connections), the
/// median of the memory per connection.
fn idle_connections(runs: usize) -> SuiteResult {
    const TARGET: u64 = 10_000;
    let mut samples = Vec::new();
    let mut held = Vec::new();
    for run in 0..runs.max(1) {
        let h = idle::measure(TARGET, 5_000);
        eprintln!(
            "idle_connections: run {}/{runs}: {} connections, {:.0} bytes each",
            run + 1,
            h.connections,
            h.bytes_per_connection
        );
        samples.push(h.bytes_per_connection);
        held.push(h.connections as f64);
    }
    let case = |name: String, s: Vec<f64>, n: u64| CaseResult {
        runtime: name,
        n,
        median: median(&s),
        min: s.iter().copied().fold(f64::INFINITY, f64::min),
        max: s.iter().copied().fold(f64::NEG_INFINITY, f64::max),
        samples: s,
        cpu_ns_per_op: Vec::new(),
        cpu_ns_per_op_median: None,
    };
    let connections = median(&held) as u64;
    SuiteResult {
        id: "idle_connections".into(),
        title: "Idle connections held by the chat server".into(),
        unit: "KiB resident per connection".into(),
        what: format!(
            "the chat example (`examples/src/chat.rs`) on loopback, clients in other processes \
             opening up to {TARGET} idle connections; this machine caps descriptors at 20,000 \
             per process and the chat server keeps two per participant (reader and writer \
             handles), so it can hold at most about 10,000 here; N is the connections held, \
             the figure the server's resident memory added per connection"
        ),
        cases: vec![case(
            "greenhub chat server".into(),
            samples.iter().map(|b| b / 1024.0).collect(),
            connections,
        )],
    }
}

/// The workspace's root (the venv and the Python scripts' outputs live under its `target/`).
fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("bench/ sits in the workspace")
        .to_path_buf()
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--child") {
        child(&args[1..]);
        return;
    }
    let mut rounds = 7;
    let mut only: Option<Vec<String>> = None;
    let mut write = true;
    let mut json_out: Option<PathBuf> = None;
    let mut label: Option<String> = None;
    let mut baseline: Option<Baseline> = None;
    let mut render: Option<PathBuf> = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--quick" => rounds = 3,
            "--rounds" => rounds = it.next().and_then(|v| v.parse().ok()).unwrap_or(rounds),
            "--suite" => {
                only = it
                    .next()
                    .map(|v| v.split(',').map(str::to_string).collect())
            }
            "--no-write" => write = false,
            "--json" => json_out = it.next().map(PathBuf::from),
            "--label" => label = it.next().cloned(),
            "--render" => {
                let Some(path) = it.next() else {
                    eprintln!("--render needs the path of a results file");
                    std::process::exit(2);
                };
                render = Some(PathBuf::from(path));
            }
            "--baseline" => {
                let Some(path) = it.next() else {
                    eprintln!("--baseline needs the path of a results file");
                    std::process::exit(2);
                };
                match Baseline::load(path) {
                    Ok(b) => baseline = Some(b),
                    Err(e) => {
                        eprintln!("--baseline {path}: {e}");
                        std::process::exit(2);
                    }
                }
            }
            "-h" | "--help" => {
                println!(
                    "usage: greenhub-bench [--quick | --rounds N] [--suite ID[,ID...]] [--no-write]\n\
                     \x20      [--json PATH] [--label TEXT] [--baseline PATH] [--render PATH]\n\
                     --json writes this run's results to PATH (also for some suites only);\n\
                     --label names this run in its results (what was measured: a commit, a change);\n\
                     --baseline shows a results file's medians beside this run's, as \"before\"\n\
                     --render measures nothing: it writes BENCHMARKS.md and README's summary from\n\
                     a results file (a run's bench/results.json), as that run wrote them\n\
                     suites: {}, idle_connections, http, reload",
                    SUITES.iter().map(|s| s.id).collect::<Vec<_>>().join(", ")
                );
                return;
            }
            other => {
                eprintln!("unknown argument {other:?}; try --help");
                std::process::exit(2);
            }
        }
    }
    if let Some(path) = render {
        let report = std::fs::read_to_string(&path)
            .map_err(|e| e.to_string())
            .and_then(|text| serde_json::from_str::<Report>(&text).map_err(|e| e.to_string()))
            .unwrap_or_else(|e| {
                eprintln!("--render {}: {e}", path.display());
                std::process::exit(2);
            });
        publish(
            &report,
            baseline.as_ref(),
            json_out.as_deref(),
            write,
            Output::Rendered,
        );
        return;
    }
    let map_count = std::fs::read_to_string("/proc/sys/vm/max_map_count")
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or(0);
    let wanted = |id: &str| only.as_ref().is_none_or(|o| o.iter().any(|w| w == id));
    let suites: Vec<&Suite> = SUITES
        .iter()
        .filter(|s| wanted(s.id))
        .filter(|s| {
            // 100,000 stacks take 200,000 mappings where stacks do not share mappings (before
            // Linux 6.13): skipped there, and said so, unless the cap is raised.
            let fits = !s.id.ends_with("_100k")
                || map_count > 220_000
                || generator::stacks_share_mappings();
            if !fits {
                eprintln!(
                    "{}: skipped, vm.max_map_count is {map_count} (raise it above 220000 as root)",
                    s.id
                );
            }
            fits
        })
        .collect();
    if suites.is_empty()
        && !["idle_connections", "http", "reload"]
            .into_iter()
            .any(wanted)
    {
        eprintln!("no suite named {only:?}");
        std::process::exit(2);
    }
    // One server for every database suite, started before them and stopped at the end; the
    // children find it through the environment.
    let _pg = suites.iter().any(|s| s.id.starts_with("db_")).then(|| {
        let pg = greenhub_pgtest::Pg::start();
        // SAFETY: the harness's main thread is its only thread here (the server is a child
        // process, and no runtime has started): nothing reads the environment meanwhile.
        unsafe { std::env::set_var(db::PG_ENV, &pg.conninfo) };
        pg
    });
    let mut results = Vec::new();
    for suite in suites {
        // The seeds' rows need the venv; without it they are left out, and said so.
        let cases: Vec<(&str, u64)> = suite
            .cases
            .iter()
            .copied()
            .filter(|(runtime, _)| match seeds::library(runtime) {
                Some(_) => seeds::python(&root())
                    .inspect_err(|e| eprintln!("{}: {runtime} left out: {e}", suite.id))
                    .is_ok(),
                None => true,
            })
            .collect();
        eprintln!("{}: warm-up", suite.id);
        for (runtime, n) in &cases {
            if let Err(e) = measure(suite, runtime, *n) {
                eprintln!("{e}");
                std::process::exit(1);
            }
        }
        let mut samples: Vec<Vec<f64>> = vec![Vec::new(); cases.len()];
        let mut cpu: Vec<Vec<f64>> = vec![Vec::new(); cases.len()];
        let rounds = rounds.max(suite.min_rounds);
        for round in 0..rounds {
            // Each round starts with the next runtime, so that none always runs first (right
            // after the previous suite) or last.
            for k in 0..cases.len() {
                let i = (round + k) % cases.len();
                let (runtime, n) = &cases[i];
                match measure(suite, runtime, *n) {
                    Ok((v, c)) => {
                        samples[i].push(v);
                        cpu[i].push(c);
                    }
                    Err(e) => {
                        eprintln!("{e}");
                        std::process::exit(1);
                    }
                }
            }
            eprintln!("{}: round {}/{rounds}", suite.id, round + 1);
        }
        let cases = cases
            .iter()
            .zip(samples)
            .zip(cpu)
            .map(|(((runtime, n), s), c)| CaseResult {
                runtime: runtime.to_string(),
                n: *n,
                median: median(&s),
                min: s.iter().copied().fold(f64::INFINITY, f64::min),
                max: s.iter().copied().fold(f64::NEG_INFINITY, f64::max),
                samples: s,
                cpu_ns_per_op_median: Some(median(&c)),
                cpu_ns_per_op: c,
            })
            .collect();
        results.push(SuiteResult {
            id: suite.id.into(),
            title: suite.title.into(),
            unit: suite.unit.into(),
            what: suite.what.into(),
            cases,
        });
    }
    if wanted("idle_connections") {
        results.push(idle_connections(rounds.min(3)));
    }
    let root = root();
    let http_report = if wanted("http") {
        match http::run(&root, HTTP_ROUNDS, 5) {
            Ok(r) => Some(r),
            Err(e) => {
                eprintln!("http: {e}");
                std::process::exit(1);
            }
        }
    } else {
        None
    };
    let reload_report = if wanted("reload") {
        match reload::run(&root, rounds.min(3), 12) {
            Ok(r) => Some(r),
            Err(e) => {
                eprintln!("reload: {e}");
                std::process::exit(1);
            }
        }
    } else {
        None
    };
    let report = Report {
        label,
        date: command_output("date", &["-u", "+%Y-%m-%d %H:%M UTC"]),
        machine: machine(),
        rounds,
        suites: results,
        http: http_report,
        reload: reload_report,
    };
    publish(
        &report,
        baseline.as_ref(),
        json_out.as_deref(),
        write,
        if only.is_some() {
            Output::SomeSuites
        } else {
            Output::Run
        },
    );
}

/// Where a report comes from, which decides what [`publish`] writes.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Output {
    /// A run of every suite: all its files.
    Run,
    /// A run of some suites: none (it would leave the others out).
    SomeSuites,
    /// A results file rendered again: BENCHMARKS.md and README's summary, not the results
    /// file it came from.
    Rendered,
}

/// Prints a report as Markdown and writes it out: to `json_out` if given, and unless `write`
/// is off, to BENCHMARKS.md, bench/results.json and README's summary as `output` allows.
fn publish(
    report: &Report,
    baseline: Option<&Baseline>,
    json_out: Option<&std::path::Path>,
    write: bool,
    output: Output,
) {
    let root = root();
    let md = markdown(report, baseline);
    println!("{md}");
    if let Some(path) = json_out {
        std::fs::write(
            path,
            serde_json::to_string_pretty(report).expect("serialize"),
        )
        .unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    }
    if write {
        if output == Output::SomeSuites {
            eprintln!(
                "(one suite only: BENCHMARKS.md is not rewritten; use --no-write to silence this)"
            );
        } else {
            std::fs::write(root.join("BENCHMARKS.md"), md).expect("write BENCHMARKS.md");
            if output == Output::Run {
                std::fs::write(
                    root.join("bench/results.json"),
                    serde_json::to_string_pretty(report).expect("serialize"),
                )
                .expect("write bench/results.json");
            }
            let readme_path = root.join("README.md");
            let readme = std::fs::read_to_string(&readme_path).expect("read README.md");
            match summary::into_readme(&readme, &summary::summary(report)) {
                Some(new) => {
                    std::fs::write(&readme_path, new).expect("write README.md");
                    eprintln!("wrote BENCHMARKS.md and README's summary");
                }
                None => eprintln!(
                    "wrote BENCHMARKS.md; README has no summary markers ({} ... {})",
                    summary::START,
                    summary::END
                ),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(rps: f64) -> http::Run {
        http::Run {
            rps,
            p50_us: 100.0,
            p99_us: 900.0,
            cpu_us_per_request: 7.25,
        }
    }

    /// A run whose HTTP rows were recorded with axum's round first, as a rotated round
    /// records them.
    fn report() -> Report {
        let row = |server: &str, rps: f64| http::Row {
            server: server.into(),
            endpoint: "/plaintext".into(),
            connections: 64,
            runs: vec![run(rps), run(rps * 1.1)],
        };
        Report {
            label: Some("abc1234".into()),
            date: "2026-12-03 07:01 UTC".into(),
            machine: BTreeMap::from([("cores".to_string(), "2".to_string())]),
            rounds: 3,
            suites: vec![SuiteResult {
                id: "spawn_join".into(),
                title: "Spawn + join".into(),
                unit: "ns per task".into(),
                what: "spawn and join".into(),
                cases: vec![CaseResult {
                    runtime: "greenhub".into(),
                    n: 100_000,
                    samples: vec![857.25, 900.5, 801.125],
                    median: 857.25,
                    min: 801.125,
                    max: 900.5,
                    cpu_ns_per_op: vec![1661.5],
                    cpu_ns_per_op_median: Some(1661.5),
                }],
            }],
            http: Some(http::Report {
                seconds_per_run: 5,
                rows: vec![
                    row("axum (tokio)", 120_000.0),
                    row("greenhub-http", 110_000.0),
                ],
                skipped: vec![],
            }),
            reload: None,
        }
    }

    #[test]
    fn a_rendered_results_file_reads_as_the_run_that_wrote_it() {
        let measured = report();
        let json = serde_json::to_string_pretty(&measured).unwrap();
        let read: Report = serde_json::from_str(&json).unwrap();
        assert_eq!(markdown(&read, None), markdown(&measured, None));
        assert_eq!(
            summary::summary(&read),
            summary::summary(&measured),
            "README's summary"
        );
    }

    #[test]
    fn http_rows_keep_the_servers_order_whichever_ran_first() {
        let md = markdown(&report(), None);
        let at = |server: &str| {
            md.find(&format!("| {server} | 64 |"))
                .unwrap_or_else(|| panic!("no row of {server}"))
        };
        assert!(at("greenhub-http") < at("axum (tokio)"), "{md}");
        assert!(
            md.contains("| axum (tokio) | 64 | 126000 | 120000–132000 |"),
            "{md}"
        );
        assert!(md.contains("| 1.09x (1.09–1.09x) |"), "{md}");
    }

    #[test]
    fn servers_are_compared_round_by_round_not_median_to_median() {
        // Medians level (150,000 each), but axum won two rounds of three by about 7-10%.
        let row = |server: &str, rps: [f64; 3]| http::Row {
            server: server.into(),
            endpoint: "/db".into(),
            connections: 64,
            runs: rps.iter().map(|&r| run(r)).collect(),
        };
        let mut r = report();
        r.http = Some(http::Report {
            seconds_per_run: 5,
            rows: vec![
                row("greenhub-http", [100_000.0, 200_000.0, 150_000.0]),
                row("axum (tokio)", [110_000.0, 150_000.0, 160_000.0]),
            ],
            skipped: vec![],
        });
        let md = markdown(&r, None);
        assert!(md.contains("| 1.07x (0.75–1.10x) |"), "{md}");
        let said = summary::summary(&r);
        assert!(
            said.contains("greenhub loses, 1.07x; by round 0.75x to 1.10x"),
            "{said}"
        );
    }

    #[test]
    fn p99_latencies_are_compared_round_by_round_too() {
        // By medians greenhub's p99 is the higher (1,500 against 1,400 µs), but axum's was
        // higher in two rounds of three.
        let row = |server: &str, p99: [f64; 3]| http::Row {
            server: server.into(),
            endpoint: "/plaintext".into(),
            connections: 64,
            runs: p99
                .iter()
                .map(|&p| http::Run {
                    p99_us: p,
                    ..run(100_000.0)
                })
                .collect(),
        };
        let mut r = report();
        r.http = Some(http::Report {
            seconds_per_run: 5,
            rows: vec![
                row("greenhub-http", [1000.0, 2000.0, 1500.0]),
                row("axum (tokio)", [1100.0, 1400.0, 1600.0]),
            ],
            skipped: vec![],
        });
        let md = markdown(&r, None);
        assert!(
            md.contains("| 1.07x (0.70–1.10x) | 1.00x (1.00–1.00x) |"),
            "{md}"
        );
        let said = summary::summary(&r);
        assert!(
            said.contains("p99 1400 µs, by round 1.07x greenhub's (0.70x to 1.10x)"),
            "{said}"
        );
    }

    #[test]
    fn greenhub_is_held_to_bare_may_round_by_round() {
        // Medians level (wall 1000 each), but greenhub was slower in two rounds of three, and
        // its CPU higher in every round.
        let case = |runtime: &str, samples: [f64; 3], cpu: [f64; 3]| CaseResult {
            runtime: runtime.into(),
            n: 100_000,
            samples: samples.to_vec(),
            median: median(&samples),
            min: samples.iter().copied().fold(f64::INFINITY, f64::min),
            max: samples.iter().copied().fold(0.0, f64::max),
            cpu_ns_per_op: cpu.to_vec(),
            cpu_ns_per_op_median: Some(median(&cpu)),
        };
        let mut r = report();
        r.suites = vec![SuiteResult {
            id: "echo_remote_1000".into(),
            title: "Echo".into(),
            unit: "ns per round trip".into(),
            what: "echo".into(),
            cases: vec![
                case("greenhub", [1100.0, 1000.0, 900.0], [660.0, 640.0, 500.0]),
                case("may", [1000.0, 950.0, 1000.0], [600.0, 600.0, 480.0]),
            ],
        }];
        let md = markdown(&r, None);
        assert!(
            md.contains("wall **1.05** (0.90–1.10), CPU **1.07** (1.04–1.10)"),
            "{md}"
        );
        assert!(md.contains("the aim is at most 1.05"), "{md}");
        // Rounds that do not pair up give no ratio rather than a wrong one.
        r.suites[0].cases[1].samples.pop();
        assert!(!markdown(&r, None).contains("greenhub / bare may"));
    }
}
