//! Database connection pools for green threads: eventlet's `db_pool` on r2d2, with what
//! HikariCP taught since.
//!
//! `r2d2::Pool::get` waits on a condvar and database drivers block in their calls: either would
//! freeze every green thread of a worker. Here, waiting for a free connection is a cooperative,
//! first-come-first-served green wait, and every call that can block (connecting, validating,
//! the queries themselves, the rollback of a returned connection) runs on the pool's own
//! [`greenhub_tpool`] threads.
//!
//! ```
//! use greenhub_dbpool::{Pool, SqliteConnectionManager};
//!
//! let pool = Pool::builder().max_size(4).build(SqliteConnectionManager::memory()).unwrap();
//! let answer = greenhub::spawn(move || {
//!     pool.run(|c| c.query_row("SELECT 6 * 7", [], |row| row.get::<_, i64>(0)))
//! });
//! assert_eq!(answer.wait().unwrap().unwrap().unwrap(), 42);
//! ```
//!
//! The rules:
//!
//! - [`Pool::get`] waits up to the pool's `connection_timeout` and never past the enclosing
//!   [`greenhub::with_timeout`] scope; a killed waiter leaves the queue at once.
//! - A [`Conn`] goes back to the pool when dropped, also when its holder panics or is killed,
//!   and also when a call on it is abandoned (deadline, kill): the call's statement is then
//!   stopped on the database (a PostgreSQL cancel request, SQLite's interrupt; see
//!   [`Canceller`]), and the connection returns from the pool thread once the call has ended.
//!   A connection left inside a transaction is rolled back first; one that fails that, that
//!   the driver reports broken, or that a cancel request could still reach, is closed and
//!   replaced.
//! - Connections live at most `max_lifetime`, minus a random jitter of up to a tenth so that
//!   they do not all expire together; an idle one is tested before use once it has sat idle
//!   for `validate_after`.
//! - A connection held longer than `leak_threshold` is reported (through `log`) with its
//!   holder and checkout site, and again when it comes back.
//! - Every pool is in the runtime's snapshot (kind `db pool`) with a [`DbPoolStats`] as detail;
//!   a green thread waiting for a connection shows as waiting on it.
//!
//! SQLite (bundled, embedded: no server) and PostgreSQL work out of the box
//! ([`SqliteConnectionManager`], [`PgManager`] with helpers such as [`Conn::query`]); any other
//! `r2d2::ManageConnection` plugs in by implementing [`Backend`].

mod backend;
mod conn;
pub mod events;
mod job;
mod managed;
mod pool;
mod postgres;
mod statements;
mod stats;

use thiserror::Error;

pub use backend::{Backend, Canceller};

use std::sync::LazyLock;

use greenhub::ext::ObjectKind;

/// The kind of a database pool ("dbpool"): the pool shows in the snapshot under it, and green
/// threads waiting for a connection wait on it.
pub static POOL_KIND: LazyLock<ObjectKind> = LazyLock::new(|| ObjectKind::named("dbpool"));
pub use conn::Conn;
pub use events::{CloseReason, HandleEvent};
pub use pool::{Builder, Pool};
pub use postgres::{Param, PgManager, PgPool};
pub use r2d2;
pub use r2d2_postgres::PostgresConnectionManager;
pub use r2d2_postgres::postgres as pg;
pub use r2d2_sqlite::SqliteConnectionManager;
pub use r2d2_sqlite::rusqlite;
pub use statements::Statements;
pub use stats::{CheckoutInfo, CloseReport, Closed, DbPoolStats, PoolState, SizeAdvice};

/// A pool of SQLite connections.
pub type SqlitePool = Pool<SqliteConnectionManager>;

