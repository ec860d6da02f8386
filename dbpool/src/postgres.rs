//! PostgreSQL: the manager type and helpers that run one statement (or one transaction) per
//! call on a pool thread, tracking whether they leave a transaction open so that a clean
//! connection is returned without a rollback round trip. The helpers' statements are prepared
//! once per connection and kept (up to 256), so a repeated query costs one round trip; one
//! whose result type the schema changed is prepared again.

use std::collections::HashMap;

use r2d2_postgres::PostgresConnectionManager;
use r2d2_postgres::postgres::error::SqlState;
use r2d2_postgres::postgres::types::ToSql;
use r2d2_postgres::postgres::{Client, Error as PgError, NoTls, Row, Statement, Transaction};

use crate::conn::Presence;
use crate::managed::{CloseReason, Tracked};
use crate::{Conn, Error, Pool};

/// The PostgreSQL manager without TLS (loopback and trusted networks).
///
/// ```no_run
/// use greenhub_dbpool::{PgManager, PgPool, Pool};
///
/// let manager = PgManager::new("host=127.0.0.1 user=app dbname=app".parse()?, greenhub_dbpool::pg::NoTls);
/// let pool: PgPool = Pool::builder().max_size(8).build(manager)?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub type PgManager = PostgresConnectionManager<NoTls>;

/// A pool of PostgreSQL connections.
pub type PgPool = Pool<PgManager>;

/// An owned query parameter: parameters travel to a pool thread, so they are owned, not
/// borrowed. `Box::new(42_i32) as Param`, or a `Vec<Param>` built with `params`.
pub type Param = Box<dyn ToSql + Send + Sync>;

/// One of the driver's parameterised calls (`query`, `query_one`, `execute`).
type Run<R> = fn(&mut Client, &Statement, &[&(dyn ToSql + Sync)]) -> Result<R, PgError>;

/// A connection's prepared statements, by their SQL: a helper's statement is parsed by the
/// server once per connection, and each later use is one round trip instead of two.
#[derive(Default)]
struct Statements(HashMap<String, Statement>);

/// Past this many, a connection's statements are all forgotten (the server closes them).
const MAX_STATEMENTS: usize = 256;

/// The prepared statement for `sql` on this connection, preparing it the first time.
fn prepared(t: &mut Tracked<Client>, sql: &str) -> Result<Statement, Error> {
    let cache = t
        .cache
        .get_or_insert_with(|| Box::new(Statements::default()));
    let Some(Statements(cache)) = cache.downcast_mut::<Statements>() else {
        return t.conn.prepare(sql).map_err(Error::from);
    };
    if let Some(statement) = cache.get(sql) {
        return Ok(statement.clone());
    }
    let statement = t.conn.prepare(sql).map_err(Error::from)?;
    if cache.len() >= MAX_STATEMENTS {
        cache.clear();
    }
    cache.insert(sql.to_string(), statement.clone());
    Ok(statement)
}

/// Forgets `sql`'s statement after an error: the schema may have changed under it.
fn forget(t: &mut Tracked<Client>, sql: &str) {
    if let Some(Statements(cache)) = t.cache.as_mut().and_then(|c| c.downcast_mut()) {
        cache.remove(sql);
    }
}

/// Whether statements may open a transaction the pool must roll back at check-in: any of
/// them, after leading comments, starting with BEGIN or START. A `;` inside a string can only
/// make this say yes more often (one extra rollback), never miss a BEGIN.
fn opens_transaction(sql: &str) -> bool {
    sql.split(';').any(|statement| {
        let word: String = skip_comments(statement)
            .chars()
            .take_while(|c| c.is_ascii_alphabetic())
            .collect();
        word.eq_ignore_ascii_case("begin") || word.eq_ignore_ascii_case("start")
    })
}

