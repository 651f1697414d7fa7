//! The audit log: who did what to which target, when, from where, and how it ended. Records
//! are only ever added.

use jiff::Timestamp;

use crate::{BeginWrite, Store, StoreResult, dispatch, from_millis, to_millis};

/// One audited request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditRecord {
    /// Assigned by the store; 0 for a record not yet stored.
    pub id: i64,
    pub at: Timestamp,
    /// `user:NAME`, `run:ID`, `agent:NAME`, or `anonymous`.
    pub actor: String,
    /// What was asked, such as `POST /api/v1/runs/{id}/stop`.
    pub action: String,
    /// The path it was asked on.
    pub target: String,
    /// The caller's address.
    pub address: String,
    /// `allowed`, `denied` or `failed`.
    pub outcome: String,
    /// The HTTP status answered.
    pub status: u16,
    /// What the request was about, such as `robot:hr-b` and the `run:…` it created.
    pub resources: Vec<String>,
    /// The fields it changed, as JSON (`{"field": [before, after]}`, secrets redacted).
    pub changes: Option<String>,
}

/// Which audit records to list, newest first.
#[derive(Debug, Clone, Default)]
pub struct AuditQuery<'a> {
    pub actor: Option<&'a str>,
    /// Only records about this resource (`robot:hr-b`).
    pub resource: Option<&'a str>,
    pub outcome: Option<&'a str>,
    /// Only records with an id below this one (paging backwards).
    pub before_id: Option<i64>,
    pub since: Option<Timestamp>,
    pub limit: u32,
}

#[derive(sqlx::FromRow)]
struct AuditRow {
    id: i64,
    at: i64,
    actor: String,
    action: String,
    target: String,
    address: String,
    outcome: String,
    status: i64,
    resources: String,
    changes: Option<String>,
}

/// Inserts audit records through the connection or transaction `$conn`.
macro_rules! insert_audit_rows {
    ($conn:expr, $records:expr) => {
        for chunk in $records.chunks(1000) {
            let mut insert = sqlx::QueryBuilder::new(
                "INSERT INTO audit_log (at, actor, action, target, address, outcome, status, resources, changes) ",
            );
            insert.push_values(chunk, |mut row, record| {
                row.push_bind($crate::to_millis(record.at))
                    .push_bind(record.actor.clone())
                    .push_bind(record.action.clone())
                    .push_bind(record.target.clone())
                    .push_bind(record.address.clone())
                    .push_bind(record.outcome.clone())
                    .push_bind(i64::from(record.status))
                    .push_bind(record.resources.join(" "))
                    .push_bind(record.changes.clone());
            });
            insert.build().execute($conn).await?;
        }
    };
}
/// Inserts audit records in a batch's transaction.
pub(crate) async fn insert_audit_batch(
    conn: &mut crate::batch::BatchConn<'_>,
    records: &[AuditRecord],
) -> StoreResult<()> {
    for chunk in records.chunks(1000) {
        let sql = crate::batch::values_sql(
            "INSERT INTO audit_log (at, actor, action, target, address, outcome, status, resources, changes)",
            chunk.len(),
            9,
        );
        let resources: Vec<String> = chunk
            .iter()
            .map(|record| record.resources.join(" "))
            .collect();
        let args: Vec<crate::batch::Arg<'_>> = chunk
            .iter()
            .zip(&resources)
            .flat_map(|(record, resources)| {
                crate::batch::args![
                    to_millis(record.at),
                    &record.actor,
                    &record.action,
                    &record.target,
                    &record.address,
                    &record.outcome,
                    i64::from(record.status),
                    resources,
                    record.changes.as_deref(),
                ]
                .to_owned()
            })
            .collect();
        conn.execute(&sql, &args).await?;
    }
    Ok(())
}

impl Store {
    /// Appends records in one transaction.
    /// Appends records in one transaction.
    pub async fn insert_audit(&self, records: &[AuditRecord]) -> StoreResult<()> {
        dispatch!(self, writer, pool => {
            let mut tx = pool.begin_write().await?;
            insert_audit_rows!(&mut *tx, records);
            tx.commit().await?;
        });
        Ok(())
    }

    pub async fn audit(&self, query: &AuditQuery<'_>) -> StoreResult<Vec<AuditRecord>> {
        let rows: Vec<AuditRow> = dispatch!(self, reader, pool => {
            sqlx::query_as(
                "SELECT id, at, actor, action, target, address, outcome, status, resources, changes FROM audit_log \
                 WHERE ($1 IS NULL OR actor = $1) AND ($2 IS NULL OR outcome = $2) \
                 AND ($3 IS NULL OR id < $3) AND ($4 IS NULL OR at >= $4) \
                 AND ($6 IS NULL OR (' ' || resources || ' ') LIKE $6 ESCAPE '\\') \
                 ORDER BY id DESC LIMIT $5",
            )
            .bind(query.actor)
            .bind(query.outcome)
            .bind(query.before_id)
            .bind(query.since.map(to_millis))
            .bind(i64::from(query.limit.max(1)))
            .bind(query.resource.map(|resource| {
                let escaped = resource
                    .replace('\\', "\\\\")
                    .replace('%', "\\%")
                    .replace('_', "\\_");
                format!("% {escaped} %")
            }))
            .fetch_all(pool)
            .await
        })?;
        rows.into_iter()
            .map(|row| {
                Ok(AuditRecord {
                    id: row.id,
                    at: from_millis("at", row.at)?,
                    actor: row.actor,
                    action: row.action,
                    target: row.target,
                    address: row.address,
                    outcome: row.outcome,
                    status: u16::try_from(row.status).unwrap_or(0),
                    resources: row
                        .resources
                        .split_whitespace()
                        .map(str::to_owned)
                        .collect(),
                    changes: row.changes,
                })
            })
            .collect()
    }
}
