//! PostgreSQL: the manager type and helpers that run one statement (or one transaction) per
//! call on a pool thread, tracking whether they leave a transaction open so that a clean
//! connection is returned without a rollback round trip. The helpers' statements are prepared
//! once per connection and kept (up to 256), so a repeated query costs one round trip; one
//! whose result type the schema changed is prepared again. Behind a pooler in transaction
//! mode they are sent unnamed instead ([`Statements::Unnamed`]). The server's
//! `statement_timeout` can follow the caller's deadline.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use r2d2_postgres::PostgresConnectionManager;
use r2d2_postgres::postgres::error::SqlState;
use r2d2_postgres::postgres::fallible_iterator::FallibleIterator;
use r2d2_postgres::postgres::types::{ToSql, Type};
use r2d2_postgres::postgres::{Client, Error as PgError, NoTls, Row, Statement, Transaction};

use crate::conn::Presence;
use crate::managed::{CloseReason, ServerTimeout, Tracked};
use crate::statements::Statements;
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

/// What the helpers keep per connection: the prepared statements (or the parameter types
/// of unnamed ones) by their SQL.
struct PgState {
    prepared: HashMap<String, Statement>,
    types: HashMap<String, Vec<Type>>,
}

/// The longest `statement_timeout` the server takes.
const MAX_STATEMENT_TIMEOUT: Duration = Duration::from_millis(i32::MAX as u64);

/// Past this many, a connection's statements are all forgotten (the server closes them).
const MAX_STATEMENTS: usize = 256;

fn state(t: &mut Tracked<Client>) -> &mut PgState {
    let cache = t.cache.get_or_insert_with(|| {
        Box::new(PgState {
            prepared: HashMap::new(),
            types: HashMap::new(),
        })
    });
    if !cache.is::<PgState>() {
        *cache = Box::new(PgState {
            prepared: HashMap::new(),
            types: HashMap::new(),
        });
    }
    cache
        .downcast_mut::<PgState>()
        .expect("the cache was just made a PgState")
}

/// The prepared statement for `sql` on this connection, preparing it the first time.
fn prepared(t: &mut Tracked<Client>, sql: &str) -> Result<Statement, Error> {
    if let Some(statement) = state(t).prepared.get(sql) {
        return Ok(statement.clone());
    }
    let statement = t.conn.prepare(sql).map_err(Error::from)?;
    let cache = &mut state(t).prepared;
    if cache.len() >= MAX_STATEMENTS {
        cache.clear();
    }
    cache.insert(sql.to_string(), statement.clone());
    Ok(statement)
}

/// The parameter types of `sql`, learned once per connection without leaving a named
/// statement on a server connection a pooler may hand to another client: prepared and
/// closed inside a transaction (the caller's own if one is open, else a short one).
fn param_types(
    t: &mut Tracked<Client>,
    sql: &str,
    maybe_in_transaction: bool,
) -> Result<Vec<Type>, Error> {
    if let Some(types) = state(t).types.get(sql) {
        return Ok(types.clone());
    }
    let learn = |c: &mut Client| -> Result<Vec<Type>, PgError> {
        let statement = c.prepare(sql)?;
        Ok(statement.params().to_vec())
        // Dropping the statement sends its Close ahead of the next message.
    };
    // Inside a transaction already? A savepoint outside one fails with 25P01 and changes
    // nothing.
    let in_transaction = maybe_in_transaction
        && match t.conn.batch_execute("SAVEPOINT greenhub_types") {
            Ok(()) => true,
            Err(e) if e.code() == Some(&SqlState::NO_ACTIVE_SQL_TRANSACTION) => false,
            Err(e) => return Err(Error::from(e)),
        };
    let types = if in_transaction {
        let types = learn(&mut t.conn).map_err(Error::from)?;
        t.conn
            .batch_execute("RELEASE SAVEPOINT greenhub_types")
            .map_err(Error::from)?;
        types
    } else {
        let mut tx = t.conn.transaction().map_err(Error::from)?;
        let statement = tx.prepare(sql).map_err(Error::from)?;
        let types = statement.params().to_vec();
        drop(statement);
        tx.commit().map_err(Error::from)?;
        types
    };
    let cache = &mut state(t).types;
    if cache.len() >= MAX_STATEMENTS {
        cache.clear();
    }
    cache.insert(sql.to_string(), types.clone());
    Ok(types)
}

