//! `/metrics`: a snapshot in the Prometheus text exposition format (version 0.0.4), and the
//! standard `process_*` metrics.
//!
//! Rules that keep a Prometheus server healthy whatever the program does:
//! - Series are bounded by what the program names, not by what it makes: an object counts
//!   under its name, and every unnamed object of a kind is summed into the series with
//!   `name=""`, so making an Event per request adds no series. Objects sharing a name are
//!   summed too (their latency quantiles, which cannot be summed, are then left out).
//! - A running total is a counter named `..._total`; a level is a gauge; a latency is a
//!   summary in seconds with `_sum` and `_count`, whose quantiles cover every sample since
//!   the object was made.
//! - A counter never goes down: when an object leaves, the totals it had at the last scrape
//!   stay in its series ([`Ledger`]), so `rate()` sees no reset when connections or queues
//!   come and go. (What it counted after the last scrape before it left is not seen.)
//! - Every family has its own HELP and TYPE once, and names never collide: a family whose name
//!   another one (or its `_sum`/`_count`) already holds is left out.
//!
//! The format is written here rather than with a client library: the families come from a
//! snapshot on every scrape, not from instruments, and the text format is small (the test
//! checks it with `promtool`).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;

use greenhub_snapshot::{ObjectInfo, Snapshot};

use super::process;

/// The exposition of a snapshot and of the process; `ledger` keeps the totals of objects
/// that have left from one scrape to the next.
pub(crate) fn metrics(s: &Snapshot, ledger: &mut Ledger) -> String {
    let mut m = Exposition::default();
    threads(&mut m, s);
    ledger.observe(&s.objects);
    objects(&mut m, &s.objects, ledger);
    process::metrics(&mut m);
    m.text()
}

/// A series' key: an object kind's metric part and a name ("" for unnamed objects).
type Key = (String, String);

/// What only grows in an object: its running totals, and its latencies' counts and sums.
#[derive(Clone, Default)]
struct Growing {
    totals: BTreeMap<String, u64>,
    /// field -> (count, sum in µs)
    latencies: BTreeMap<String, (u64, u64)>,
}

impl Growing {
    fn of(o: &ObjectInfo) -> Growing {
        let mut g = Growing {
            totals: o.totals.clone(),
            latencies: BTreeMap::new(),
        };
        if let Some(serde_json::Value::Object(detail)) = &o.detail {
            for (field, value) in detail {
                let get = |k: &str| value.get(k).and_then(|v| v.as_u64());
                if let (Some(count), Some(sum)) = (get("count"), get("sum_us")) {
                    g.latencies.insert(field.clone(), (count, sum));
                }
            }
        }
        g
    }

    fn is_empty(&self) -> bool {
        self.totals.is_empty() && self.latencies.is_empty()
    }

    fn add(&mut self, other: &Growing) {
        for (k, v) in &other.totals {
            *self.totals.entry(k.clone()).or_default() += v;
        }
        for (k, (c, s)) in &other.latencies {
            let e = self.latencies.entry(k.clone()).or_default();
            e.0 += c;
            e.1 += s;
        }
    }
}

/// The running totals of objects between scrapes: what each live object had at the last
/// scrape, and what the objects that have left had, by series. Bounded by the live objects
/// that count something and by the names in use.
#[derive(Default)]
pub(crate) struct Ledger {
    seen: HashMap<u64, (Key, Growing)>,
    retired: HashMap<Key, Growing>,
}

impl Ledger {
    /// Records the objects of a scrape; those seen before and absent now are retired.
    fn observe(&mut self, objects: &[ObjectInfo]) {
        let mut now: HashMap<u64, (Key, Growing)> = HashMap::new();
        for o in objects {
            let g = Growing::of(o);
            if !g.is_empty() {
                now.insert(o.id, (key(o), g));
            }
        }
        for (id, (k, g)) in self.seen.drain() {
            if !now.contains_key(&id) {
                self.retired.entry(k).or_default().add(&g);
            }
        }
        self.seen = now;
    }
}

fn key(o: &ObjectInfo) -> Key {
    (
        metric_part(o.kind.name()),
        o.name.clone().unwrap_or_default(),
    )
}

