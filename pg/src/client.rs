//! One connection to PostgreSQL, used from one green thread at a time: the start-up and
//! password exchange, statements prepared once and kept by their text, the extended query
//! protocol with binary values, simple-query batches and transactions.
//!
//! Rules:
//! - Every call sends its messages in one write and reads until the server is ready again,
//!   so a server error (a [`DbError`](crate::DbError)) leaves the connection usable.
//! - A call cut short (deadline, kill, I/O error, a message that makes no sense) leaves the
//!   protocol in an unknown place: the connection is closed for good ([`Error::Closed`]
//!   after that), and a statement the server may still be running gets a cancel request,
//!   sent from a green thread of its own.
//! - Statements are prepared on first use and kept, up to [`MAX_STATEMENTS`]; past that the
//!   connection forgets them all (`DEALLOCATE ALL`) and starts again. One whose result type
//!   the schema changed is prepared again once.
//!
//! It uses `wire` (the socket and its framing), `row` and `error`.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use fallible_iterator::FallibleIterator;
use postgres_protocol::authentication::{md5_hash, sasl};
use postgres_protocol::message::backend::Message;
use postgres_protocol::message::frontend;
use postgres_types::{IsNull, ToSql, Type};
use tokio_postgres::config::{Host, SslMode};

use crate::Config;
use crate::error::{DbError, Error};
use crate::row::{Column, Row, Statement, StatementInner, type_of};
use crate::wire::{Stream, Wire};

/// How many statements a connection keeps prepared before it forgets them all.
pub const MAX_STATEMENTS: usize = 256;

/// How long a cancel request may take before it is given up.
const CANCEL_TIMEOUT: Duration = Duration::from_secs(10);

/// A parameter of a query: any value that implements `ToSql` (`&42_i32`, `&"text"`,
/// `&Some(1.5_f64)`, `&None::<i64>`).
pub type Param<'a> = &'a (dyn ToSql + Sync);

/// A place to connect to: a host name or address with its port, or a Unix socket's path.
#[derive(Clone, Debug)]
enum Place {
    Tcp(String, u16),
    Unix(PathBuf),
}

/// Where a connection's socket went: what a cancel request connects to.
#[derive(Clone, Debug)]
enum Target {
    Tcp(std::net::SocketAddr),
    Unix(PathBuf),
}

impl Place {
    /// Connects (a host name is resolved off the workers, each of its addresses tried).
    fn open(&self) -> std::io::Result<(Stream, Target)> {
        match self {
            Place::Tcp(host, port) => {
                let s = greenhub::net::TcpStream::connect((host.clone(), *port))?;
                s.set_nodelay(true)?;
                let peer = s.peer_addr()?;
                Ok((Stream::Tcp(s), Target::Tcp(peer)))
            }
            Place::Unix(path) => Ok((
                Stream::Unix(greenhub::net::UnixStream::connect(path)?),
                Target::Unix(path.clone()),
            )),
        }
    }
}

impl std::fmt::Display for Place {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Place::Tcp(host, port) => write!(f, "{host}:{port}"),
            Place::Unix(p) => write!(f, "{}", p.display()),
        }
    }
}

impl Target {
    fn open(&self) -> std::io::Result<Stream> {
        match self {
            Target::Tcp(addr) => Ok(Stream::Tcp(greenhub::net::TcpStream::connect(*addr)?)),
            Target::Unix(path) => Ok(Stream::Unix(greenhub::net::UnixStream::connect(path)?)),
        }
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Tcp(a) => write!(f, "{a}"),
            Target::Unix(p) => write!(f, "{}", p.display()),
        }
    }
}

/// Where the connection is in the protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Between calls: the server waits for the next one.
    Ready,
    /// A call is under way (if a client is dropped so, the call was cut short).
    Busy,
    /// Cut short or broken: no more calls.
    Closed,
}

