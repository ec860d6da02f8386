//! The profile of the green threads (`inspect::profile`, the attach channel's `profile`
//! request): where CPU time goes, from samples of the workers (`core/sampler.rs`) each
//! attributed to the green thread it interrupted, and where the green threads wait, from the
//! parked stacks read at the end (`core/stack.rs`) weighted by how long each has waited.

use std::collections::HashMap;
use std::panic::Location;
use std::sync::Arc;
use std::time::{Duration, Instant};

use greenhub_snapshot::{Profile, ProfileEntry, WaitOn};

use crate::core::clock;
use crate::core::registry::registry;
use crate::core::sampler::{ProfileError, Sampling};
use crate::core::stack;
use crate::core::symbols;
use crate::core::wait::Waiter;

/// How often the samples are collected from the workers' buffers.
const DRAIN: Duration = Duration::from_millis(20);

/// Who a sampled thread is: its name and spawn site, looked up when it is first sampled.
type Who = (Option<Arc<str>>, Option<&'static Location<'static>>);

/// Samples the workers for `duration` at `hz` samples per second of CPU time each, then reads
/// the parked stacks. Blocks the calling thread for `duration` (a green thread waits greenly).
pub(crate) fn profile(duration: Duration, hz: u32) -> Result<Profile, ProfileError> {
    let mut sampling = Sampling::start(hz)?;
    let started = Instant::now();
    let mut counts: HashMap<(u64, Vec<usize>), u64> = HashMap::new();
    let mut who: HashMap<u64, Who> = HashMap::new();
    let (mut samples, mut unattributed, mut dropped) = (0u64, 0u64, 0u64);
    let mut collect = |sampling: &Sampling| {
        dropped += sampling.drain(|(thread, ips)| {
            samples += 1;
            if thread == 0 || ips.is_empty() {
                unattributed += 1;
                return;
            }
            *counts.entry((thread, ips.to_vec())).or_default() += 1;
            who.entry(thread).or_insert_with(|| {
                registry()
                    .thread(thread)
                    .map_or((None, None), |r| (r.name.clone(), Some(r.site)))
            });
        });
    };
    loop {
        let left = duration.saturating_sub(started.elapsed());
        if left.is_zero() {
            break;
        }
        // A sleep that a green caller waits greenly and an OS thread with `park_timeout`.
        let _ = Waiter::new(WaitOn::Sleep, Some(left.min(DRAIN))).wait();
        collect(&sampling);
        sampling.cover_new_workers()?;
    }
    collect(&sampling);
    let workers = sampling.workers();
    drop(sampling);
    let elapsed = started.elapsed();

    let mut on_cpu: Vec<ProfileEntry> = counts
        .into_iter()
        .map(|((thread, ips), n)| {
            let (name, site) = who.get(&thread).cloned().unwrap_or((None, None));
            ProfileEntry {
                thread,
                name: name.as_deref().map(String::from),
                spawn_site: site.map_or_else(|| "?".to_owned(), |s| s.to_string()),
                frames: symbols::resolve_inner(&ips),
                weight: n,
            }
        })
        .collect();
    on_cpu.sort_by(|a, b| b.weight.cmp(&a.weight).then(a.thread.cmp(&b.thread)));

    let live = registry().live_threads().0;
    let now = clock::coarse_ns();
    let mut off_cpu: Vec<ProfileEntry> = match stack::read_parked(&live) {
        Ok(parked) => live
            .iter()
            .zip(parked)
            .filter_map(|(r, parked)| {
                let (view, ips) = parked?;
                Some(ProfileEntry {
                    thread: r.id,
                    name: r.name.as_deref().map(String::from),
                    spawn_site: r.site.to_string(),
                    frames: symbols::fold(&ips).frames,
                    weight: now.saturating_sub(view.since_ns) / 1000,
                })
            })
            .collect(),
        // Sampling ran, so stacks can be read; nothing to add if they could not.
        Err(_) => Vec::new(),
    };
    off_cpu.sort_by(|a, b| b.weight.cmp(&a.weight).then(a.thread.cmp(&b.thread)));

    Ok(Profile {
        duration_us: elapsed.as_micros() as u64,
        hz: hz.clamp(1, 1000),
        workers,
        samples,
        unattributed,
        dropped,
        on_cpu,
        off_cpu,
    })
}
