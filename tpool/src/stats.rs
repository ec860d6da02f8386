//! What a pool counts and measures, and the shape it takes in the runtime's snapshot.
//!
//! A pool is an object in [`greenhub::inspect::snapshot`] of kind `tpool call`; its
//! [`ObjectInfo::detail`](greenhub::inspect::ObjectInfo::detail) is a [`PoolStats`] as JSON, so
//! a monitor or the inspector reads it back with `serde_json::from_value`.

use std::collections::HashMap;
use std::panic::Location;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// A pool's state and counters.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PoolStats {
    /// The pool's name.
    pub name: String,
    /// Threads the pool may run (its size).
    pub size: usize,
    /// Threads started and not retired.
    pub threads: usize,
    /// Threads running a call now.
    pub busy: usize,
    /// Calls waiting in the queue for a thread.
    pub queued: usize,
    /// The queue's bound: callers wait for room beyond it.
    pub queue_capacity: usize,
    /// Green threads waiting for room in the queue.
    pub waiting_for_room: usize,
    /// Calls queued for the pool's threads.
    pub submitted: u64,
    /// Calls that ran to the end (panicked ones included).
    pub completed: u64,
    /// Calls whose function panicked.
    pub panicked: u64,
    /// Waits for a result that gave up (deadline or timeout; the call itself went on).
    pub timed_out: u64,
    /// Queued calls refused by a shutdown.
    pub cancelled: u64,
    /// Calls run inline (from a plain OS thread or a pool thread).
    pub inline: u64,
    /// Time from queueing to a thread starting the call.
    pub queue_wait: Summary,
    /// Time the function ran.
    pub run_time: Summary,
    /// The same, per call site (`file:line:column` of the `execute` call).
    pub sites: Vec<SiteStats>,
    /// The calls running now.
    pub running: Vec<RunningCall>,
    /// Whether the pool was shut down.
    pub shut_down: bool,
}

/// Percentiles of a duration histogram, in microseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// Samples recorded.
    pub count: u64,
    /// Their sum (each sample as recorded, clamped to 1 µs .. 1 hour).
    #[serde(default)]
    pub sum_us: u64,
    /// Median.
    pub p50_us: u64,
    /// 90th percentile.
    pub p90_us: u64,
    /// 99th percentile.
    pub p99_us: u64,
    /// Largest sample.
    pub max_us: u64,
}

/// Counters and durations of the calls made from one call site.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SiteStats {
    /// `file:line:column` of the call.
    pub site: String,
    /// Calls that ran to the end from there.
    pub completed: u64,
    /// Of which panicked.
    pub panicked: u64,
    /// Time queued.
    pub queue_wait: Summary,
    /// Time running.
    pub run_time: Summary,
}

/// A call running on a pool thread now.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunningCall {
    /// Where it was called from.
    pub site: String,
    /// The green thread that made the call (it may have stopped waiting since).
    pub caller: Option<u64>,
    /// How long it has run, in microseconds.
    pub running_for_us: u64,
    /// The OS thread running it.
    pub thread: String,
}

/// A histogram of durations in microseconds, from 1 µs to an hour, two significant digits
/// (hdrhistogram): what the pools of greenhub's crates record waits and run times in.
///
/// ```
/// use std::time::Duration;
///
/// let mut d = greenhub_tpool::Durations::new();
/// d.record(Duration::from_micros(250));
/// assert_eq!(d.summary().count, 1);
/// assert_eq!(d.summary().sum_us, 250);
/// ```
pub struct Durations {
    histogram: Histogram<u64>,
    /// The exact sum: a histogram keeps only buckets.
    sum_us: u64,
}

impl Default for Durations {
    fn default() -> Durations {
        Durations::new()
    }
}

impl Durations {
    /// An empty histogram.
    pub fn new() -> Durations {
        // Bounds are valid constants: construction cannot fail.
        Durations {
            histogram: Histogram::new_with_bounds(1, 3_600_000_000, 2).expect("valid bounds"),
            sum_us: 0,
        }
    }

