//! The connection a batch of work-item operations runs on, in one transaction: on PostgreSQL
//! a sqlx transaction; on SQLite a connection of the batch writer's own, driven synchronously
//! in the writer's thread with its statements prepared once. (Through sqlx every statement is
//! a hand-over to the connection's thread and back, which under load costs far more than
//! SQLite's own work.)

use std::time::Duration;

use sqlx::{PgConnection, Postgres, postgres::PgRow};

use crate::{BUSY_TIMEOUT, BackendKind, StoreError, StoreResult};

/// A value bound to a `$N` parameter.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Arg<'a> {
    Int(Option<i64>),
    Text(Option<&'a str>),
    Bool(bool),
}

impl From<i64> for Arg<'_> {
    fn from(value: i64) -> Self {
        Arg::Int(Some(value))
    }
}

impl From<Option<i64>> for Arg<'_> {
    fn from(value: Option<i64>) -> Self {
        Arg::Int(value)
    }
}

impl<'a> From<&'a str> for Arg<'a> {
    fn from(value: &'a str) -> Self {
        Arg::Text(Some(value))
    }
}

impl<'a> From<&'a String> for Arg<'a> {
    fn from(value: &'a String) -> Self {
        Arg::Text(Some(value))
    }
}

impl<'a> From<Option<&'a str>> for Arg<'a> {
    fn from(value: Option<&'a str>) -> Self {
        Arg::Text(value)
    }
}

impl<'a> From<&'a Option<String>> for Arg<'a> {
    fn from(value: &'a Option<String>) -> Self {
        Arg::Text(value.as_deref())
    }
}

impl From<bool> for Arg<'_> {
    fn from(value: bool) -> Self {
        Arg::Bool(value)
    }
}

/// The arguments of a statement, `$1` first.
macro_rules! args {
    ($($arg:expr),* $(,)?) => {
        &[$($crate::batch::Arg::from($arg)),*]
    };
}
pub(crate) use args;

/// The sqlx query `$query` with `$args` bound, `$1` first.
macro_rules! bind_postgres {
    ($query:expr, $args:expr) => {
        $args.iter().fold($query, |query, arg| match *arg {
            Arg::Int(value) => query.bind(value),
            Arg::Text(value) => query.bind(value),
            Arg::Bool(value) => query.bind(value),
        })
    };
}