/// What can go wrong with a pool or a call on one of its connections.
#[derive(Debug, Error)]
pub enum Error {
    /// The pool could not open a connection; the driver's reason. A checkout fails this way
    /// as soon as a connect attempt made while it waits fails with no connection open (a wrong
    /// password, a refused port, a server down), not at its timeout: nothing could be handed
    /// to it sooner. The pool keeps trying in the background, at least once a second.
    #[error("cannot connect to the database: {reason}")]
    Connect {
        /// The driver's last error.
        reason: String,
    },
    /// No connection came free within the pool's `connection_timeout`.
    #[error(
        "timed out after {waited_ms} ms waiting for a connection from pool {pool:?} ({state}); \
         hold connections for less time, or raise max_size or connection_timeout"
    )]
    PoolTimeout {
        /// The pool's name.
        pool: String,
        /// How long the caller waited.
        waited_ms: u64,
        /// The pool when it gave up.
        state: PoolState,
    },
    /// The enclosing [`greenhub::with_timeout`] scope's deadline passed. A statement already
    /// running is cancelled on the database; its connection goes back to the pool once it
    /// has stopped.
    #[error("the enclosing deadline passed while waiting for the database")]
    TimedOut,
    /// The connection broke during the call: the server closed it or went away (an I/O error,
    /// a terminated backend, a server shutting down: SQLSTATE 57P01, 57P02, 57P03 and class
    /// 08). The pool closes it; check out another to retry.
    #[error("the database connection was lost: {reason}; check out another connection to retry")]
    ConnectionLost {
        /// The driver's error.
        reason: String,
    },
    /// The database answered with an error (a failed statement, a constraint, ...); downcast
    /// the source to the driver's error type for details.
    #[error("database error: {}", chain(&**.0))]
    Database(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The code run on the connection panicked; the connection was rolled back and returned.
    #[error("the code run on the database connection panicked: {message}")]
    Panicked {
        /// The panic's message.
        message: String,
    },
    /// The [`Conn`] no longer holds its connection: an earlier call on it was abandoned
    /// (deadline or kill), and the connection went back to the pool when that call ended.
    #[error(
        "this connection went back to the pool when an earlier call on it was abandoned; check out another"
    )]
    Returned,
    /// The pool was closed ([`Pool::close`]): it hands out no more connections.
    #[error("the pool is closed; build a new one")]
    Closed,
    /// The pool's threads were shut down.
    #[error("the pool's thread pool is shut down")]
    ShutDown,
    /// A builder setting out of range.
    #[error("invalid pool setting: {0}")]
    Config(String),
    /// The pool's thread pool could not run the call (no thread could be started, its queue
    /// was full, ...); the tpool's error says which.
    #[error("the pool's thread pool could not run the call: {0}")]
    Threads(#[source] greenhub_tpool::Error),
}

impl Error {
    /// Whether a checkout failed for want of a connection (a timeout, or no connect
    /// succeeding), as opposed to a closed pool or missing threads.
    pub(crate) fn is_checkout_failure(&self) -> bool {
        matches!(
            self,
            Error::TimedOut | Error::PoolTimeout { .. } | Error::Connect { .. }
        )
    }
}

impl From<greenhub::TimedOut> for Error {
    fn from(_: greenhub::TimedOut) -> Error {
        Error::TimedOut
    }
}

impl greenhub::timeout::IsTimeout for Error {
    /// A deadline scope that passed, or the pool's own `connection_timeout`.
    fn is_timeout(&self) -> bool {
        matches!(self, Error::TimedOut | Error::PoolTimeout { .. })
    }
}

/// SQLite's errors, so that `?` works on them inside [`Pool::try_run`] and [`Conn::try_run`].
impl From<rusqlite::Error> for Error {
    fn from(e: rusqlite::Error) -> Error {
        Error::Database(Box::new(e))
    }
}

/// PostgreSQL's errors: a lost connection is [`Error::ConnectionLost`] (a closed connection,
/// an I/O error, the server shutting down or terminating the backend: SQLSTATE 57P01, 57P02,
/// 57P03, and class 08, connection exceptions), anything else a database error.
impl From<pg::Error> for Error {
    fn from(e: pg::Error) -> Error {
        if connection_lost(&e) {
            Error::ConnectionLost { reason: chain(&e) }
        } else {
            Error::Database(Box::new(e))
        }
    }
}

/// Whether a PostgreSQL error means the connection is gone.
fn connection_lost(e: &pg::Error) -> bool {
    use pg::error::SqlState;
    if e.is_closed() {
        return true;
    }
    if let Some(db) = e.as_db_error() {
        // A FATAL or PANIC error ends the session, whatever its code.
        return matches!(db.severity(), "FATAL" | "PANIC")
            || [
                SqlState::ADMIN_SHUTDOWN,
                SqlState::CRASH_SHUTDOWN,
                SqlState::CANNOT_CONNECT_NOW,
            ]
            .contains(db.code())
            || db.code().code().starts_with("08");
    }
    // An I/O error of the connection itself (reset by peer, broken pipe, end of stream); the
    // driver's refusals to encode a value (a NUL in a string, too many parameters) are
    // I/O errors of other kinds and leave the connection as it was.
    std::error::Error::source(e)
        .and_then(|s| s.downcast_ref::<std::io::Error>())
        .is_some_and(|io| {
            use std::io::ErrorKind as K;
            matches!(
                io.kind(),
                K::ConnectionReset
                    | K::ConnectionAborted
                    | K::BrokenPipe
                    | K::UnexpectedEof
                    | K::NotConnected
                    | K::TimedOut
            )
        })
}

/// An error and its sources, joined: drivers often say only "db error" at the top.
pub(crate) fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let more = s.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        source = s.source();
    }
    text
}

impl From<greenhub_tpool::Error> for Error {
    fn from(e: greenhub_tpool::Error) -> Error {
        use greenhub_tpool::Error as T;
        match e {
            T::TimedOut => Error::TimedOut,
            T::Panicked { message, .. } => Error::Panicked { message },
            T::ShutDown => Error::ShutDown,
            other => Error::Threads(other),
        }
    }
}