/// Forgets `sql`'s statement after an error: the schema may have changed under it.
fn forget(t: &mut Tracked<Client>, sql: &str) {
    let st = state(t);
    st.prepared.remove(sql);
    st.types.remove(sql);
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

/// Sets the server's `statement_timeout` to what is left of the caller's deadline (when the
/// pool is told to), or back to the session's default without a deadline; skipped when the
/// value set already bounds the statement within twice what is left. Returns when the
/// server stops the statement, if it does.
fn bound_by_deadline(
    t: &mut Tracked<Client>,
    deadline: Option<Instant>,
    presence: &Presence,
    single: bool,
) -> Result<Option<Instant>, Error> {
    if !t.options.deadline_timeout {
        return Ok(None);
    }
    let now = Instant::now();
    let current = t.server_timeout;
    // Beyond what the server takes (i32 milliseconds, some 24 days): no bound.
    let deadline = deadline.filter(|d| d.saturating_duration_since(now) < MAX_STATEMENT_TIMEOUT);
    let Some(deadline) = deadline else {
        if current != ServerTimeout::Default {
            t.conn
                .batch_execute("SET statement_timeout TO DEFAULT")
                .map_err(Error::from)?;
            t.server_timeout = ServerTimeout::Default;
        }
        return Ok(None);
    };
    let left = deadline.saturating_duration_since(now);
    if left.is_zero() {
        return Err(Error::TimedOut);
    }
    // Rounded up: the server never stops it before the caller's deadline.
    let want = (left.as_nanos().div_ceil(1_000_000) as u64).max(1);
    let millis = match current {
        ServerTimeout::Millis(ms) if ms >= want && ms <= want.saturating_mul(2) => ms,
        _ => {
            t.conn
                .batch_execute(&format!("SET statement_timeout = {want}"))
                .map_err(Error::from)?;
            t.server_timeout = ServerTimeout::Millis(want);
            want
        }
    };
    let stops_by = now + Duration::from_millis(millis);
    // The server's timer starts again with each statement: only a single statement ends by
    // then, and only then does a caller leaving at the deadline leave the stopping to it.
    if single {
        presence.server_stops_by(stops_by);
    }
    Ok(Some(stops_by))
}

/// Runs one statement on the connection, keeping the transaction flag honest, bounded on the
/// server by the caller's deadline when the pool is told to.
fn statement<R>(
    t: &mut Tracked<Client>,
    sql: &str,
    deadline: Option<Instant>,
    presence: &Presence,
    single: bool,
    run: impl FnOnce(&mut Tracked<Client>) -> Result<R, Error>,
) -> Result<R, Error> {
    let before = t.dirty;
    let bounded = bound_by_deadline(t, deadline, presence, single)?;
    // Interrupted (a panic, a kill) means unknown: roll back.
    t.dirty = true;
    let result = run(t);
    t.dirty = before || opens_transaction(sql);
    if t.dirty && bounded.is_some() {
        // Set inside a transaction, which a rollback undoes.
        t.server_timeout = ServerTimeout::Unknown;
    }
    let cancelled = |e: &Error| match e {
        Error::Database(e) => {
            e.downcast_ref::<PgError>().and_then(PgError::code) == Some(&SqlState::QUERY_CANCELED)
        }
        _ => false,
    };
    match result {
        // Gone, whatever the driver says of it yet: never handed out again.
        Err(Error::ConnectionLost { reason }) => {
            t.close = Some(CloseReason::Broken);
            Err(Error::ConnectionLost { reason })
        }
        // The server's timeout from the caller's deadline.
        Err(e) if bounded.is_some() && cancelled(&e) => Err(Error::TimedOut),
        other => other,
    }
}

/// The three shapes of a parameterised statement's result, each sent prepared or unnamed.
trait Shape: 'static {
    type Out: Send + 'static;
    fn prepared(
        c: &mut Client,
        statement: &Statement,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Self::Out, PgError>;
    fn unnamed(
        c: &mut Client,
        sql: &str,
        params: &[(&(dyn ToSql + Sync), Type)],
    ) -> Result<Self::Out, PgError>;
}

/// All rows.
struct Rows;
/// Exactly one row.
struct One;
/// The number of rows changed.
struct Count;

impl Shape for Rows {
    type Out = Vec<Row>;
    fn prepared(
        c: &mut Client,
        s: &Statement,
        p: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Row>, PgError> {
        c.query(s, p)
    }
    fn unnamed(
        c: &mut Client,
        sql: &str,
        p: &[(&(dyn ToSql + Sync), Type)],
    ) -> Result<Vec<Row>, PgError> {
        c.query_typed(sql, p)
    }
}

impl Shape for One {
    type Out = Row;
    fn prepared(c: &mut Client, s: &Statement, p: &[&(dyn ToSql + Sync)]) -> Result<Row, PgError> {
        c.query_one(s, p)
    }
    fn unnamed(
        c: &mut Client,
        sql: &str,
        p: &[(&(dyn ToSql + Sync), Type)],
    ) -> Result<Row, PgError> {
        c.query_typed_one(sql, p)
    }
}

impl Shape for Count {
    type Out = u64;
    fn prepared(c: &mut Client, s: &Statement, p: &[&(dyn ToSql + Sync)]) -> Result<u64, PgError> {
        c.execute(s, p)
    }
    fn unnamed(
        c: &mut Client,
        sql: &str,
        p: &[(&(dyn ToSql + Sync), Type)],
    ) -> Result<u64, PgError> {
        let mut rows = c.query_typed_raw(sql, p.iter().map(|(v, t)| (*v, t.clone())))?;
        while rows.next()?.is_some() {}
        Ok(rows.rows_affected().unwrap_or(0))
    }
}

/// One parameterised statement, as a job for a pool thread.
fn with_params<S: Shape>(
    sql: &str,
    params: Vec<Param>,
) -> impl FnOnce(&mut Tracked<Client>, &Presence) -> Result<S::Out, Error> + Send + 'static {
    let sql = sql.to_string();
    let deadline = greenhub::timeout::deadline();
    move |t, presence| {
        // Outside a transaction, a statement the schema changed under can be prepared again.
        let may_retry = !t.dirty;
        let maybe_in_transaction = t.dirty;
        statement(t, &sql, deadline, presence, true, |t| {
            let params: Vec<&(dyn ToSql + Sync)> =
                params.iter().map(|p| &**p as &(dyn ToSql + Sync)).collect();
            if t.options.statements == Statements::Unnamed {
                let types = param_types(t, &sql, maybe_in_transaction)?;
                if types.len() != params.len() {
                    return Err(Error::Database(
                        format!(
                            "the statement takes {} parameters, {} given",
                            types.len(),
                            params.len()
                        )
                        .into(),
                    ));
                }
                let typed: Vec<(&(dyn ToSql + Sync), Type)> =
                    params.iter().copied().zip(types).collect();
                return S::unnamed(&mut t.conn, &sql, &typed).map_err(|e| {
                    forget(t, &sql);
                    Error::from(e)
                });
            }
            let mut tries = if may_retry { 2 } else { 1 };
            loop {
                let prepared = prepared(t, &sql)?;
                match S::prepared(&mut t.conn, &prepared, &params) {
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
    let deadline = greenhub::timeout::deadline();
    move |t, presence| {
        // One statement unless a `;` separates two (one inside a string only costs a cancel
        // the server would have made unneeded).
        let single = !sql.trim_end().trim_end_matches(';').contains(';');
        statement(t, &sql, deadline, presence, single, |t| {
            t.conn.batch_execute(&sql).map_err(Error::from)
        })
    }
}

/// A transaction, as a job for a pool thread: never committed once its caller has gone.
fn transaction<R, F>(
    f: F,
) -> impl FnOnce(&mut Tracked<Client>, &Presence) -> Result<R, Error> + Send
where
    F: FnOnce(&mut Transaction<'_>) -> Result<R, PgError> + Send,
{
    let deadline = greenhub::timeout::deadline();
    move |t, presence| {
        statement(t, "", deadline, presence, false, |t| {
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
        self.call(with_params::<Rows>(sql, params))?
    }

    /// Runs a query that returns exactly one row.
    #[track_caller]
    pub fn query_one(&mut self, sql: &str, params: Vec<Param>) -> Result<Row, Error> {
        self.call(with_params::<One>(sql, params))?
    }

    /// Runs a statement and returns how many rows it changed.
    #[track_caller]
    pub fn execute(&mut self, sql: &str, params: Vec<Param>) -> Result<u64, Error> {
        self.call(with_params::<Count>(sql, params))?
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
        self.call(with_params::<Rows>(sql, params))?
    }

    /// [`Conn::query_one`] on a connection checked out for it.
    #[track_caller]
    pub fn query_one(&self, sql: &str, params: Vec<Param>) -> Result<Row, Error> {
        self.call(with_params::<One>(sql, params))?
    }

    /// [`Conn::execute`] on a connection checked out for it.
    #[track_caller]
    pub fn execute(&self, sql: &str, params: Vec<Param>) -> Result<u64, Error> {
        self.call(with_params::<Count>(sql, params))?
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
