//! Runs, their transitions and their output.

use dirigent_domain::{
    agent::AgentId,
    run::{Run, RunState, Transition},
};
use jiff::Timestamp;

use crate::{
    BackendKind, BeginWrite, Store, StoreError, StoreResult, agents::queue_command, dispatch,
    from_millis, from_millis_opt, to_millis,
};

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
    session: Option<i64>,
    version: i64,
}

/// The states in which a run holds a place on its agent, as SQL.
const HOLDING_STATES: &str = "('starting', 'running', 'paused', 'stopping')";

/// The key of the advisory lock under which runs are placed on PostgreSQL, so that two nodes
/// placing at once cannot both take a robot's last parallel place or an agent's last slot.
const PLACEMENT_LOCK: i64 = 0x6469_7269_6765_6e74;

/// What placing a run came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Placement {
    /// Placed; the agent's start command has this id.
    Placed { command_id: u64 },
    /// Not placed: the robot or the agent has no free place any more (another node placed a
    /// run meanwhile). The reason is for the queued run to show.
    Refused(String),
}

/// What a run's end brings with it, stored in the transaction that ends it.
#[derive(Debug, Clone, Copy, Default)]
pub struct RunEnd<'a> {
    /// The run the restart policy starts, with its first transition.
    pub restart: Option<(&'a Run, &'a Transition)>,
    /// The robot switches to manual mode, for this reason (the crash-loop guard).
    pub manual: Option<&'a str>,
}

macro_rules! select_runs {
    ($rest:literal) => {
        concat!(
            "SELECT r.id, r.robot, r.agent_id, a.name AS agent, r.state, r.reason, r.stop_requested, \
             r.automatic, r.pid, r.exit_code, r.signal, r.not_before, r.args, r.env, r.created_at, \
             r.started_at, r.ended_at, r.session, r.version FROM runs r LEFT JOIN agents a ON a.id = r.agent_id ",
            $rest
        )
    };
}

impl Store {
    /// Stores a new run with its first transition. A run started by a trigger's firing
    /// settles that firing (`started`) in the same transaction; when the firing was settled
    /// already, nothing is stored and the answer is `Stale`, so a firing starts one run at
    /// most, whichever node took it.
    pub async fn insert_run(
        &self,
        run: &Run,
        transition: &Transition,
        firing: Option<i64>,
    ) -> StoreResult<()> {
        dispatch!(self, writer, pool => {
            let mut tx = pool.begin_write().await?;
            insert_run!(&mut *tx, run, transition);
            if let Some(firing) = firing {
                let settled = sqlx::query(
                    "UPDATE trigger_firings SET outcome = 'started', run_id = $2, recorded_at = $3 \
                     WHERE id = $1 AND outcome = 'due'",
                )
                .bind(firing)
                .bind(&run.id)
                .bind(to_millis(transition.at))
                .execute(&mut *tx)
                .await?
                .rows_affected();
                if settled == 0 {
                    return Err(StoreError::Stale);
                }
            }
            tx.commit().await?;
        });
        Ok(())
    }

    /// Writes back a run's changed fields, and the transition that changed its state if any,
    /// over the version the change was decided on: `Stale` when the run changed meanwhile.
    /// On success the run carries its new version.
    pub async fn update_run(
        &self,
        run: &mut Run,
        transition: Option<&Transition>,
    ) -> StoreResult<()> {
        dispatch!(self, writer, pool => {
            let mut tx = pool.begin_write().await?;
            compare_and_set_run!(&mut *tx, run, false);
            if let Some(transition) = transition {
                insert_transition!(&mut *tx, &run.id, transition);
            }
            tx.commit().await?;
        });
        run.version += 1;
        Ok(())
    }

