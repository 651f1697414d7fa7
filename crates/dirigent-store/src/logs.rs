//! The log store: one table of records from robots, agents, the orchestrator and activities,
//! with a full-text index (FTS5 on SQLite, a `tsvector` GIN index on PostgreSQL). A run's and an
//! activity's output are its records in `seq` order.

use dirigent_domain::{
    agent::AgentId,
    log::{Level, Search, Source},
};
use jiff::Timestamp;
use std::sync::OnceLock;

use sqlx::QueryBuilder;

use crate::{
    BackendKind, BeginWrite, Store, StoreError, StoreResult, dispatch, from_millis, to_millis,
};

/// The key of the advisory lock PostgreSQL writers of logs take, so that ids commit in order.
const LOGS_LOCK: i64 = 0x6469_7269_6c6f_6773;
/// A record's words on PostgreSQL: the expression of the `logs_words` index, exactly.
const WORDS: &str = "to_tsvector('simple', regexp_replace(l.text || ' ' || \
    replace(replace(replace(COALESCE(l.fields, ''), '\\n', ' '), '\\r', ' '), '\\t', ' '), \
    '[^[:alnum:]]+', ' ', 'g'))";
/// The span of a `log_hours` row, in milliseconds.
const HOUR_MS: i64 = 3_600_000;
/// Records inserted by one statement.
const INSERT_CHUNK: usize = 256;

/// One log record; `id` is the store's (0 in a record not stored yet).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogRecord {
    pub id: u64,
    pub at: Timestamp,
    pub source: Source,
    pub level: Level,
    pub robot: Option<String>,
    pub run_id: Option<String>,
    pub activity_id: Option<String>,
    pub agent: Option<String>,
    pub node: Option<String>,
    /// The position in its run's or activity's output, from 1.
    pub seq: Option<u64>,
    /// `stdout` or `stderr`, for output.
    pub stream: Option<String>,
    /// A JSON object of structured fields.
    pub fields: Option<String>,
    pub text: String,
}

/// Which records a caller may read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogScope {
    /// Robot records: of every robot (`None`), or of the robots whose names match one of these
    /// patterns (`*` for any run of characters).
    pub robots: Option<Vec<String>>,
    pub agent: bool,
    pub activity: bool,
    pub server: bool,
}

impl LogScope {
    /// Every record.
    pub fn all() -> LogScope {
        LogScope {
            robots: None,
            agent: true,
            activity: true,
            server: true,
        }
    }
}

/// Which records to read, and in what order.
#[derive(Debug, Clone, Default)]
pub struct LogQuery<'a> {
    pub search: Option<&'a Search>,
    pub sources: &'a [Source],
    /// This level and above.
    pub level: Option<Level>,
    pub robot: Option<&'a str>,
    pub run_id: Option<&'a str>,
    pub activity_id: Option<&'a str>,
    pub agent: Option<&'a str>,
    pub since: Option<Timestamp>,
    pub until: Option<Timestamp>,
    /// Only records past this id (older when newest first, newer when oldest first).
    pub cursor: Option<u64>,
    pub oldest_first: bool,
    pub limit: u32,
    pub scope: LogScope,
}

#[derive(sqlx::FromRow)]
struct LogRow {
    id: i64,
    at: i64,
    source: String,
    level: String,
    robot: Option<String>,
    run_id: Option<String>,
    activity_id: Option<String>,
    agent: Option<String>,
    node: Option<String>,
    seq: Option<i64>,
    stream: Option<String>,
    fields: Option<String>,
    text: String,
}

impl LogRow {
    fn into_record(self) -> StoreResult<LogRecord> {
        Ok(LogRecord {
            id: self.id.unsigned_abs(),
            at: from_millis("at", self.at)?,
            source: Source::parse(&self.source)
                .ok_or_else(|| StoreError::Corrupt(format!("log source {:?}", self.source)))?,
            level: Level::parse(&self.level)
                .ok_or_else(|| StoreError::Corrupt(format!("log level {:?}", self.level)))?,
            robot: self.robot,
            run_id: self.run_id,
            activity_id: self.activity_id,
            agent: self.agent,
            node: self.node,
            seq: self.seq.map(i64::unsigned_abs),
            stream: self.stream,
            fields: self.fields,
            text: self.text,
        })
    }
}

const COLUMNS: &str = "l.id, l.at, l.source, l.level, l.robot, l.run_id, l.activity_id, l.agent, l.node, l.seq, \
     l.stream, l.fields, l.text";

/// The columns a record fills, in the order their values are bound.
const INSERT_COLUMNS: usize = 12;

