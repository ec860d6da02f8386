//! Stacks of parked green threads, read from another thread without resuming them and
//! without racing their wake-ups.
//!
//! Where a stack is. Each wait records the frame it is made in ([`here`]: its frame pointer and
//! stack pointer) in the thread's record before it parks, and each thread records, as it
//! starts, the stack pointer of its outermost greenhub frame (`stack_base`, [`set_base`]). A
//! parked thread's callers are suspended in their calls, so the frame-pointer chain from the
//! wait's frame up to that base does not change until the wait returns: a reader follows it and
//! collects the return addresses. Every read is checked to lie between the wait's stack pointer
//! and the base, inside the thread's own stack, so a build without frame pointers (or any
//! broken chain) gives wrong frames at worst, never a fault; such a build is detected
//! ([`unsupported`]) and stacks are then reported as unavailable.
//!
//! Why the wait cannot return meanwhile: the read gate. A reader marks the records of the
//! threads it will read `PENDING`, raises the stack-reader flag and issues a `membarrier`
//! (`core/barrier.rs`); then, thread by thread, it turns `PENDING` into `ACTIVE`, checks that
//! the thread still waits, walks, and frees the gate. A green thread that starts running
//! stores its phase and then reads the flags; with the reader flag up it passes its gate
//! ([`pass_read_gate`]): a `PENDING` gate it takes back (the reader then skips it), an
//! `ACTIVE` one it waits out, which lasts one walk (at most [`MAX_FRAMES`] frames). The gate is
//! passed inside the wait, whose frame is still live, so what the reader walks is intact.
//! The barrier makes the pair safe with no fence on the switch path: either the reader sees the
//! thread running, or the thread sees the flag.
//!
//! One reader works at a time.
//!
//! The stack a worker is running on is read by the worker itself, in a signal handler
//! (`core/sampler.rs`), with [`follow`].
//!
//! It uses the registry's records and the barrier, nothing else.

use std::sync::OnceLock;
use std::sync::atomic::Ordering;

use parking_lot::Mutex;

use crate::core::barrier;
use crate::core::registry::{FrameAt, Phase, RecordRef, StateView, ThreadRecord};

/// The most frames read from one stack.
pub(crate) const MAX_FRAMES: usize = 128;

/// Threads claimed per `membarrier`.
const BATCH: usize = 256;

const FREE: u8 = 0;
const PENDING: u8 = 1;
const ACTIVE: u8 = 2;

/// The current frame: its frame pointer and stack pointer. Inlined into its caller, so the
/// frame is the caller's, or (when the compiler schedules this before the caller's prologue)
/// the caller's caller's: an older frame, live as long, which is all a wait needs.
#[inline(always)]
pub(crate) fn here() -> FrameAt {
    #[cfg(target_arch = "x86_64")]
    {
        let (fp, sp): (usize, usize);
        // SAFETY: copies two registers; reads and writes no memory.
        unsafe {
            std::arch::asm!(
                "mov {fp}, rbp",
                "mov {sp}, rsp",
                fp = out(reg) fp,
                sp = out(reg) sp,
                options(nomem, nostack, preserves_flags)
            );
        }
        FrameAt { fp, sp }
    }
    #[cfg(target_arch = "aarch64")]
    {
        let (fp, sp): (usize, usize);
        // SAFETY: copies two registers; reads and writes no memory.
        unsafe {
            std::arch::asm!(
                "mov {fp}, x29",
                "mov {sp}, sp",
                fp = out(reg) fp,
                sp = out(reg) sp,
                options(nomem, nostack, preserves_flags)
            );
        }
        FrameAt { fp, sp }
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        FrameAt { fp: 0, sp: 0 }
    }
}

/// Records the upper bound of walks of the current thread's stack: called by a green thread's
/// outermost greenhub frame, before its first wait.
#[inline(always)]
pub(crate) fn set_base(record: &ThreadRecord) {
    record.stack_base.store(here().sp, Ordering::Relaxed);
}

/// Why stacks cannot be read in this process, if they cannot.
pub(crate) fn unsupported() -> Option<&'static str> {
    static WHY: OnceLock<Option<&'static str>> = OnceLock::new();
    *WHY.get_or_init(|| {
        if cfg!(not(any(target_arch = "x86_64", target_arch = "aarch64"))) {
            Some("stacks are read on x86_64 and aarch64 only")
        } else if !frame_pointers() {
            Some(
                "built without frame pointers: build with RUSTFLAGS=\"-C force-frame-pointers=yes\" \
                 (or `[build] rustflags` in .cargo/config.toml) to read stacks",
            )
        } else if !barrier::available() {
            Some("the kernel has no membarrier(PRIVATE_EXPEDITED), which reading stacks needs")
        } else {
            None
        }
    })
}

/// Whether this build keeps frame pointers: a frame's record (saved frame pointer, return
/// address) sits at its frame pointer, just above its stack pointer, and names its caller.
fn frame_pointers() -> bool {
    #[inline(never)]
    fn caller() -> bool {
        std::hint::black_box(callee())
    }
    #[inline(never)]
    fn callee() -> bool {
        // Read at a call, where a frame-pointer build always has this function's frame set
        // up (`here` may be scheduled before the prologue).
        let fp = frame_pointer_at_call();
        // A local of this frame: below its frame pointer.
        let local = 0u8;
        let sp = std::hint::black_box(&local) as *const u8 as usize;
        let word = std::mem::size_of::<usize>();
        if fp < sp || fp - sp > 4096 || !fp.is_multiple_of(word) {
            return false;
        }
        // SAFETY: `fp + word` lies within 4 KiB above a local of this frame, in the live part
        // of this thread's stack (this function's frame and its callers').
        let ret = unsafe { std::ptr::read_volatile((fp + word) as *const usize) };
        let start = caller as *const () as usize;
        ret > start && ret < start + 512
    }
    caller()
}

