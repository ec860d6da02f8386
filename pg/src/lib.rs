//! A PostgreSQL client for greenhub's green threads: the wire protocol spoken on green
//! sockets, so a query parks only the green thread that makes it: no OS thread per call,
//! no hand-off to a pool thread and back.
//!
//! [`Client`] is one connection; [`Pool`] shares connections between green threads. Values
//! go and come in PostgreSQL's binary format through `postgres-types` (`ToSql`, `FromSql`:
//! the same conversions as rust-postgres); messages are built and parsed by
//! `postgres-protocol`; connection strings are parsed as libpq and rust-postgres parse them.
//! Every call ends at the enclosing deadline scope and on a kill (the statement cancelled,
//! the connection closed); a server error leaves the connection usable.
//!
//! ```no_run
//! let pool = greenhub_pg::Pool::builder("postgresql://app:secret@127.0.0.1/app")?
//!     .max_size(16)
//!     .build()?;
//! let row = greenhub::with_timeout(std::time::Duration::from_secs(2), || {
//!     pool.query_one("SELECT id, randomnumber FROM world WHERE id = $1", &[&42_i32])
//! })?;
//! let (id, number): (i32, i32) = (row.get(0)?, row.get("randomnumber")?);
//! # Ok::<(), greenhub_pg::Error>(())
//! ```
//!
//! Not spoken: TLS (use `greenhub-dbpool` with a TLS connector for a remote server),
//! `COPY`, `LISTEN`/`NOTIFY`, and reading types the server defines (enums, domains) other
//! than as raw bytes: cast them in the query (`status::text`). SQLite and other blocking
//! drivers stay on `greenhub-dbpool`, which runs them on OS threads.
//!
//! Modules: `wire` (the socket and the framing of messages), `client` (one connection and
//! its protocol), `row` (statements and rows), `pool` (connections shared), `error`. Imports
//! run `pool` → `client` → `wire`, `row` → `error`.

mod client;
mod error;
mod pool;
mod row;
mod wire;

pub use client::{Client, MAX_STATEMENTS, Param};
pub use error::{DbError, Error};
pub use pool::{Pool, PoolBuilder, PooledClient};
pub use postgres_types as types;
pub use postgres_types::{FromSql, ToSql, Type};
pub use row::{Column, ColumnIndex, Row, Statement};
/// Connection settings, parsed from libpq's connection strings (`host=... user=...`) and
/// URLs (`postgresql://user:password@host:port/db`).
pub use tokio_postgres::Config;