/// `INSERT INTO logs` of `rows` records (a power of two up to [`INSERT_CHUNK`]), made once:
/// few distinct statements, each prepared once per connection. Placeholders are `$n` on
/// PostgreSQL and `?` on SQLite (where `$n` would be named, each looked up by its name).
fn insert_sql(rows: usize, postgres: bool) -> &'static str {
    static STATEMENTS: [[OnceLock<String>; 9]; 2] = [const { [const { OnceLock::new() }; 9] }; 2];
    let slot = rows.trailing_zeros() as usize;
    STATEMENTS[usize::from(postgres)][slot].get_or_init(|| {
        let mut sql = String::from(
            "INSERT INTO logs (at, source, level, robot, run_id, activity_id, agent, node, seq, \
             stream, fields, text) VALUES ",
        );
        for row in 0..rows {
            let first = row * INSERT_COLUMNS + 1;
            let values: Vec<String> = (first..first + INSERT_COLUMNS)
                .map(|n| {
                    if postgres {
                        format!("${n}")
                    } else {
                        "?".to_owned()
                    }
                })
                .collect();
            if 0 < row {
                sql.push_str(", ");
            }
            sql.push_str(&format!("({})", values.join(", ")));
        }
        sql.push_str(" ON CONFLICT DO NOTHING");
        sql
    })
}

/// The records in pieces of powers of two, each at most [`INSERT_CHUNK`].
fn pieces(records: &[LogRecord]) -> impl Iterator<Item = &[LogRecord]> {
    let mut rest = records;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let size = INSERT_CHUNK.min(1 << rest.len().ilog2());
        let (piece, after) = rest.split_at(size);
        rest = after;
        Some(piece)
    })
}

/// Inserts records inside a transaction (a run's or an activity's line stored already, by its
/// `seq`, is skipped), binding the records' own values.
macro_rules! insert_logs {
    ($tx:expr, $postgres:expr, $records:expr) => {{
        if $postgres {
            sqlx::query("SELECT pg_advisory_xact_lock($1)")
                .bind(LOGS_LOCK)
                .execute(&mut *$tx)
                .await?;
        }
        let before: i64 = sqlx::query_scalar("SELECT COALESCE(MAX(id), 0) FROM logs")
            .fetch_one(&mut *$tx)
            .await?;
        for piece in pieces($records) {
            let mut insert = sqlx::query(sqlx::AssertSqlSafe(insert_sql(piece.len(), $postgres)));
            for record in piece {
                insert = insert
                    .bind(to_millis(record.at))
                    .bind(record.source.as_str())
                    .bind(record.level.as_str())
                    .bind(record.robot.as_deref())
                    .bind(record.run_id.as_deref())
                    .bind(record.activity_id.as_deref())
                    .bind(record.agent.as_deref())
                    .bind(record.node.as_deref())
                    .bind(record.seq.map(|seq| i64::try_from(seq).unwrap_or(i64::MAX)))
                    .bind(record.stream.as_deref())
                    .bind(record.fields.as_deref())
                    .bind(record.text.as_str());
            }
            insert.execute(&mut *$tx).await?;
        }
        // The ids given now, noted for each hour the records belong to.
        let after: i64 = sqlx::query_scalar("SELECT COALESCE(MAX(id), 0) FROM logs")
            .fetch_one(&mut *$tx)
            .await?;
        if before < after {
            let hours: std::collections::BTreeSet<i64> = $records
                .iter()
                .map(|record: &LogRecord| to_millis(record.at).div_euclid(HOUR_MS))
                .collect();
            for hour in hours {
                sqlx::query(
                    "INSERT INTO log_hours (hour, min_id, max_id) VALUES ($1, $2, $3) \
                     ON CONFLICT (hour) DO UPDATE SET \
                     min_id = CASE WHEN excluded.min_id < log_hours.min_id \
                         THEN excluded.min_id ELSE log_hours.min_id END, \
                     max_id = CASE WHEN log_hours.max_id < excluded.max_id \
                         THEN excluded.max_id ELSE log_hours.max_id END",
                )
                .bind(hour)
                .bind(before + 1)
                .bind(after)
                .execute(&mut *$tx)
                .await?;
            }
        }
    }};
}

impl Store {
    /// Keeps records, in one transaction.
    pub async fn add_logs(&self, records: &[LogRecord]) -> StoreResult<()> {
        if records.is_empty() {
            return Ok(());
        }
        let postgres = self.backend_kind() == BackendKind::Postgres;
        dispatch!(self, writer, pool => {
            let mut tx = pool.begin_write().await?;
            insert_logs!(tx, postgres, records);
            tx.commit().await?;
        });
        Ok(())
    }

