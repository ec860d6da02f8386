//! A profile of a live process's green threads: where they spend CPU time (samples of the
//! workers, each attributed to the green thread it interrupted) and where they wait (the stacks
//! of the parked threads, weighted by how long they have waited), with the ways people read
//! one: folded stacks for flame graphs ([`Profile::folded`]) and the top functions
//! ([`Profile::top`]).

use std::collections::HashMap;
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::schema::StackFrame;
use crate::text::escape_controls;

/// A profile: `on_cpu` from samples, `off_cpu` from parked stacks.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Profile {
    /// How long the workers were sampled.
    pub duration_us: u64,
    /// Samples per second of each worker's CPU time.
    pub hz: u32,
    /// The workers sampled.
    pub workers: usize,
    /// Samples taken.
    pub samples: u64,
    /// Of those, samples of a worker running no green thread of greenhub's (its scheduler, or
    /// code outside a green thread's stack): counted, without a stack.
    pub unattributed: u64,
    /// Samples lost because a worker's buffer was full.
    pub dropped: u64,
    /// Where CPU time went: one entry per green thread and stack, the most samples first.
    /// `weight` is a count of samples.
    pub on_cpu: Vec<ProfileEntry>,
    /// Where the parked green threads wait, read at the end: one entry per thread, the longest
    /// wait first. `weight` is the time waited so far, in microseconds.
    pub off_cpu: Vec<ProfileEntry>,
}

/// One stack of a profile, and the green thread it belongs to.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ProfileEntry {
    /// The green thread.
    pub thread: u64,
    /// Its name, if it had one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Where it was spawned (`"?"` when it ended before the profile could look).
    pub spawn_site: String,
    /// The stack, innermost frame first (the spawn machinery folded away).
    pub frames: Vec<StackFrame>,
    /// Samples (on CPU) or microseconds waited (off CPU).
    pub weight: u64,
}

/// Which half of a profile.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Half {
    /// Where CPU time went.
    OnCpu,
    /// Where green threads wait.
    OffCpu,
}

/// A function's share of a profile: its own weight (innermost frame) and the weight of the
/// stacks it is in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopFunction {
    /// The function.
    pub function: String,
    /// Weight of the stacks where it is the innermost frame.
    pub own: u64,
    /// Weight of the stacks it is anywhere in (counted once per stack).
    pub total: u64,
}

impl Profile {
    fn half(&self, half: Half) -> &[ProfileEntry] {
        match half {
            Half::OnCpu => &self.on_cpu,
            Half::OffCpu => &self.off_cpu,
        }
    }

    /// Folded stacks, one line per stack: `root;outermost;...;innermost weight`, the format of
    /// `flamegraph.pl`, inferno and speedscope. The root is the spawn site, so that the threads
    /// one line of code spawned share a tower. Names are escaped, and `;` inside a name is
    /// written `:`.
    pub fn folded(&self, half: Half) -> String {
        let mut lines: HashMap<String, u64> = HashMap::new();
        for entry in self.half(half) {
            let mut line = fold_name(&format!("spawned at {}", entry.spawn_site));
            for frame in entry.frames.iter().rev() {
                line.push(';');
                line.push_str(&fold_name(&frame.function));
            }
            let weight = lines.entry(line).or_default();
            *weight = weight.saturating_add(entry.weight);
        }
        let mut lines: Vec<(String, u64)> = lines.into_iter().collect();
        lines.sort();
        let mut out = String::new();
        for (line, weight) in lines {
            let _ = writeln!(out, "{line} {weight}");
        }
        out
    }

