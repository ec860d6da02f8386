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
//!
//! Released stacks: where stacks share mappings, a released stack keeps its pages so that the
//! next thread reuses it warm; past a limit of such stacks the oldest are discarded, and a
//! discard interrupts every CPU the process runs on to flush its TLB. With the monitor running,
//! the limit is [`RELEASED_STACK_LIMIT`] and the monitor gives pages back by age instead: every
//! [`STACK_DECAY_TICKS`] ticks those of the stacks that nobody reused for a whole period, and,
//! as it parks, all but the vendored crate's default limit (64 MiB of stacks). A burst of short
//! threads then pays no discard while it runs. What is kept is bounded by the stacks the
//! busiest moment had in use (a new thread takes a released stack before a fresh one), and is
//! given back within two seconds of nobody reusing it.

use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};

use thiserror::Error;

use crate::core::config;

/// Bytes of released stacks (counted whole; they hold only the pages their threads touched,
/// a page or two for most) that keep their pages while the monitor gives them back by age: a
/// safety net, since what is kept never exceeds the stacks of the busiest moment. 20,000
/// threads of 64 KiB stacks released at once are 1.25 GiB of slots, about 160 MiB resident.
pub(crate) const RELEASED_STACK_LIMIT: usize = 16 << 30;

/// How many monitor ticks a released stack may stay unused before the monitor gives its pages
/// back (1 s at the monitor's tick).
pub(crate) const STACK_DECAY_TICKS: u32 = 100;

/// Raises the limit of released stacks that keep their pages: the monitor gives them back by
/// age from now on ([`decay_released_stacks`], [`shrink_released_stacks`]).
pub(crate) fn keep_released_stacks() {
    generator::set_dirty_stack_limit(RELEASED_STACK_LIMIT);
}

/// Gives back the pages of the released stacks that nobody reused since the last call.
pub(crate) fn decay_released_stacks() {
    generator::decay_dirty_stacks();
}

/// Gives back the pages of released stacks beyond the vendored crate's default limit: what
/// the monitor does as it parks, since nothing gives pages back by age while it sleeps.
pub(crate) fn shrink_released_stacks() {
    generator::shrink_dirty_stacks(generator::DIRTY_STACK_BYTES);
}

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
    live_default: Striped,
    live_custom: Striped,
}

/// Stripes of a count, each on a cache line of its own.
const STRIPES: usize = 8;

#[derive(Default)]
#[repr(align(128))]
struct Stripe(AtomicUsize);

/// A count of live stacks kept in stripes. Without a limit to check, a spawn adds to its OS
/// thread's stripe and an end takes from its own, so that a spawner and the workers ending its
/// threads do not write one cache line; a stripe alone may wrap below zero, and the wrapping
/// sum of all is the count (a reader racing the writers may see an end before its spawn: the
/// sum is clamped at 0). With a limit, every spawn must see every other, and all use stripe 0.
#[derive(Default)]
struct Striped([Stripe; STRIPES]);

impl Striped {
    fn add(&self, stripe: usize) {
        self.0[stripe].0.fetch_add(1, Ordering::AcqRel);
    }

    fn sub(&self, stripe: usize) {
        self.0[stripe].0.fetch_sub(1, Ordering::AcqRel);
    }

    fn sum(&self) -> usize {
        let sum = self.0.iter().fold(0usize, |sum, s| {
            sum.wrapping_add(s.0.load(Ordering::Acquire))
        });
        (sum as isize).max(0) as usize
    }
}

/// The calling OS thread's stripe, given out round-robin on first use. Not inlined, as every
/// thread-local access of greenhub (ARCHITECTURE.md): a green thread moves between OS threads
/// at its waits.
#[inline(never)]
fn stripe() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static STRIPE: Cell<usize> = const { Cell::new(usize::MAX) };
    }
    STRIPE
        .try_with(|s| {
            if s.get() == usize::MAX {
                s.set(NEXT.fetch_add(1, Ordering::Relaxed) % STRIPES);
            }
            s.get()
        })
        // A thread that is exiting has lost its thread-locals: any stripe does.
        .unwrap_or(0)
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
        counter.sub(self.budget.stripe());
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
            live_default: Striped::default(),
            live_custom: Striped::default(),
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

    /// Whether a spawn must check a limit (and so count in one stripe).
    fn limited(&self) -> bool {
        self.thread_limit.is_some() || self.map_limit.is_some()
    }

    /// The stripe the calling thread counts in.
    fn stripe(&self) -> usize {
        if self.limited() { 0 } else { stripe() }
    }

    /// Live green threads holding a stack.
    pub(crate) fn live(&self) -> usize {
        self.live_default.sum() + self.live_custom.sum()
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
        counter.add(self.stripe());
        let permit = StackPermit {
            budget: self,
            custom,
        };
        if !self.limited() {
            return Ok(permit);
        }
        let default = self.live_default.sum();
        let custom_live = self.live_custom.sum();
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
