//! Deadline scopes: the rules of `with_timeout`, across nesting and every kind of wait.

use std::time::{Duration, Instant};

use greenhub::ext::{ObjectKind, WaitOn, Waiter};
use greenhub::{TimedOut, sleep, spawn, thread::JoinError, with_timeout};

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
    assert_eq!(r, Err(TimedOut), "the sleep reports the deadline");
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
    assert_eq!(r, 42);
}

#[test]
fn a_sleep_shorter_than_the_scope_succeeds() {
    let (_, r) = timed(|| with_timeout(LONG, || sleep(Duration::from_millis(5))));
    assert_eq!(r, Ok(()));
}

#[test]
fn nested_scopes_take_the_earliest_when_the_outer_is_shorter() {
    let (took, r) = timed(|| with_timeout(SHORT, || with_timeout(LONG, || sleep(LONG))));
    assert_cut_short(took);
    assert_eq!(r, Err(TimedOut), "the inner scope cannot extend the outer");
}

#[test]
fn nested_scopes_take_the_earliest_when_the_inner_is_shorter() {
    let (took, r) = timed(|| {
        with_timeout(LONG, || {
            let inner = with_timeout(SHORT, || sleep(LONG));
            // The inner expired; the outer still has time, so waits work again.
            let after = sleep(Duration::from_millis(1));
            (inner, after, greenhub::timeout::deadline().is_some())
        })
    });
    assert_cut_short(took);
    let (inner, after, still_scoped) = r;
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
        (caught.is_err(), greenhub::timeout::deadline())
    })
    .wait()
    .unwrap();
    assert_eq!(r, (true, None));
}

#[test]
fn a_wait_started_after_the_deadline_fails_at_once() {
    let (r, took) = spawn(|| {
        with_timeout(Duration::from_millis(1), || {
            std::thread::sleep(Duration::from_millis(5)); // computes past the deadline
            let t0 = Instant::now();
            (sleep(LONG), t0.elapsed())
        })
    })
    .wait()
    .unwrap();
    assert_eq!(r, Err(TimedOut));
    assert!(took < Duration::from_millis(50), "{took:?}");
}

#[test]
fn a_computation_that_overruns_without_waiting_keeps_its_value() {
    // A deadline is not preemption: code that never waits runs to its end and its value is
    // returned; it can see that the deadline has passed.
    let (r, passed) = with_timeout(Duration::from_millis(1), || {
        std::thread::sleep(Duration::from_millis(5));
        (
            1,
            greenhub::timeout::deadline().is_some_and(|d| Instant::now() >= d),
        )
    });
    assert_eq!((r, passed), (1, true));
}

#[test]
fn joining_a_thread_is_cut_short() {
    let (took, (joined, id)) = timed(|| {
        let slow = spawn(|| sleep(LONG));
        let id = slow.id();
        (with_timeout(SHORT, || slow.wait()), id)
    });
    assert_cut_short(took);
    match joined {
        Err(JoinError::TimedOut { id: got }) => assert_eq!(got, Some(id)),
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
                    object: ObjectKind::OTHER,
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
                    object: ObjectKind::OTHER,
                    id: 2,
                },
                Some(SHORT),
            )
            .wait()
        })
    });
    assert_cut_short(took);
    assert_eq!(r, Err(TimedOut), "its own timeout fired");
}

#[test]
fn scopes_work_on_os_threads_too() {
    let t0 = Instant::now();
    let r = with_timeout(SHORT, || sleep(LONG));
    assert_cut_short(t0.elapsed());
    assert_eq!(r, Err(TimedOut));
    assert!(greenhub::timeout::deadline().is_none());
}

