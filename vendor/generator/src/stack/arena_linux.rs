//! Stacks carved out of shared mappings, with guard regions instead of `mprotect`ed pages.
//!
//! A stack mapped on its own with an `mprotect`ed guard page costs two memory mappings, and
//! Linux caps mappings per process (`vm.max_map_count`, 65,530 by default), which stops a
//! process at about 32,000 stacks. Linux 6.13 added `madvise(MADV_GUARD_INSTALL)`: a guard
//! region inside an existing mapping that faults like `PROT_NONE` without splitting it. Here
//! stacks of one size are slots of large mappings ("chunks"), each slot's lowest page a guard
//! region, so a stack costs no mapping of its own and adjacent chunks merge into one.
//!
//! Rules:
//! - A released slot keeps its guard. The most recently released slots keep their pages
//!   ("dirty", at most the dirty limit of slots in all: [`DIRTY_BYTES`] unless
//!   [`set_dirty_limit`] says otherwise) and are handed out first: short-lived threads then
//!   reuse warm stacks, with neither a discard nor page faults. Beyond that limit the oldest
//!   half of the size with the most dirty bytes are discarded together with `MADV_DONTNEED`
//!   (guard regions survive it), one call per run of adjacent slots: a discard flushes the TLB
//!   of every CPU the process runs on, so it is paid once per batch, not once per stack. A
//!   process that had many stacks gives the memory back but keeps the address space.
//! - A runtime with a thread of its own to spare can give memory back by age instead, as
//!   allocators decay their dirty pages: it raises the limit, calls [`decay`] periodically
//!   (each call discards the slots that stayed dirty, unused, since the call before) and
//!   [`shrink_dirty`] when its process goes quiet. A burst of threads then pays no discard
//!   while it runs, nor the page faults of reusing discarded slots.
//! - Chunks are never unmapped: their slots are reused by later stacks of the same size.
//! - Where the kernel does not know the advice (before 6.13), [`allocate`] says so once and the
//!   caller maps each stack on its own, as before.
//! - Chunks are `MADV_NOHUGEPAGE`: a stack touches a page or two, and a huge page would make it
//!   cost 2 MiB.

use std::io;
use std::os::raw::c_void;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::Mutex;

use super::{page_size, SysStack, MAP_STACK};

/// `madvise` advice: install guard regions (Linux 6.13+, `include/uapi/asm-generic/mman-common.h`).
const MADV_GUARD_INSTALL: libc::c_int = 102;

/// A chunk maps at least this many bytes (and at least one slot).
const CHUNK_BYTES: usize = 4 << 20;

/// The default dirty limit: released slots kept with their pages, in bytes of slots of every
/// size (what they can hold at most; a slot holds only the pages its stack touched).
pub const DIRTY_BYTES: usize = 64 << 20;

/// The dirty limit in force (see [`set_dirty_limit`]).
static DIRTY_LIMIT: AtomicUsize = AtomicUsize::new(DIRTY_BYTES);

const UNKNOWN: u8 = 0;
const SUPPORTED: u8 = 1;
const UNSUPPORTED: u8 = 2;

static SUPPORT: AtomicU8 = AtomicU8::new(UNKNOWN);

/// The free slots of every slot size in use, each by its lowest address (the guard's).
static FREE: Mutex<Slots> = Mutex::new(Slots {
    classes: Vec::new(),
    dirty_bytes: 0,
});

struct Slots {
    classes: Vec<SizeClass>,
    /// Bytes of the dirty slots of every class.
    dirty_bytes: usize,
}

struct SizeClass {
    /// Bytes per slot, guard included.
    slot: usize,
    /// Released slots whose pages are kept, most recently released last.
    dirty: Vec<usize>,
    /// How many of the first `dirty` slots were dirty already at the last [`decay`] and have
    /// not been handed out since (slots are handed out from the end).
    settled: usize,
    /// Slots that hold no memory.
    free: Vec<usize>,
}

impl SizeClass {
    fn dirty_bytes(&self) -> usize {
        self.dirty.len() * self.slot
    }
}

/// Whether stacks come from shared mappings with guard regions (the kernel knows
/// `MADV_GUARD_INSTALL`). Probes the kernel on the first call.
pub fn supported() -> bool {
    match SUPPORT.load(Ordering::Relaxed) {
        SUPPORTED => true,
        UNSUPPORTED => false,
        _ => {
            let supported = probe();
            SUPPORT.store(
                if supported { SUPPORTED } else { UNSUPPORTED },
                Ordering::Relaxed,
            );
            supported
        }
    }
}

