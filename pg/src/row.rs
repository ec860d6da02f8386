//! Prepared statements and the rows they return: a [`Statement`] knows its parameter and
//! column types, a [`Row`] holds one row's bytes as the server sent them and reads a column
//! as any Rust type that implements `FromSql` for the column's type.
//!
//! It uses the crate's errors only.

use std::ops::Range;
use std::sync::Arc;

use bytes::Bytes;
use postgres_types::{FromSql, Kind, Oid, Type};

use crate::error::Error;

/// A column of a statement's result: its name and type.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Column {
    name: String,
    ty: Type,
}

impl Column {
    pub(crate) fn new(name: String, ty: Type) -> Column {
        Column { name, ty }
    }

    /// The column's name (its alias, if the query gave one).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The column's type.
    pub fn type_(&self) -> &Type {
        &self.ty
    }
}

/// The type of an OID: a built-in one, or a placeholder for a type the server defined
/// (an enum, a domain, an extension's type) that reads as raw bytes only. Cast such a
/// column in the query (`status::text`) to read it as a Rust type.
pub(crate) fn type_of(oid: Oid) -> Type {
    Type::from_oid(oid).unwrap_or_else(|| {
        Type::new(
            format!("oid {oid}"),
            oid,
            Kind::Simple,
            "unknown".to_string(),
        )
    })
}

/// A statement prepared on one connection: its text, its server-side name, its parameter
/// types and its columns. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Statement {
    pub(crate) inner: Arc<StatementInner>,
}

#[derive(Debug)]
pub(crate) struct StatementInner {
    pub name: String,
    pub sql: String,
    pub params: Vec<Type>,
    pub columns: Arc<[Column]>,
}

impl Statement {
    /// The SQL text it was prepared from.
    pub fn sql(&self) -> &str {
        &self.inner.sql
    }

    /// The types of its parameters, `$1` first.
    pub fn params(&self) -> &[Type] {
        &self.inner.params
    }

    /// The columns of its result (none for a statement that returns no rows).
    pub fn columns(&self) -> &[Column] {
        &self.inner.columns
    }
}

/// How a column is named in [`Row::get`]: by position from 0 (`usize`) or by name (`&str`).
pub trait ColumnIndex: std::fmt::Display {
    /// The position of the column this names among `columns`.
    fn position(&self, columns: &[Column]) -> Option<usize>;
}

impl ColumnIndex for usize {
    fn position(&self, columns: &[Column]) -> Option<usize> {
        (*self < columns.len()).then_some(*self)
    }
}

impl ColumnIndex for &str {
    fn position(&self, columns: &[Column]) -> Option<usize> {
        columns.iter().position(|c| c.name == *self)
    }
}

/// One row of a result.
///
/// ```no_run
/// # fn demo(client: &mut greenhub_pg::Client) -> Result<(), greenhub_pg::Error> {
/// let row = client.query_one("SELECT 42::int4 AS answer, 'hi'::text", &[])?;
/// let answer: i32 = row.get("answer")?;
/// let greeting: &str = row.get(1)?;
/// assert_eq!((answer, greeting), (42, "hi"));
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Row {
    columns: Arc<[Column]>,
    body: Bytes,
    ranges: Vec<Option<Range<usize>>>,
}

impl std::fmt::Debug for Row {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Row")
            .field("columns", &self.columns)
            .field("bytes", &self.body.len())
            .finish()
    }
}

impl Row {
    pub(crate) fn new(
        columns: Arc<[Column]>,
        body: Bytes,
        ranges: Vec<Option<Range<usize>>>,
    ) -> Row {
        Row {
            columns,
            body,
            ranges,
        }
    }

    /// The row's columns.
    pub fn columns(&self) -> &[Column] {
        &self.columns
    }

    /// The number of columns.
    pub fn len(&self) -> usize {
        self.ranges.len()
    }

    /// Whether the row has no columns.
    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    /// The value of a column, by position or name, as `T`: `Option<T>` for a column that
    /// may be NULL. An error (never a panic) when there is no such column, or its type
    /// cannot be read as `T`, or the value is NULL and `T` is not an `Option`.
    pub fn get<'a, T: FromSql<'a>>(&'a self, index: impl ColumnIndex) -> Result<T, Error> {
        let i = index
            .position(&self.columns)
            .ok_or_else(|| Error::NoColumn(index.to_string()))?;
        let column = &self.columns[i];
        let wrong = |source| Error::Column {
            column: column.name.clone(),
            ty: column.ty.clone(),
            rust: std::any::type_name::<T>(),
            source,
        };
        if !T::accepts(&column.ty) {
            return Err(wrong("the types do not match".into()));
        }
        let raw = self.ranges[i].clone().map(|r| &self.body[r]);
        T::from_sql_nullable(&column.ty, raw).map_err(wrong)
    }

    /// The raw bytes of a column in PostgreSQL's binary format (`None` for NULL).
    pub fn raw(&self, index: impl ColumnIndex) -> Result<Option<&[u8]>, Error> {
        let i = index
            .position(&self.columns)
            .ok_or_else(|| Error::NoColumn(index.to_string()))?;
        Ok(self.ranges[i].clone().map(|r| &self.body[r]))
    }
}