    /// The `n` functions with the most weight of their own, with their totals.
    pub fn top(&self, half: Half, n: usize) -> Vec<TopFunction> {
        let mut by: HashMap<&str, (u64, u64)> = HashMap::new();
        let mut seen: std::collections::HashSet<&str> = std::collections::HashSet::new();
        for entry in self.half(half) {
            if let Some(first) = entry.frames.first() {
                let own = &mut by.entry(&first.function).or_default().0;
                *own = own.saturating_add(entry.weight);
            }
            seen.clear();
            for frame in &entry.frames {
                if seen.insert(&frame.function) {
                    let total = &mut by.entry(&frame.function).or_default().1;
                    *total = total.saturating_add(entry.weight);
                }
            }
        }
        let mut top: Vec<TopFunction> = by
            .into_iter()
            .map(|(function, (own, total))| TopFunction {
                function: function.to_owned(),
                own,
                total,
            })
            .collect();
        top.sort_by(|a, b| {
            (b.own, b.total)
                .cmp(&(a.own, a.total))
                .then_with(|| a.function.cmp(&b.function))
        });
        top.truncate(n);
        top
    }

    /// A text report: the totals, then the top functions on CPU and off CPU.
    pub fn summary(&self, n: usize) -> String {
        let mut out = format!(
            "profile: {} workers sampled {} times a second of CPU for {:.1}s: {} samples ({} \
             outside green threads, {} dropped)\n",
            self.workers,
            self.hz,
            self.duration_us as f64 / 1e6,
            self.samples,
            self.unattributed,
            self.dropped
        );
        for (half, title, unit) in [
            (Half::OnCpu, "on CPU", "samples"),
            (Half::OffCpu, "off CPU (parked now)", "ms waited"),
        ] {
            let _ = writeln!(out, "\n{title}: own / total {unit}");
            for f in self.top(half, n) {
                let (own, total) = match half {
                    Half::OnCpu => (f.own, f.total),
                    Half::OffCpu => (f.own / 1000, f.total / 1000),
                };
                let _ = writeln!(
                    out,
                    "  {own:>10} {total:>10}  {}",
                    escape_controls(&f.function)
                );
            }
        }
        out
    }
}

/// A name made safe for a folded line: control characters escaped (newlines included), and
/// `;`, the separator, written `:`. Spaces stay: readers take the last word as the weight.
fn fold_name(name: &str) -> String {
    escape_controls(name).replace(';', ":")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(f: &str) -> StackFrame {
        StackFrame {
            function: f.to_owned(),
            file: None,
            line: None,
            address: 1,
        }
    }

    fn entry(site: &str, frames: &[&str], weight: u64) -> ProfileEntry {
        ProfileEntry {
            thread: 1,
            name: None,
            spawn_site: site.to_owned(),
            frames: frames.iter().map(|f| frame(f)).collect(),
            weight,
        }
    }

    #[test]
    fn folded_lines_run_from_the_spawn_site_to_the_innermost_frame_and_merge() {
        let p = Profile {
            on_cpu: vec![
                entry("a.rs:1", &["hash", "work", "main"], 5),
                entry("a.rs:1", &["hash", "work", "main"], 2),
                entry("b.rs:9", &["evil;name\u{1b}[2J", "main"], 1),
            ],
            ..Profile::default()
        };
        assert_eq!(
            p.folded(Half::OnCpu),
            "spawned at a.rs:1;main;work;hash 7\n\
             spawned at b.rs:9;main;evil:name\\u{1b}[2J 1\n"
        );
        assert_eq!(p.folded(Half::OffCpu), "");
    }

    #[test]
    fn top_functions_count_own_weight_and_total_weight_once_per_stack() {
        let p = Profile {
            on_cpu: vec![
                entry("s", &["hash", "work", "main"], 5),
                entry("s", &["work", "main"], 3),
                entry("s", &["recurse", "recurse", "main"], 2),
            ],
            ..Profile::default()
        };
        let top = p.top(Half::OnCpu, 10);
        let get = |f: &str| top.iter().find(|t| t.function == f).unwrap().clone();
        assert_eq!(top[0].function, "hash");
        assert_eq!((get("hash").own, get("hash").total), (5, 5));
        assert_eq!((get("work").own, get("work").total), (3, 8));
        assert_eq!((get("main").own, get("main").total), (0, 10));
        assert_eq!((get("recurse").own, get("recurse").total), (2, 2));
        assert_eq!(p.top(Half::OnCpu, 1).len(), 1);
    }
}
