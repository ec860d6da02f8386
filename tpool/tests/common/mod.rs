//! Helpers shared by the pool's integration tests.

/// How many green threads are parked in a wait right now, by the runtime's snapshot.
pub fn parked() -> usize {
    greenhub::inspect::snapshot()
        .threads
        .iter()
        .filter(|t| t.state == greenhub::inspect::ThreadState::Waiting)
        .count()
}
