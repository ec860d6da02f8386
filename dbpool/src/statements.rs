//! How statements are sent: the settings of the PostgreSQL helpers, which every connection
//! carries a copy of. Uses nothing else of the crate.

/// How the pool's PostgreSQL helpers ([`Pool::query`](crate::Pool::query), [`Conn::execute`](crate::Conn::execute), ...) send their
/// statements ([`Builder::statements`](crate::Builder::statements)).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Statements {
    /// Prepared under a name once per connection and kept (up to 256): each later use is one
    /// round trip with the plan cached by the server. The default.
    #[default]
    Prepared,
    /// Sent unnamed each time, parsed by the server each time, in one round trip; the
    /// parameter types of each statement are learned once per connection inside a short
    /// transaction. For a pooler in transaction mode (pgbouncer before 1.21, or with
    /// `max_prepared_statements = 0`), which runs consecutive statements of one client on
    /// different server connections, where a named statement is missing or collides.
    Unnamed,
}

/// What the helpers are told by the pool's settings; a copy travels with each connection.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct StatementOptions {
    pub statements: Statements,
    /// Set the server's `statement_timeout` from the caller's deadline.
    pub deadline_timeout: bool,
}