/// Maps two pages and tries to make the first a guard region.
fn probe() -> bool {
    let page = page_size();
    // SAFETY: a fresh anonymous mapping, advised and unmapped here and used by nobody else.
    unsafe {
        let ptr = libc::mmap(
            std::ptr::null_mut(),
            2 * page,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANON,
            -1,
            0,
        );
        if std::ptr::eq(ptr, libc::MAP_FAILED) {
            return false;
        }
        let ok = libc::madvise(ptr, page, MADV_GUARD_INSTALL) == 0;
        libc::munmap(ptr, 2 * page);
        ok
    }
}

/// A stack of `size` bytes (a multiple of the page size, its guard page included), or `None`
/// when the kernel has no guard regions.
pub fn allocate(size: usize) -> io::Result<Option<SysStack>> {
    if !supported() {
        return Ok(None);
    }
    let page = page_size();
    debug_assert!(size.is_multiple_of(page) && size > page);
    let slot = {
        let mut slots = FREE.lock().unwrap_or_else(|e| e.into_inner());
        let Slots {
            classes,
            dirty_bytes,
        } = &mut *slots;
        let class = match classes.iter_mut().position(|c| c.slot == size) {
            Some(i) => &mut classes[i],
            None => {
                classes.push(SizeClass {
                    slot: size,
                    dirty: Vec::new(),
                    settled: 0,
                    free: Vec::new(),
                });
                classes.last_mut().expect("just pushed")
            }
        };
        let reused = match class.dirty.pop() {
            Some(slot) => {
                *dirty_bytes -= size;
                class.settled = class.settled.min(class.dirty.len());
                Some(slot)
            }
            None => class.free.pop(),
        };
        match reused {
            Some(slot) => slot,
            None => {
                // Mapping under the lock keeps two threads from mapping a chunk each for one
                // missing slot; it happens once per chunk.
                let mut slots = map_chunk(size)?;
                let slot = slots.pop().expect("a chunk holds at least one slot");
                class.free.extend(slots);
                slot
            }
        }
    };
    let bottom = slot + page;
    let top = slot + size;
    // SAFETY: the slot's pages above its guard belong to this stack alone until `release`.
    Ok(Some(unsafe {
        SysStack::in_arena(top as *mut c_void, bottom as *mut c_void)
    }))
}

/// Maps a chunk for slots of `size` bytes and installs each slot's guard. Returns the slots,
/// lowest address last (so the first stack handed out is the lowest).
fn map_chunk(size: usize) -> io::Result<Vec<usize>> {
    let page = page_size();
    let count = (CHUNK_BYTES / size).max(1);
    let bytes = count * size;
    // SAFETY: a fresh anonymous mapping; on failure it is unmapped before returning.
    unsafe {
        let ptr = libc::mmap(
            std::ptr::null_mut(),
            bytes,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANON | MAP_STACK,
            -1,
            0,
        );
        if std::ptr::eq(ptr, libc::MAP_FAILED) {
            return Err(io::Error::last_os_error());
        }
        // Advice, not a requirement: a kernel without THP refuses it harmlessly.
        libc::madvise(ptr, bytes, libc::MADV_NOHUGEPAGE);
        let base = ptr as usize;
        let mut slots = Vec::with_capacity(count);
        for i in (0..count).rev() {
            let slot = base + i * size;
            if libc::madvise(slot as *mut c_void, page, MADV_GUARD_INSTALL) != 0 {
                let err = io::Error::last_os_error();
                libc::munmap(ptr, bytes);
                return Err(err);
            }
            slots.push(slot);
        }
        Ok(slots)
    }
}

/// Gives a stack from [`allocate`] back: its slot is reused, first with its pages as they
/// are; the oldest released slots beyond the dirty limit are discarded.
///
/// # Safety
///
/// `stack` came from [`allocate`] and nothing uses its memory any more.
pub unsafe fn release(stack: &SysStack) {
    let page = page_size();
    let slot = stack.bottom() as usize - page;
    let size = stack.len() + page;
    let (batch, batch_size) = {
        let mut slots = FREE.lock().unwrap_or_else(|e| e.into_inner());
        let Slots {
            classes,
            dirty_bytes,
        } = &mut *slots;
        let Some(class) = classes.iter_mut().find(|c| c.slot == size) else {
            return;
        };
        class.dirty.push(slot);
        *dirty_bytes += size;
        if *dirty_bytes <= DIRTY_LIMIT.load(Ordering::Relaxed) {
            return;
        }
        // Over the limit: the size that holds the most gives up its oldest half (at least
        // one slot), so that the next discard is as far away.
        let Some(largest) = classes.iter_mut().max_by_key(|c| c.dirty_bytes()) else {
            return;
        };
        let older = largest.dirty.len().div_ceil(2);
        (take_oldest(largest, older, dirty_bytes), largest.slot)
    };
    discard_batches(vec![(batch_size, batch)]);
}