fn threads(m: &mut Exposition, s: &Snapshot) {
    let t = &s.totals;
    let f = "greenhub_threads";
    if m.family(f, Kind::Gauge, "Live green threads, by state.") {
        for (state, n) in [
            ("running", t.running),
            ("waiting", t.waiting),
            ("scheduled", t.scheduled),
        ] {
            m.sample(f, "", &[("state", state)], n as f64);
        }
    }
    let counters = [
        (
            "greenhub_threads_spawned_total",
            "Green threads spawned since the runtime started.",
            t.spawned,
        ),
        (
            "greenhub_threads_finished_total",
            "Green threads ended since the runtime started (panicked and killed ones included).",
            t.finished,
        ),
        (
            "greenhub_threads_panicked_total",
            "Green threads that ended with a panic.",
            t.panicked,
        ),
        (
            "greenhub_threads_killed_total",
            "Green threads that were killed.",
            t.killed,
        ),
        (
            "greenhub_switches_total",
            "Waits and yields of all green threads.",
            t.switches,
        ),
        (
            "greenhub_blocked_reports_total",
            "Reports of a green thread keeping its worker from switching past max_blocking_time.",
            s.blocked.iter().map(|b| b.seq).max().unwrap_or(0),
        ),
        (
            "greenhub_deadlocks_total",
            "Deadlocks found among green threads (cycles of locks and joins, pool self-deadlocks).",
            t.deadlocks_found,
        ),
    ];
    for (name, help, v) in counters {
        m.single(name, Kind::Counter, help, v as f64);
    }
    let gauges = [
        ("greenhub_timers", "Pending timers.", t.timers),
        (
            "greenhub_descriptors",
            "Descriptors green threads wait on.",
            t.descriptors,
        ),
        (
            "greenhub_blocked_workers",
            "Workers kept from switching by one green thread past max_blocking_time now.",
            t.blocked_now,
        ),
        (
            "greenhub_deadlocked_threads",
            "Green threads in deadlocks now.",
            t.deadlocked,
        ),
        ("greenhub_workers", "Worker OS threads.", s.runtime.workers),
        (
            "greenhub_stacks",
            "Green thread stacks mapped now.",
            s.runtime.live_stacks,
        ),
    ];
    for (name, help, v) in gauges {
        m.single(name, Kind::Gauge, help, v as f64);
    }
    m.single(
        "greenhub_uptime_seconds",
        Kind::Gauge,
        "Time since the runtime started.",
        s.uptime_us as f64 / 1e6,
    );
}

/// Objects of one kind and name (every unnamed one under ""), summed.
#[derive(Default)]
struct Group<'a> {
    objects: usize,
    waiting: usize,
    counts: BTreeMap<&'a str, u64>,
    totals: BTreeMap<&'a str, u64>,
    /// The latency summaries of the group's only object (none when several share the name).
    latencies: Vec<(&'a str, Latency)>,
    /// Counts and sums of latencies, summed over the group.
    latency_sums: BTreeMap<&'a str, (u64, u64)>,
}

/// Which of a group's maps of values a family reads.
type Values = for<'g> fn(&'g Group<'g>) -> &'g BTreeMap<&'g str, u64>;

#[derive(Clone, Copy)]
struct Latency {
    p50_us: u64,
    p90_us: u64,
    p99_us: u64,
}

