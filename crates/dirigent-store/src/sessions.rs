//! Graphical sessions: the state each agent last reported of its desktops, and their history.

use dirigent_domain::{
    agent::AgentId,
    session::{Session, SessionChange, SessionState},
};
use jiff::Timestamp;

use crate::{BeginWrite, Store, StoreError, StoreResult, dispatch, from_millis, to_millis};

/// A session's state as its agent reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionUpdate {
    pub number: u32,
    pub display: Option<String>,
    pub width: u32,
    pub height: u32,
    pub state: SessionState,
    pub run_id: Option<String>,
    pub reason: Option<String>,
    pub at: Timestamp,
}

#[derive(sqlx::FromRow)]
struct SessionRow {
    agent_id: i64,
    agent: String,
    online: bool,
    number: i64,
    display: Option<String>,
    width: i64,
    height: i64,
    state: String,
    run_id: Option<String>,
    reason: Option<String>,
    updated_at: i64,
    controlled_by: Option<String>,
    controlled_since: Option<i64>,
}

macro_rules! select_sessions {
    ($where:literal) => {
        concat!(
            "SELECT s.agent_id, a.name AS agent, a.online, s.number, s.display, s.width, s.height, \
             s.state, s.run_id, s.reason, s.updated_at, s.controlled_by, s.controlled_since \
             FROM graphical_sessions s \
             JOIN agents a ON a.id = s.agent_id ",
            $where,
            " ORDER BY a.name, s.number"
        )
    };
}

impl Store {
    /// Stores what an agent reports of one of its sessions; a change (not a mere resend of
    /// its state) also goes into the session's history.
    pub async fn update_session(
        &self,
        agent: AgentId,
        update: &SessionUpdate,
        history: bool,
    ) -> StoreResult<()> {
        dispatch!(self, writer, pool => {
            let mut tx = pool.begin_write().await?;
            sqlx::query(
                "INSERT INTO graphical_sessions (agent_id, number, display, width, height, state, run_id, \
                 reason, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
                 ON CONFLICT (agent_id, number) DO UPDATE SET display = $3, width = $4, \
                 height = $5, state = $6, run_id = $7, reason = $8, updated_at = $9",
            )
            .bind(agent.0)
            .bind(i64::from(update.number))
            .bind(&update.display)
            .bind(i64::from(update.width))
            .bind(i64::from(update.height))
            .bind(update.state.as_str())
            .bind(&update.run_id)
            .bind(&update.reason)
            .bind(to_millis(update.at))
            .execute(&mut *tx)
            .await?;
            if history {
                sqlx::query(
                    "INSERT INTO graphical_session_changes (agent_id, number, at, state, run_id, reason) \
                     VALUES ($1, $2, $3, $4, $5, $6)",
                )
                .bind(agent.0)
                .bind(i64::from(update.number))
                .bind(to_millis(update.at))
                .bind(update.state.as_str())
                .bind(&update.run_id)
                .bind(&update.reason)
                .execute(&mut *tx)
                .await?;
            }
            tx.commit().await?;
        });
        Ok(())
    }

    /// `user` takes the session over (again, if they hold it already); `paused_run` is the run
    /// paused for it. Answers who holds it when someone else does (nothing is changed then).
    pub async fn take_session_control(
        &self,
        agent: AgentId,
        number: u32,
        user: &str,
        now: Timestamp,
    ) -> StoreResult<Option<(String, Timestamp)>> {
        let taken = dispatch!(self, writer, pool => {
            sqlx::query(
                "UPDATE graphical_sessions SET controlled_by = $3, controlled_since = $4 \
                 WHERE agent_id = $1 AND number = $2 AND (controlled_by IS NULL OR controlled_by = $3)",
            )
            .bind(agent.0)
            .bind(i64::from(number))
            .bind(user)
            .bind(to_millis(now))
            .execute(pool)
            .await?
            .rows_affected()
        });
        if taken == 1 {
            return Ok(None);
        }
        let holder: Option<(Option<String>, Option<i64>)> = dispatch!(self, reader, pool => {
            sqlx::query_as(
                "SELECT controlled_by, controlled_since FROM graphical_sessions \
                 WHERE agent_id = $1 AND number = $2",
            )
            .bind(agent.0)
            .bind(i64::from(number))
            .fetch_optional(pool)
            .await
        })?;
        match holder {
            Some((Some(user), Some(since))) => {
                Ok(Some((user, from_millis("controlled_since", since)?)))
            }
            Some(_) => Err(StoreError::Stale),
            None => Err(StoreError::NotFound),
        }
    }

