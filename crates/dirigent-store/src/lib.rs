//! Dirigent's storage: one schema on two backends, SQLite (the embedded default) and
//! PostgreSQL (when several orchestrator nodes share a database).
//!
//! Every query is written once in SQL that both dialects accept (`$1` placeholders, `RETURNING`,
//! `ON CONFLICT`) and executed through [`dispatch!`], which compiles it for each backend's
//! native driver. Where the dialects must differ, the backend is matched explicitly.
//!
//! **Architecture Invariant.** Only this crate talks to the database, and it returns domain
//! types, never rows. On SQLite two connections write: the batches of work-item operations
//! go through one of their own (see [`WriteSession`]), every other write through a pool of
//! one; write transactions begin `IMMEDIATE`, so that each waits for SQLite's one write lock
//! instead of failing when the other connection wrote first ([`BeginWrite`]). Reads use a small
//! pool. Acknowledged writes are durable: WAL with `synchronous=FULL`.

mod accounts;
mod activities;
mod agents;
mod audit;
mod batch;
mod frames;
mod logs;
mod nodes;
mod queues;
mod retention;
mod robots;
mod runs;
mod sessions;
mod triggers;
mod users;

use std::{str::FromStr, sync::Arc, time::Duration};

use jiff::Timestamp;
use sqlx::{
    PgPool, SqlitePool,
    postgres::{PgConnectOptions, PgPoolOptions},
    sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous},
};

pub use accounts::{
    ApiToken, Credential, CredentialKind, LoginFailures, LoginRecord, NewApiToken, UserId,
};
pub use activities::{ActivityQuery, ActivityRecord, Counts, NewActivity, Switch};
pub use agents::{AgentFacts, COMMANDS_CHANNEL};
pub use audit::{AuditQuery, AuditRecord};
pub use frames::FrameInfo;
pub use logs::{LogQuery, LogRecord, LogScope, OutputOf};
pub use nodes::{Listener, NodeRecord};
pub use queues::{
    AppliedOps, AttemptRecord, Claimer, Completion, ItemFilter, ItemRecord, NewItem, QueueAnswer,
    QueueOp, QueueOpError, QueueRecord, QueueStats,
};
pub use retention::{Cutoffs, Kept, Pruned};
pub use runs::{Placement, RunEnd, RunQuery};
pub use sessions::SessionUpdate;
pub use triggers::{CalendarRecord, FiringRecord, FiringTake, NewFiring, Taken, TriggerRecord};
pub use users::{RoleRecord, UserRecord};

