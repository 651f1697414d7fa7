//! Runs, their transitions and their output.

use dirigent_domain::{
    agent::AgentId,
    run::{Run, RunState, Transition},
};
use jiff::Timestamp;

use crate::{
    BeginWrite, Store, StoreError, StoreResult, dispatch, from_millis, from_millis_opt, to_millis,
};

/// One line of output to store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputLine {
    pub seq: u64,
    /// `stdout` or `stderr`.
    pub stream: String,
    pub at: Timestamp,
    pub text: String,
}

/// Which runs to list.
#[derive(Debug, Clone, Default)]
pub struct RunQuery<'a> {
    pub robot: Option<&'a str>,
    pub active_only: bool,
    pub limit: u32,
}

#[derive(sqlx::FromRow)]
struct RunRow {
    id: String,
    robot: String,
    agent_id: Option<i64>,
    agent: Option<String>,
    state: String,
    reason: Option<String>,
    stop_requested: bool,
    automatic: bool,
    pid: Option<i64>,
    exit_code: Option<i64>,
    signal: Option<i64>,
    not_before: Option<i64>,
    args: Option<String>,
    env: Option<String>,
    created_at: i64,
    started_at: Option<i64>,
    ended_at: Option<i64>,
}

macro_rules! select_runs {
    ($rest:literal) => {
        concat!(
            "SELECT r.id, r.robot, r.agent_id, a.name AS agent, r.state, r.reason, r.stop_requested, \
             r.automatic, r.pid, r.exit_code, r.signal, r.not_before, r.args, r.env, r.created_at, \
             r.started_at, r.ended_at FROM runs r LEFT JOIN agents a ON a.id = r.agent_id ",
            $rest
        )
    };
}

impl Store {
    /// Stores a new run with its first transition.
    pub async fn insert_run(&self, run: &Run, transition: &Transition) -> StoreResult<()> {
        dispatch!(self, writer, pool => {
            let mut tx = pool.begin_write().await?;
            sqlx::query(
                "INSERT INTO runs (id, robot, agent_id, state, reason, stop_requested, automatic, \
                 not_before, created_at, args, env) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
            )
            .bind(&run.id)
            .bind(&run.robot)
            .bind(run.agent_id.map(|id| id.0))
            .bind(run.state.as_str())
            .bind(&run.reason)
            .bind(run.stop_requested)
            .bind(run.automatic)
            .bind(run.not_before.map(to_millis))
            .bind(to_millis(run.created_at))
            .bind(serde_json::to_string(&run.args).ok().filter(|_| !run.args.is_empty()))
            .bind(serde_json::to_string(&run.env).ok().filter(|_| !run.env.is_empty()))
            .execute(&mut *tx)
            .await?;
            insert_transition!(&mut *tx, &run.id, transition);
            tx.commit().await?;
        });
        Ok(())
    }

    /// Writes back a run's changed fields, and the transition that changed its state if any.
    pub async fn update_run(&self, run: &Run, transition: Option<&Transition>) -> StoreResult<()> {
        dispatch!(self, writer, pool => {
            let mut tx = pool.begin_write().await?;
            let n_rows = sqlx::query(
                "UPDATE runs SET agent_id = $2, state = $3, reason = $4, stop_requested = $5, pid = $6, \
                 exit_code = $7, signal = $8, not_before = $9, started_at = $10, ended_at = $11 WHERE id = $1",
            )
            .bind(&run.id)
            .bind(run.agent_id.map(|id| id.0))
            .bind(run.state.as_str())
            .bind(&run.reason)
            .bind(run.stop_requested)
            .bind(run.pid.map(i64::from))
            .bind(run.exit_code.map(i64::from))
            .bind(run.signal.map(i64::from))
            .bind(run.not_before.map(to_millis))
            .bind(run.started_at.map(to_millis))
            .bind(run.ended_at.map(to_millis))
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if n_rows == 0 {
                return Err(StoreError::NotFound);
            }
            if let Some(transition) = transition {
                insert_transition!(&mut *tx, &run.id, transition);
            }
            tx.commit().await?;
        });
        Ok(())
    }

    /// Places a queued run on its agent in one transaction: the run (now `starting`, with its
    /// agent and the digest of its token), its transition, and the agent's start command
    /// (JSON) queued. Answers the command's id.
    pub async fn place_run(
        &self,
        run: &Run,
        transition: &Transition,
        token_hash: &str,
        command: &str,
    ) -> StoreResult<u64> {
        let Some(agent_id) = run.agent_id else {
            return Err(StoreError::Corrupt(format!(
                "run {} placed without an agent",
                run.id
            )));
        };
        let command_id: i64 = dispatch!(self, writer, pool => {
            let mut tx = pool.begin_write().await?;
            sqlx::query("UPDATE runs SET agent_id = $2, state = $3, reason = $4, token_hash = $5 WHERE id = $1")
                .bind(&run.id)
                .bind(agent_id.0)
                .bind(run.state.as_str())
                .bind(&run.reason)
                .bind(token_hash)
                .execute(&mut *tx)
                .await?;
            insert_transition!(&mut *tx, &run.id, transition);
            let command_id: i64 = sqlx::query_scalar(
                "UPDATE agents SET last_command_id = last_command_id + 1 WHERE id = $1 RETURNING last_command_id",
            )
            .bind(agent_id.0)
            .fetch_one(&mut *tx)
            .await?;
            sqlx::query("INSERT INTO agent_commands (agent_id, id, body, created_at) VALUES ($1, $2, $3, $4)")
                .bind(agent_id.0)
                .bind(command_id)
                .bind(command)
                .bind(to_millis(transition.at))
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            command_id
        });
        Ok(u64::try_from(command_id).unwrap_or(0))
    }