/// One connection to PostgreSQL, for green threads: each call parks the calling green
/// thread while the server works, never its worker, and ends at the enclosing deadline
/// scope. Use it from one thread at a time (`&mut self`); share connections through a
/// [`Pool`](crate::Pool).
///
/// ```no_run
/// use greenhub_pg::Client;
///
/// let mut client = Client::connect("host=127.0.0.1 user=app password=secret dbname=app")?;
/// client.batch_execute("CREATE TEMP TABLE t (id int4 PRIMARY KEY, name text)")?;
/// client.execute("INSERT INTO t VALUES ($1, $2)", &[&1_i32, &"one"])?;
/// let row = client.query_one("SELECT name FROM t WHERE id = $1", &[&1_i32])?;
/// assert_eq!(row.get::<&str>(0)?, "one");
/// # Ok::<(), greenhub_pg::Error>(())
/// ```
pub struct Client {
    wire: Wire,
    state: State,
    /// The last ReadyForQuery's transaction status: `I` idle, `T` in a transaction, `E` in a
    /// failed one.
    transaction: u8,
    statements: HashMap<String, Statement>,
    next_statement: u64,
    target: Target,
    /// The process id and secret a cancel request names.
    key: Option<(i32, i32)>,
    parameters: HashMap<String, String>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("server", &self.target.to_string())
            .field("state", &self.state)
            .field("in_transaction", &self.in_transaction())
            .field("statements", &self.statements.len())
            .finish()
    }
}

impl Client {
    /// Connects with a connection string in libpq's forms (`host=... user=...` or
    /// `postgresql://user:password@host:port/db`), as [`Client::connect_with`].
    pub fn connect(conninfo: &str) -> Result<Client, Error> {
        let config: Config = conninfo
            .parse()
            .map_err(|e: tokio_postgres::Error| Error::Config(e.to_string()))?;
        Client::connect_with(&config)
    }

    /// Connects: tries each host of `config` in turn (TCP, or a Unix socket directory), then
    /// logs in (trust, password, md5 or SCRAM-SHA-256). `connect_timeout` bounds the whole of
    /// it, as does the enclosing deadline scope. TLS is not spoken: `sslmode=require` is an
    /// error, `prefer` (the default) connects without it.
    pub fn connect_with(config: &Config) -> Result<Client, Error> {
        if config.get_ssl_mode() == SslMode::Require {
            return Err(Error::Config(
                "sslmode=require: greenhub-pg does not speak TLS; connect over loopback or a \
                 Unix socket, or use greenhub-dbpool with a TLS connector"
                    .into(),
            ));
        }
        let user = config
            .get_user()
            .ok_or_else(|| Error::Config("no user name given (user=...)".into()))?;
        let attempt = || -> Result<Client, Error> {
            let mut last = Error::Config("no host given (host=... or hostaddr=...)".into());
            for place in places(config) {
                match place.open() {
                    Ok((stream, target)) => return Client::start(stream, target, config, user),
                    Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {
                        return Err(Error::TimedOut);
                    }
                    Err(source) => {
                        last = Error::Connect {
                            addr: place.to_string(),
                            source,
                        }
                    }
                }
            }
            Err(last)
        };
        match config.get_connect_timeout() {
            Some(t) => greenhub::with_timeout(*t, attempt),
            None => attempt(),
        }
    }

    /// The start-up message and the login, up to the server's first ReadyForQuery.
    fn start(stream: Stream, target: Target, config: &Config, user: &str) -> Result<Client, Error> {
        let mut client = Client {
            wire: Wire::new(stream),
            state: State::Busy,
            transaction: b'I',
            statements: HashMap::new(),
            next_statement: 0,
            target,
            key: None,
            parameters: HashMap::new(),
        };
        let mut params = vec![("user", user), ("client_encoding", "UTF8")];
        if let Some(db) = config.get_dbname() {
            params.push(("database", db));
        }
        if let Some(app) = config.get_application_name() {
            params.push(("application_name", app));
        }
        if let Some(options) = config.get_options() {
            params.push(("options", options));
        }
        frontend::startup_message(params.iter().copied(), &mut client.wire.out)
            .map_err(|e| Error::Config(format!("a start-up parameter cannot be sent: {e}")))?;
        client.wire.flush()?;
        client.login(user, config.get_password())?;
        loop {
            match client.recv()? {
                Message::BackendKeyData(key) => {
                    client.key = Some((key.process_id(), key.secret_key()));
                }
                Message::ReadyForQuery(ready) => {
                    client.transaction = ready.status();
                    client.state = State::Ready;
                    return Ok(client);
                }
                Message::ErrorResponse(e) => return Err(DbError::parse(e.fields()).into()),
                other => return Err(unexpected("starting", &other)),
            }
        }
    }