    /// Keeps the records an agent's events up to `event_id` brought (its robots' output, its
    /// own records), and notes the events as applied, in one transaction: events sent again
    /// after a crash are not kept twice.
    pub async fn add_agent_logs(
        &self,
        agent: AgentId,
        event_id: u64,
        records: &[LogRecord],
    ) -> StoreResult<()> {
        let postgres = self.backend_kind() == BackendKind::Postgres;
        let event_id = i64::try_from(event_id).unwrap_or(i64::MAX);
        dispatch!(self, writer, pool => {
            let mut tx = pool.begin_write().await?;
            let fresh = sqlx::query(
                "UPDATE agents SET last_event_id = $1 WHERE id = $2 AND last_event_id < $1",
            )
            .bind(event_id)
            .bind(agent.0)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if fresh == 1 && !records.is_empty() {
                insert_logs!(tx, postgres, records);
            }
            tx.commit().await?;
        });
        Ok(())
    }

    /// Records as `query` asks, at most its limit.
    pub async fn logs(&self, query: &LogQuery<'_>) -> StoreResult<Vec<LogRecord>> {
        let postgres = self.backend_kind() == BackendKind::Postgres;
        // Within a time range, only the ids of its hours.
        let ids = match (query.since, query.until) {
            (None, None) => None,
            (since, until) => match self.ids_between(since, until).await? {
                Some(ids) => Some(ids),
                None => return Ok(Vec::new()),
            },
        };
        let rows: Vec<LogRow> = dispatch!(self, reader, pool => {
            let mut sql = QueryBuilder::new(format!("SELECT {COLUMNS} FROM "));
            match query.search {
                Some(search) if !postgres => {
                    sql.push("logs_fts f JOIN logs l ON l.id = f.rowid WHERE logs_fts MATCH ")
                        .push_bind(search.to_fts5());
                }
                Some(search) => {
                    sql.push(format!("logs l WHERE {WORDS} @@ to_tsquery('simple', "))
                    .push_bind(search.to_tsquery())
                    .push(")");
                }
                None => {
                    sql.push("logs l WHERE 1 = 1");
                }
            }
            // A search on SQLite is driven by the full-text index, in its rowid order: the
            // other conditions (`+l.…`) only filter what it finds, so that the planner does
            // not walk another index and ask the full-text index about every row.
            let driven = query.search.is_some() && !postgres;
            push_conditions(&mut sql, query, if driven { "+l." } else { "l." });
            let order = if driven { "f.rowid" } else { "l.id" };
            if let Some((first, last)) = ids {
                sql.push(format!(" AND {order} BETWEEN "))
                    .push_bind(first)
                    .push(" AND ")
                    .push_bind(last);
            }
            if let Some(cursor) = query.cursor {
                let cursor = i64::try_from(cursor).unwrap_or(i64::MAX);
                let direction = if query.oldest_first { '>' } else { '<' };
                sql.push(format!(" AND {order} {direction} ")).push_bind(cursor);
            }
            let direction = if query.oldest_first { "" } else { " DESC" };
            sql.push(format!(" ORDER BY {order}{direction} LIMIT "))
            .push_bind(i64::from(query.limit.max(1)));
            sql.build_query_as().fetch_all(pool).await
        })?;
        rows.into_iter().map(LogRow::into_record).collect()
    }

    /// The first and last ids of the records of the hours from `since` to `until`; `None`
    /// when those hours have none.
    async fn ids_between(
        &self,
        since: Option<Timestamp>,
        until: Option<Timestamp>,
    ) -> StoreResult<Option<(i64, i64)>> {
        let first_hour = since.map_or(i64::MIN, |at| to_millis(at).div_euclid(HOUR_MS));
        let last_hour = until.map_or(i64::MAX, |at| (to_millis(at) - 1).div_euclid(HOUR_MS));
        let (first, last): (Option<i64>, Option<i64>) = dispatch!(self, reader, pool => {
            sqlx::query_as(
                "SELECT MIN(min_id), MAX(max_id) FROM log_hours WHERE hour >= $1 AND hour <= $2",
            )
            .bind(first_hour)
            .bind(last_hour)
            .fetch_one(pool)
            .await
        })?;
        Ok(first.zip(last))
    }

    /// The id of the newest record (0 when there is none).
    pub async fn last_log_id(&self) -> StoreResult<u64> {
        let id: Option<i64> = dispatch!(self, reader, pool => {
            sqlx::query_scalar("SELECT MAX(id) FROM logs").fetch_one(pool).await
        })?;
        Ok(id.unwrap_or(0).unsigned_abs())
    }