/// Takes the `count` oldest dirty slots of `class` out of its dirty list (and out of the
/// dirty bytes), to be discarded.
fn take_oldest(class: &mut SizeClass, count: usize, dirty_bytes: &mut usize) -> Vec<usize> {
    let count = count.min(class.dirty.len());
    class.settled = class.settled.saturating_sub(count);
    *dirty_bytes -= count * class.slot;
    class.dirty.drain(..count).collect()
}

/// Discards batches of slots taken out of the dirty lists (each with its slot size), then
/// makes them free slots of their size again.
fn discard_batches(mut batches: Vec<(usize, Vec<usize>)>) {
    batches.retain(|(_, batch)| !batch.is_empty());
    if batches.is_empty() {
        return;
    }
    let page = page_size();
    for (size, batch) in &mut batches {
        batch.sort_unstable();
        // SAFETY: a slot out of a dirty list belongs to no stack, and to no other batch.
        unsafe { discard(batch, *size, page) };
    }
    let mut slots = FREE.lock().unwrap_or_else(|e| e.into_inner());
    for (size, batch) in batches {
        if let Some(class) = slots.classes.iter_mut().find(|c| c.slot == size) {
            class.free.extend(batch);
        }
    }
}

/// Bytes of the released slots (of every size) that keep their pages.
pub fn dirty_bytes() -> usize {
    FREE.lock().unwrap_or_else(|e| e.into_inner()).dirty_bytes
}

/// Sets the dirty limit: how many bytes of released slots (of every size) keep their pages
/// before the oldest are discarded as stacks are released. [`DIRTY_BYTES`] by default.
pub fn set_dirty_limit(bytes: usize) {
    DIRTY_LIMIT.store(bytes, Ordering::Relaxed);
}

/// Discards the dirty slots that were dirty already at the previous call and have not been
/// handed out since: called once a period, it gives back the pages of the stacks nobody
/// reused for a whole period. Returns the bytes of slots still dirty (0: nothing to come
/// back for).
pub fn decay() -> usize {
    let (batches, left) = {
        let mut slots = FREE.lock().unwrap_or_else(|e| e.into_inner());
        let batches = slots.take_settled();
        (batches, slots.dirty_bytes)
    };
    discard_batches(batches);
    left
}

/// Discards the oldest dirty slots, from the size that holds the most first, until at most
/// `keep` bytes of slots are dirty in all. Returns the bytes of slots still dirty.
pub fn shrink_dirty(keep: usize) -> usize {
    let (batches, left) = {
        let mut slots = FREE.lock().unwrap_or_else(|e| e.into_inner());
        let batches = slots.take_beyond(keep);
        (batches, slots.dirty_bytes)
    };
    discard_batches(batches);
    left
}

impl Slots {
    /// Takes out of the dirty lists, to be discarded, the slots settled since the last call
    /// (dirty then and not handed out since), and marks every slot dirty now as settled.
    fn take_settled(&mut self) -> Vec<(usize, Vec<usize>)> {
        let Slots {
            classes,
            dirty_bytes,
        } = self;
        classes
            .iter_mut()
            .map(|class| {
                let settled = class.settled;
                let batch = take_oldest(class, settled, dirty_bytes);
                class.settled = class.dirty.len();
                (class.slot, batch)
            })
            .collect()
    }

    /// Takes out of the dirty lists, to be discarded, the oldest slots of the size that holds
    /// the most, again and again, until at most `keep` bytes of slots are dirty.
    fn take_beyond(&mut self, keep: usize) -> Vec<(usize, Vec<usize>)> {
        let Slots {
            classes,
            dirty_bytes,
        } = self;
        let mut batches = Vec::new();
        while *dirty_bytes > keep {
            let Some(largest) = classes.iter_mut().max_by_key(|c| c.dirty_bytes()) else {
                break;
            };
            let over = (*dirty_bytes - keep).div_ceil(largest.slot);
            let batch = take_oldest(largest, over, dirty_bytes);
            if batch.is_empty() {
                break;
            }
            batches.push((largest.slot, batch));
        }
        batches
    }
}