    /// The password exchange, up to AuthenticationOk.
    fn login(&mut self, user: &str, password: Option<&[u8]>) -> Result<(), Error> {
        let needed = || {
            Error::Config("the server asks for a password and none is given (password=...)".into())
        };
        let mut scram: Option<sasl::ScramSha256> = None;
        loop {
            match self.recv()? {
                Message::AuthenticationOk => return Ok(()),
                Message::AuthenticationCleartextPassword => {
                    let password = password.ok_or_else(needed)?;
                    frontend::password_message(password, &mut self.wire.out)
                        .map_err(|e| Error::Config(format!("the password cannot be sent: {e}")))?;
                }
                Message::AuthenticationMd5Password(body) => {
                    let password = password.ok_or_else(needed)?;
                    let hash = md5_hash(user.as_bytes(), password, body.salt());
                    frontend::password_message(hash.as_bytes(), &mut self.wire.out)
                        .map_err(|e| Error::Config(format!("the password cannot be sent: {e}")))?;
                }
                Message::AuthenticationSasl(body) => {
                    let mut mechanisms = body.mechanisms();
                    let mut offered = false;
                    while let Some(m) = mechanisms
                        .next()
                        .map_err(|e| Error::Protocol(e.to_string()))?
                    {
                        offered |= m == sasl::SCRAM_SHA_256;
                    }
                    if !offered {
                        return Err(Error::Config(
                            "the server offers no SASL mechanism but SCRAM-SHA-256-PLUS, which \
                             needs TLS"
                                .into(),
                        ));
                    }
                    let password = password.ok_or_else(needed)?;
                    let s = sasl::ScramSha256::new(password, sasl::ChannelBinding::unsupported());
                    frontend::sasl_initial_response(
                        sasl::SCRAM_SHA_256,
                        s.message(),
                        &mut self.wire.out,
                    )
                    .map_err(Error::Io)?;
                    scram = Some(s);
                }
                Message::AuthenticationSaslContinue(body) => {
                    let s = scram
                        .as_mut()
                        .ok_or_else(|| Error::Protocol("a SASL step before SASL began".into()))?;
                    s.update(body.data())
                        .map_err(|e| Error::Protocol(format!("SCRAM: {e}")))?;
                    frontend::sasl_response(s.message(), &mut self.wire.out).map_err(Error::Io)?;
                }
                Message::AuthenticationSaslFinal(body) => {
                    let s = scram
                        .as_mut()
                        .ok_or_else(|| Error::Protocol("a SASL step before SASL began".into()))?;
                    s.finish(body.data()).map_err(|e| {
                        Error::Protocol(format!("SCRAM: the server's proof is wrong: {e}"))
                    })?;
                    continue;
                }
                Message::ErrorResponse(e) => return Err(DbError::parse(e.fields()).into()),
                Message::AuthenticationKerberosV5
                | Message::AuthenticationScmCredential
                | Message::AuthenticationGss
                | Message::AuthenticationSspi => {
                    return Err(Error::Config(
                        "the server asks for Kerberos, GSSAPI or SSPI login, which greenhub-pg \
                         does not do"
                            .into(),
                    ));
                }
                other => return Err(unexpected("logging in", &other)),
            }
            self.wire.flush()?;
        }
    }

    /// The next message that is not a notice, a parameter status or a notification.
    fn recv(&mut self) -> Result<Message, Error> {
        loop {
            match self.wire.recv()? {
                Message::NoticeResponse(n) => {
                    log::debug!("PostgreSQL notice: {}", DbError::parse(n.fields()));
                }
                Message::ParameterStatus(p) => {
                    if let (Ok(name), Ok(value)) = (p.name(), p.value()) {
                        self.parameters.insert(name.to_string(), value.to_string());
                    }
                }
                Message::NotificationResponse(_) => {}
                other => return Ok(other),
            }
        }
    }

    /// Runs one call: refused on a closed connection; a call cut short closes it.
    fn call<T>(&mut self, f: impl FnOnce(&mut Client) -> Result<T, Error>) -> Result<T, Error> {
        if self.state != State::Ready {
            return Err(Error::Closed);
        }
        self.state = State::Busy;
        let result = f(self);
        match &result {
            Err(Error::Io(_) | Error::TimedOut | Error::Protocol(_) | Error::Closed) => {
                self.close_cut_short();
            }
            _ => self.state = State::Ready,
        }
        result
    }