    /// The output of a run (`run_id`) or an activity after `after_seq`, in order, at most
    /// `limit` lines.
    pub async fn output(
        &self,
        owner: OutputOf<'_>,
        after_seq: u64,
        limit: u32,
    ) -> StoreResult<Vec<LogRecord>> {
        let after = i64::try_from(after_seq).unwrap_or(i64::MAX);
        let rows: Vec<LogRow> = dispatch!(self, reader, pool => {
            let sql = match owner {
                OutputOf::Run(_) => sqlx::AssertSqlSafe(format!(
                    "SELECT {COLUMNS} FROM logs l WHERE l.run_id = $1 AND l.seq > $2 \
                     ORDER BY l.seq LIMIT $3"
                )),
                OutputOf::Activity(_) => sqlx::AssertSqlSafe(format!(
                    "SELECT {COLUMNS} FROM logs l WHERE l.activity_id = $1 AND l.seq > $2 \
                     ORDER BY l.seq LIMIT $3"
                )),
            };
            sqlx::query_as(sql)
                .bind(owner.id())
                .bind(after)
                .bind(i64::from(limit))
                .fetch_all(pool)
                .await
        })?;
        rows.into_iter().map(LogRow::into_record).collect()
    }
}

/// Whose output.
#[derive(Debug, Clone, Copy)]
pub enum OutputOf<'a> {
    Run(&'a str),
    Activity(&'a str),
}

impl OutputOf<'_> {
    fn id(&self) -> &str {
        match self {
            OutputOf::Run(id) | OutputOf::Activity(id) => id,
        }
    }
}

/// Adds the query's filters and the caller's scope (`AND …`) to a statement over `logs l`,
/// its columns named with `l` (`l.`, or `+l.`, which keeps SQLite from using their indexes).
fn push_conditions<DB: sqlx::Database>(sql: &mut QueryBuilder<DB>, query: &LogQuery<'_>, l: &str)
where
    for<'q> i64: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    for<'q> String: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
{
    let any_of = |sql: &mut QueryBuilder<DB>, column: &str, values: Vec<String>| {
        sql.push(format!(" AND {l}{column} IN ("));
        let mut list = sql.separated(", ");
        for value in values {
            list.push_bind(value);
        }
        sql.push(")");
    };
    if !query.sources.is_empty() {
        let sources = query
            .sources
            .iter()
            .map(|s| s.as_str().to_owned())
            .collect();
        any_of(sql, "source", sources);
    }
    if let Some(level) = query.level {
        let levels = level.and_above().map(|l| l.as_str().to_owned()).collect();
        any_of(sql, "level", levels);
    }
    let equal = [
        ("robot", query.robot),
        ("run_id", query.run_id),
        ("activity_id", query.activity_id),
        ("agent", query.agent),
    ];
    for (column, value) in equal {
        if let Some(value) = value {
            sql.push(format!(" AND {l}{column} = "))
                .push_bind(value.to_owned());
        }
    }
    if let Some(since) = query.since {
        sql.push(format!(" AND {l}at >= "))
            .push_bind(to_millis(since));
    }
    if let Some(until) = query.until {
        sql.push(format!(" AND {l}at < "))
            .push_bind(to_millis(until));
    }
    // The caller's scope: the sources they may read whole, and robots' records by pattern.
    let scope = &query.scope;
    let whole: Vec<&str> = [
        (scope.robots.is_none(), Source::Robot),
        (scope.agent, Source::Agent),
        (scope.activity, Source::Activity),
        (scope.server, Source::Server),
    ]
    .into_iter()
    .filter_map(|(allowed, source)| allowed.then_some(source.as_str()))
    .collect();
    sql.push(format!(" AND ({l}source IN ('{}')", whole.join("', '")));
    if let Some(patterns) = &scope.robots {
        sql.push(format!(" OR ({l}source = 'robot' AND (1 = 0"));
        for pattern in patterns {
            sql.push(format!(" OR {l}robot LIKE "))
                .push_bind(like_pattern(pattern))
                .push(" ESCAPE '\\'");
        }
        sql.push("))");
    }
    sql.push(")");
}

/// A name pattern (`*` for any run of characters) as a `LIKE` pattern escaped with `\`.
fn like_pattern(pattern: &str) -> String {
    pattern
        .replace('\\', "\\\\")
        .replace('%', "\\%")
        .replace('_', "\\_")
        .replace('*', "%")
}