/// What can go wrong in the store, in terms a caller can act on.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("not found")]
    NotFound,
    /// A unique value exists already, or a row is still referred to.
    #[error("already exists, or is in use")]
    Conflict,
    /// What a change was decided on changed meanwhile (another node, or another request, got
    /// there first); nothing was stored. Read again and decide again.
    #[error("changed meanwhile")]
    Stale,
    #[error("the database URL is not valid: {0}")]
    InvalidUrl(String),
    #[error("cannot connect to the database: {0}")]
    Connect(#[source] sqlx::Error),
    #[error("cannot apply the database migrations: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("the database cannot be reached: {0}")]
    Unavailable(#[source] sqlx::Error),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    #[error("database error: {0}")]
    Backend(#[source] sqlx::Error),
    #[error("database error: {0}")]
    Sqlite(#[source] rusqlite::Error),
}

impl From<sqlx::Error> for StoreError {
    fn from(err: sqlx::Error) -> StoreError {
        match err {
            sqlx::Error::RowNotFound => StoreError::NotFound,
            sqlx::Error::Database(ref db)
                if db.is_unique_violation() || db.is_foreign_key_violation() =>
            {
                StoreError::Conflict
            }
            sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_) => {
                StoreError::Unavailable(err)
            }
            err => StoreError::Backend(err),
        }
    }
}

pub type StoreResult<T> = Result<T, StoreError>;

/// Which database engine a [`Store`] runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendKind {
    Sqlite,
    Postgres,
}

/// A handle on the database; cheap to clone, shared by every task of the server.
#[derive(Debug, Clone)]
pub struct Store {
    backend: Backend,
}

#[derive(Debug, Clone)]
enum Backend {
    Sqlite {
        reader: SqlitePool,
        writer: SqlitePool,
        /// The connection of the batches of work-item operations; none once closed.
        batches: Arc<tokio::sync::Mutex<Option<rusqlite::Connection>>>,
    },
    Postgres(PgPool),
}

/// Runs `$body` with `$pool` bound to the backend's pool for reads (`reader`) or writes
/// (`writer`); the body is compiled once per backend.
macro_rules! dispatch {
    ($store:expr, $role:ident, $pool:ident => $body:expr) => {
        match &$store.backend {
            $crate::Backend::Sqlite { $role: $pool, .. } => $body,
            $crate::Backend::Postgres($pool) => $body,
        }
    };
}
pub(crate) use dispatch;

/// A connection for batches of work-item operations, held by one batch writer across
/// consecutive transactions: a flood of batches keeps it instead of handing it back after
/// each. Other batch writers wait for it while it is held: drop it when idle.
///
/// On SQLite it is a connection of its own, driven synchronously (each statement a call, not
/// a hand-over to sqlx's connection thread) with its statements prepared once; on PostgreSQL
/// one of the pool's.
#[derive(Debug)]
pub struct WriteSession(SessionConnection);

#[derive(Debug)]
enum SessionConnection {
    Sqlite(tokio::sync::OwnedMutexGuard<Option<rusqlite::Connection>>),
    Postgres(sqlx::pool::PoolConnection<sqlx::Postgres>),
}

/// Begins a write transaction: on SQLite `BEGIN IMMEDIATE`, which takes the write lock at
/// once (waiting up to the busy timeout), so that a transaction which reads before it writes
/// cannot fail because the other write connection committed in between.
pub(crate) trait BeginWrite<DB: sqlx::Database> {
    async fn begin_write(&self) -> sqlx::Result<sqlx::Transaction<'static, DB>>;
}

impl BeginWrite<sqlx::Sqlite> for SqlitePool {
    async fn begin_write(&self) -> sqlx::Result<sqlx::Transaction<'static, sqlx::Sqlite>> {
        self.begin_with("BEGIN IMMEDIATE").await
    }
}

impl BeginWrite<sqlx::Postgres> for PgPool {
    async fn begin_write(&self) -> sqlx::Result<sqlx::Transaction<'static, sqlx::Postgres>> {
        self.begin().await
    }
}

/// How long an SQLite write waits for the write lock.
pub(crate) const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

static SQLITE_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("migrations/sqlite");
static POSTGRES_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("migrations/postgres");

impl Store {
    /// Connects to `url` (`sqlite://PATH` or `postgres://…`), creating an SQLite file when
    /// missing, and applies pending migrations. Several nodes may open one PostgreSQL database
    /// at once: migrations run under an advisory lock.
    pub async fn open(url: &str) -> StoreResult<Store> {
        let store = if url.starts_with("sqlite:") {
            Store::open_sqlite(url).await?
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            Store::open_postgres(url).await?
        } else {
            return Err(StoreError::InvalidUrl(
                "it must start with sqlite:// or postgres://".to_owned(),
            ));
        };
        match &store.backend {
            Backend::Sqlite { writer, .. } => SQLITE_MIGRATIONS.run(writer).await?,
            Backend::Postgres(pool) => POSTGRES_MIGRATIONS.run(pool).await?,
        }
        Ok(store)
    }

    /// Takes a connection for batches of work-item operations, for several transactions.
    pub async fn write_session(&self) -> StoreResult<WriteSession> {
        Ok(WriteSession(match &self.backend {
            Backend::Sqlite { batches, .. } => {
                SessionConnection::Sqlite(batches.clone().lock_owned().await)
            }
            Backend::Postgres(pool) => SessionConnection::Postgres(pool.acquire().await?),
        }))
    }

