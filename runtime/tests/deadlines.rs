//! Deadline scopes: the rules of `with_timeout`, across nesting and every kind of wait.

use std::time::{Duration, Instant};

use greenhub::wait::{ObjectKind, WaitOn, Waiter};
use greenhub::{sleep, spawn, with_timeout, JoinError, TimedOut};

const SHORT: Duration = Duration::from_millis(30);
const LONG: Duration = Duration::from_secs(30);

/// Runs `f` in a green thread and returns how long it took and what it returned.
fn timed<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> (Duration, T) {
    spawn(move || {
        let t0 = Instant::now();
        let v = f();
        (t0.elapsed(), v)
    })
    .wait()
    .unwrap()
}

fn assert_cut_short(took: Duration) {
    assert!(took >= SHORT, "returned before the deadline: {took:?}");
    assert!(
        took < Duration::from_secs(10),
        "the deadline did not cut the wait: {took:?}"
    );
}

#[test]
fn sleep_is_cut_short_by_the_scope() {
    let (took, r) = timed(|| with_timeout(SHORT, || sleep(LONG)));
    assert_cut_short(took);
    assert_eq!(r, Err(TimedOut), "the scope reports the timeout");
}

#[test]
fn the_inner_wait_sees_the_error_and_can_propagate_it() {
    let (took, r) = timed(|| {
        with_timeout(SHORT, || -> Result<u32, TimedOut> {
            sleep(LONG)?;
            Ok(1)
        })
    });
    assert_cut_short(took);
    assert_eq!(r, Err(TimedOut));
}

#[test]
fn a_scope_that_is_not_exceeded_returns_the_value() {
    let (_, r) = timed(|| {
        with_timeout(LONG, || {
            sleep(Duration::from_millis(5)).unwrap();
            42
        })
    });
    assert_eq!(r, Ok(42));
}

#[test]
fn a_sleep_shorter_than_the_scope_succeeds() {
    let (_, r) = timed(|| with_timeout(LONG, || sleep(Duration::from_millis(5))));
    assert_eq!(r, Ok(Ok(())));
}

#[test]
fn nested_scopes_take_the_earliest_when_the_outer_is_shorter() {
    let (took, (outer, inner_seen)) = timed(|| {
        let mut inner_seen = None;
        let outer = with_timeout(SHORT, || {
            inner_seen = Some(with_timeout(LONG, || sleep(LONG)));
        });
        (outer, inner_seen)
    });
    assert_cut_short(took);
    assert_eq!(outer, Err(TimedOut));
    assert_eq!(
        inner_seen,
        Some(Err(TimedOut)),
        "the inner scope cannot extend the outer"
    );
}

#[test]
fn nested_scopes_take_the_earliest_when_the_inner_is_shorter() {
    let (took, r) = timed(|| {
        with_timeout(LONG, || {
            let inner = with_timeout(SHORT, || sleep(LONG));
            // The inner expired; the outer still has time, so waits work again.
            let after = sleep(Duration::from_millis(1));
            (inner, after, greenhub::deadline().is_some())
        })
    });
    assert_cut_short(took);
    let (inner, after, still_scoped) = r.unwrap();
    assert_eq!(inner, Err(TimedOut));
    assert_eq!(after, Ok(()));
    assert!(
        still_scoped,
        "leaving the inner scope restores the outer one"
    );
}

#[test]
fn the_scope_is_restored_when_the_closure_panics() {
    let r = spawn(|| {
        let caught = std::panic::catch_unwind(|| with_timeout(SHORT, || panic!("inside")));
        (caught.is_err(), greenhub::deadline())
    })
    .wait()
    .unwrap();
    assert_eq!(r, (true, None));
}