    /// Closes a connection whose call was cut short, and asks the server to stop what it may
    /// still be running.
    fn close_cut_short(&mut self) {
        let was = std::mem::replace(&mut self.state, State::Closed);
        self.wire.shutdown();
        if was != State::Busy {
            return;
        }
        let Some((pid, secret)) = self.key else {
            return;
        };
        let target = self.target.clone();
        let spawned = greenhub::thread::Builder::new()
            .name("greenhub-pg cancel")
            .spawn(move || {
                let sent = greenhub::with_timeout(CANCEL_TIMEOUT, || -> Result<(), Error> {
                    let mut wire = Wire::new(target.open().map_err(Error::Io)?);
                    frontend::cancel_request(pid, secret, &mut wire.out);
                    wire.flush()
                });
                if let Err(e) = sent {
                    log::warn!("greenhub-pg: the cancel request to {target} failed: {e}");
                }
            });
        if let Err(e) = spawned {
            log::warn!("greenhub-pg: cannot start the cancel request: {e}");
        }
    }

    /// Reads up to ReadyForQuery, handing each message but errors to `on`; a server error is
    /// returned once the server is ready again.
    fn finish(&mut self, mut on: impl FnMut(Message) -> Result<(), Error>) -> Result<(), Error> {
        let mut failed: Option<DbError> = None;
        loop {
            match self.recv()? {
                Message::ReadyForQuery(ready) => {
                    self.transaction = ready.status();
                    return match failed {
                        Some(e) => Err(e.into()),
                        None => Ok(()),
                    };
                }
                Message::ErrorResponse(e) => {
                    failed.get_or_insert_with(|| DbError::parse(e.fields()));
                }
                // After an error the server skips to the Sync: nothing else should come, and
                // what does is not the caller's.
                _ if failed.is_some() => {}
                other => on(other)?,
            }
        }
    }

    /// Prepares `sql` (or finds it prepared) and says its parameter and column types.
    pub fn prepare(&mut self, sql: &str) -> Result<Statement, Error> {
        if let Some(s) = self.statements.get(sql) {
            return Ok(s.clone());
        }
        if self.statements.len() >= MAX_STATEMENTS {
            self.batch_execute("DEALLOCATE ALL")?;
            self.statements.clear();
        }
        let statement = self.call(|c| c.prepare_new(sql))?;
        self.statements.insert(sql.to_string(), statement.clone());
        Ok(statement)
    }

    fn prepare_new(&mut self, sql: &str) -> Result<Statement, Error> {
        self.next_statement += 1;
        let name = format!("greenhub{}", self.next_statement);
        let out = &mut self.wire.out;
        if let Err(e) = frontend::parse(&name, sql, std::iter::empty(), out) {
            out.clear();
            return Err(Error::Query(format!("the statement cannot be sent: {e}")));
        }
        frontend::describe(b'S', &name, out).map_err(Error::Io)?;
        frontend::sync(out);
        self.wire.flush()?;
        let mut params = Vec::new();
        let mut columns: Vec<Column> = Vec::new();
        self.finish(|m| match m {
            Message::ParseComplete | Message::NoData => Ok(()),
            Message::ParameterDescription(d) => {
                params = d
                    .parameters()
                    .map(|oid| Ok(type_of(oid)))
                    .collect::<Vec<_>>()
                    .map_err(|e| Error::Protocol(e.to_string()))?;
                Ok(())
            }
            Message::RowDescription(d) => {
                columns = d
                    .fields()
                    .map(|f| Ok(Column::new(f.name().to_string(), type_of(f.type_oid()))))
                    .collect::<Vec<_>>()
                    .map_err(|e| Error::Protocol(e.to_string()))?;
                Ok(())
            }
            other => Err(unexpected("preparing", &other)),
        })?;
        Ok(Statement {
            inner: Arc::new(StatementInner {
                name,
                sql: sql.to_string(),
                params,
                columns: columns.into(),
            }),
        })
    }

