//! What the registry holds, as data: [`snapshot`] returns every live green thread, pending
//! timer, watched descriptor, worker and blocked-worker report as a serde-serializable
//! [`Snapshot`]; [`format_run_info`] prints it as a tree by parent, like gevent's
//! `format_run_info` and Go's goroutine dump.
//!
//! Times are relative to the moment of the snapshot (`*_ago_us`, `*_for_us`, `*_in_us`), in
//! microseconds, so that a reader needs no clock of its own. "Since" times come from a coarse
//! clock (1 to 4 ms resolution); deadlines are exact. The schema is versioned by
//! [`SCHEMA_VERSION`]: fields may be added within a version, never removed or changed.
//!
//! ```
//! let t = greenhub::thread::Builder::new()
//!     .name("napper")
//!     .spawn(|| greenhub::sleep(std::time::Duration::from_millis(200)))
//!     .unwrap();
//! greenhub::sleep(std::time::Duration::from_millis(20)).unwrap();
//! let snap = greenhub::inspect::snapshot();
//! let napper = snap.threads.iter().find(|th| th.id == t.id()).unwrap();
//! assert_eq!(napper.state, greenhub::inspect::ThreadState::Waiting);
//! assert!(greenhub::inspect::format_run_info().contains("napper"));
//! t.kill();
//! ```

use std::panic::Location;
use std::sync::atomic::Ordering;

use greenhub_snapshot::*;

use crate::core::inbox;
use crate::core::monitor::Blocked;
use crate::core::registry::{
    Ending, Finished, Phase, StateView, ThreadRecord, TimerKind, registry,
};
use crate::core::{clock, deadlock, monitor, runtime, timing, trace};
use crate::observe::stacks;