/// A row type read on either backend.
pub(crate) trait Row: for<'r> sqlx::FromRow<'r, PgRow> + Send + Unpin {
    /// Reads the row's columns in the order its queries select them.
    fn from_sqlite(row: &rusqlite::Row<'_>) -> rusqlite::Result<Self>;
}

impl Row for (i64,) {
    fn from_sqlite(row: &rusqlite::Row<'_>) -> rusqlite::Result<Self> {
        Ok((row.get(0)?,))
    }
}

/// The open transaction of a batch.
pub(crate) enum BatchConn<'a> {
    Sqlite(SqliteTx<'a>),
    Postgres(sqlx::Transaction<'a, Postgres>),
}

impl<'a> BatchConn<'a> {
    /// Begins a transaction on the batch writer's SQLite connection; `IMMEDIATE`, so that it
    /// holds the write lock from the start. While the pool's connection holds it, waits
    /// without blocking the thread (the connection's own busy timeout is zero), up to
    /// [`BUSY_TIMEOUT`].
    pub(crate) async fn begin_sqlite(
        connection: &'a mut rusqlite::Connection,
    ) -> StoreResult<BatchConn<'a>> {
        let (mut waited, mut pause) = (Duration::ZERO, Duration::from_millis(1));
        loop {
            match connection.execute_batch("BEGIN IMMEDIATE") {
                Ok(()) => return Ok(BatchConn::Sqlite(SqliteTx(connection))),
                Err(err)
                    if err.sqlite_error_code() == Some(rusqlite::ErrorCode::DatabaseBusy)
                        && waited < BUSY_TIMEOUT =>
                {
                    tokio::time::sleep(pause).await;
                    waited += pause;
                    pause = (pause * 2).min(Duration::from_millis(10));
                }
                Err(err) => return Err(sqlite_error(err)),
            }
        }
    }

    /// Begins a transaction on a PostgreSQL connection.
    pub(crate) async fn begin_postgres(conn: &'a mut PgConnection) -> StoreResult<BatchConn<'a>> {
        Ok(BatchConn::Postgres(sqlx::Connection::begin(conn).await?))
    }

    pub(crate) fn kind(&self) -> BackendKind {
        match self {
            BatchConn::Sqlite(_) => BackendKind::Sqlite,
            BatchConn::Postgres(_) => BackendKind::Postgres,
        }
    }

    /// The rows `sql` returns.
    pub(crate) async fn rows<T: Row>(
        &mut self,
        sql: &str,
        args: &[Arg<'_>],
    ) -> StoreResult<Vec<T>> {
        match self {
            BatchConn::Sqlite(SqliteTx(connection)) => {
                let mut statement = prepare(connection, sql, args)?;
                let mut rows = statement.raw_query();
                let mut found = Vec::new();
                while let Some(row) = rows.next().map_err(sqlite_error)? {
                    found.push(T::from_sqlite(row).map_err(sqlite_error)?);
                }
                Ok(found)
            }
            BatchConn::Postgres(tx) => {
                let query = sqlx::query_as::<_, T>(sqlx::AssertSqlSafe(sql.to_owned()));
                Ok(bind_postgres!(query, args).fetch_all(&mut **tx).await?)
            }
        }
    }

    /// The first row `sql` returns, if any.
    pub(crate) async fn row<T: Row>(
        &mut self,
        sql: &str,
        args: &[Arg<'_>],
    ) -> StoreResult<Option<T>> {
        Ok(self.rows(sql, args).await?.into_iter().next())
    }

    /// Runs `sql`; answers how many rows it changed.
    pub(crate) async fn execute(&mut self, sql: &str, args: &[Arg<'_>]) -> StoreResult<u64> {
        match self {
            BatchConn::Sqlite(SqliteTx(connection)) => {
                let changed = prepare(connection, sql, args)?
                    .raw_execute()
                    .map_err(sqlite_error)?;
                Ok(changed as u64)
            }
            BatchConn::Postgres(tx) => {
                let query = sqlx::query(sqlx::AssertSqlSafe(sql.to_owned()));
                Ok(bind_postgres!(query, args)
                    .execute(&mut **tx)
                    .await?
                    .rows_affected())
            }
        }
    }

    /// Commits the transaction.
    pub(crate) async fn commit(self) -> StoreResult<()> {
        match self {
            BatchConn::Sqlite(SqliteTx(ref connection)) => {
                connection.execute_batch("COMMIT").map_err(sqlite_error)
            }
            BatchConn::Postgres(tx) => Ok(tx.commit().await?),
        }
    }
}

/// The batch writer's SQLite connection, in a transaction begun and ended with statements.
pub(crate) struct SqliteTx<'a>(&'a mut rusqlite::Connection);

impl Drop for SqliteTx<'_> {
    /// Rolls back a transaction not committed (sqlx rolls back its own).
    fn drop(&mut self) {
        let SqliteTx(connection) = self;
        if !connection.is_autocommit()
            && let Err(err) = connection.execute_batch("ROLLBACK")
        {
            tracing::error!(%err, "rolling back a batch");
        }
    }
}

/// `insert` (`INSERT INTO table (columns…)`) followed by `VALUES` with `rows` rows of
/// `columns` parameters each, numbered row by row from `$1`.
pub(crate) fn values_sql(insert: &str, rows: usize, columns: usize) -> String {
    let mut sql = format!("{insert} VALUES ");
    for row in 0..rows {
        sql.push_str(if row == 0 { "(" } else { ", (" });
        for column in 0..columns {
            if 0 < column {
                sql.push_str(", ");
            }
            sql.push_str(&format!("${}", row * columns + column + 1));
        }
        sql.push(')');
    }
    sql
}

/// `sql` prepared (once: the connection keeps its statements) with `args` bound; its `$N`
/// parameters written `?N`, which SQLite numbers `N` (it numbers `$N` by first appearance).
fn prepare<'c>(
    connection: &'c rusqlite::Connection,
    sql: &str,
    args: &[Arg<'_>],
) -> StoreResult<rusqlite::CachedStatement<'c>> {
    let mut numbered = String::with_capacity(sql.len());
    let mut rest = sql;
    while let Some(at) = rest.find('$') {
        numbered.push_str(&rest[..at]);
        let digit_follows = rest[at + 1..].starts_with(|c: char| c.is_ascii_digit());
        numbered.push(if digit_follows { '?' } else { '$' });
        rest = &rest[at + 1..];
    }
    numbered.push_str(rest);
    let mut statement = connection.prepare_cached(&numbered).map_err(sqlite_error)?;
    let count = statement.parameter_count();
    if args.len() < count {
        return Err(StoreError::Corrupt(format!(
            "{sql:?} has {count} parameters and {} arguments",
            args.len()
        )));
    }
    for (index, arg) in args.iter().take(count).enumerate() {
        let bound = match *arg {
            Arg::Int(value) => statement.raw_bind_parameter(index + 1, value),
            Arg::Text(value) => statement.raw_bind_parameter(index + 1, value),
            Arg::Bool(value) => statement.raw_bind_parameter(index + 1, value),
        };
        bound.map_err(sqlite_error)?;
    }
    Ok(statement)
}

/// A unique value that exists already, or a row still referred to, is a `Conflict`.
fn sqlite_error(err: rusqlite::Error) -> StoreError {
    use rusqlite::ffi::{
        SQLITE_CONSTRAINT_FOREIGNKEY, SQLITE_CONSTRAINT_PRIMARYKEY, SQLITE_CONSTRAINT_UNIQUE,
    };
    match &err {
        rusqlite::Error::SqliteFailure(failure, _)
            if matches!(
                failure.extended_code,
                SQLITE_CONSTRAINT_UNIQUE
                    | SQLITE_CONSTRAINT_PRIMARYKEY
                    | SQLITE_CONSTRAINT_FOREIGNKEY
            ) =>
        {
            StoreError::Conflict
        }
        _ => StoreError::Sqlite(err),
    }
}