#[test]
fn scopes_are_not_inherited_by_spawned_threads() {
    let child = spawn(|| with_timeout(LONG, || spawn(|| greenhub::timeout::deadline().is_none())))
        .wait()
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

/// Rounds of a hand-off racing a deadline: each round the giver hands over one thing at about
/// the moment the taker's scope ends, on a spread of offsets either side of it.
const RACE_ROUNDS: u64 = 400;

fn race_offset(round: u64) -> Duration {
    // 0 to 2 ms against a 1 ms deadline, so that some land before, some after, many at it.
    Duration::from_micros((round * 37) % 2000)
}

#[test]
fn a_put_landing_at_the_deadline_is_never_lost() {
    let (mut taken, mut left) = (0, 0);
    for round in 0..RACE_ROUNDS {
        let q: greenhub::Queue<u64> = greenhub::Queue::unbounded();
        let giver = {
            let q = q.clone();
            spawn(move || {
                sleep(race_offset(round)).unwrap();
                q.put(round).unwrap();
            })
        };
        let taker = {
            let q = q.clone();
            spawn(move || with_timeout(Duration::from_millis(1), || q.get()))
        };
        let got = taker.wait().unwrap();
        giver.wait().unwrap();
        // The item is either the taker's or still in the queue: never both, never neither.
        match got {
            Ok(item) => {
                assert_eq!(item, round);
                assert!(q.try_get().is_err(), "round {round}: the item is twice");
                taken += 1;
            }
            Err(e) => {
                assert_eq!(e, greenhub::queue::GetError::TimedOut);
                assert_eq!(q.try_get(), Ok(round), "round {round}: the item is lost");
                left += 1;
            }
        }
    }
    assert_eq!(taken + left, RACE_ROUNDS);
}

#[test]
fn a_release_landing_at_the_deadline_is_never_lost() {
    let (mut acquired, mut left) = (0, 0);
    for round in 0..RACE_ROUNDS {
        let sem = greenhub::Semaphore::new(0);
        let giver = {
            let sem = sem.clone();
            spawn(move || {
                sleep(race_offset(round)).unwrap();
                sem.release().unwrap();
            })
        };
        let taker = {
            let sem = sem.clone();
            spawn(move || {
                with_timeout(Duration::from_millis(1), || {
                    sem.acquire().map(greenhub::semaphore::Permit::forget)
                })
            })
        };
        let got = taker.wait().unwrap();
        giver.wait().unwrap();
        // The permit is either the taker's (kept by `forget`) or still free.
        match got {
            Ok(()) => {
                assert_eq!(sem.available(), 0, "round {round}: the permit is twice");
                acquired += 1;
            }
            Err(TimedOut) => {
                assert_eq!(sem.available(), 1, "round {round}: the permit is lost");
                left += 1;
            }
        }
    }
    assert_eq!(acquired + left, RACE_ROUNDS);
}

#[test]
fn every_error_converts_from_timed_out_so_question_mark_works_in_a_scope() {
    use greenhub::event::EventError;
    use greenhub::queue::GetError;
    use greenhub::timeout::IsTimeout;
    // One closure, three kinds of waits, one error type: `?` converts each wait's error.
    let q: greenhub::Queue<u32> = greenhub::Queue::unbounded();
    let ev: greenhub::Event<u32> = greenhub::Event::new();
    let r = with_timeout(SHORT, || -> Result<u32, JoinError> {
        sleep(Duration::from_millis(1))?;
        let t = spawn(|| 5);
        let five = t.wait()?;
        Ok(five + q.get().map_err(|_| TimedOut)?)
    });
    assert!(r.as_ref().is_err_and(|e| e.is_timeout()), "{r:?}");
    let as_io: std::io::Result<()> = with_timeout(SHORT, || Ok(sleep(LONG)?));
    assert!(as_io.is_err_and(|e| e.kind() == std::io::ErrorKind::TimedOut));
    let event: Result<u32, EventError<std::convert::Infallible>> =
        with_timeout(SHORT, || Ok(ev.wait().map_err(|_| TimedOut)?));
    assert!(event.is_err_and(|e| e.is_timeout()));
    assert!(GetError::from(TimedOut).is_timeout());
    assert!(!GetError::Closed.is_timeout());
}

#[test]
fn a_timed_out_join_keeps_the_handle_usable() {
    let slow = spawn(|| sleep(LONG));
    let r = with_timeout(SHORT, || slow.wait());
    assert!(matches!(r, Err(JoinError::TimedOut { .. })), "{r:?}");
    // The same handle still kills and joins the thread; its value is taken once.
    slow.kill();
    assert!(matches!(slow.wait(), Err(JoinError::Killed { .. })));
    assert!(matches!(slow.wait(), Err(JoinError::AlreadyJoined { .. })));
}
