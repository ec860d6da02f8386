//! The timed-out error every greenhub wait returns past its deadline, and the one question
//! asked of every error that can carry it: [`IsTimeout::is_timeout`].

use thiserror::Error;

/// A wait did not complete before its deadline (its own timeout or a `with_timeout` scope).
///
/// Every greenhub error with a timed-out case converts from it, and `io::Error` does too (kind
/// `TimedOut`), so `?` works inside a deadline scope whatever mix of waits the code makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Error)]
#[error("timed out: the deadline passed before the wait completed")]
pub struct TimedOut;

impl From<TimedOut> for std::io::Error {
    fn from(e: TimedOut) -> std::io::Error {
        std::io::Error::new(std::io::ErrorKind::TimedOut, e)
    }
}

/// Whether an error means that a deadline passed: answered the same way by every greenhub
/// error, by `io::Error` (kind `TimedOut`) and by the errors of crates built on greenhub.
///
/// ```
/// use std::time::Duration;
/// use greenhub::timeout::IsTimeout;
/// use greenhub::Queue;
///
/// let q: Queue<u32> = Queue::unbounded();
/// let err = q.get_timeout(Duration::from_millis(1)).unwrap_err();
/// assert!(err.is_timeout());
/// let io: std::io::Error = greenhub::TimedOut.into();
/// assert!(io.is_timeout());
/// ```
pub trait IsTimeout {
    /// `true` when the error is a deadline that passed, not a failure of the operation.
    fn is_timeout(&self) -> bool;
}

impl IsTimeout for TimedOut {
    fn is_timeout(&self) -> bool {
        true
    }
}

impl IsTimeout for std::io::Error {
    fn is_timeout(&self) -> bool {
        self.kind() == std::io::ErrorKind::TimedOut
    }
}