/// The frame pointer of the function that calls it, at the call.
#[cfg(target_arch = "x86_64")]
#[unsafe(naked)]
extern "C" fn frame_pointer_at_call() -> usize {
    std::arch::naked_asm!("mov rax, rbp", "ret")
}

/// The frame pointer of the function that calls it, at the call.
#[cfg(target_arch = "aarch64")]
#[unsafe(naked)]
extern "C" fn frame_pointer_at_call() -> usize {
    std::arch::naked_asm!("mov x0, x29", "ret")
}

/// Elsewhere no frame pointer is read.
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
extern "C" fn frame_pointer_at_call() -> usize {
    0
}

/// One reader at a time: the gates hold one claim each.
static READER: Mutex<()> = Mutex::new(());

/// A parked thread's state and the return addresses on its stack, innermost first, read
/// together: the thread cannot change its state while its stack is read.
pub(crate) type Parked = (StateView, Vec<usize>);

/// The stack of each of `records` that is parked in a wait (`None` for one that is running,
/// runnable or not started when its turn comes), or why stacks cannot be read here.
pub(crate) fn read_parked(records: &[RecordRef]) -> Result<Vec<Option<Parked>>, &'static str> {
    if let Some(why) = unsupported() {
        return Err(why);
    }
    let _one = READER.lock();
    barrier::enter_reader();
    struct Leave;
    impl Drop for Leave {
        fn drop(&mut self) {
            barrier::leave_reader();
        }
    }
    let _leave = Leave;
    let mut stacks = Vec::with_capacity(records.len());
    for batch in records.chunks(BATCH) {
        for r in batch {
            if r.read().phase == Phase::Waiting {
                r.read_gate.store(PENDING, Ordering::Relaxed);
            }
        }
        let fenced = barrier::membarrier();
        for r in batch {
            stacks.push(if fenced { read_one(r) } else { release(r) });
        }
        if !fenced {
            return Err("membarrier failed");
        }
    }
    Ok(stacks)
}

/// Frees a claim the reader will not use.
fn release(r: &ThreadRecord) -> Option<Parked> {
    let _ = r
        .read_gate
        .compare_exchange(PENDING, FREE, Ordering::AcqRel, Ordering::Relaxed);
    None
}

fn read_one(r: &ThreadRecord) -> Option<Parked> {
    if r.read_gate
        .compare_exchange(PENDING, ACTIVE, Ordering::AcqRel, Ordering::Relaxed)
        .is_err()
    {
        // Not claimed, or the thread took its claim back as it started running.
        return None;
    }
    let view = r.read();
    let parked = (view.phase == Phase::Waiting).then(|| (view, walk(r)));
    r.read_gate.store(FREE, Ordering::Release);
    parked
}

/// Follows the frame-pointer chain of a parked thread whose gate this reader holds.
fn walk(r: &ThreadRecord) -> Vec<usize> {
    let mut ips = Vec::new();
    // SAFETY: [park_sp, stack_base) is the live part of the thread's own stack, between the
    // frame it waits in and its outermost greenhub frame; it stays mapped and those frames
    // unchanged while the reader holds the thread's gate (the thread can neither leave its
    // wait nor end); see the module's doc.
    unsafe {
        follow(
            r.park_fp.load(Ordering::Relaxed),
            r.park_sp.load(Ordering::Relaxed),
            r.stack_base.load(Ordering::Relaxed),
            |ip| {
                ips.push(ip);
                ips.len() < MAX_FRAMES
            },
        );
    }
    ips
}

/// Follows a frame-pointer chain from `fp`, giving each frame's return address to `each` until
/// it returns false, the chain ends, or a frame falls outside `[low, base)`. Allocates nothing
/// and calls nothing but `each`: a signal handler may use it.
///
/// # Safety
///
/// `[low, base)` must be readable memory that does not change during the call.
#[inline(always)]
pub(crate) unsafe fn follow(
    mut fp: usize,
    low: usize,
    base: usize,
    mut each: impl FnMut(usize) -> bool,
) {
    let word = std::mem::size_of::<usize>();
    while fp >= low
        && fp.is_multiple_of(word)
        && fp.checked_add(2 * word).is_some_and(|end| end <= base)
    {
        // SAFETY: both words lie in [low, base), readable by the caller's promise.
        let (next, ret) = unsafe {
            (
                std::ptr::read_volatile(fp as *const usize),
                std::ptr::read_volatile((fp + word) as *const usize),
            )
        };
        if ret == 0 || !each(ret) || next <= fp {
            return;
        }
        fp = next;
    }
}

/// A green thread that starts running while a reader works: takes back a pending claim, or
/// waits out the walk of its stack (see the module's doc).
#[cold]
pub(crate) fn pass_read_gate(record: &ThreadRecord) {
    let mut spins = 0u32;
    loop {
        match record.read_gate.load(Ordering::Acquire) {
            FREE => return,
            PENDING => {
                if record
                    .read_gate
                    .compare_exchange(PENDING, FREE, Ordering::AcqRel, Ordering::Relaxed)
                    .is_ok()
                {
                    return;
                }
            }
            _ => {
                spins += 1;
                if spins < 1_000 {
                    std::hint::spin_loop();
                } else {
                    // The reader's OS thread lost its core mid-walk.
                    std::thread::yield_now();
                }
            }
        }
    }
}