pub(crate) fn process_name() -> String {
    std::fs::read_to_string("/proc/self/comm")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

fn us(ns: u64) -> u64 {
    ns / 1000
}

fn signed_us(later_ns: u64, earlier_ns: u64) -> i64 {
    (later_ns as i128 - earlier_ns as i128).clamp(i64::MIN as i128, i64::MAX as i128) as i64 / 1000
}

/// Takes a snapshot of the registry. Costs one pass over the live threads; the green threads
/// themselves are not stopped.
pub(crate) fn snapshot() -> Snapshot {
    take(true, false)
}

/// [`snapshot`] with the stack of every parked thread (see `observe/stacks.rs`).
pub(crate) fn snapshot_with_stacks() -> Snapshot {
    take(true, true)
}

/// The snapshot's totals, workers, reports and objects, with the lists of threads, finished
/// threads, timers and descriptors left empty: what `/stats` and `/metrics` serve, without
/// describing each of 100,000 threads to count them.
#[cfg(feature = "stats")]
pub(crate) fn overview() -> Snapshot {
    take(false, false)
}

fn take(lists: bool, with_stacks: bool) -> Snapshot {
    let reg = registry();
    // Read everything first and the clocks last, so that no time read from a table is later
    // than the snapshot's "now".
    let (live, finished_switches) = reg.live_threads();
    // A parked thread's stack is read with its state (the thread cannot change it meanwhile),
    // so the two agree; the other threads' states are read as they are.
    let (mut stacks, stacks_unavailable) = if with_stacks {
        match stacks::stacks_of(&live) {
            Ok(s) => (s, None),
            Err(why) => (Vec::new(), Some(why.to_owned())),
        }
    } else {
        (Vec::new(), None)
    };
    stacks.resize(live.len(), None);
    let states: Vec<_> = live
        .into_iter()
        .zip(stacks)
        .map(|(r, parked)| match parked {
            Some((view, stack)) => (r, view, Some(stack)),
            None => {
                let view = r.read();
                (r, view, None)
            }
        })
        .collect();
    let finished = if lists { reg.finished() } else { Vec::new() };
    let timers = if lists { reg.timers() } else { Vec::new() };
    let fds = if lists { reg.fds() } else { Vec::new() };
    let reports = monitor::reports();
    // Objects are inspected outside the table's locks: an inspection takes the object's own
    // lock, and an object dropped meanwhile takes the table's.
    let mut objects: Vec<ObjectInfo> = reg
        .objects()
        .iter()
        .map(|o| {
            let mut info = o.inspect();
            info.holders = o.holders();
            info
        })
        .collect();
    objects.sort_by_key(|o| o.id);
    let at = Now {
        coarse: clock::coarse_ns(),
        precise: clock::precise_ns(),
    };

    let mut totals = Totals::default();
    let mut live_switches = 0;
    // A green thread's wait on a descriptor is in its record, not in the table of descriptors
    // (see `wait_io`).
    let mut fds = fds;
    let mut green_fds = 0;
    let live = states.len();
    let mut threads: Vec<ThreadInfo> = Vec::with_capacity(if lists { live } else { 0 });
    for (r, view, stack) in states {
        let state = match view.phase {
            Phase::Scheduled => ThreadState::Scheduled,
            Phase::Running => ThreadState::Running,
            Phase::Waiting => ThreadState::Waiting,
        };
        match state {
            ThreadState::Scheduled => totals.scheduled += 1,
            ThreadState::Running => totals.running += 1,
            ThreadState::Waiting => totals.waiting += 1,
        }
        live_switches += r.switches.load(Ordering::Relaxed);
        if state == ThreadState::Waiting
            && let Some(WaitOn::Fd { fd, interest }) = view.waiting_on
        {
            green_fds += 1;
            if lists {
                fds.push((fd, interest, Some(r.id), view.since_ns));
            }
        }
        if lists {
            let mut info = thread_info(&r, view, state, &at, &objects);
            info.stack = stack;
            threads.push(info);
        }
    }
    threads.sort_by_key(|t| t.id);
    fds.sort_by_key(|f| (f.0, f.3));
    let finished: Vec<FinishedInfo> = finished
        .into_iter()
        .map(|f| finished_info(f, &at))
        .collect();
    let timers: Vec<TimerInfo> = timers.into_iter().map(|t| timer_info(t, &at)).collect();
    let descriptors: Vec<DescriptorInfo> = fds
        .into_iter()
        .map(|(fd, interest, owner, since)| DescriptorInfo {
            fd,
            interest,
            owner,
            waiting_us: us(at.coarse.saturating_sub(since)),
        })
        .collect();
    let workers = monitor::workers()
        .into_iter()
        .map(|(index, tid, running)| WorkerInfo {
            index,
            tid,
            running: (running != 0).then_some(running),
        })
        .collect();
    let blocked: Vec<BlockedInfo> = reports.into_iter().map(|b| blocked_info(b, &at)).collect();

    let c = &reg.counters;
    totals.live = live;
    (totals.spawned, totals.finished) = reg.spawn_counts();
    totals.panicked = c.panicked.load(Ordering::Relaxed);
    totals.killed = c.killed.load(Ordering::Relaxed);
    totals.switches = finished_switches + live_switches;
    totals.timers = if lists {
        timers.len()
    } else {
        reg.timer_count()
    };
    totals.descriptors = if lists {
        descriptors.len()
    } else {
        reg.fd_count() + green_fds
    };
    totals.blocked_now = blocked.iter().filter(|b| b.ongoing).count();
    totals.objects = objects.len();
    (totals.deadlocks_found, totals.deadlocked) = deadlock::counts();

    Snapshot {
        schema_version: SCHEMA_VERSION,
        pid: std::process::id(),
        process: process_name(),
        uptime_us: clock::uptime().as_micros() as u64,
        runtime: runtime_info(),
        totals,
        threads,
        finished,
        timers,
        descriptors,
        workers,
        blocked,
        objects,
        stacks_unavailable,
        deadlocks: deadlock::current(at.coarse, at.precise),
        timing: timing::on(),
        sites: if lists && timing::on() {
            site_times()
        } else {
            Vec::new()
        },
    }
}

/// Every spawn site's timing histograms, summarized, the sites with the most time first.
fn site_times() -> Vec<SiteTimes> {
    let mut sites: Vec<(u64, SiteTimes)> = timing::sites()
        .into_iter()
        .map(|(site, spent)| {
            let mut spent: Vec<TimeSummary> = spent
                .into_iter()
                .map(|(kind, h)| TimeSummary {
                    kind: kind.name(),
                    count: h.len(),
                    total_ns: (h.mean() * h.len() as f64) as u64,
                    p50_ns: h.value_at_quantile(0.5),
                    p90_ns: h.value_at_quantile(0.9),
                    p99_ns: h.value_at_quantile(0.99),
                    max_ns: h.max(),
                })
                .collect();
            spent.sort_by(|a, b| b.total_ns.cmp(&a.total_ns).then(a.kind.cmp(&b.kind)));
            let total = spent.iter().map(|s| s.total_ns).sum();
            (
                total,
                SiteTimes {
                    spawn_site: site.to_string(),
                    spent,
                },
            )
        })
        .collect();
    sites.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.spawn_site.cmp(&b.1.spawn_site)));
    sites.into_iter().map(|(_, s)| s).collect()
}

/// The moment of the snapshot, on both clocks: the coarse one for "since" times, the precise
/// one for deadlines.
struct Now {
    coarse: u64,
    precise: u64,
}

