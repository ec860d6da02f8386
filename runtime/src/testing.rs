//! Leak checks for tests, like Go's goleak but aware of greenhub's objects: a test that leaves
//! green threads running, or a lock, item or database connection held by one of its threads,
//! fails with what each one is doing and where it was spawned.
//!
//! The check looks only at the caller's own spawns, so tests that run side by side (cargo's
//! default) do not see each other's threads. Called on a plain OS thread (a test's own thread),
//! it looks at every green thread whose line of spawns began on that OS thread; called on a
//! green thread, at the live threads spawned below it.
//!
//! It uses the registry and the snapshot (to describe what it finds), and sits above both.

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::time::{Duration, Instant};

use greenhub_snapshot::{ObjectKind, ThreadInfo};

use crate::core::context;
use crate::core::registry::{self, registry};
use crate::observe::snapshot::snapshot;

/// How long [`assert_no_leaks`] lets the caller's threads finish before it calls them leaked.
pub const GRACE: Duration = Duration::from_secs(2);

/// What a test left behind: green threads still alive, and units of objects (a lock, a pooled
/// item, a database connection) still held by its threads, live or ended.
#[derive(Clone, Debug, PartialEq)]
pub struct Leaks {
    /// The green threads still alive, as the snapshot shows them.
    pub threads: Vec<ThreadInfo>,
    /// The units still held.
    pub held: Vec<HeldUnit>,
}

/// A unit of an object held by one of the caller's green threads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeldUnit {
    /// The object's kind.
    pub object: ObjectKind,
    /// The object's id.
    pub id: u64,
    /// The object's name, if it has one.
    pub name: Option<String>,
    /// The green thread that holds it.
    pub holder: u64,
    /// Whether that thread is still alive (a unit held by an ended thread was forgotten or
    /// stored away instead of given back).
    pub holder_alive: bool,
}

impl fmt::Display for Leaks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} green thread{} still alive, {} unit{} still held",
            self.threads.len(),
            if self.threads.len() == 1 { "" } else { "s" },
            self.held.len(),
            if self.held.len() == 1 { "" } else { "s" }
        )?;
        for t in &self.threads {
            write!(f, "\n  {}", t.describe())?;
        }
        for h in &self.held {
            write!(f, "\n  {} #{}", h.object.name(), h.id)?;
            if let Some(name) = &h.name {
                write!(f, " \"{}\"", greenhub_snapshot::escape_controls(name))?;
            }
            write!(
                f,
                " held by #{}{}",
                h.holder,
                if h.holder_alive { "" } else { " (ended)" }
            )?;
        }
        Ok(())
    }
}

impl std::error::Error for Leaks {}

/// Whose spawns a check looks at.
enum Scope {
    /// The green threads whose line of spawns began on this OS thread.
    Origin(u64),
    /// The live green threads spawned below this green thread.
    Below(u64),
}

impl Scope {
    fn here() -> Scope {
        match context::current_id() {
            Some(id) => Scope::Below(id),
            None => Scope::Origin(registry::os_thread_mark()),
        }
    }

    /// The live threads in scope, and every thread in scope the registry remembers (live and
    /// recently ended), by id.
    fn threads(&self) -> (BTreeSet<u64>, BTreeSet<u64>) {
        let reg = registry();
        let (live, _) = reg.live_threads();
        match *self {
            Scope::Origin(mark) => {
                let alive: BTreeSet<u64> = live
                    .iter()
                    .filter(|r| r.origin == mark)
                    .map(|r| r.id)
                    .collect();
                let mut known = alive.clone();
                known.extend(
                    reg.finished()
                        .iter()
                        .filter(|f| f.identity.origin == mark)
                        .map(|f| f.identity.id),
                );
                (alive, known)
            }
            Scope::Below(me) => {
                let mut children: HashMap<u64, Vec<u64>> = HashMap::new();
                for r in &live {
                    if let Some(p) = r.parent() {
                        children.entry(p).or_default().push(r.id);
                    }
                }
                let mut alive = BTreeSet::new();
                let mut todo = vec![me];
                while let Some(t) = todo.pop() {
                    for c in children.get(&t).into_iter().flatten() {
                        if alive.insert(*c) {
                            todo.push(*c);
                        }
                    }
                }
                let known = alive.clone();
                (alive, known)
            }
        }
    }
}

/// One look: the caller's live threads and the units its threads hold.
fn look(scope: &Scope) -> (BTreeSet<u64>, Vec<HeldUnit>) {
    let (alive, known) = scope.threads();
    let mut held = Vec::new();
    for object in registry().objects() {
        let holders = object.held_by();
        if holders.iter().any(|h| known.contains(h)) {
            let info = object.inspect();
            for h in holders.into_iter().filter(|h| known.contains(h)) {
                held.push(HeldUnit {
                    object: info.kind,
                    id: info.id,
                    name: info.name.clone(),
                    holder: h,
                    holder_alive: alive.contains(&h),
                });
            }
        }
    }
    held.sort_by_key(|h| (h.id, h.holder));
    (alive, held)
}

/// Checks that the caller's green threads have all ended and hold nothing, giving them up to
/// `grace` to get there (threads being killed, or finishing their last step). See the module
/// documentation for whose threads are the caller's.
///
/// ```
/// use std::time::Duration;
///
/// let t = greenhub::spawn(|| greenhub::sleep(Duration::from_secs(60)));
/// let leaks = greenhub::testing::check_leaks(Duration::from_millis(50)).unwrap_err();
/// assert_eq!(leaks.threads[0].id, t.id());
/// t.kill();
/// greenhub::testing::assert_no_leaks();
/// ```
pub fn check_leaks(grace: Duration) -> Result<(), Leaks> {
    let scope = Scope::here();
    let deadline = Instant::now() + grace;
    loop {
        let (alive, held) = look(&scope);
        if alive.is_empty() && held.is_empty() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            let threads = snapshot()
                .threads
                .into_iter()
                .filter(|t| alive.contains(&t.id))
                .collect();
            return Err(Leaks { threads, held });
        }
        let pause = Duration::from_millis(5);
        if may::coroutine::is_coroutine() {
            let _ = crate::green::time::sleep(pause);
        } else {
            std::thread::sleep(pause);
        }
    }
}

/// Fails the test (panics) if the caller's green threads have not all ended within
/// [`GRACE`], or if they hold a lock, a pooled item or a connection: the message lists each
/// with what it is doing and where it was spawned.
///
/// ```
/// let t = greenhub::spawn(|| 6 * 7);
/// assert_eq!(t.wait().unwrap(), 42);
/// greenhub::testing::assert_no_leaks();
/// ```
#[track_caller]
pub fn assert_no_leaks() {
    if let Err(leaks) = check_leaks(GRACE) {
        panic!("greenhub: a test left {leaks}");
    }
}
