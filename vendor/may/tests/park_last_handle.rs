//! A coroutine unparked while it parks resumes inside its park's `subscribe`; if it then ends
//! holding the last handle to itself, its park is dropped from inside that `subscribe`, which
//! must not wait for itself.

use may::coroutine::{self, Builder, Coroutine};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

#[test]
fn a_coroutine_unparked_while_it_parks_can_end_with_the_last_handle_to_itself() {
    may::config().set_workers(2);
    const N: usize = 50_000;
    let ended = Arc::new(AtomicUsize::new(0));
    // Each coroutine hands a handle to itself to this thread, which unparks it at once (racing
    // the park) and drops the handle: the coroutine's own is then the last.
    let (tx, rx) = mpsc::channel::<Coroutine>();
    let unparker = std::thread::spawn(move || {
        for co in rx {
            co.unpark();
        }
    });
    for _ in 0..N {
        let tx = tx.clone();
        let ended = ended.clone();
        // The spawner's handle is dropped at once.
        unsafe {
            Builder::new().spawn_detached(move || {
                tx.send(coroutine::current()).unwrap();
                drop(tx);
                coroutine::park();
                ended.fetch_add(1, Ordering::SeqCst);
            })
        }
        .unwrap();
    }
    drop(tx);
    let start = Instant::now();
    while ended.load(Ordering::SeqCst) < N {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "{} of {N} coroutines ended: a worker waits for itself",
            ended.load(Ordering::SeqCst)
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    unparker.join().unwrap();
}
