//! `thread::Local`: a value per green thread that survives waits on any worker, is copied
//! into children only when declared inherited, and drops with its thread.

mod common;

use std::sync::Arc;
use std::time::Duration;

use greenhub::thread::{Local, spawn_after};
use greenhub::{spawn, yield_now};

static ID: Local<u64> = Local::new();
static REQUEST: Local<String> = Local::inherited();
static HELD: Local<Arc<()>> = Local::new();

#[test]
fn each_green_thread_keeps_its_own_value_across_waits_on_any_worker() {
    let _watchdog = common::watchdog(Duration::from_secs(60));
    let threads: Vec<_> = (0..2_000u64)
        .map(|i| {
            spawn(move || {
                assert_eq!(ID.get(), None, "a new thread starts without a value");
                ID.set(i);
                for round in 0..20 {
                    if round % 4 == 0 {
                        greenhub::sleep(Duration::from_micros(50)).unwrap();
                    } else {
                        yield_now();
                    }
                    assert_eq!(ID.get(), Some(i), "thread {i} saw another thread's value");
                }
                ID.take()
            })
        })
        .collect();
    for (i, t) in threads.into_iter().enumerate() {
        assert_eq!(t.wait().unwrap(), Some(i as u64));
    }
}

#[test]
fn inherited_values_are_copied_into_children_and_grandchildren_and_others_are_not() {
    let t = spawn(|| {
        REQUEST.set("req-7".to_string());
        ID.set(1);
        let child = spawn(|| {
            let seen = (REQUEST.get(), ID.get());
            // The child's copy is its own.
            REQUEST.set("changed by the child".to_string());
            let grandchild = spawn(|| REQUEST.get()).wait().unwrap();
            (seen, grandchild)
        });
        let (seen, grandchild) = child.wait().unwrap();
        (seen, grandchild, REQUEST.get())
    });
    let (seen, grandchild, parent_after) = t.wait().unwrap();
    assert_eq!(seen, (Some("req-7".to_string()), None));
    assert_eq!(grandchild.as_deref(), Some("changed by the child"));
    assert_eq!(parent_after.as_deref(), Some("req-7"));

    // A delayed spawn inherits what was set when it was asked for, and an OS thread's value
    // is inherited like a green thread's.
    let later = REQUEST.scope("at spawn time".to_string(), || {
        spawn_after(Duration::from_millis(1), || REQUEST.get())
    });
    assert_eq!(later.wait().unwrap().as_deref(), Some("at spawn time"));
    assert_eq!(REQUEST.get(), None, "scope put back what was there");
}

#[test]
fn values_drop_with_their_thread_and_scope_restores_on_unwind() {
    let shared = Arc::new(());
    let s = shared.clone();
    let t = spawn(move || {
        HELD.set(s);
        greenhub::sleep(Duration::from_secs(60)).ok();
    });
    while Arc::strong_count(&shared) == 1 {
        std::thread::sleep(Duration::from_millis(1));
    }
    t.kill();
    assert!(t.wait().is_err());
    // The coroutine's storage goes when `may` recycles it; wait for that.
    let t0 = std::time::Instant::now();
    while Arc::strong_count(&shared) > 1 {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "a dead thread's value lives on"
        );
        std::thread::sleep(Duration::from_millis(1));
    }

    REQUEST.set("outer".to_string());
    let unwound = std::panic::catch_unwind(|| {
        REQUEST.scope("inner".to_string(), || panic!("in the scope"));
    });
    assert!(unwound.is_err());
    assert_eq!(REQUEST.take().as_deref(), Some("outer"));
}