fn skip_comments(mut s: &str) -> &str {
    loop {
        s = s.trim_start();
        if let Some(rest) = s.strip_prefix("--") {
            s = rest.split_once('\n').map_or("", |(_, after)| after);
        } else if let Some(rest) = s.strip_prefix("/*") {
            s = rest.split_once("*/").map_or("", |(_, after)| after);
        } else {
            return s;
        }
    }
}

/// Runs one statement on the connection, keeping the transaction flag honest.
fn statement<R>(
    t: &mut Tracked<Client>,
    sql: &str,
    run: impl FnOnce(&mut Tracked<Client>) -> Result<R, Error>,
) -> Result<R, Error> {
    let before = t.dirty;
    // Interrupted (a panic, a kill) means unknown: roll back.
    t.dirty = true;
    let result = run(t);
    t.dirty = before || opens_transaction(sql);
    match &result {
        // Gone, whatever the driver says of it yet: never handed out again.
        Err(Error::ConnectionLost { .. }) => t.close = Some(CloseReason::Broken),
        // A cancel request has landed: none can stop a later statement.
        Err(Error::Database(e))
            if e.downcast_ref::<PgError>().and_then(PgError::code)
                == Some(&SqlState::QUERY_CANCELED) =>
        {
            t.cancel_seen = true;
        }
        _ => {}
    }
    result
}

/// One parameterised statement, as a job for a pool thread.
fn with_params<R: Send + 'static>(
    sql: &str,
    params: Vec<Param>,
    run: Run<R>,
) -> impl FnOnce(&mut Tracked<Client>, &Presence) -> Result<R, Error> + Send + 'static {
    let sql = sql.to_string();
    move |t, _| {
        // Outside a transaction, a statement the schema changed under can be prepared again.
        let may_retry = !t.dirty;
        statement(t, &sql, |t| {
            let params: Vec<&(dyn ToSql + Sync)> =
                params.iter().map(|p| &**p as &(dyn ToSql + Sync)).collect();
            let mut tries = if may_retry { 2 } else { 1 };
            loop {
                let prepared = prepared(t, &sql)?;
                match run(&mut t.conn, &prepared, &params) {
                    Ok(value) => return Ok(value),
                    Err(e) => {
                        forget(t, &sql);
                        tries -= 1;
                        if tries == 0 || e.code() != Some(&SqlState::FEATURE_NOT_SUPPORTED) {
                            return Err(Error::from(e));
                        }
                    }
                }
            }
        })
    }
}

/// Statements without parameters, as a job for a pool thread.
fn batch(
    sql: &str,
) -> impl FnOnce(&mut Tracked<Client>, &Presence) -> Result<(), Error> + Send + use<> {
    let sql = sql.to_string();
    move |t, _| statement(t, &sql, |t| t.conn.batch_execute(&sql).map_err(Error::from))
}