    /// Ends a run in one transaction: its final state and transition, its token revoked, the
    /// work items it held back in their queues, and what automation makes of it (`end`).
    /// `Stale` when the run changed meanwhile, and then nothing is stored.
    pub async fn end_run(
        &self,
        run: &mut Run,
        transition: &Transition,
        end: RunEnd<'_>,
    ) -> StoreResult<u64> {
        let outcome = if run.state == RunState::Lost {
            "run_lost"
        } else {
            "run_ended"
        };
        let released = dispatch!(self, writer, pool => {
            let mut tx = pool.begin_write().await?;
            compare_and_set_run!(&mut *tx, run, true);
            insert_transition!(&mut *tx, &run.id, transition);
            let released =
                crate::queues::release_held_items!(&mut tx, Some(run.id.as_str()), transition.at, outcome);
            if let Some((next, first)) = end.restart {
                insert_run!(&mut *tx, next, first);
            }
            if let Some(reason) = end.manual {
                sqlx::query("UPDATE robots SET mode = 'manual', mode_reason = $2 WHERE name = $1")
                    .bind(&run.robot)
                    .bind(reason)
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await?;
            released
        });
        run.version += 1;
        Ok(released)
    }

    /// Places a queued run on its agent in one transaction: the run (now `starting`, with its
    /// agent and the digest of its token), its transition, and the agent's start command
    /// (JSON, without the token) queued. Checked in the transaction, under a lock that every
    /// placement takes: the run is still the queued version it was decided on (else `Stale`),
    /// its robot runs fewer than `max_parallel`, the agent is online, not draining and not full.
    pub async fn place_run(
        &self,
        run: &mut Run,
        transition: &Transition,
        token_hash: &str,
        command: &str,
        max_parallel: u32,
    ) -> StoreResult<Placement> {
        let Some(agent_id) = run.agent_id else {
            return Err(StoreError::Corrupt(format!(
                "run {} placed without an agent",
                run.id
            )));
        };
        let postgres = self.backend_kind() == BackendKind::Postgres;
        let placed = dispatch!(self, writer, pool => {
            let mut tx = pool.begin_write().await?;
            if postgres {
                sqlx::query("SELECT pg_advisory_xact_lock($1)")
                    .bind(PLACEMENT_LOCK)
                    .execute(&mut *tx)
                    .await?;
            }
            let robot_holds: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
                "SELECT COUNT(*) FROM runs WHERE robot = $1 AND state IN {HOLDING_STATES}"
            )))
            .bind(&run.robot)
            .fetch_one(&mut *tx)
            .await?;
            let (capacity, online, draining, agent_holds): (i64, bool, bool, i64) =
                sqlx::query_as(sqlx::AssertSqlSafe(format!(
                    "SELECT capacity, online, draining, (SELECT COUNT(*) FROM runs \
                     WHERE agent_id = $1 AND state IN {HOLDING_STATES}) FROM agents WHERE id = $1"
                )))
                .bind(agent_id.0)
                .fetch_one(&mut *tx)
                .await?;
            let agent = run.agent.as_deref().unwrap_or("?");
            let session_taken = match run.session {
                Some(number) => {
                    let (ready, holders): (bool, i64) = sqlx::query_as(sqlx::AssertSqlSafe(format!(
                        "SELECT EXISTS (SELECT 1 FROM graphical_sessions WHERE agent_id = $1 AND number = $2 \
                         AND state = 'ready'), (SELECT COUNT(*) FROM runs WHERE agent_id = $1 \
                         AND session = $2 AND state IN {HOLDING_STATES})"
                    )))
                    .bind(agent_id.0)
                    .bind(i64::from(number))
                    .fetch_one(&mut *tx)
                    .await?;
                    !ready || 0 < holders
                }
                None => false,
            };
            let refused = if i64::from(max_parallel) <= robot_holds {
                Some(format!(
                    "waiting: the robot runs {robot_holds} of {max_parallel} allowed at once"
                ))
            } else if !online || draining || capacity <= agent_holds {
                Some(format!("waiting: agent {agent} has no free place any more"))
            } else if session_taken {
                Some(format!("waiting: agent {agent} has no free graphical session any more"))
            } else {
                None
            };
            match refused {
                Some(reason) => Placement::Refused(reason),
                None => {
                    let n_rows = sqlx::query(
                        "UPDATE runs SET agent_id = $2, state = $3, reason = $4, token_hash = $5, \
                         session = $7, version = version + 1 WHERE id = $1 AND version = $6 \
                         AND state = 'queued'",
                    )
                    .bind(&run.id)
                    .bind(agent_id.0)
                    .bind(run.state.as_str())
                    .bind(&run.reason)
                    .bind(token_hash)
                    .bind(i64::try_from(run.version).unwrap_or(i64::MAX))
                    .bind(run.session.map(i64::from))
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                    if n_rows == 0 {
                        return Err(StoreError::Stale);
                    }
                    insert_transition!(&mut *tx, &run.id, transition);
                    let command_id =
                        queue_command!(&mut *tx, postgres, agent_id, command, transition.at);
                    tx.commit().await?;
                    Placement::Placed { command_id: u64::try_from(command_id).unwrap_or(0) }
                }
            }
        });
        if matches!(placed, Placement::Placed { .. }) {
            run.version += 1;
        }
        Ok(placed)
    }

    /// Gives a `starting` run the digest of a new token (its start command is being sent
    /// again, and the token is not kept); answers whether the run was still starting.
    pub async fn renew_run_token(&self, run_id: &str, token_hash: &str) -> StoreResult<bool> {
        let n_rows = dispatch!(self, writer, pool => {
            sqlx::query("UPDATE runs SET token_hash = $2 WHERE id = $1 AND state = 'starting'")
                .bind(run_id)
                .bind(token_hash)
                .execute(pool)
                .await?
                .rows_affected()
        });
        Ok(n_rows == 1)
    }

    /// Records the digest of the token an agent gave an active run's robot (it may be an
    /// earlier one than the last sent, when a start command crossed a reconnection).
    pub async fn confirm_run_token(
        &self,
        run_id: &str,
        agent_id: AgentId,
        token_hash: &str,
    ) -> StoreResult<()> {
        dispatch!(self, writer, pool => {
            sqlx::query(
                "UPDATE runs SET token_hash = $3 WHERE id = $1 AND agent_id = $2 \
                 AND state IN ('starting', 'running', 'paused', 'stopping')",
            )
            .bind(run_id)
            .bind(agent_id.0)
            .bind(token_hash)
            .execute(pool)
            .await?
            .rows_affected()
        });
        Ok(())
    }

    pub async fn run(&self, id: &str) -> StoreResult<Run> {
        let row: RunRow = dispatch!(self, reader, pool => {
            sqlx::query_as(select_runs!("WHERE r.id = $1")).bind(id).fetch_one(pool).await
        })?;
        row.into_run()
    }

    /// The active run whose token has this digest; `NotFound` otherwise (a run's token
    /// works only while the run is active).
    pub async fn run_by_token(&self, token_hash: &str) -> StoreResult<Run> {
        let row: RunRow = dispatch!(self, reader, pool => {
            sqlx::query_as(select_runs!(
                "WHERE r.token_hash = $1 AND r.state IN ('queued', 'starting', 'running', 'paused', 'stopping')"
            ))
            .bind(token_hash)
            .fetch_one(pool)
            .await
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

    /// The runs holding a place on agents that are not connected and were last heard from
    /// before `cutoff` (or never), oldest first: runs to be marked lost.
    pub async fn runs_of_silent_agents(&self, cutoff: Timestamp) -> StoreResult<Vec<Run>> {
        let rows: Vec<RunRow> = dispatch!(self, reader, pool => {
            sqlx::query_as(select_runs!(
                "WHERE r.state IN ('starting', 'running', 'paused', 'stopping') AND NOT a.online \
                 AND (a.last_seen_at IS NULL OR a.last_seen_at < $1) ORDER BY r.created_at, r.id"
            ))
            .bind(to_millis(cutoff))
            .fetch_all(pool)
            .await
        })?;
        rows.into_iter().map(RunRow::into_run).collect()
    }

    /// How many runs each robot has in each state (those kept), by robot and state.
    pub async fn run_counts(&self) -> StoreResult<Vec<(String, String, i64)>> {
        let counts = dispatch!(self, reader, pool => {
            sqlx::query_as("SELECT robot, state, COUNT(*) FROM runs GROUP BY robot, state ORDER BY robot, state")
                .fetch_all(pool)
                .await?
        });
        Ok(counts)
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
}

/// Inserts a new run inside a transaction.
macro_rules! insert_run {
    ($executor:expr, $run:expr, $transition:expr) => {{
        let run: &Run = $run;
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
        .execute($executor)
        .await?;
        insert_transition!($executor, &run.id, $transition);
    }};
}
use insert_run;

/// Writes a run's fields inside a transaction over the version it was read at; `Stale` (or
/// `NotFound`) when none matches. With `$revoke` its token is revoked too.
macro_rules! compare_and_set_run {
    ($executor:expr, $run:expr, $revoke:expr) => {{
        let run: &Run = $run;
        let sql = if $revoke {
            "UPDATE runs SET agent_id = $2, state = $3, reason = $4, stop_requested = $5, pid = $6, \
             exit_code = $7, signal = $8, not_before = $9, started_at = $10, ended_at = $11, \
             version = version + 1, token_hash = NULL WHERE id = $1 AND version = $12"
        } else {
            "UPDATE runs SET agent_id = $2, state = $3, reason = $4, stop_requested = $5, pid = $6, \
             exit_code = $7, signal = $8, not_before = $9, started_at = $10, ended_at = $11, \
             version = version + 1 WHERE id = $1 AND version = $12"
        };
        let n_rows = sqlx::query(sql)
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
            .bind(i64::try_from(run.version).unwrap_or(i64::MAX))
            .execute($executor)
            .await?
            .rows_affected();
        if n_rows == 0 {
            let exists: Option<i64> = sqlx::query_scalar("SELECT version FROM runs WHERE id = $1")
                .bind(&run.id)
                .fetch_optional($executor)
                .await?;
            return Err(if exists.is_some() { StoreError::Stale } else { StoreError::NotFound });
        }
    }};
}
use compare_and_set_run;

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
            session: self.session.and_then(|number| u32::try_from(number).ok()),
            agent_id: self.agent_id.map(AgentId),
            id: self.id,
            robot: self.robot,
            agent: self.agent,
            reason: self.reason,
            stop_requested: self.stop_requested,
            automatic: self.automatic,
            version: u64::try_from(self.version).unwrap_or(0),
        })
    }
}