    /// Sets the digest of the token a run's robot authenticates with; `None` revokes it.
    pub async fn set_run_token(&self, run_id: &str, token_hash: Option<&str>) -> StoreResult<()> {
        dispatch!(self, writer, pool => {
            sqlx::query("UPDATE runs SET token_hash = $2 WHERE id = $1")
                .bind(run_id)
                .bind(token_hash)
                .execute(pool)
                .await
                .map(|done| done.rows_affected())
        })?;
        Ok(())
    }

    pub async fn run(&self, id: &str) -> StoreResult<Run> {
        let row: RunRow = dispatch!(self, reader, pool => {
            sqlx::query_as(select_runs!("WHERE r.id = $1")).bind(id).fetch_one(pool).await
        })?;
        row.into_run()
    }

    /// The active run whose token has this digest; `NotFound` otherwise.
    pub async fn run_by_token(&self, token_hash: &str) -> StoreResult<Run> {
        let row: RunRow = dispatch!(self, reader, pool => {
            sqlx::query_as(select_runs!("WHERE r.token_hash = $1")).bind(token_hash).fetch_one(pool).await
        })?;
        row.into_run()
    }

    /// Runs, newest first.
    pub async fn runs(&self, query: &RunQuery<'_>) -> StoreResult<Vec<Run>> {
        let limit = i64::from(query.limit.max(1));
        let rows: Vec<RunRow> = dispatch!(self, reader, pool => {
            sqlx::query_as(select_runs!(
                "WHERE ($1 IS NULL OR r.robot = $1) \
                 AND (NOT $2 OR r.state IN ('queued', 'starting', 'running', 'paused', 'stopping')) \
                 ORDER BY r.created_at DESC, r.id DESC LIMIT $3"
            ))
            .bind(query.robot)
            .bind(query.active_only)
            .bind(limit)
            .fetch_all(pool)
            .await
        })?;
        rows.into_iter().map(RunRow::into_run).collect()
    }

    /// Every active run, oldest first: the dispatcher's view.
    pub async fn active_runs(&self) -> StoreResult<Vec<Run>> {
        let rows: Vec<RunRow> = dispatch!(self, reader, pool => {
            sqlx::query_as(select_runs!(
                "WHERE r.state IN ('queued', 'starting', 'running', 'paused', 'stopping') \
                 ORDER BY r.created_at, r.id"
            ))
            .fetch_all(pool)
            .await
        })?;
        rows.into_iter().map(RunRow::into_run).collect()
    }

    /// The latest runs of a robot that have ended, newest first.
    pub async fn ended_runs(&self, robot: &str, limit: u32) -> StoreResult<Vec<Run>> {
        let rows: Vec<RunRow> = dispatch!(self, reader, pool => {
            sqlx::query_as(select_runs!(
                "WHERE r.robot = $1 AND r.ended_at IS NOT NULL ORDER BY r.ended_at DESC, r.id DESC LIMIT $2"
            ))
            .bind(robot)
            .bind(i64::from(limit))
            .fetch_all(pool)
            .await
        })?;
        rows.into_iter().map(RunRow::into_run).collect()
    }

    /// Runs that failed, timed out or were lost since `since`, the latest first.
    pub async fn failed_runs_since(&self, since: Timestamp, limit: u32) -> StoreResult<Vec<Run>> {
        let rows: Vec<RunRow> = dispatch!(self, reader, pool => {
            sqlx::query_as(select_runs!(
                "WHERE r.ended_at >= $1 AND r.state IN ('failed', 'timed_out', 'lost') \
                 ORDER BY r.ended_at DESC, r.id DESC LIMIT $2"
            ))
            .bind(to_millis(since))
            .bind(i64::from(limit))
            .fetch_all(pool)
            .await
        })?;
        rows.into_iter().map(RunRow::into_run).collect()
    }

    /// When the automatic runs of a robot created since `since` were created.
    pub async fn automatic_starts(
        &self,
        robot: &str,
        since: Timestamp,
    ) -> StoreResult<Vec<Timestamp>> {
        let rows: Vec<i64> = dispatch!(self, reader, pool => {
            sqlx::query_scalar("SELECT created_at FROM runs WHERE robot = $1 AND automatic AND created_at > $2")
                .bind(robot)
                .bind(to_millis(since))
                .fetch_all(pool)
                .await
        })?;
        rows.into_iter()
            .map(|millis| from_millis("created_at", millis))
            .collect()
    }