fn objects(m: &mut Exposition, objects: &[ObjectInfo], ledger: &Ledger) {
    // kind's metric part -> (kind's name, name -> group)
    let mut kinds: BTreeMap<String, (&str, BTreeMap<&str, Group>)> = BTreeMap::new();
    for o in objects {
        let kind = o.kind.name();
        let (_, groups) = kinds
            .entry(metric_part(kind))
            .or_insert_with(|| (kind, BTreeMap::new()));
        let g = groups.entry(o.name.as_deref().unwrap_or("")).or_default();
        g.objects += 1;
        g.waiting += o.waiters;
        for (k, v) in &o.counts {
            *g.counts.entry(k).or_default() += v;
        }
        for (k, v) in &o.totals {
            *g.totals.entry(k).or_default() += v;
        }
        let mut latencies = Vec::new();
        if let Some(serde_json::Value::Object(detail)) = &o.detail {
            for (field, value) in detail {
                let get = |k: &str| value.get(k).and_then(|v| v.as_u64());
                let (Some(count), Some(sum_us)) = (get("count"), get("sum_us")) else {
                    continue;
                };
                let e = g.latency_sums.entry(field).or_default();
                e.0 += count;
                e.1 += sum_us;
                if let (Some(p50_us), Some(p90_us), Some(p99_us)) =
                    (get("p50_us"), get("p90_us"), get("p99_us"))
                {
                    latencies.push((
                        field.as_str(),
                        Latency {
                            p50_us,
                            p90_us,
                            p99_us,
                        },
                    ));
                }
            }
        }
        g.latencies = if g.objects == 1 {
            latencies
        } else {
            Vec::new()
        };
    }

    // Objects that have left keep their totals in their series.
    for ((part, name), gone) in &ledger.retired {
        // A kind with no live object left is named by its metric part.
        let (_, groups) = kinds
            .entry(part.clone())
            .or_insert_with(|| (part.as_str(), BTreeMap::new()));
        let g = groups.entry(name.as_str()).or_default();
        for (k, v) in &gone.totals {
            *g.totals.entry(k.as_str()).or_default() += v;
        }
        for (k, (c, sum)) in &gone.latencies {
            let e = g.latency_sums.entry(k.as_str()).or_default();
            e.0 += c;
            e.1 += sum;
        }
    }
    let f = "greenhub_objects";
    if m.family(f, Kind::Gauge, "Live registered objects, by kind.") {
        for (kind, groups) in kinds.values() {
            let n: usize = groups.values().map(|g| g.objects).sum();
            m.sample(f, "", &[("kind", kind)], n as f64);
        }
    }
    for (part, (kind, groups)) in &kinds {
        let kind = help_text(kind);
        let waiting = format!("greenhub_{part}_waiting");
        if m.family(
            &waiting,
            Kind::Gauge,
            &format!("Green threads waiting on {kind} objects, by name (unnamed ones under \"\")."),
        ) {
            for (name, g) in groups {
                m.sample(&waiting, "", &[("name", name)], g.waiting as f64);
            }
        }
        // Levels as gauges, running totals as counters: one family per name, a series per
        // group that has it.
        let per_group: [(&str, Kind, &str, Values); 2] = [
            ("", Kind::Gauge, "count", |g| &g.counts),
            ("_total", Kind::Counter, "running total", |g| &g.totals),
        ];
        for (suffix, family_kind, what, values) in per_group {
            let names: BTreeSet<&str> = groups
                .values()
                .flat_map(|g| values(g).keys().copied())
                .collect();
            for n in names {
                let family = format!("greenhub_{part}_{}{suffix}", metric_part(n));
                let help = format!("The `{}` {what} of {kind} objects, by name.", help_text(n));
                if m.family(&family, family_kind, &help) {
                    for (name, g) in groups {
                        if let Some(v) = values(g).get(n) {
                            m.sample(&family, "", &[("name", name)], *v as f64);
                        }
                    }
                }
            }
        }
        let latency_names: BTreeSet<&str> = groups
            .values()
            .flat_map(|g| g.latency_sums.keys().copied())
            .collect();
        for l in latency_names {
            let family = format!("greenhub_{part}_{}_seconds", metric_part(l));
            let help = format!(
                "The `{}` durations of {kind} objects, by name; quantiles over every sample since \
                 the object was made (none when several objects share the name).",
                help_text(l)
            );
            if !m.family(&family, Kind::Summary, &help) {
                continue;
            }
            for (name, g) in groups {
                let Some((count, sum_us)) = g.latency_sums.get(l) else {
                    continue;
                };
                if let Some((_, q)) = g.latencies.iter().find(|(f, _)| *f == l) {
                    for (quantile, us) in [("0.5", q.p50_us), ("0.9", q.p90_us), ("0.99", q.p99_us)]
                    {
                        m.sample(
                            &family,
                            "",
                            &[("name", name), ("quantile", quantile)],
                            us as f64 / 1e6,
                        );
                    }
                }
                m.sample(&family, "_sum", &[("name", name)], *sum_us as f64 / 1e6);
                m.sample(&family, "_count", &[("name", name)], *count as f64);
            }
        }
    }
}

