//! Robot definitions in the `robots` table.

use std::collections::BTreeMap;

use dirigent_domain::access::NamePattern;
use dirigent_domain::robot::{
    AgentSelector, CrashLoopGuard, RestartBackoff, RestartPolicy, Robot, RobotDefinition,
    RobotMode, RobotName,
};
use jiff::Timestamp;

use crate::{Store, StoreError, StoreResult, dispatch, from_millis, to_millis};

/// The columns of `robots`, in the order of [`RobotRow`] and of [`bind_definition!`].
macro_rules! columns {
    () => {
        "name, description, argv, working_dir, env, agent, max_parallel, stop_grace_seconds, \
         max_duration_seconds, restart_policy, restart_backoff_initial_seconds, \
         restart_backoff_max_seconds, crash_loop_max_starts, crash_loop_window_seconds, \
         needs_display, queues, created_at, updated_at"
    };
}

/// Binds a definition's fields as `$1` to `$16`, in the order of [`columns!`].
macro_rules! bind_definition {
    ($query:expr, $robot:expr, $encoded:expr) => {
        $query
            .bind($robot.name.as_str())
            .bind(&$robot.description)
            .bind(&$encoded.argv)
            .bind(&$robot.working_dir)
            .bind(&$encoded.env)
            .bind(&$encoded.agent)
            .bind(i64::from($robot.max_parallel))
            .bind(i64::from($robot.stop_grace_seconds))
            .bind($robot.max_duration_seconds.map(i64::from))
            .bind($robot.restart_policy.as_str())
            .bind(i64::from($robot.restart_backoff.initial_seconds))
            .bind(i64::from($robot.restart_backoff.max_seconds))
            .bind(i64::from($robot.crash_loop.max_starts))
            .bind(i64::from($robot.crash_loop.window_seconds))
            .bind($robot.needs_display)
            .bind(&$encoded.queues)
    };
}

#[derive(sqlx::FromRow)]
struct RobotRow {
    name: String,
    description: String,
    argv: String,
    working_dir: Option<String>,
    env: String,
    agent: String,
    max_parallel: i64,
    stop_grace_seconds: i64,
    max_duration_seconds: Option<i64>,
    restart_policy: String,
    restart_backoff_initial_seconds: i64,
    restart_backoff_max_seconds: i64,
    crash_loop_max_starts: i64,
    crash_loop_window_seconds: i64,
    needs_display: bool,
    queues: String,
    created_at: i64,
    updated_at: i64,
    mode: String,
    mode_reason: Option<String>,
}

impl Store {
    /// Stores a new robot; `Conflict` when the name is taken.
    pub async fn insert_robot(
        &self,
        robot: &RobotDefinition,
        now: Timestamp,
    ) -> StoreResult<Robot> {
        let encoded = Encoded::new(robot)?;
        dispatch!(self, writer, pool => {
            bind_definition!(
                sqlx::query(concat!(
                    "INSERT INTO robots (", columns!(), ") VALUES \
                     ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18)"
                )),
                robot,
                encoded
            )
            .bind(to_millis(now))
            .bind(to_millis(now))
            .execute(pool)
            .await
            .map(|done| done.rows_affected())
        })?;
        Ok(Robot {
            definition: robot.clone(),
            mode: RobotMode::Auto,
            mode_reason: None,
            created_at: now,
            updated_at: now,
        })
    }

    /// Replaces the definition of an existing robot; `NotFound` when there is none.
    pub async fn replace_robot(
        &self,
        robot: &RobotDefinition,
        now: Timestamp,
    ) -> StoreResult<Robot> {
        let encoded = Encoded::new(robot)?;
        let n_rows: u64 = dispatch!(self, writer, pool => {
            bind_definition!(
                sqlx::query(
                    "UPDATE robots SET description = $2, argv = $3, working_dir = $4, env = $5, \
                     agent = $6, max_parallel = $7, stop_grace_seconds = $8, \
                     max_duration_seconds = $9, restart_policy = $10, \
                     restart_backoff_initial_seconds = $11, restart_backoff_max_seconds = $12, \
                     crash_loop_max_starts = $13, crash_loop_window_seconds = $14, \
                     needs_display = $15, queues = $16, updated_at = $17 \
                     WHERE name = $1",
                ),
                robot,
                encoded
            )
            .bind(to_millis(now))
            .execute(pool)
            .await
            .map(|done| done.rows_affected())
        })?;
        if n_rows == 0 {
            return Err(StoreError::NotFound);
        }
        self.robot(robot.name.as_str()).await
    }

    /// Switches a robot to `mode`, recording why; `NotFound` when there is no such robot.
    pub async fn set_robot_mode(
        &self,
        name: &str,
        mode: RobotMode,
        reason: &str,
    ) -> StoreResult<()> {
        let n_rows: u64 = dispatch!(self, writer, pool => {
            sqlx::query("UPDATE robots SET mode = $2, mode_reason = $3 WHERE name = $1")
                .bind(name)
                .bind(mode.as_str())
                .bind(reason)
                .execute(pool)
                .await
                .map(|done| done.rows_affected())
        })?;
        if n_rows == 0 {
            return Err(StoreError::NotFound);
        }
        Ok(())
    }

