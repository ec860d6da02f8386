//! The stack budget: how many green threads fit under `vm.max_map_count`.
//!
//! On Linux 6.13 and later, stacks are slots of shared mappings with guard regions
//! (`generator::stacks_share_mappings`, in vendor/generator): a stack costs no mapping of its
//! own and the cap does not bound green threads; only `max_green_threads` does.
//!
//! On older kernels every stack is one memory mapping plus a guard page that splits it into two,
//! and Linux caps mappings per process (`vm.max_map_count`, 65,530 by default). When `mmap`
//! fails deep inside `may`, the spawner panics, and code that waits for the thread it meant to
//! spawn hangs with no error. greenhub refuses such a spawn up front instead, with an error that
//! names the limit and how to raise it.
//!
//! Accounting: `may` keeps up to `pool` stacks of the default size mapped and reuses them, so
//! default-size threads cost new mappings only beyond the pool; a thread with a custom stack
//! size always maps its own. The budget is what the cap leaves after the mappings the process
//! had when the runtime started (pool included) and a reserve for the rest of the program
//! (thread stacks, allocator arenas, mapped files).

use std::sync::atomic::{AtomicUsize, Ordering};

use thiserror::Error;

use crate::core::config;

/// Why a green thread could not be created.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SpawnError {
    /// The stacks of the live green threads would exceed the kernel's cap on memory mappings.
    #[error(
        "cannot spawn a green thread: {live} are alive and each stack costs 2 memory mappings; \
         vm.max_map_count={max_map_count} allows about {limit} green threads in this process. \
         Raise it as root with `sysctl -w vm.max_map_count={suggested}`, or keep fewer green \
         threads alive (a GreenPool bounds them)"
    )]
    MapLimit {
        /// Green threads alive when the spawn was refused.
        live: usize,
        /// Green threads the current cap allows.
        limit: usize,
        /// The kernel's cap (`/proc/sys/vm/max_map_count`).
        max_map_count: u64,
        /// A cap that would leave room for twice as many.
        suggested: u64,
    },
    /// The configured `max_green_threads` is reached.
    #[error(
        "cannot spawn a green thread: the limit of {limit} live green threads \
         (max_green_threads / GREENHUB_MAX_THREADS) is reached"
    )]
    ThreadLimit {
        /// The configured limit.
        limit: usize,
    },
    /// Mapping the stack failed for another reason.
    #[error(
        "cannot spawn a green thread: allocating its {stack_size}-byte stack failed ({reason}); \
         the process is out of memory mappings (vm.max_map_count) or address space (ulimit -v)"
    )]
    StackAllocation {
        /// The requested stack size.
        stack_size: usize,
        /// What the allocator said.
        reason: String,
    },
    /// The requested stack size is out of range.
    #[error(
        "stack size must be between {min} and {max} bytes, got {got}",
        min = config::MIN_STACK_SIZE,
        max = config::MAX_STACK_SIZE,
        got = .0
    )]
    InvalidStackSize(usize),
}

/// `may`'s stack pool capacity (its default, which greenhub keeps).
pub(crate) const POOL_CAPACITY: usize = 1000;

pub(crate) struct StackBudget {
    /// Stacks are slots of shared mappings: the map cap does not apply.
    pub shared_mappings: bool,
    pub max_map_count: Option<u64>,
    pub baseline_maps: u64,
    pub reserve: u64,
    /// Live threads the mappings allow (all with default stacks).
    pub map_limit: Option<usize>,
    /// The user's `max_green_threads`.
    pub thread_limit: Option<usize>,
    default_stack: usize,
    live_default: AtomicUsize,
    live_custom: AtomicUsize,
}

/// A stack the budget granted; gives it back when dropped.
pub(crate) struct StackPermit {
    budget: &'static StackBudget,
    custom: bool,
}

impl Drop for StackPermit {
    fn drop(&mut self) {
        let counter = if self.custom {
            &self.budget.live_custom
        } else {
            &self.budget.live_default
        };
        counter.fetch_sub(1, Ordering::AcqRel);
    }
}