    async fn open_sqlite(url: &str) -> StoreResult<Store> {
        let options = SqliteConnectOptions::from_str(url)
            .map_err(|err| StoreError::InvalidUrl(err.to_string()))?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(BUSY_TIMEOUT);
        // An SQLite connection is a file in this process: no ping before each use (it would
        // cost a round trip to the connection's thread on every transaction).
        // The writer's page cache is 64 MiB (the default is 2 MiB), so that the log store's
        // indexes stay in memory as it grows.
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .test_before_acquire(false)
            .connect_with(options.clone().pragma("cache_size", "-65536"))
            .await
            .map_err(StoreError::Connect)?;
        let reader = SqlitePoolOptions::new()
            .max_connections(4)
            .test_before_acquire(false)
            .connect_with(options.clone().read_only(true))
            .await
            .map_err(StoreError::Connect)?;
        let batches = rusqlite::Connection::open(options.get_filename())
            .and_then(|connection| {
                // Its transactions wait for the write lock without blocking the thread.
                connection.busy_timeout(Duration::ZERO)?;
                // Room for every statement of a batch: each is prepared once.
                connection.set_prepared_statement_cache_capacity(64);
                // The same durability as the pool's; a page cache of 64 MiB (the default is
                // 2 MiB), so that the indexes of queues with many items stay in memory.
                connection.execute_batch(
                    "PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON; \
                     PRAGMA cache_size = -65536",
                )?;
                Ok(connection)
            })
            .map_err(|err| StoreError::Connect(sqlx::Error::Configuration(err.into())))?;
        Ok(Store {
            backend: Backend::Sqlite {
                reader,
                writer,
                batches: Arc::new(tokio::sync::Mutex::new(Some(batches))),
            },
        })
    }

    async fn open_postgres(url: &str) -> StoreResult<Store> {
        let options = PgConnectOptions::from_str(url)
            .map_err(|err| StoreError::InvalidUrl(err.to_string()))?;
        let pool = PgPoolOptions::new()
            .max_connections(16)
            .acquire_timeout(Duration::from_secs(5))
            .connect_with(options)
            .await
            .map_err(StoreError::Connect)?;
        Ok(Store {
            backend: Backend::Postgres(pool),
        })
    }

    /// The connections of the pool that serves most queries (PostgreSQL's one pool, SQLite's
    /// readers): how many are open, and how many of those idle.
    pub fn pool_figures(&self) -> (usize, usize) {
        dispatch!(self, reader, pool => (
            usize::try_from(pool.size()).unwrap_or(usize::MAX),
            pool.num_idle()
        ))
    }

    pub fn backend_kind(&self) -> BackendKind {
        match self.backend {
            Backend::Sqlite { .. } => BackendKind::Sqlite,
            Backend::Postgres(_) => BackendKind::Postgres,
        }
    }

    /// Answers whether the database can be reached and queried now.
    pub async fn ping(&self) -> StoreResult<()> {
        dispatch!(self, reader, pool => sqlx::query("SELECT 1").execute(pool).await.map(|done| done.rows_affected()))?;
        Ok(())
    }

    /// Closes every connection; pending writes finish first. On SQLite the last one to close
    /// folds the write-ahead log into the database file, which then holds everything.
    pub async fn close(&self) {
        match &self.backend {
            Backend::Sqlite {
                reader,
                writer,
                batches,
            } => {
                reader.close().await;
                writer.close().await;
                if let Some(connection) = batches.lock().await.take()
                    && let Err((_, err)) = connection.close()
                {
                    tracing::warn!(%err, "closing the queue batches' connection");
                }
            }
            Backend::Postgres(pool) => pool.close().await,
        }
    }
}

/// Stored times are milliseconds since the Unix epoch.
fn to_millis(time: Timestamp) -> i64 {
    time.as_millisecond()
}

fn from_millis(column: &str, millis: i64) -> StoreResult<Timestamp> {
    Timestamp::from_millisecond(millis)
        .map_err(|err| StoreError::Corrupt(format!("{column} = {millis}: {err}")))
}

fn from_millis_opt(column: &str, millis: Option<i64>) -> StoreResult<Option<Timestamp>> {
    millis.map(|millis| from_millis(column, millis)).transpose()
}