/// A metric family's type.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum Kind {
    Gauge,
    Counter,
    Summary,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Gauge => "gauge",
            Kind::Counter => "counter",
            Kind::Summary => "summary",
        }
    }

    /// The sample names a family of this kind writes besides its own name.
    fn suffixes(self) -> &'static [&'static str] {
        match self {
            Kind::Summary => &["_sum", "_count"],
            Kind::Gauge | Kind::Counter => &[],
        }
    }
}

struct Family {
    kind: Kind,
    help: String,
    lines: String,
}

/// Families, each declared once, written in name order.
#[derive(Default)]
pub(super) struct Exposition {
    families: BTreeMap<String, Family>,
    /// Every sample name in use, and the family that uses it.
    taken: HashMap<String, String>,
}

impl Exposition {
    /// Declares a family. False (and the family is left out) when its name or one of its
    /// sample names is already in use.
    pub(super) fn family(&mut self, name: &str, kind: Kind, help: &str) -> bool {
        let names: Vec<String> = std::iter::once(name.to_owned())
            .chain(kind.suffixes().iter().map(|s| format!("{name}{s}")))
            .collect();
        if names.iter().any(|n| self.taken.contains_key(n)) {
            return false;
        }
        for n in names {
            self.taken.insert(n, name.to_owned());
        }
        self.families.insert(
            name.to_owned(),
            Family {
                kind,
                help: help.to_owned(),
                lines: String::new(),
            },
        );
        true
    }

    /// Adds a sample to a declared family: `suffix` is "" or one of its kind's suffixes.
    pub(super) fn sample(&mut self, family: &str, suffix: &str, labels: &[(&str, &str)], v: f64) {
        let Some(f) = self.families.get_mut(family) else {
            return;
        };
        let out = &mut f.lines;
        out.push_str(family);
        out.push_str(suffix);
        if !labels.is_empty() {
            out.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                let _ = write!(out, "{k}=\"{}\"", label_value(v));
            }
            out.push('}');
        }
        let _ = writeln!(out, " {}", number(v));
    }

    /// A family with one sample and no labels.
    pub(super) fn single(&mut self, name: &str, kind: Kind, help: &str, v: f64) {
        if self.family(name, kind, help) {
            self.sample(name, "", &[], v);
        }
    }

    fn text(&self) -> String {
        let mut out = String::new();
        for (name, f) in &self.families {
            if f.lines.is_empty() {
                continue;
            }
            let _ = writeln!(out, "# HELP {name} {}", f.help);
            let _ = writeln!(out, "# TYPE {name} {}", f.kind.name());
            out.push_str(&f.lines);
        }
        out
    }
}

/// A number as the format writes it.
fn number(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 { "+Inf" } else { "-Inf" }.into()
    } else {
        format!("{v}")
    }
}

/// A label value with `\`, `"` and newlines escaped, as the format requires.
fn label_value(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Text for a HELP line: `\` and newlines escaped, other control characters shown as `?`.
fn help_text(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('\n', "\\n")
        .chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

/// Lower-case letters, digits and underscores, as metric names need.
fn metric_part(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_family_whose_names_are_taken_is_left_out() {
        let mut m = Exposition::default();
        assert!(m.family("x_seconds", Kind::Summary, "a summary"));
        assert!(!m.family(
            "x_seconds_count",
            Kind::Gauge,
            "clashes with the summary's count"
        ));
        assert!(!m.family("x_seconds", Kind::Gauge, "declared twice"));
        m.sample("x_seconds", "_count", &[("name", "a\"b\\c\nd")], 3.0);
        assert_eq!(
            m.text(),
            "# HELP x_seconds a summary\n# TYPE x_seconds summary\n\
             x_seconds_count{name=\"a\\\"b\\\\c\\nd\"} 3\n"
        );
    }
}