fn read_max_map_count() -> Option<u64> {
    std::fs::read_to_string("/proc/sys/vm/max_map_count")
        .ok()?
        .trim()
        .parse()
        .ok()
}

fn count_maps() -> u64 {
    std::fs::read_to_string("/proc/self/maps")
        .map(|s| s.lines().count() as u64)
        .unwrap_or(0)
}

impl StackBudget {
    /// Measures the process as it is now (after `may`'s scheduler and stack pool exist).
    pub(crate) fn measure(default_stack: usize, thread_limit: Option<usize>) -> StackBudget {
        let shared_mappings = generator::stacks_share_mappings();
        let max_map_count = read_max_map_count();
        let baseline_maps = count_maps();
        let reserve = max_map_count.map_or(0, |m| (m / 16).max(2048));
        let map_limit = max_map_count.filter(|_| !shared_mappings).map(|m| {
            let free = m.saturating_sub(baseline_maps + reserve);
            POOL_CAPACITY + (free / 2) as usize
        });
        StackBudget {
            shared_mappings,
            max_map_count,
            baseline_maps,
            reserve,
            map_limit,
            thread_limit,
            default_stack,
            live_default: AtomicUsize::new(0),
            live_custom: AtomicUsize::new(0),
        }
    }

    /// The `vm.max_map_count` that would let `threads` green threads live at once.
    pub(crate) fn suggested_max_map_count(&self, threads: usize) -> u64 {
        let needed =
            self.baseline_maps + self.reserve + 2 * threads.saturating_sub(POOL_CAPACITY) as u64;
        needed.next_power_of_two().max(65_536)
    }

    /// A warning when the configured scale cannot fit, for the runtime to print at start-up.
    pub(crate) fn startup_warning(&self) -> Option<String> {
        let (Some(wanted), Some(allowed), Some(max)) =
            (self.thread_limit, self.map_limit, self.max_map_count)
        else {
            return None;
        };
        (wanted > allowed).then(|| {
            format!(
                "greenhub: max_green_threads={wanted} cannot fit: each green thread's stack costs 2 \
                 memory mappings and vm.max_map_count={max} allows about {allowed} green threads \
                 in this process. Raise it as root with `sysctl -w vm.max_map_count={}`; until \
                 then spawns beyond {allowed} fail with an error",
                self.suggested_max_map_count(wanted)
            )
        })
    }

    /// Live green threads holding a stack.
    pub(crate) fn live(&self) -> usize {
        self.live_default.load(Ordering::Relaxed) + self.live_custom.load(Ordering::Relaxed)
    }

    fn maps_needed(&self, default: usize, custom: usize) -> u64 {
        2 * (default.saturating_sub(POOL_CAPACITY) + custom) as u64
    }

    /// Takes a stack of `stack_size` bytes from the budget, or says which limit forbids it.
    pub(crate) fn acquire(&'static self, stack_size: usize) -> Result<StackPermit, SpawnError> {
        let custom = stack_size != self.default_stack;
        let counter = if custom {
            &self.live_custom
        } else {
            &self.live_default
        };
        counter.fetch_add(1, Ordering::AcqRel);
        let permit = StackPermit {
            budget: self,
            custom,
        };
        let default = self.live_default.load(Ordering::Acquire);
        let custom_live = self.live_custom.load(Ordering::Acquire);
        let live = default + custom_live;
        if let Some(limit) = self.thread_limit
            && live > limit
        {
            return Err(SpawnError::ThreadLimit { limit });
        }
        // `map_limit` is `None` when stacks share mappings.
        if let (Some(max), Some(limit)) = (self.max_map_count, self.map_limit) {
            let available = max.saturating_sub(self.baseline_maps + self.reserve);
            if self.maps_needed(default, custom_live) > available {
                return Err(SpawnError::MapLimit {
                    live: live - 1,
                    limit,
                    max_map_count: max,
                    suggested: self.suggested_max_map_count(live.max(limit) * 2),
                });
            }
        }
        Ok(permit)
    }
}