    /// Records the run paused for the operator who controls the session.
    pub async fn set_session_paused_run(
        &self,
        agent: AgentId,
        number: u32,
        run_id: &str,
    ) -> StoreResult<()> {
        dispatch!(self, writer, pool => {
            sqlx::query("UPDATE graphical_sessions SET paused_run = $3 WHERE agent_id = $1 AND number = $2")
                .bind(agent.0)
                .bind(i64::from(number))
                .bind(run_id)
                .execute(pool)
                .await?;
        });
        Ok(())
    }

    /// Gives the session back: nobody controls it any more. Answers the run paused for the
    /// operator, to resume.
    pub async fn release_session_control(
        &self,
        agent: AgentId,
        number: u32,
    ) -> StoreResult<Option<String>> {
        let paused = dispatch!(self, writer, pool => {
            let mut tx = pool.begin_write().await?;
            let paused: Option<Option<String>> = sqlx::query_scalar(
                "SELECT paused_run FROM graphical_sessions WHERE agent_id = $1 AND number = $2",
            )
            .bind(agent.0)
            .bind(i64::from(number))
            .fetch_optional(&mut *tx)
            .await?;
            sqlx::query(
                "UPDATE graphical_sessions SET controlled_by = NULL, controlled_since = NULL, \
                 paused_run = NULL WHERE agent_id = $1 AND number = $2",
            )
            .bind(agent.0)
            .bind(i64::from(number))
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            paused
        });
        paused.ok_or(StoreError::NotFound)
    }

    /// Every session, by agent and number; only those of `agent` if given.
    pub async fn sessions(&self, agent: Option<&str>) -> StoreResult<Vec<Session>> {
        let rows: Vec<SessionRow> = dispatch!(self, reader, pool => {
            match agent {
                Some(agent) => sqlx::query_as(select_sessions!("WHERE a.name = $1"))
                    .bind(agent)
                    .fetch_all(pool)
                    .await,
                None => sqlx::query_as(select_sessions!("")).fetch_all(pool).await,
            }
        })?;
        rows.into_iter().map(SessionRow::into_session).collect()
    }

    /// One session and its history, newest first (at most `limit` changes).
    pub async fn session(
        &self,
        agent: &str,
        number: u32,
        limit: u32,
    ) -> StoreResult<(Session, Vec<SessionChange>)> {
        let row: SessionRow = dispatch!(self, reader, pool => {
            sqlx::query_as(select_sessions!("WHERE a.name = $1 AND s.number = $2"))
                .bind(agent)
                .bind(i64::from(number))
                .fetch_one(pool)
                .await
        })?;
        let changes: Vec<(i64, String, Option<String>, Option<String>)> = dispatch!(self, reader, pool => {
            sqlx::query_as(
                "SELECT at, state, run_id, reason FROM graphical_session_changes \
                 WHERE agent_id = $1 AND number = $2 ORDER BY at DESC LIMIT $3",
            )
            .bind(row.agent_id)
            .bind(i64::from(number))
            .bind(i64::from(limit))
            .fetch_all(pool)
            .await
        })?;
        let history = changes
            .into_iter()
            .map(|(at, state, run_id, reason)| {
                Ok(SessionChange {
                    state: parse_state(&state)?,
                    run_id,
                    reason,
                    at: from_millis("at", at)?,
                })
            })
            .collect::<StoreResult<_>>()?;
        Ok((row.into_session()?, history))
    }
}

fn parse_state(text: &str) -> StoreResult<SessionState> {
    SessionState::parse(text)
        .ok_or_else(|| StoreError::Corrupt(format!("unknown session state {text:?}")))
}

impl SessionRow {
    fn into_session(self) -> StoreResult<Session> {
        Ok(Session {
            agent_id: AgentId(self.agent_id),
            state: parse_state(&self.state)?,
            updated_at: from_millis("updated_at", self.updated_at)?,
            agent: self.agent,
            agent_online: self.online,
            number: u32::try_from(self.number).unwrap_or(0),
            display: self.display,
            width: u32::try_from(self.width).unwrap_or(0),
            height: u32::try_from(self.height).unwrap_or(0),
            run_id: self.run_id,
            reason: self.reason,
            controlled_by: match (self.controlled_by, self.controlled_since) {
                (Some(user), Some(since)) => Some((user, from_millis("controlled_since", since)?)),
                _ => None,
            },
        })
    }
}