    pub async fn run_transitions(&self, run_id: &str) -> StoreResult<Vec<Transition>> {
        let rows: Vec<(String, i64, String, Option<String>)> = dispatch!(self, reader, pool => {
            sqlx::query_as("SELECT state, at, cause, reason FROM run_transitions WHERE run_id = $1 ORDER BY seq")
                .bind(run_id)
                .fetch_all(pool)
                .await
        })?;
        rows.into_iter()
            .map(|(state, at, cause, reason)| {
                Ok(Transition {
                    state: RunState::parse(&state)
                        .ok_or_else(|| StoreError::Corrupt(format!("run state {state:?}")))?,
                    at: from_millis("at", at)?,
                    cause,
                    reason,
                })
            })
            .collect()
    }

    /// Stores output lines; lines already stored (same run and seq) are skipped, so a
    /// resent batch is harmless.
    pub async fn append_output(&self, run_id: &str, lines: &[OutputLine]) -> StoreResult<()> {
        if lines.is_empty() {
            return Ok(());
        }
        dispatch!(self, writer, pool => {
            let mut tx = pool.begin_write().await?;
            for line in lines {
                sqlx::query(
                    "INSERT INTO run_output (run_id, seq, stream, at, text) VALUES ($1, $2, $3, $4, $5) \
                     ON CONFLICT (run_id, seq) DO NOTHING",
                )
                .bind(run_id)
                .bind(i64::try_from(line.seq).unwrap_or(i64::MAX))
                .bind(&line.stream)
                .bind(to_millis(line.at))
                .bind(&line.text)
                .execute(&mut *tx)
                .await?;
            }
            tx.commit().await?;
        });
        Ok(())
    }

    /// Output lines of a run after `after_seq`, in order, at most `limit`.
    pub async fn output(
        &self,
        run_id: &str,
        after_seq: u64,
        limit: u32,
    ) -> StoreResult<Vec<OutputLine>> {
        let rows: Vec<(i64, String, i64, String)> = dispatch!(self, reader, pool => {
            sqlx::query_as(
                "SELECT seq, stream, at, text FROM run_output WHERE run_id = $1 AND seq > $2 ORDER BY seq LIMIT $3",
            )
            .bind(run_id)
            .bind(i64::try_from(after_seq).unwrap_or(i64::MAX))
            .bind(i64::from(limit))
            .fetch_all(pool)
            .await
        })?;
        rows.into_iter()
            .map(|(seq, stream, at, text)| {
                Ok(OutputLine {
                    seq: u64::try_from(seq).unwrap_or(0),
                    stream,
                    at: from_millis("at", at)?,
                    text,
                })
            })
            .collect()
    }
}

/// Appends a transition to a run's history inside a transaction.
macro_rules! insert_transition {
    ($executor:expr, $run_id:expr, $transition:expr) => {
        sqlx::query(
            "INSERT INTO run_transitions (run_id, seq, state, at, cause, reason) \
             VALUES ($1, (SELECT COALESCE(MAX(seq), 0) + 1 FROM run_transitions WHERE run_id = $1), $2, $3, $4, $5)",
        )
        .bind($run_id)
        .bind($transition.state.as_str())
        .bind(to_millis($transition.at))
        .bind(&$transition.cause)
        .bind(&$transition.reason)
        .execute($executor)
        .await?
    };
}
use insert_transition;

impl RunRow {
    fn into_run(self) -> StoreResult<Run> {
        let corrupt = |column: &str, value: &dyn std::fmt::Display| {
            StoreError::Corrupt(format!("run {:?}, {column}: {value}", self.id))
        };
        let state = RunState::parse(&self.state).ok_or_else(|| corrupt("state", &self.state))?;
        let small = |column: &str, value: Option<i64>| {
            value
                .map(|value| i32::try_from(value).map_err(|err| corrupt(column, &err)))
                .transpose()
        };
        let args = match &self.args {
            Some(text) => serde_json::from_str(text).map_err(|err| corrupt("args", &err))?,
            None => Vec::new(),
        };
        let env = match &self.env {
            Some(text) => serde_json::from_str(text).map_err(|err| corrupt("env", &err))?,
            None => Default::default(),
        };
        Ok(Run {
            state,
            args,
            env,
            pid: self
                .pid
                .map(|pid| u32::try_from(pid).map_err(|err| corrupt("pid", &err)))
                .transpose()?,
            exit_code: small("exit_code", self.exit_code)?,
            signal: small("signal", self.signal)?,
            not_before: from_millis_opt("not_before", self.not_before)?,
            created_at: from_millis("created_at", self.created_at)?,
            started_at: from_millis_opt("started_at", self.started_at)?,
            ended_at: from_millis_opt("ended_at", self.ended_at)?,
            agent_id: self.agent_id.map(AgentId),
            id: self.id,
            robot: self.robot,
            agent: self.agent,
            reason: self.reason,
            stop_requested: self.stop_requested,
            automatic: self.automatic,
        })
    }
}