    /// Records one duration (clamped to 1 µs .. 1 hour).
    pub fn record(&mut self, d: Duration) {
        let us = (d.as_micros() as u64).clamp(1, 3_600_000_000);
        // Clamped into the bounds: recording cannot fail.
        let _ = self.histogram.record(us);
        self.sum_us = self.sum_us.saturating_add(us);
    }

    /// Adds another histogram's samples.
    pub fn add(&mut self, other: &Durations) {
        // Same bounds on both sides: adding cannot fail.
        let _ = self.histogram.add(&other.histogram);
        self.sum_us = self.sum_us.saturating_add(other.sum_us);
    }

    /// Count, percentiles and maximum.
    pub fn summary(&self) -> Summary {
        let h = &self.histogram;
        Summary {
            count: h.len(),
            sum_us: self.sum_us,
            p50_us: h.value_at_quantile(0.5),
            p90_us: h.value_at_quantile(0.9),
            p99_us: h.value_at_quantile(0.99),
            max_us: h.max(),
        }
    }
}

pub(crate) struct Site {
    pub completed: u64,
    pub panicked: u64,
    pub queue_wait: Durations,
    pub run_time: Durations,
}

impl Site {
    fn new() -> Site {
        Site {
            completed: 0,
            panicked: 0,
            queue_wait: Durations::new(),
            run_time: Durations::new(),
        }
    }
}

/// The counters and histograms behind the pool's lock.
pub(crate) struct Book {
    pub completed: u64,
    pub panicked: u64,
    pub queue_wait: Durations,
    pub run_time: Durations,
    pub sites: HashMap<&'static Location<'static>, Site>,
}

/// Past this many distinct call sites, further ones are counted under one entry, so that
/// generated code cannot grow the table without bound.
const MAX_SITES: usize = 1000;

impl Book {
    pub(crate) fn new() -> Book {
        Book {
            completed: 0,
            panicked: 0,
            queue_wait: Durations::new(),
            run_time: Durations::new(),
            sites: HashMap::new(),
        }
    }

    pub(crate) fn record(
        &mut self,
        site: &'static Location<'static>,
        queued: Duration,
        ran: Duration,
        panicked: bool,
    ) {
        self.completed += 1;
        self.panicked += u64::from(panicked);
        self.queue_wait.record(queued);
        self.run_time.record(ran);
        let site = if self.sites.len() >= MAX_SITES && !self.sites.contains_key(site) {
            Location::caller()
        } else {
            site
        };
        let entry = self.sites.entry(site).or_insert_with(Site::new);
        entry.completed += 1;
        entry.panicked += u64::from(panicked);
        entry.queue_wait.record(queued);
        entry.run_time.record(ran);
    }

    /// Adds another book's figures (a thread's, when a snapshot merges them).
    pub(crate) fn add(&mut self, other: &Book) {
        self.completed += other.completed;
        self.panicked += other.panicked;
        self.queue_wait.add(&other.queue_wait);
        self.run_time.add(&other.run_time);
        for (site, theirs) in &other.sites {
            let mine = self.sites.entry(site).or_insert_with(Site::new);
            mine.completed += theirs.completed;
            mine.panicked += theirs.panicked;
            mine.queue_wait.add(&theirs.queue_wait);
            mine.run_time.add(&theirs.run_time);
        }
    }

    pub(crate) fn sites(&self) -> Vec<SiteStats> {
        let mut sites: Vec<SiteStats> = self
            .sites
            .iter()
            .map(|(site, s)| SiteStats {
                site: site.to_string(),
                completed: s.completed,
                panicked: s.panicked,
                queue_wait: s.queue_wait.summary(),
                run_time: s.run_time.summary(),
            })
            .collect();
        sites.sort_by(|a, b| b.completed.cmp(&a.completed).then(a.site.cmp(&b.site)));
        sites
    }
}