fn thread_info(
    r: &ThreadRecord,
    view: StateView,
    state: ThreadState,
    at: &Now,
    objects: &[ObjectInfo],
) -> ThreadInfo {
    ThreadInfo {
        id: r.id,
        name: r.name.as_deref().map(String::from),
        parent: r.parent(),
        spawn_site: r.site.to_string(),
        age_us: us(at.coarse.saturating_sub(r.created_ns)),
        state,
        waiting_on: view.waiting_on,
        // `objects` is sorted by id.
        waiting_on_name: match view.waiting_on {
            Some(WaitOn::Object { id, .. }) => objects
                .binary_search_by_key(&id, |o| o.id)
                .ok()
                .and_then(|i| objects[i].name.clone()),
            _ => None,
        },
        state_for_us: us(at.coarse.saturating_sub(view.since_ns)),
        deadline_in_us: view.deadline_ns.map(|d| signed_us(d, at.precise)),
        run_time_us: us(r.run_ns.load(Ordering::Relaxed)),
        switches: r.switches.load(Ordering::Relaxed),
        stack_size: r.stack_size(),
        kill_requested: r.kill_requested.load(Ordering::Relaxed),
        stack: None,
        times: r.times().filter(|_| timing::on()).map(|t| ThreadTimes {
            running_ns: t.running_ns.load(Ordering::Relaxed),
            waiting_ns: t.waiting_ns.load(Ordering::Relaxed),
            runnable_ns: t.runnable_ns.load(Ordering::Relaxed),
            runs: t.runs.load(Ordering::Relaxed),
            waits: t.waits.load(Ordering::Relaxed),
        }),
    }
}

fn finished_info(f: Finished, at: &Now) -> FinishedInfo {
    FinishedInfo {
        id: f.identity.id,
        name: f.identity.name.as_deref().map(String::from),
        parent: f.identity.parent,
        spawn_site: f.identity.site.to_string(),
        lived_us: us(f.ended_ns.saturating_sub(f.created_ns)),
        ended_ago_us: us(at.coarse.saturating_sub(f.ended_ns)),
        outcome: match f.ending {
            Ending::Returned => Outcome::Returned,
            Ending::Panicked(m) => Outcome::Panicked {
                message: m.to_string(),
            },
            Ending::Killed => Outcome::Killed,
            Ending::NotStarted(m) => Outcome::NotStarted {
                reason: m.to_string(),
            },
        },
        run_time_us: us(f.run_ns),
        switches: f.switches,
    }
}

fn timer_info(
    (id, kind, deadline_ns, owner, site): (
        u64,
        TimerKind,
        u64,
        Option<u64>,
        &'static Location<'static>,
    ),
    at: &Now,
) -> TimerInfo {
    TimerInfo {
        id,
        kind: match kind {
            TimerKind::Sleep => TimerKindInfo::Sleep,
            TimerKind::CallAfter => TimerKindInfo::CallAfter,
            TimerKind::SpawnAfter => TimerKindInfo::SpawnAfter,
            TimerKind::Deadline => TimerKindInfo::Deadline,
        },
        due_in_us: signed_us(deadline_ns, at.precise),
        owner,
        site: site.to_string(),
    }
}

fn blocked_info(b: Blocked, at: &Now) -> BlockedInfo {
    BlockedInfo {
        seq: b.seq,
        thread: b.thread,
        name: b.name.as_deref().map(String::from),
        spawn_site: b.site.map(|s| s.to_string()),
        worker: b.worker,
        tid: b.tid,
        started_ago_us: us(at.precise.saturating_sub(b.started_ns)),
        duration_us: b.duration.as_micros() as u64,
        ongoing: b.ongoing,
        cause: b.cause,
        on_cpu_us: b.on_cpu.map(|d| d.as_micros() as u64),
        stack: b.stack,
    }
}

/// The runtime's settings and limits (zeros before it has started).
fn runtime_info() -> RuntimeInfo {
    match runtime::get_if_started() {
        Some(rt) => {
            let settings = rt.config.settings();
            RuntimeInfo {
                started: true,
                workers: settings.workers,
                stack_size: settings.stack_size,
                max_blocking_time_us: monitor::max_blocking_time().map(|d| d.as_micros() as u64),
                max_green_threads: settings.max_green_threads,
                max_map_count: rt.budget.max_map_count,
                map_limit: rt.budget.map_limit,
                stacks_share_mappings: rt.budget.shared_mappings,
                flight_recorder: trace::on(),
                live_stacks: rt.budget.live(),
                inbox: inbox::stats(),
            }
        }
        None => RuntimeInfo {
            started: false,
            workers: 0,
            stack_size: 0,
            max_blocking_time_us: None,
            max_green_threads: None,
            max_map_count: None,
            map_limit: None,
            stacks_share_mappings: false,
            flight_recorder: false,
            live_stacks: 0,
            inbox: inbox::stats(),
        },
    }
}

/// [`snapshot`] formatted by [`Snapshot::format_run_info`].
pub(crate) fn format_run_info() -> String {
    snapshot().format_run_info()
}
