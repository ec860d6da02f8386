//! What a pool needs to know about a driver beyond r2d2's `ManageConnection`: how to tell
//! whether a returned connection is inside a transaction, and how to roll it back.

use r2d2::ManageConnection;
use r2d2_postgres::PostgresConnectionManager;
use r2d2_postgres::postgres::Socket;
use r2d2_postgres::postgres::tls::{MakeTlsConnect, TlsConnect};
use r2d2_sqlite::SqliteConnectionManager;

/// A connection manager the pool can clean up after: implement it to plug another blocking
/// driver in. Both methods are called on a pool thread, never on a green thread's worker.
///
/// ```
/// use greenhub_dbpool::{Backend, r2d2::ManageConnection};
///
/// struct Fake;
/// impl ManageConnection for Fake {
///     type Connection = Vec<String>;
///     type Error = std::io::Error;
///     fn connect(&self) -> Result<Vec<String>, std::io::Error> { Ok(Vec::new()) }
///     fn is_valid(&self, _: &mut Vec<String>) -> Result<(), std::io::Error> { Ok(()) }
///     fn has_broken(&self, _: &mut Vec<String>) -> bool { false }
/// }
/// impl Backend for Fake {
///     fn in_transaction(log: &mut Vec<String>) -> Option<bool> {
///         Some(log.last().map(String::as_str) == Some("BEGIN"))
///     }
///     fn rollback(log: &mut Vec<String>) -> Result<(), std::io::Error> {
///         log.push("ROLLBACK".into());
///         Ok(())
///     }
/// }
/// ```
pub trait Backend: ManageConnection {
    /// Whether the connection is inside a transaction, or `None` when the driver cannot tell:
    /// then the pool rolls back every connection whose state it does not know (one used
    /// through [`Conn::run`](crate::Conn::run), or interrupted mid-call).
    fn in_transaction(conn: &mut Self::Connection) -> Option<bool>;

    /// Rolls back the open transaction, if any. An error closes the connection.
    fn rollback(conn: &mut Self::Connection) -> Result<(), Self::Error>;

    /// Puts back the session settings the pool's own helpers change (PostgreSQL: the
    /// `statement_timeout` set from a caller's deadline) before code the pool does not see
    /// into ([`Pool::run`](crate::Pool::run), [`Conn::run`](crate::Conn::run)) runs on the
    /// connection. Called only after a helper changed one; the default does nothing.
    fn reset_session(conn: &mut Self::Connection) -> Result<(), Self::Error> {
        let _ = conn;
        Ok(())
    }

    /// What stops the statement running on `conn` from another thread, taken on the pool
    /// thread just before a caller's call runs; used when that caller leaves (deadline,
    /// kill) before the call ends. `None` (the default): the call runs to its end.
    fn canceller(&self, conn: &mut Self::Connection) -> Option<Canceller> {
        let _ = conn;
        None
    }
}

/// Stops a running statement from another thread: a PostgreSQL cancel request, SQLite's
/// interrupt. It runs on one of the pool's threads, never on a worker. A cancel that reaches
/// the database before the statement does is lost, so the pool sends it again (after 50 ms,
/// then doubling up to a second) for as long as the statement runs.
pub struct Canceller {
    stop: Box<dyn Fn() -> Result<(), String> + Send + Sync>,
    late: bool,
}

impl Canceller {
    /// A canceller that has taken effect, or never will, when it returns (SQLite's
    /// interrupt, which is a no-op once no statement runs): the connection serves on after it.
    pub fn immediate(stop: impl Fn() -> Result<(), String> + Send + Sync + 'static) -> Canceller {
        Canceller {
            stop: Box::new(stop),
            late: false,
        }
    }

    /// A canceller whose effect may land after it returns (a PostgreSQL cancel request is
    /// a message to the server, acted on asynchronously, under load tens of milliseconds
    /// later, and nothing says when it has been): it could stop a later statement on the same
    /// connection, so once one has been sent the pool closes the connection when the
    /// statement ends, and opens another as needed.
    pub fn may_land_late(
        stop: impl Fn() -> Result<(), String> + Send + Sync + 'static,
    ) -> Canceller {
        Canceller {
            stop: Box::new(stop),
            late: true,
        }
    }

    /// Whether its effect may land after it returns.
    pub(crate) fn lands_late(&self) -> bool {
        self.late
    }

    /// Sends it; the driver's error if it could not be sent.
    pub(crate) fn send(&self) -> Result<(), String> {
        (self.stop)()
    }
}

impl std::fmt::Debug for Canceller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Canceller")
            .field("late", &self.late)
            .finish()
    }
}

impl Backend for SqliteConnectionManager {
    fn in_transaction(conn: &mut rusqlite::Connection) -> Option<bool> {
        Some(!conn.is_autocommit())
    }

    fn rollback(conn: &mut rusqlite::Connection) -> Result<(), rusqlite::Error> {
        if conn.is_autocommit() {
            Ok(())
        } else {
            conn.execute_batch("ROLLBACK")
        }
    }

    /// SQLite's interrupt: the running statement fails with `SQLITE_INTERRUPT`; with none
    /// running it does nothing.
    fn canceller(&self, conn: &mut rusqlite::Connection) -> Option<Canceller> {
        let handle = conn.get_interrupt_handle();
        Some(Canceller::immediate(move || {
            handle.interrupt();
            Ok(())
        }))
    }
}

use r2d2_sqlite::rusqlite;

impl<T> Backend for PostgresConnectionManager<T>
where
    T: MakeTlsConnect<Socket> + Clone + 'static + Sync + Send,
    T::TlsConnect: Send,
    T::Stream: Send,
    <T::TlsConnect as TlsConnect<Socket>>::Future: Send,
{
    /// The `postgres` driver does not expose the server's transaction status, so the pool
    /// tracks what its own helpers did and rolls back when it cannot know.
    fn in_transaction(_: &mut r2d2_postgres::postgres::Client) -> Option<bool> {
        None
    }

    fn rollback(
        conn: &mut r2d2_postgres::postgres::Client,
    ) -> Result<(), r2d2_postgres::postgres::Error> {
        // Outside a transaction the server answers with a warning, not an error.
        conn.batch_execute("ROLLBACK")
    }

    fn reset_session(
        conn: &mut r2d2_postgres::postgres::Client,
    ) -> Result<(), r2d2_postgres::postgres::Error> {
        conn.batch_execute("SET statement_timeout TO DEFAULT")
    }

    /// A cancel request for the connection's backend, sent without TLS: the server accepts
    /// cancel requests on a plain connection unless it demands TLS of every client, and then
    /// the request fails and the statement runs to its end.
    fn canceller(&self, conn: &mut r2d2_postgres::postgres::Client) -> Option<Canceller> {
        let token = conn.cancel_token();
        Some(Canceller::may_land_late(move || {
            token
                .cancel_query(r2d2_postgres::postgres::NoTls)
                .map_err(|e| crate::chain(&e))
        }))
    }
}