    /// Runs `sql` with `params` and hands each row to `each`; returns the command tag's row
    /// count. A prepared statement whose result type changed is prepared again once.
    fn run(
        &mut self,
        sql: &str,
        params: &[Param<'_>],
        each: &mut dyn FnMut(Row),
    ) -> Result<u64, Error> {
        let statement = self.prepare(sql)?;
        match self.call(|c| c.run_prepared(&statement, params, each)) {
            Err(Error::Db(e)) if changed_result_type(&e) && self.transaction == b'I' => {
                self.statements.remove(sql);
                let statement = self.prepare(sql)?;
                self.call(|c| c.run_prepared(&statement, params, each))
            }
            other => other,
        }
    }

    fn run_prepared(
        &mut self,
        statement: &Statement,
        params: &[Param<'_>],
        each: &mut dyn FnMut(Row),
    ) -> Result<u64, Error> {
        let st = &statement.inner;
        if params.len() != st.params.len() {
            return Err(Error::ParameterCount {
                expected: st.params.len(),
                given: params.len(),
            });
        }
        let out = &mut self.wire.out;
        let mut failed: Option<(usize, Box<dyn std::error::Error + Send + Sync>)> = None;
        let mut index = 0;
        let bound = frontend::bind(
            "",
            &st.name,
            Some(1),
            params.iter().zip(&st.params),
            |(param, ty): (&Param<'_>, &Type), buf: &mut BytesMut| {
                let i = index;
                index += 1;
                match param.to_sql_checked(ty, buf) {
                    Ok(IsNull::No) => Ok(postgres_protocol::IsNull::No),
                    Ok(IsNull::Yes) => Ok(postgres_protocol::IsNull::Yes),
                    Err(e) => {
                        failed = Some((i, e));
                        Err("parameter".into())
                    }
                }
            },
            Some(1),
            out,
        );
        if bound.is_err() {
            out.clear();
            return Err(match failed {
                Some((index, source)) => Error::Parameter {
                    index,
                    ty: st.params[index].clone(),
                    source,
                },
                None => Error::Query("the parameters do not fit in one message".into()),
            });
        }
        frontend::execute("", 0, out).map_err(Error::Io)?;
        frontend::sync(out);
        self.wire.flush()?;
        let columns = &st.columns;
        let mut count = 0;
        self.finish(|m| match m {
            Message::BindComplete | Message::EmptyQueryResponse | Message::PortalSuspended => {
                Ok(())
            }
            Message::DataRow(body) => {
                let ranges = body
                    .ranges()
                    .collect::<Vec<_>>()
                    .map_err(|e| Error::Protocol(e.to_string()))?;
                if ranges.len() != columns.len() {
                    return Err(Error::Protocol(format!(
                        "a row of {} values for {} columns",
                        ranges.len(),
                        columns.len()
                    )));
                }
                each(Row::new(
                    columns.clone(),
                    body.buffer_bytes().clone(),
                    ranges,
                ));
                Ok(())
            }
            Message::CommandComplete(done) => {
                count = done
                    .tag()
                    .ok()
                    .and_then(|t| t.rsplit(' ').next()?.parse().ok())
                    .unwrap_or(0);
                Ok(())
            }
            other => Err(unexpected("running a statement", &other)),
        })?;
        Ok(count)
    }

    /// The rows of `sql` run with `params` (`$1`, `$2`... in the text).
    pub fn query(&mut self, sql: &str, params: &[Param<'_>]) -> Result<Vec<Row>, Error> {
        let mut rows = Vec::new();
        self.run(sql, params, &mut |row| rows.push(row))?;
        Ok(rows)
    }

    /// The one row of `sql`; [`Error::RowCount`] if there are none or several.
    pub fn query_one(&mut self, sql: &str, params: &[Param<'_>]) -> Result<Row, Error> {
        match self.query_opt(sql, params)? {
            Some(row) => Ok(row),
            None => Err(Error::RowCount(0)),
        }
    }

    /// The row of `sql` if there is one; [`Error::RowCount`] if there are several.
    pub fn query_opt(&mut self, sql: &str, params: &[Param<'_>]) -> Result<Option<Row>, Error> {
        let mut first = None;
        let mut count = 0;
        self.run(sql, params, &mut |row| {
            count += 1;
            if first.is_none() {
                first = Some(row);
            }
        })?;
        if count > 1 {
            return Err(Error::RowCount(count));
        }
        Ok(first)
    }

    /// Runs `sql` and returns how many rows it inserted, updated, deleted or returned.
    pub fn execute(&mut self, sql: &str, params: &[Param<'_>]) -> Result<u64, Error> {
        self.run(sql, params, &mut |_| {})
    }

    /// Runs one or more statements separated by `;`, without parameters (the simple query
    /// protocol: schema changes, `SET`, scripts). Results are dropped; the first error is
    /// returned, and the statements after it do not run.
    pub fn batch_execute(&mut self, sql: &str) -> Result<(), Error> {
        self.call(|c| {
            if let Err(e) = frontend::query(sql, &mut c.wire.out) {
                c.wire.out.clear();
                return Err(Error::Query(format!("the statements cannot be sent: {e}")));
            }
            c.wire.flush()?;
            c.finish(|m| match m {
                Message::RowDescription(_)
                | Message::DataRow(_)
                | Message::CommandComplete(_)
                | Message::EmptyQueryResponse => Ok(()),
                Message::CopyInResponse(_) | Message::CopyOutResponse(_) => Err(Error::Protocol(
                    "COPY is not supported by batch_execute".into(),
                )),
                other => Err(unexpected("running a batch", &other)),
            })
        })
    }

    /// Runs `f` in a transaction: committed if `f` returns `Ok`, rolled back if it returns
    /// an error. A transaction a failed statement aborted is rolled back and reported as
    /// [`Error::Aborted`], even when `f` went on and returned `Ok`. If `f` panics or its
    /// thread is killed, the connection is left in the transaction: a pool discards it.
    pub fn transaction<R>(
        &mut self,
        f: impl FnOnce(&mut Client) -> Result<R, Error>,
    ) -> Result<R, Error> {
        self.batch_execute("BEGIN")?;
        match f(self) {
            Ok(value) if self.transaction == b'E' => {
                self.batch_execute("ROLLBACK")?;
                drop(value);
                Err(Error::Aborted)
            }
            Ok(value) => {
                self.batch_execute("COMMIT")?;
                Ok(value)
            }
            Err(e) => {
                if self.state == State::Ready {
                    self.batch_execute("ROLLBACK")?;
                }
                Err(e)
            }
        }
    }

    /// Whether the connection is inside a transaction (an open or a failed one).
    pub fn in_transaction(&self) -> bool {
        self.transaction != b'I'
    }

    /// Whether the connection is closed after a call was cut short or failed on I/O; it
    /// takes no more calls.
    pub fn is_closed(&self) -> bool {
        self.state != State::Ready
    }

    /// A run-time parameter the server reported (`server_version`, `TimeZone`,
    /// `application_name`...).
    pub fn parameter(&self, name: &str) -> Option<&str> {
        self.parameters.get(name).map(String::as_str)
    }

    /// The server process serving this connection (`pg_backend_pid()`), if the server said.
    pub fn backend_pid(&self) -> Option<i32> {
        self.key.map(|(pid, _)| pid)
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        match self.state {
            // Cut short (a kill unwinding through a call): stop what the server runs.
            State::Busy => self.close_cut_short(),
            State::Ready if !std::thread::panicking() => {
                frontend::terminate(&mut self.wire.out);
                let _ = self.wire.flush();
            }
            _ => {}
        }
    }
}

/// The server said the prepared statement's result type no longer matches the schema.
fn changed_result_type(e: &DbError) -> bool {
    e.code() == "0A000"
        && e.message()
            .contains("cached plan must not change result type")
}

fn unexpected(doing: &str, m: &Message) -> Error {
    let tag = match m {
        Message::AuthenticationOk => "AuthenticationOk",
        Message::BindComplete => "BindComplete",
        Message::CloseComplete => "CloseComplete",
        Message::CommandComplete(_) => "CommandComplete",
        Message::CopyData(_) => "CopyData",
        Message::CopyDone => "CopyDone",
        Message::CopyInResponse(_) => "CopyInResponse",
        Message::CopyOutResponse(_) => "CopyOutResponse",
        Message::DataRow(_) => "DataRow",
        Message::EmptyQueryResponse => "EmptyQueryResponse",
        Message::NoData => "NoData",
        Message::ParameterDescription(_) => "ParameterDescription",
        Message::ParseComplete => "ParseComplete",
        Message::PortalSuspended => "PortalSuspended",
        Message::ReadyForQuery(_) => "ReadyForQuery",
        Message::RowDescription(_) => "RowDescription",
        _ => "another message",
    };
    Error::Protocol(format!("{tag} while {doing}"))
}

/// The places to try, in order: each host with its port (one port for all, or one each).
fn places(config: &Config) -> Vec<Place> {
    let ports = config.get_ports();
    let port = |i: usize| ports.get(i).or(ports.first()).copied().unwrap_or(5432);
    let addrs = config.get_hostaddrs();
    let hosts = config.get_hosts();
    (0..hosts.len().max(addrs.len()))
        .filter_map(|i| match (addrs.get(i), hosts.get(i)) {
            (Some(ip), _) => Some(Place::Tcp(ip.to_string(), port(i))),
            (None, Some(Host::Tcp(name))) => Some(Place::Tcp(name.clone(), port(i))),
            (None, Some(Host::Unix(dir))) => {
                Some(Place::Unix(dir.join(format!(".s.PGSQL.{}", port(i)))))
            }
            (None, None) => None,
        })
        .collect()
}