/// Discards the pages of `slots` (sorted, each `size` bytes, its lowest page a guard), one
/// `madvise` per run of adjacent slots. Guard regions survive `MADV_DONTNEED`, so a run's
/// inner guards are covered too. A failure leaves pages resident, which costs memory but
/// nothing else.
///
/// # Safety
///
/// Nothing uses the slots' memory.
unsafe fn discard(slots: &[usize], size: usize, page: usize) {
    let mut i = 0;
    while i < slots.len() {
        let start = slots[i];
        let mut end = start + size;
        i += 1;
        while i < slots.len() && slots[i] == end {
            end += size;
            i += 1;
        }
        libc::madvise(
            (start + page) as *mut c_void,
            end - start - page,
            libc::MADV_DONTNEED,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Serializes the tests here: [`decay`] and [`shrink_dirty`] act on every size class, so
    /// they would discard the slots another test expects to keep their pages.
    static SERIAL: Mutex<()> = Mutex::new(());

    fn serial() -> std::sync::MutexGuard<'static, ()> {
        SERIAL.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Allocates `count` stacks of `size` bytes and writes a 7 at the bottom and the top of
    /// each.
    fn written(size: usize, count: usize) -> Vec<SysStack> {
        (0..count)
            .map(|_| {
                let s = allocate(size).unwrap().unwrap();
                // SAFETY: the stack is ours until it is released.
                unsafe {
                    s.bottom().cast::<u8>().write(7);
                    s.top().cast::<u8>().sub(1).write(7);
                }
                s
            })
            .collect()
    }

    /// Whether the released stack that had `bottom` still holds the 7 written there (its
    /// slot stays mapped: chunks are never unmapped).
    fn kept(bottom: usize) -> bool {
        // SAFETY: the slot is mapped; nothing else writes a slot of this test's size.
        unsafe { (bottom as *const u8).read() == 7 }
    }

    #[test]
    fn decay_discards_the_slots_left_unused_for_a_whole_period() {
        let _serial = serial();
        if !supported() {
            return;
        }
        let page = page_size();
        // A size no other test uses: the size class is this test's alone.
        let size = 9 * page;
        let stacks = written(size, 6);
        let bottoms: Vec<usize> = stacks.iter().map(|s| s.bottom() as usize).collect();
        // SAFETY: the stacks are ours and unused from here on.
        unsafe {
            for s in &stacks[..4] {
                release(s);
            }
        }
        decay();
        assert!(
            bottoms[..4].iter().all(|&b| kept(b)),
            "a slot released during the period keeps its pages"
        );
        // One slot is handed out again (the last released), and two more are released.
        let again = allocate(size).unwrap().unwrap();
        assert_eq!(again.bottom() as usize, bottoms[3]);
        // SAFETY: as above.
        unsafe {
            release(&stacks[4]);
            release(&stacks[5]);
        }
        let left = decay();
        for (i, &b) in bottoms.iter().enumerate() {
            match i {
                0..=2 => assert!(
                    !kept(b),
                    "slot {i}, unused for a whole period, is discarded"
                ),
                3 => assert!(kept(b), "the slot handed out again is not touched"),
                _ => assert!(kept(b), "slot {i}, released during this period, is kept"),
            }
        }
        if let Some(guarded) = is_guard(bottoms[0] - page) {
            assert!(guarded, "the guard survives the discard");
        }
        assert!(left >= 2 * size, "the two kept slots count as dirty");
        // The next period discards the last two, and every slot is handed out again.
        decay();
        assert!(!kept(bottoms[4]) && !kept(bottoms[5]));
        // SAFETY: as above.
        unsafe { release(&again) };
        let all: Vec<SysStack> = (0..6).map(|_| allocate(size).unwrap().unwrap()).collect();
        let mut got: Vec<usize> = all.iter().map(|s| s.bottom() as usize).collect();
        got.sort_unstable();
        let mut want = bottoms.clone();
        want.sort_unstable();
        assert_eq!(got, want, "no slot is lost or handed out twice");
        // SAFETY: as above.
        unsafe {
            for s in &all {
                release(s);
            }
        }
    }

    /// A size class with `dirty` slots (named by their order of release) and `settled` of
    /// them settled.
    fn class(slot: usize, dirty: &[usize], settled: usize) -> SizeClass {
        SizeClass {
            slot,
            dirty: dirty.to_vec(),
            settled,
            free: Vec::new(),
        }
    }

    #[test]
    fn shrinking_takes_the_oldest_of_the_size_that_holds_the_most_first() {
        let mut slots = Slots {
            classes: vec![class(10, &[1, 2, 3], 2), class(100, &[4, 5, 6, 7], 0)],
            dirty_bytes: 3 * 10 + 4 * 100,
        };
        // 430 bytes down to 250: two of the large size (its oldest) go first.
        let batches = slots.take_beyond(250);
        assert_eq!(batches, vec![(100, vec![4, 5])]);
        assert_eq!(slots.dirty_bytes, 230);
        // Down to 30: the large size is then the largest until it is empty.
        let batches = slots.take_beyond(30);
        assert_eq!(batches, vec![(100, vec![6, 7])]);
        // Down to 5: the small size gives up all three; its settled count follows.
        assert_eq!(slots.take_beyond(5), vec![(10, vec![1, 2, 3])]);
        assert_eq!((slots.dirty_bytes, slots.classes[0].settled), (0, 0));
        assert!(slots.take_beyond(0).is_empty());
    }

    #[test]
    fn decay_takes_what_stayed_settled_and_settles_the_rest() {
        let mut slots = Slots {
            classes: vec![class(10, &[1, 2, 3], 2), class(100, &[4], 0)],
            dirty_bytes: 130,
        };
        assert_eq!(slots.take_settled(), vec![(10, vec![1, 2]), (100, vec![])]);
        assert_eq!(slots.dirty_bytes, 110);
        assert_eq!((slots.classes[0].settled, slots.classes[1].settled), (1, 1));
        // A slot handed out lowers the settled count with the list; a new one is not settled.
        slots.classes[1].dirty.pop();
        slots.classes[1].settled = slots.classes[1].settled.min(slots.classes[1].dirty.len());
        slots.classes[1].dirty.push(8);
        assert_eq!(slots.take_settled(), vec![(10, vec![3]), (100, vec![])]);
        assert_eq!(slots.take_settled(), vec![(10, vec![]), (100, vec![8])]);
    }

    #[test]
    fn shrinking_to_nothing_discards_every_released_stack() {
        let _serial = serial();
        if !supported() {
            return;
        }
        let page = page_size();
        // A size no other test uses.
        let size = 11 * page;
        let stacks = written(size, 5);
        let bottoms: Vec<usize> = stacks.iter().map(|s| s.bottom() as usize).collect();
        // SAFETY: the stacks are ours and unused from here on.
        unsafe {
            for s in &stacks {
                release(s);
            }
        }
        assert!(bottoms.iter().all(|&b| kept(b)));
        assert_eq!(shrink_dirty(0), 0, "nothing is left dirty");
        assert!(bottoms.iter().all(|&b| !kept(b)), "every one is discarded");
        let again = allocate(size).unwrap().unwrap();
        assert!(bottoms.contains(&(again.bottom() as usize)), "and reused");
        // SAFETY: as above.
        unsafe { release(&again) };
    }

    /// Whether the page at `addr` is a guard region, read from `/proc/self/pagemap`
    /// (bit 58, "pte is a guard region", Linux 6.14+). `None` where the kernel does not say.
    fn is_guard(addr: usize) -> Option<bool> {
        use std::io::{Read, Seek, SeekFrom};
        let mut f = std::fs::File::open("/proc/self/pagemap").ok()?;
        f.seek(SeekFrom::Start((addr / page_size() * 8) as u64))
            .ok()?;
        let mut word = [0u8; 8];
        f.read_exact(&mut word).ok()?;
        Some(u64::from_ne_bytes(word) & (1 << 58) != 0)
    }

    #[test]
    fn stacks_are_slots_with_guards_and_are_reused() {
        let _serial = serial();
        if !supported() {
            return;
        }
        let page = page_size();
        let size = 16 * page;
        let a = allocate(size).unwrap().unwrap();
        let b = allocate(size).unwrap().unwrap();
        assert_eq!(a.len(), size - page);
        assert_ne!(a.bottom(), b.bottom());
        let guard = a.bottom() as usize - page;
        if let Some(guarded) = is_guard(guard) {
            assert!(guarded, "the page below a stack is a guard region");
        }
        // SAFETY: the stacks are ours; writing and releasing them is what a generator does.
        unsafe {
            a.bottom().cast::<u8>().write(7);
            a.top().cast::<u8>().sub(1).write(7);
            let bottom = a.bottom();
            release(&a);
            let again = allocate(size).unwrap().unwrap();
            assert_eq!(
                again.bottom(),
                bottom,
                "the last released slot is handed out first"
            );
            assert_eq!(bottom.cast::<u8>().read(), 7, "with its pages as they were");
            release(&again);
            release(&b);
        }
    }

    #[test]
    fn released_slots_beyond_the_dirty_bound_are_discarded_oldest_first() {
        let _serial = serial();
        if !supported() {
            return;
        }
        let page = page_size();
        // A size no other test uses: the size class is this test's alone.
        let size = 12 * page;
        let cap = DIRTY_BYTES / size;
        let stacks: Vec<SysStack> = (0..=cap)
            .map(|_| allocate(size).unwrap().unwrap())
            .collect();
        let bottoms: Vec<usize> = stacks.iter().map(|s| s.bottom() as usize).collect();
        // SAFETY: the stacks are ours; their memory stays mapped after release (chunks are
        // never unmapped), and nothing else allocates this size.
        unsafe {
            for s in &stacks {
                s.bottom().cast::<u8>().write(7);
                s.top().cast::<u8>().sub(1).write(7);
            }
            for s in &stacks {
                release(s);
            }
            let oldest = bottoms[0] as *const u8;
            assert_eq!(oldest.read(), 0, "the oldest released stack is discarded");
            let top = (bottoms[0] + size - page) as *const u8;
            assert_eq!(top.sub(1).read(), 0, "all of it");
            if let Some(guarded) = is_guard(bottoms[0] - page) {
                assert!(guarded, "the guard survives the discard");
            }
            // A run of adjacent slots is discarded in one call that covers the guards inside
            // it: they still fault. Consecutive allocations from a fresh chunk are adjacent.
            let mut inner = 0;
            for k in [1, cap / 8, cap / 4] {
                if bottoms[k] - size != bottoms[k - 1] {
                    continue;
                }
                assert_eq!((bottoms[k] as *const u8).read(), 0, "slot {k} is discarded");
                assert_eq!(
                    write_in_child(bottoms[k] - 1),
                    Some(libc::SIGSEGV),
                    "the guard of slot {k}, inside a discarded run, still faults"
                );
                inner += 1;
            }
            assert!(inner > 0, "no two adjacent slots among the discarded ones");
            let newest = *bottoms.last().unwrap() as *const u8;
            assert_eq!(
                newest.read(),
                7,
                "the newest released stack keeps its pages"
            );
            // Every slot is handed out again: the dirty ones first, then the discarded ones.
            let again: Vec<SysStack> = (0..=cap)
                .map(|_| allocate(size).unwrap().unwrap())
                .collect();
            let mut got: Vec<usize> = again.iter().map(|s| s.bottom() as usize).collect();
            assert_eq!(got[0], *bottoms.last().unwrap());
            got.sort_unstable();
            let mut want = bottoms.clone();
            want.sort_unstable();
            assert_eq!(got, want, "no slot is lost or handed out twice");
            for s in &again {
                release(s);
            }
        }
    }

    /// Writes to `addr` in a child process; returns the signal that ended it, if any.
    fn write_in_child(addr: usize) -> Option<libc::c_int> {
        // SAFETY: the child only calls async-signal-safe functions before `_exit`.
        unsafe {
            match libc::fork() {
                0 => {
                    libc::signal(libc::SIGSEGV, libc::SIG_DFL);
                    std::ptr::write_volatile(addr as *mut u8, 1);
                    libc::_exit(0);
                }
                -1 => panic!("fork: {}", io::Error::last_os_error()),
                pid => {
                    let mut status = 0;
                    assert_eq!(libc::waitpid(pid, &mut status, 0), pid);
                    libc::WIFSIGNALED(status).then(|| libc::WTERMSIG(status))
                }
            }
        }
    }

    #[test]
    fn a_write_below_a_stack_faults_even_in_a_reused_slot() {
        if !supported() {
            return;
        }
        let page = page_size();
        let size = 8 * page;
        let stack = allocate(size).unwrap().unwrap();
        let bottom = stack.bottom() as usize;
        assert_eq!(write_in_child(bottom), None, "the stack itself is writable");
        assert_eq!(write_in_child(bottom - 1), Some(libc::SIGSEGV));
        // SAFETY: the stack is ours and unused.
        unsafe { release(&stack) };
        let again = allocate(size).unwrap().unwrap();
        assert_eq!(again.bottom() as usize, bottom);
        assert_eq!(write_in_child(bottom - page), Some(libc::SIGSEGV));
        // SAFETY: as above.
        unsafe { release(&again) };
    }
}
