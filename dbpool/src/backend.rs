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
}