/// A transaction, as a job for a pool thread: never committed once its caller has gone.
fn transaction<R, F>(
    f: F,
) -> impl FnOnce(&mut Tracked<Client>, &Presence) -> Result<R, Error> + Send
where
    F: FnOnce(&mut Transaction<'_>) -> Result<R, PgError> + Send,
{
    move |t, presence| {
        statement(t, "", |t| {
            let mut tx = t.conn.transaction().map_err(Error::from)?;
            let value = f(&mut tx).map_err(Error::from)?;
            if !presence.commit() {
                // Nobody waits for the outcome any more: dropping `tx` rolls it back.
                return Err(Error::TimedOut);
            }
            tx.commit().map_err(Error::from)?;
            Ok(value)
        })
    }
}

impl Conn<PgManager> {
    /// Runs a query and returns its rows.
    ///
    /// ```no_run
    /// # fn f(conn: &mut greenhub_dbpool::Conn<greenhub_dbpool::PgManager>) -> Result<(), greenhub_dbpool::Error> {
    /// use greenhub_dbpool::Param;
    /// let rows = conn.query("SELECT $1::int + 1", vec![Box::new(41_i32) as Param])?;
    /// assert_eq!(rows[0].get::<_, i32>(0), 42);
    /// # Ok(()) }
    /// ```
    #[track_caller]
    pub fn query(&mut self, sql: &str, params: Vec<Param>) -> Result<Vec<Row>, Error> {
        self.call(with_params(sql, params, |c, sql, p| c.query(sql, p)))?
    }

    /// Runs a query that returns exactly one row.
    #[track_caller]
    pub fn query_one(&mut self, sql: &str, params: Vec<Param>) -> Result<Row, Error> {
        self.call(with_params(sql, params, |c, sql, p| c.query_one(sql, p)))?
    }

    /// Runs a statement and returns how many rows it changed.
    #[track_caller]
    pub fn execute(&mut self, sql: &str, params: Vec<Param>) -> Result<u64, Error> {
        self.call(with_params(sql, params, |c, sql, p| c.execute(sql, p)))?
    }

    /// Runs statements separated by semicolons, without parameters.
    #[track_caller]
    pub fn batch_execute(&mut self, sql: &str) -> Result<(), Error> {
        self.call(batch(sql))?
    }

    /// Runs `f` in a transaction on a pool thread: committed when `f` returns `Ok`, rolled
    /// back when it returns `Err` or panics, and when its caller stopped waiting (killed, or
    /// past its deadline) before `f` finished: work nobody hears the outcome of is never
    /// committed.
    #[track_caller]
    pub fn transaction<R, F>(&mut self, f: F) -> Result<R, Error>
    where
        R: Send + 'static,
        F: FnOnce(&mut Transaction<'_>) -> Result<R, PgError> + Send + 'static,
    {
        self.call(transaction(f))?
    }
}

/// The same helpers on the pool: each checks a connection out, runs and returns it in one
/// call on a pool thread.
impl Pool<PgManager> {
    /// [`Conn::query`] on a connection checked out for it.
    #[track_caller]
    pub fn query(&self, sql: &str, params: Vec<Param>) -> Result<Vec<Row>, Error> {
        self.call(with_params(sql, params, |c, sql, p| c.query(sql, p)))?
    }

    /// [`Conn::query_one`] on a connection checked out for it.
    #[track_caller]
    pub fn query_one(&self, sql: &str, params: Vec<Param>) -> Result<Row, Error> {
        self.call(with_params(sql, params, |c, sql, p| c.query_one(sql, p)))?
    }

    /// [`Conn::execute`] on a connection checked out for it.
    #[track_caller]
    pub fn execute(&self, sql: &str, params: Vec<Param>) -> Result<u64, Error> {
        self.call(with_params(sql, params, |c, sql, p| c.execute(sql, p)))?
    }

    /// [`Conn::batch_execute`] on a connection checked out for it.
    #[track_caller]
    pub fn batch_execute(&self, sql: &str) -> Result<(), Error> {
        self.call(batch(sql))?
    }

    /// [`Conn::transaction`] on a connection checked out for it.
    #[track_caller]
    pub fn transaction<R, F>(&self, f: F) -> Result<R, Error>
    where
        R: Send + 'static,
        F: FnOnce(&mut Transaction<'_>) -> Result<R, PgError> + Send + 'static,
    {
        self.call(transaction(f))?
    }
}

#[cfg(test)]
mod tests {
    use super::opens_transaction;

    #[test]
    fn statements_that_open_a_transaction_are_recognised() {
        assert!(opens_transaction("BEGIN"));
        assert!(opens_transaction("  begin isolation level serializable"));
        assert!(opens_transaction("START TRANSACTION"));
        assert!(!opens_transaction("SELECT 1"));
        assert!(!opens_transaction("COMMIT"));
        assert!(!opens_transaction("beginning")); // not a keyword
        assert!(opens_transaction("SET search_path TO x; BEGIN"));
        assert!(opens_transaction("/* tag */ BEGIN"));
        assert!(opens_transaction("-- note\nstart transaction"));
        assert!(!opens_transaction("SELECT 1; -- BEGIN"));
    }
}
