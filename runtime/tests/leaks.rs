//! `greenhub::testing`: a test that leaves green threads or held units behind fails with what
//! they are; a clean one passes; tests running side by side do not see each other's threads.

use std::time::Duration;

use greenhub::testing::{assert_no_leaks, check_leaks};

const SHORT: Duration = Duration::from_millis(50);

#[test]
fn a_clean_test_passes_even_while_its_threads_finish() {
    let workers: Vec<_> = (0..50u64)
        .map(|i| {
            greenhub::spawn(move || {
                // Grandchildren too, all joined.
                greenhub::spawn(move || i * 2).wait().unwrap()
            })
        })
        .collect();
    let sum: u64 = workers.into_iter().map(|w| w.wait().unwrap()).sum();
    assert_eq!(sum, (0..50u64).map(|i| i * 2).sum::<u64>());
    // A last one that is still finishing when the check starts: the grace covers it.
    let _finishing = greenhub::spawn(|| greenhub::sleep(Duration::from_millis(20)));
    assert_no_leaks();
}

#[test]
fn a_thread_left_running_is_reported_with_what_it_waits_on_grandchildren_included() {
    let (tx, rx) = std::sync::mpsc::channel();
    let parent = greenhub::thread::Builder::new()
        .name("leaky-parent")
        .spawn(move || {
            let grandchild = greenhub::thread::Builder::new()
                .name("leaky-grandchild")
                .spawn(|| greenhub::sleep(Duration::from_secs(600)))
                .unwrap();
            tx.send(grandchild.id()).unwrap();
        })
        .unwrap();
    parent.wait().unwrap();
    let grandchild = rx.recv().unwrap();
    let leaks = check_leaks(SHORT).unwrap_err();
    assert_eq!(leaks.threads.len(), 1, "{leaks}");
    assert_eq!(leaks.threads[0].id, grandchild);
    let said = leaks.to_string();
    assert!(said.contains("1 green thread still alive"), "{said}");
    assert!(
        said.contains("leaky-grandchild") && said.contains("sleep"),
        "{said}"
    );
    assert!(greenhub::thread::kill(grandchild));
    assert_no_leaks();
}

#[test]
fn another_os_thread_s_threads_are_its_own() {
    // Another "test" leaves a thread running; this one does not see it, and it sees itself.
    let other = std::thread::spawn(|| {
        let t = greenhub::spawn(|| greenhub::sleep(Duration::from_secs(600)));
        let seen = check_leaks(SHORT).unwrap_err();
        assert_eq!(seen.threads.len(), 1);
        assert_eq!(seen.threads[0].id, t.id());
        t
    })
    .join()
    .unwrap();
    check_leaks(SHORT).expect("not this test's thread");
    other.kill();
}

#[test]
fn units_held_by_the_test_s_threads_are_reported_ended_holders_included() {
    let pool = greenhub::pool::Pool::builder(|| Ok::<_, std::convert::Infallible>(0u8))
        .name("leaky-items")
        .max_size(2)
        .build()
        .unwrap();
    let lock = std::sync::Arc::new(greenhub::Mutex::new(()).named("leaky-lock"));
    let (pool2, lock2) = (pool.clone(), lock.clone());
    let forgetful = greenhub::spawn(move || {
        // Forgotten instead of given back: still held after the thread ends.
        std::mem::forget(pool2.get().unwrap());
        std::mem::forget(lock2.lock().unwrap());
    });
    let holder = forgetful.id();
    forgetful.wait().unwrap();
    let leaks = check_leaks(SHORT).unwrap_err();
    assert!(leaks.threads.is_empty(), "{leaks}");
    let mut held: Vec<(u64, bool)> = leaks.held.iter().map(|h| (h.id, h.holder_alive)).collect();
    held.sort_unstable();
    let mut want = vec![(pool.id(), false), (lock.id(), false)];
    want.sort_unstable();
    assert_eq!(held, want, "{leaks}");
    assert!(leaks.held.iter().all(|h| h.holder == holder));
    let said = leaks.to_string();
    assert!(
        said.contains("\"leaky-items\" held by #") && said.contains("(ended)"),
        "{said}"
    );
}

#[test]
fn from_a_green_thread_the_check_looks_below_it() {
    let outer = greenhub::spawn(|| {
        let left = greenhub::spawn(|| greenhub::sleep(Duration::from_secs(600)));
        let joined = greenhub::spawn(|| 1);
        joined.wait().unwrap();
        let leaks = check_leaks(SHORT).unwrap_err();
        let ids: Vec<u64> = leaks.threads.iter().map(|t| t.id).collect();
        left.kill();
        let _ = left.wait();
        (ids, left.id(), check_leaks(SHORT).is_ok())
    });
    let (ids, left, clean_after) = outer.wait().unwrap();
    assert_eq!(ids, [left]);
    assert!(clean_after);
}
