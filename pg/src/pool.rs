//! [`Pool`]: connections shared by many green threads, on greenhub's item pool (its waits in
//! arrival order, deadlines, snapshot books and leak reports), with the checks a PostgreSQL
//! connection needs: a closed connection is never handed out, and one returned inside a
//! transaction is discarded rather than handed to someone else mid-transaction.
//!
//! It uses `client` and `error`.

use std::time::Duration;

use crate::Config;
use crate::client::{Client, Param};
use crate::error::Error;
use crate::row::Row;

/// A connection checked out of a [`Pool`]: derefs to [`Client`], and goes back when dropped.
pub type PooledClient = greenhub::pool::Pooled<Client>;

/// A pool of connections for green threads: a handle, cheap to clone.
///
/// Connections are made on demand (in the getter's green thread) up to `max_size`; a getter
/// that finds them all out waits in arrival order, until the enclosing deadline scope.
/// The one-call helpers ([`Pool::query`] and the rest) check a connection out for one call.
///
/// ```no_run
/// use greenhub_pg::Pool;
///
/// let pool = Pool::builder("host=127.0.0.1 user=app password=secret dbname=app")?
///     .max_size(16)
///     .build()?;
/// let threads: Vec<_> = (1..=100_i32)
///     .map(|i| {
///         let pool = pool.clone();
///         greenhub::spawn(move || pool.query_one("SELECT $1::int4 * 2", &[&i]))
///     })
///     .collect();
/// for t in threads {
///     let row = t.wait().unwrap()?;
///     let _doubled: i32 = row.get(0)?;
/// }
/// # Ok::<(), greenhub_pg::Error>(())
/// ```
#[derive(Clone)]
pub struct Pool {
    items: greenhub::pool::Pool<Client>,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("id", &self.items.id())
            .field("size", &self.items.size())
            .field("idle", &self.items.idle())
            .field("max_size", &self.items.max_size())
            .finish()
    }
}

/// Settings of a [`Pool`] before it is built.
#[derive(Debug)]
pub struct PoolBuilder {
    config: Config,
    max_size: usize,
    min_size: usize,
    name: String,
    max_lifetime: Option<Duration>,
    idle_timeout: Option<Duration>,
    leak_threshold: Option<Duration>,
}

impl PoolBuilder {
    /// At most `n` connections at once (default 10; at least 1).
    pub fn max_size(mut self, n: usize) -> Self {
        self.max_size = n;
        self
    }

    /// Connects `n` when the pool is built (default 0).
    pub fn min_size(mut self, n: usize) -> Self {
        self.min_size = n;
        self
    }

    /// The pool's name in the snapshot and its reports (default `"postgres"`).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// Closes a connection older than this at its next checkout (default 30 minutes).
    pub fn max_lifetime(mut self, age: Option<Duration>) -> Self {
        self.max_lifetime = age;
        self
    }

    /// Closes a connection idle longer than this at its next checkout (default 10 minutes).
    pub fn idle_timeout(mut self, idle: Option<Duration>) -> Self {
        self.idle_timeout = idle;
        self
    }

    /// Reports (through `log`) a checkout held longer than this (default none).
    pub fn leak_threshold(mut self, held: Option<Duration>) -> Self {
        self.leak_threshold = held;
        self
    }

    /// The pool, with its `min_size` connections made (in the caller, which must be a
    /// green thread or an OS thread that may block). The first failure is returned.
    pub fn build(self) -> Result<Pool, Error> {
        let config = self.config;
        let mut items = greenhub::pool::Pool::builder(move || Client::connect_with(&config))
            .max_size(self.max_size)
            .min_size(self.min_size)
            .name(self.name)
            .validate(|c: &mut Client| !c.is_closed())
            .recycle(|c: &mut Client| !c.is_closed() && !c.in_transaction());
        if let Some(age) = self.max_lifetime {
            items = items.max_lifetime(age);
        }
        if let Some(idle) = self.idle_timeout {
            items = items.idle_timeout(idle);
        }
        if let Some(held) = self.leak_threshold {
            items = items.leak_threshold(held);
        }
        Ok(Pool {
            items: items.build()?,
        })
    }
}

impl Pool {
    /// A builder for a pool connecting with `conninfo` (libpq's forms, as
    /// [`Client::connect`]); an error if the string does not parse.
    pub fn builder(conninfo: &str) -> Result<PoolBuilder, Error> {
        let config: Config = conninfo
            .parse()
            .map_err(|e: tokio_postgres::Error| Error::Config(e.to_string()))?;
        Ok(Pool::builder_with(config))
    }

    /// A builder for a pool connecting with `config`.
    pub fn builder_with(config: Config) -> PoolBuilder {
        PoolBuilder {
            config,
            max_size: 10,
            min_size: 0,
            name: "postgres".into(),
            max_lifetime: Some(Duration::from_secs(30 * 60)),
            idle_timeout: Some(Duration::from_secs(10 * 60)),
            leak_threshold: None,
        }
    }

    /// A connection, waiting (in arrival order, until the enclosing deadline scope) while
    /// all are out; made here if there is room for one more.
    #[track_caller]
    pub fn get(&self) -> Result<PooledClient, Error> {
        Ok(self.items.get()?)
    }

    /// [`Client::query`] on a connection checked out for the call.
    #[track_caller]
    pub fn query(&self, sql: &str, params: &[Param<'_>]) -> Result<Vec<Row>, Error> {
        self.get()?.query(sql, params)
    }

    /// [`Client::query_one`] on a connection checked out for the call.
    #[track_caller]
    pub fn query_one(&self, sql: &str, params: &[Param<'_>]) -> Result<Row, Error> {
        self.get()?.query_one(sql, params)
    }

    /// [`Client::query_opt`] on a connection checked out for the call.
    #[track_caller]
    pub fn query_opt(&self, sql: &str, params: &[Param<'_>]) -> Result<Option<Row>, Error> {
        self.get()?.query_opt(sql, params)
    }

    /// [`Client::execute`] on a connection checked out for the call.
    #[track_caller]
    pub fn execute(&self, sql: &str, params: &[Param<'_>]) -> Result<u64, Error> {
        self.get()?.execute(sql, params)
    }

    /// [`Client::batch_execute`] on a connection checked out for the call.
    #[track_caller]
    pub fn batch_execute(&self, sql: &str) -> Result<(), Error> {
        self.get()?.batch_execute(sql)
    }

    /// [`Client::transaction`] on a connection checked out for the call.
    #[track_caller]
    pub fn transaction<R>(
        &self,
        f: impl FnOnce(&mut Client) -> Result<R, Error>,
    ) -> Result<R, Error> {
        self.get()?.transaction(f)
    }

    /// How many connections exist (idle and checked out).
    pub fn size(&self) -> usize {
        self.items.size()
    }

    /// How many connections are idle.
    pub fn idle(&self) -> usize {
        self.items.idle()
    }

    /// The most connections the pool makes.
    pub fn max_size(&self) -> usize {
        self.items.max_size()
    }

    /// Changes the most connections the pool makes; past the new size, returned connections
    /// are closed until the pool fits.
    pub fn resize(&self, max_size: usize) {
        self.items.resize(max_size);
    }

    /// The pool's id in greenhub's registry (its object in the snapshot).
    pub fn id(&self) -> u64 {
        self.items.id()
    }
}
