//! What can go wrong, as one enum: the server's own errors ([`DbError`], with their SQLSTATE),
//! the connection's, the caller's (a wrong parameter or column type), and the pool's.
//!
//! It uses nothing else of the crate.

use std::fmt;

use postgres_protocol::message::backend::ErrorFields;
use thiserror::Error;

/// What went wrong in a call of this crate.
#[derive(Debug, Error)]
pub enum Error {
    /// The server answered with an error. The connection stays usable (a transaction it was
    /// in is aborted until rolled back).
    #[error("{0}")]
    Db(Box<DbError>),

    /// No connection to any of the configured hosts could be made.
    #[error("cannot connect to PostgreSQL at {addr}: {source}")]
    Connect {
        /// The host (or socket path) and port tried last.
        addr: String,
        /// Why that attempt failed.
        source: std::io::Error,
    },

    /// The connection string asks for what this client does not do (TLS, Kerberos), or
    /// lacks what it needs (a user name, a password the server asks for).
    #[error("PostgreSQL configuration: {0}")]
    Config(String),

    /// Reading or writing the connection failed; the connection is closed for good.
    #[error("the connection to PostgreSQL failed: {0}")]
    Io(#[source] std::io::Error),

    /// The enclosing deadline scope passed during the call. The statement, if the server
    /// was running it, is cancelled, and the connection is closed (its state is unknown).
    #[error("timed out talking to PostgreSQL; the connection is closed")]
    TimedOut,

    /// The connection broke in an earlier call (an I/O error, a deadline, a kill in the
    /// middle of a statement) and takes no more calls. A pool discards it by itself.
    #[error("the connection is closed after an earlier failure; take another one")]
    Closed,

    /// The server sent something this client did not expect; the connection is closed.
    #[error("unexpected message from PostgreSQL: {0}")]
    Protocol(String),

    /// The statement's text (or a start-up setting) cannot be sent: it holds a NUL byte, or
    /// is too long for one message. Nothing was sent.
    #[error("{0}")]
    Query(String),

    /// The transaction failed on an earlier statement (whose error the caller did not
    /// return) and was rolled back instead of committed.
    #[error("the transaction failed on an earlier statement and was rolled back")]
    Aborted,

    /// The call passed a number of parameters other than the statement's.
    #[error("the statement takes {expected} parameters, {given} were given")]
    ParameterCount {
        /// What the statement takes.
        expected: usize,
        /// What the call passed.
        given: usize,
    },

    /// A parameter could not be written as the type the statement expects. Nothing was sent.
    #[error("parameter {index} cannot be sent as {ty}: {source}")]
    Parameter {
        /// The parameter's position, from 0.
        index: usize,
        /// The type the statement expects there.
        ty: postgres_types::Type,
        /// Why it could not be written.
        source: Box<dyn std::error::Error + Send + Sync>,
    },

    /// A row has no such column.
    #[error("no column {0} in the row")]
    NoColumn(String),

    /// A column's value could not be read as the Rust type asked for.
    #[error("column {column} ({ty}) cannot be read as {rust}: {source}")]
    Column {
        /// The column's name.
        column: String,
        /// The column's PostgreSQL type.
        ty: postgres_types::Type,
        /// The Rust type asked for.
        rust: &'static str,
        /// Why it could not.
        source: Box<dyn std::error::Error + Send + Sync>,
    },

    /// A call that expects exactly one row got another number.
    #[error("expected one row, the query returned {0}")]
    RowCount(usize),

    /// The pool gave no connection (all in use until the deadline, or creating one failed).
    #[error("{0}")]
    Pool(#[from] greenhub::pool::PoolError),
}

impl From<DbError> for Error {
    fn from(e: DbError) -> Error {
        Error::Db(Box::new(e))
    }
}

impl From<greenhub::TimedOut> for Error {
    fn from(_: greenhub::TimedOut) -> Error {
        Error::TimedOut
    }
}

impl greenhub::timeout::IsTimeout for Error {
    fn is_timeout(&self) -> bool {
        matches!(
            self,
            Error::TimedOut | Error::Pool(greenhub::pool::PoolError::TimedOut)
        )
    }
}

impl Error {
    /// The server's error, if this is one.
    pub fn as_db(&self) -> Option<&DbError> {
        match self {
            Error::Db(e) => Some(e.as_ref()),
            _ => None,
        }
    }

    /// The SQLSTATE code of the server's error (`"23505"` for a unique violation), if this
    /// is one.
    pub fn code(&self) -> Option<&str> {
        self.as_db().map(DbError::code)
    }
}

/// An error the server reported: its severity, SQLSTATE code and message, and the detail,
/// hint and position when it gave them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DbError {
    severity: String,
    code: String,
    message: String,
    detail: Option<String>,
    hint: Option<String>,
    position: Option<u32>,
}

impl DbError {
    pub(crate) fn parse(mut fields: ErrorFields<'_>) -> DbError {
        use fallible_iterator::FallibleIterator;
        let mut e = DbError {
            severity: String::new(),
            code: String::new(),
            message: String::new(),
            detail: None,
            hint: None,
            position: None,
        };
        while let Ok(Some(field)) = fields.next() {
            let value = String::from_utf8_lossy(field.value_bytes()).into_owned();
            match field.type_() {
                b'V' => e.severity = value,
                b'S' if e.severity.is_empty() => e.severity = value,
                b'C' => e.code = value,
                b'M' => e.message = value,
                b'D' => e.detail = Some(value),
                b'H' => e.hint = Some(value),
                b'P' => e.position = value.parse().ok(),
                _ => {}
            }
        }
        e
    }

    /// `ERROR`, `FATAL` or `PANIC`.
    pub fn severity(&self) -> &str {
        &self.severity
    }

    /// The SQLSTATE code, five characters (`"42P01"`: undefined table).
    pub fn code(&self) -> &str {
        &self.code
    }

    /// The primary message.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The optional detail.
    pub fn detail(&self) -> Option<&str> {
        self.detail.as_deref()
    }

    /// The optional hint.
    pub fn hint(&self) -> Option<&str> {
        self.hint.as_deref()
    }

    /// Where in the statement's text the error is, in characters from 1.
    pub fn position(&self) -> Option<u32> {
        self.position
    }
}

impl fmt::Display for DbError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}: {}", self.severity, self.code, self.message)?;
        if let Some(d) = &self.detail {
            write!(f, " (detail: {d})")?;
        }
        if let Some(h) = &self.hint {
            write!(f, " (hint: {h})")?;
        }
        Ok(())
    }
}

impl std::error::Error for DbError {}