    /// The robot named `name`; `NotFound` when there is none.
    pub async fn robot(&self, name: &str) -> StoreResult<Robot> {
        let row: RobotRow = dispatch!(self, reader, pool => {
            sqlx::query_as(concat!("SELECT ", columns!(), ", mode, mode_reason FROM robots WHERE name = $1"))
                .bind(name)
                .fetch_one(pool)
                .await
        })?;
        row.into_robot()
    }

    /// Every robot, ordered by name.
    pub async fn robots(&self) -> StoreResult<Vec<Robot>> {
        let rows: Vec<RobotRow> = dispatch!(self, reader, pool => {
            sqlx::query_as(concat!("SELECT ", columns!(), ", mode, mode_reason FROM robots ORDER BY name"))
                .fetch_all(pool)
                .await
        })?;
        rows.into_iter().map(RobotRow::into_robot).collect()
    }

    /// Deletes the robot named `name`; `NotFound` when there is none.
    pub async fn delete_robot(&self, name: &str) -> StoreResult<()> {
        let n_rows: u64 = dispatch!(self, writer, pool => {
            sqlx::query("DELETE FROM robots WHERE name = $1").bind(name).execute(pool).await.map(|done| done.rows_affected())
        })?;
        if n_rows == 0 {
            return Err(StoreError::NotFound);
        }
        Ok(())
    }
}

/// The columns of a definition that are stored as text.
struct Encoded {
    argv: String,
    env: String,
    agent: String,
    queues: String,
}

impl Encoded {
    fn new(robot: &RobotDefinition) -> StoreResult<Encoded> {
        let to_json = |err: serde_json::Error| StoreError::Corrupt(err.to_string());
        Ok(Encoded {
            argv: serde_json::to_string(&robot.argv).map_err(to_json)?,
            env: serde_json::to_string(&robot.env).map_err(to_json)?,
            agent: robot.agent.to_string(),
            queues: serde_json::to_string(
                &robot
                    .queues
                    .iter()
                    .map(NamePattern::as_str)
                    .collect::<Vec<_>>(),
            )
            .map_err(to_json)?,
        })
    }
}

impl RobotRow {
    fn into_robot(self) -> StoreResult<Robot> {
        let corrupt = |column: &str, detail: &dyn std::fmt::Display| {
            StoreError::Corrupt(format!("robot {:?}, {column}: {detail}", self.name))
        };
        let name = RobotName::parse(&self.name).map_err(|err| corrupt("name", &err))?;
        let argv: Vec<String> =
            serde_json::from_str(&self.argv).map_err(|err| corrupt("argv", &err))?;
        let env: BTreeMap<String, String> =
            serde_json::from_str(&self.env).map_err(|err| corrupt("env", &err))?;
        let agent = AgentSelector::parse(&self.agent).map_err(|err| corrupt("agent", &err))?;
        let queues: Vec<String> =
            serde_json::from_str(&self.queues).map_err(|err| corrupt("queues", &err))?;
        let queues = queues
            .iter()
            .map(|pattern| NamePattern::parse(pattern))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|err| corrupt("queues", &err))?;
        let restart_policy = RestartPolicy::parse(&self.restart_policy)
            .ok_or_else(|| corrupt("restart_policy", &self.restart_policy))?;
        let seconds =
            |column: &str, value: i64| u32::try_from(value).map_err(|err| corrupt(column, &err));
        let definition = RobotDefinition {
            name,
            description: self.description.clone(),
            argv,
            working_dir: self.working_dir.clone(),
            env,
            agent,
            max_parallel: seconds("max_parallel", self.max_parallel)?,
            stop_grace_seconds: seconds("stop_grace_seconds", self.stop_grace_seconds)?,
            max_duration_seconds: self
                .max_duration_seconds
                .map(|value| seconds("max_duration_seconds", value))
                .transpose()?,
            restart_policy,
            restart_backoff: RestartBackoff {
                initial_seconds: seconds(
                    "restart_backoff_initial_seconds",
                    self.restart_backoff_initial_seconds,
                )?,
                max_seconds: seconds(
                    "restart_backoff_max_seconds",
                    self.restart_backoff_max_seconds,
                )?,
            },
            crash_loop: CrashLoopGuard {
                max_starts: seconds("crash_loop_max_starts", self.crash_loop_max_starts)?,
                window_seconds: seconds(
                    "crash_loop_window_seconds",
                    self.crash_loop_window_seconds,
                )?,
            },
            needs_display: self.needs_display,
            queues,
        };
        let mode = RobotMode::parse(&self.mode).ok_or_else(|| corrupt("mode", &self.mode))?;
        Ok(Robot {
            definition,
            mode,
            mode_reason: self.mode_reason.clone(),
            created_at: from_millis("created_at", self.created_at)?,
            updated_at: from_millis("updated_at", self.updated_at)?,
        })
    }
}
