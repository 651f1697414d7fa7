//! Activities on this agent: the orchestrator's typed operations (a program run, processes,
//! files, the machine's facts, a restart), checked against this agent's own policy, which the
//! orchestrator cannot widen. Sequential activities run one after another in the order they
//! came; parallel ones at once. What they report (started, output, ended) goes out as
//! journaled events, like runs'.

mod files;
mod ops;
mod policy;
mod update;

use std::{
    collections::{BTreeSet, HashMap},
    path::PathBuf,
    sync::{Arc, Mutex},
    time::Duration,
};

use dirigent_proto::{
    activity::{AgentOperation, Mode, Outcome},
    link::{AgentCommand, AgentEvent},
};
use tokio::sync::{mpsc, watch};

pub use policy::Policy;
pub use update::BlobSource;
pub(crate) use update::running_program;

use crate::{runner::now, sessions::SessionsHandle};

/// What a finished operation reports.
struct Done {
    outcome: Outcome,
    result: Option<serde_json::Value>,
    reason: Option<String>,
}

impl Done {
    fn succeeded(result: serde_json::Value) -> Done {
        Done {
            outcome: Outcome::Succeeded,
            result: Some(result),
            reason: None,
        }
    }

    fn failed(reason: impl Into<String>) -> Done {
        Done {
            outcome: Outcome::Failed,
            result: None,
            reason: Some(reason.into()),
        }
    }
}

/// One activity taken from the orchestrator.
struct Job {
    id: String,
    operation: AgentOperation,
    timeout: Duration,
    /// Becomes true when it is cancelled.
    cancelled: watch::Receiver<bool>,
}

/// The activities of this agent.
#[derive(Clone)]
pub struct Activities {
    shared: Arc<Shared>,
    sequential: mpsc::UnboundedSender<Job>,
}

struct Shared {
    policy: Policy,
    data_dir: PathBuf,
    sessions: Option<SessionsHandle>,
    /// Where uploaded files (a new binary) come from.
    blobs: BlobSource,
    events: mpsc::UnboundedSender<AgentEvent>,
    /// The activities held (queued or running), and how to cancel each.
    live: Mutex<HashMap<String, watch::Sender<bool>>>,
    /// The working directories of the runs started here (file roots, if the policy says so).
    robot_dirs: Mutex<BTreeSet<PathBuf>>,
    /// Asks the agent to restart itself (once the activity's end is journaled).
    restart: mpsc::UnboundedSender<()>,
}

impl Activities {
    /// Starts the worker of the sequential activities; `restart` receives the agent's
    /// restarts asked for.
    pub fn start(
        policy: Policy,
        data_dir: PathBuf,
        sessions: Option<SessionsHandle>,
        blobs: BlobSource,
        events: mpsc::UnboundedSender<AgentEvent>,
    ) -> (Activities, mpsc::UnboundedReceiver<()>) {
        let (restart, restarts) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            policy,
            data_dir,
            sessions,
            blobs,
            events,
            live: Mutex::default(),
            robot_dirs: Mutex::default(),
            restart,
        });
        let (sequential, mut jobs) = mpsc::unbounded_channel::<Job>();
        let worker = Arc::clone(&shared);
        tokio::spawn(async move {
            while let Some(job) = jobs.recv().await {
                run_job(&worker, job).await;
            }
        });
        (Activities { shared, sequential }, restarts)
    }

    /// Takes an activity command.
    pub fn apply(&self, command: AgentCommand) {
        match command {
            AgentCommand::Activity {
                id,
                mode,
                timeout_seconds,
                operation,
            } => {
                let (cancel, cancelled) = watch::channel(false);
                {
                    let mut live = crate::lock(&self.shared.live);
                    if live.contains_key(&id) {
                        return;
                    }
                    live.insert(id.clone(), cancel);
                }
                let job = Job {
                    id,
                    operation,
                    timeout: Duration::from_secs(u64::from(timeout_seconds)),
                    cancelled,
                };
                match mode {
                    Mode::Sequential => {
                        let _ = self.sequential.send(job);
                    }
                    Mode::Parallel => {
                        let shared = Arc::clone(&self.shared);
                        tokio::spawn(async move { run_job(&shared, job).await });
                    }
                }
            }
            AgentCommand::CancelActivity { id } => {
                if let Some(cancel) = crate::lock(&self.shared.live).get(&id) {
                    let _ = cancel.send(true);
                }
            }
            _ => {}
        }
    }

    /// Notes a run's start: its working directory may be a file root.
    pub fn note_run(&self, spec: &dirigent_proto::link::StartSpec) {
        if let Some(dir) = &spec.working_dir {
            crate::lock(&self.shared.robot_dirs).insert(PathBuf::from(dir));
        }
    }

    /// The activities held now (queued or running).
    pub fn live(&self) -> Vec<String> {
        crate::lock(&self.shared.live).keys().cloned().collect()
    }

    /// Cancels everything held (before the agent restarts or stops): running programs'
    /// process groups are killed.
    pub fn cancel_all(&self) {
        for cancel in crate::lock(&self.shared.live).values() {
            let _ = cancel.send(true);
        }
    }
}

/// Runs one activity: checks the policy, reports its start, runs it within its timeout
/// (unless cancelled), reports its end.
async fn run_job(shared: &Arc<Shared>, job: Job) {
    let report = |event| {
        let _ = shared.events.send(event);
    };
    let done = if *job.cancelled.borrow() {
        Done {
            outcome: Outcome::Cancelled,
            result: None,
            reason: Some("cancelled before it started".to_owned()),
        }
    } else if let Err(refusal) = shared.policy.check(&job.operation) {
        Done::failed(refusal)
    } else {
        report(AgentEvent::ActivityStarted {
            id: job.id.clone(),
            at: now(),
        });
        let output = ops::Output::new(job.id.clone(), shared.events.clone());
        let stop = ops::Stop::new(job.timeout, job.cancelled.clone());
        let restart = matches!(
            job.operation,
            AgentOperation::Restart(_) | AgentOperation::Update(_)
        );
        let done = ops::run(shared, job.operation, output, stop).await;
        if restart && done.outcome == Outcome::Succeeded {
            // The end is journaled before the agent goes: its next life resends it.
            report(ended(&job.id, done));
            crate::lock(&shared.live).remove(&job.id);
            let _ = shared.restart.send(());
            return;
        }
        done
    };
    crate::lock(&shared.live).remove(&job.id);
    report(ended(&job.id, done));
}

fn ended(id: &str, done: Done) -> AgentEvent {
    AgentEvent::ActivityEnded {
        id: id.to_owned(),
        at: now(),
        outcome: done.outcome,
        result: done.result,
        reason: done.reason,
    }
}