#[test]
fn a_wait_started_after_the_deadline_fails_at_once() {
    let (scope, inner) = spawn(|| {
        let mut inner = None;
        let scope = with_timeout(Duration::from_millis(1), || {
            std::thread::sleep(Duration::from_millis(5)); // computes past the deadline
            let t0 = Instant::now();
            inner = Some((sleep(LONG), t0.elapsed()));
        });
        (scope, inner)
    })
    .wait()
    .unwrap();
    assert_eq!(scope, Err(TimedOut));
    let (r, took) = inner.unwrap();
    assert_eq!(r, Err(TimedOut));
    assert!(took < Duration::from_millis(50), "{took:?}");
}

#[test]
fn a_computation_that_overruns_gets_err_even_without_waiting() {
    let r = with_timeout(Duration::from_millis(1), || {
        std::thread::sleep(Duration::from_millis(5));
        1
    });
    assert_eq!(r, Err(TimedOut));
}

#[test]
fn joining_a_thread_is_cut_short() {
    let (took, (scope, joined, id)) = timed(|| {
        let slow = spawn(|| sleep(LONG));
        let id = slow.id();
        let mut joined = None;
        let scope = with_timeout(SHORT, || joined = Some(slow.wait()));
        (scope, joined, id)
    });
    assert_cut_short(took);
    assert_eq!(scope, Err(TimedOut));
    match joined {
        Some(Err(JoinError::TimedOut { id: got })) => assert_eq!(got, id),
        other => panic!("expected a timed-out join, got {other:?}"),
    }
}

#[test]
fn wait_timeout_on_a_thread_takes_the_earlier_deadline() {
    let (took, r) = timed(|| {
        let slow = spawn(|| sleep(LONG));
        let r = with_timeout(SHORT, || slow.wait_timeout(LONG));
        slow.kill();
        r
    });
    assert_cut_short(took);
    assert_eq!(r, Err(TimedOut));
}

#[test]
fn a_raw_waiter_honours_the_scope_and_its_own_timeout() {
    let (took, r) = timed(|| {
        with_timeout(SHORT, || {
            Waiter::new(
                WaitOn::Object {
                    object: ObjectKind::Other,
                    id: 1,
                },
                Some(LONG),
            )
            .wait()
        })
    });
    assert_cut_short(took);
    assert_eq!(r, Err(TimedOut));
    let (took, r) = timed(|| {
        with_timeout(LONG, || {
            Waiter::new(
                WaitOn::Object {
                    object: ObjectKind::Other,
                    id: 2,
                },
                Some(SHORT),
            )
            .wait()
        })
    });
    assert_cut_short(took);
    assert_eq!(
        r,
        Ok(Err(TimedOut)),
        "its own timeout fired; the scope did not expire"
    );
}

#[test]
fn scopes_work_on_os_threads_too() {
    let t0 = Instant::now();
    let r = with_timeout(SHORT, || sleep(LONG));
    assert_cut_short(t0.elapsed());
    assert_eq!(r, Err(TimedOut));
    assert!(greenhub::deadline().is_none());
}

#[test]
fn scopes_are_not_inherited_by_spawned_threads() {
    let child = spawn(|| with_timeout(LONG, || spawn(|| greenhub::deadline().is_none())))
        .wait()
        .unwrap()
        .unwrap();
    assert!(child.wait().unwrap());
}

#[test]
fn many_concurrent_scopes_each_fire_at_their_own_time() {
    let threads: Vec<_> = (0..300u64)
        .map(|i| {
            spawn(move || {
                let budget = Duration::from_millis(10 + i % 30);
                let t0 = Instant::now();
                let r = with_timeout(budget, || sleep(LONG));
                (r, t0.elapsed(), budget)
            })
        })
        .collect();
    for t in threads {
        let (r, took, budget) = t.wait().unwrap();
        assert_eq!(r, Err(TimedOut));
        assert!(took >= budget, "fired early: {took:?} < {budget:?}");
        assert!(
            took < budget + Duration::from_secs(5),
            "fired far too late: {took:?}"
        );
    }
}
