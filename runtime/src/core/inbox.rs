//! The wake inbox: batched wakes from OS threads, as eventlet's tpool batches them through
//! one pipe.
//!
//! A wake from an OS thread (a tpool thread finishing a call, say) normally unparks the green
//! thread through `may`'s global queue, which costs a write to the worker's eventfd each time:
//! 10,000 completions, 10,000 syscalls. [`wake_batched`] instead queues the token in an inbox
//! and writes greenhub's own eventfd only when the inbox goes from empty to non-empty. An inbox
//! coroutine on the workers waits on that eventfd through `may`'s poller, takes the whole inbox
//! at once and wakes every token from the worker, where a wake is a local switch.
//!
//! If the eventfd or the coroutine cannot be created, tokens are woken directly (correct, only
//! slower).

use std::io::Read;
use std::os::fd::{FromRawFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use greenhub_snapshot::InboxStats;
use parking_lot::Mutex;

use crate::core::report;
use crate::core::token::Token;

struct Inbox {
    fd: RawFd,
    /// Set (under the inbox lock) if the inbox stopped on a read error: wakes are direct then.
    broken: AtomicBool,
    inbox: Mutex<Vec<Arc<Token>>>,
}

static INBOX: OnceLock<Option<Inbox>> = OnceLock::new();
static POSTED: AtomicU64 = AtomicU64::new(0);
static SIGNALS: AtomicU64 = AtomicU64::new(0);
static BATCHES: AtomicU64 = AtomicU64::new(0);

/// The inbox's counters, in the snapshot's runtime section.
pub(crate) fn stats() -> InboxStats {
    InboxStats {
        running: matches!(INBOX.get(), Some(Some(hub)) if !hub.broken.load(Ordering::Relaxed)),
        posted: POSTED.load(Ordering::Relaxed),
        signals: SIGNALS.load(Ordering::Relaxed),
        batches: BATCHES.load(Ordering::Relaxed),
    }
}

/// Whether no batched wake waits in the inbox (one that does is about to end a wait).
pub(crate) fn is_empty() -> bool {
    match INBOX.get() {
        Some(Some(hub)) => hub.inbox.lock().is_empty(),
        _ => true,
    }
}

/// Wakes `token` from an OS thread that completes many waits: wakes posted while the inbox is
/// busy share one signal to the workers, and the inbox coroutine wakes them from a worker.
///
/// Returns at once; the wake happens shortly after. The waker learns nothing of whether the
/// waiter was still there: hand the waiter its value *before* posting (as tpool does with a
/// call's result), and let the waiter that gave up find it.
///
/// ```
/// use greenhub::ext::{wake_batched, ObjectKind, WaitOn, Waiter};
///
/// let done = greenhub::spawn(|| {
///     let waiter = Waiter::new(WaitOn::Object { object: ObjectKind::OTHER, id: 0 }, None);
///     let token = waiter.token().clone();
///     std::thread::spawn(move || wake_batched(token));
///     waiter.wait()
/// });
/// assert_eq!(done.wait().unwrap(), Ok(()));
/// ```
pub fn wake_batched(token: Arc<Token>) {
    POSTED.fetch_add(1, Ordering::Relaxed);
    let Some(hub) = INBOX.get_or_init(start) else {
        token.wake();
        return;
    };
    let first = {
        let mut inbox = hub.inbox.lock();
        if hub.broken.load(Ordering::Relaxed) {
            drop(inbox);
            token.wake();
            return;
        }
        inbox.push(token);
        inbox.len() == 1
    };
    if first {
        signal(hub.fd);
    }
}

fn signal(fd: RawFd) {
    SIGNALS.fetch_add(1, Ordering::Relaxed);
    let one = 1u64.to_ne_bytes();
    // SAFETY: `fd` is the inbox's eventfd, open for the life of the process; the buffer is the
    // 8 bytes an eventfd write takes. A full counter (EAGAIN) means a signal is pending anyway.
    unsafe { libc::write(fd, one.as_ptr().cast(), one.len()) };
}

fn start() -> Option<Inbox> {
    // SAFETY: plain syscall; the descriptor is owned by the inbox from here on.
    let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
    if fd < 0 {
        report::error(&format!(
            "greenhub: cannot create the inbox's eventfd ({}); batched wakes will be direct",
            std::io::Error::last_os_error()
        ));
        return None;
    }
    // SAFETY: `fd` is a fresh descriptor nobody else owns. The `File` is only read through
    // `may`'s cooperative wrapper; the inbox writes to the raw descriptor, which stays open
    // because the coroutine owning the `File` never ends.
    let file = unsafe { std::fs::File::from_raw_fd(fd) };
    let io = match may::io::CoIo::new(file) {
        Ok(io) => io,
        Err(e) => {
            report::error(&format!(
                "greenhub: cannot watch the inbox's eventfd ({e}); batched wakes will be direct"
            ));
            return None;
        }
    };
    let builder = may::coroutine::Builder::new()
        .name("greenhub-inbox".into())
        .stack_size(8192);
    // SAFETY: the inbox coroutine keeps no thread-local across its waits and uses little stack.
    let spawned = unsafe { builder.spawn(move || run(io)) };
    if let Err(e) = spawned {
        report::error(&format!(
            "greenhub: cannot start the inbox coroutine ({e}); batched wakes will be direct"
        ));
        return None;
    }
    Some(Inbox {
        fd,
        broken: AtomicBool::new(false),
        inbox: Mutex::new(Vec::new()),
    })
}

fn run(mut io: may::io::CoIo<std::fs::File>) {
    let hub = loop {
        // The coroutine can start before `start` returns and publishes the inbox.
        match INBOX.get() {
            Some(Some(hub)) => break hub,
            _ => may::coroutine::yield_now(),
        }
    };
    let mut batch: Vec<Arc<Token>> = Vec::new();
    let mut counter = [0u8; 8];
    loop {
        // Read (and reset) the counter before taking the inbox: a post after the take writes
        // again, so no wake is left behind.
        if let Err(e) = io.read(&mut counter) {
            use std::io::ErrorKind::{Interrupted, WouldBlock};
            if !matches!(e.kind(), WouldBlock | Interrupted) {
                report::error(&format!(
                    "greenhub: the inbox cannot read its eventfd ({e}); batched wakes will be direct"
                ));
                let left = {
                    let mut inbox = hub.inbox.lock();
                    hub.broken.store(true, Ordering::Relaxed);
                    std::mem::take(&mut *inbox)
                };
                for token in left {
                    token.wake();
                }
                // The descriptor stays open: posters may still be writing to it.
                std::mem::forget(io);
                return;
            }
        }
        std::mem::swap(&mut batch, &mut *hub.inbox.lock());
        if batch.is_empty() {
            continue;
        }
        BATCHES.fetch_add(1, Ordering::Relaxed);
        for token in batch.drain(..) {
            token.wake();
        }
    }
}
