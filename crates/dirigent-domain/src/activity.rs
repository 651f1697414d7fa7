//! Activities: the catalogue of operations that may be run on agents and on the orchestrator
//! (what each needs, where it runs), and what an activity's target and timeout may be.

use std::collections::BTreeMap;

use crate::{
    InvalidField,
    access::{Action, Resource},
};

/// Where an operation runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Runs {
    OnAgent,
    OnServer,
}

/// One operation of the catalogue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Operation {
    pub name: &'static str,
    pub runs: Runs,
    /// The permission it needs, on the agent's name (for agents) or any name.
    pub resource: Resource,
    pub action: Action,
    pub description: &'static str,
}

const fn agent_op(
    name: &'static str,
    resource: Resource,
    action: Action,
    description: &'static str,
) -> Operation {
    Operation {
        name,
        runs: Runs::OnAgent,
        resource,
        action,
        description,
    }
}

const fn server_op(
    name: &'static str,
    resource: Resource,
    action: Action,
    description: &'static str,
) -> Operation {
    Operation {
        runs: Runs::OnServer,
        ..agent_op(name, resource, action, description)
    }
}

/// Every operation, agents' first.
pub const CATALOG: &[Operation] = &[
    agent_op(
        "exec",
        Resource::Agents,
        Action::Exec,
        "Runs a program (argv, no shell) in its own process group; output streamed, exit code \
         kept; the group is killed at the timeout or on cancel.",
    ),
    agent_op(
        "processes",
        Resource::Agents,
        Action::Read,
        "Lists the machine's processes: pid, user, CPU time, memory, start time, command line.",
    ),
    agent_op(
        "signal_process",
        Resource::Agents,
        Action::Admin,
        "Sends a signal to a process.",
    ),
    agent_op(
        "files.list",
        Resource::Agents,
        Action::Files,
        "Lists a directory under the agent's file roots.",
    ),
    agent_op(
        "files.read",
        Resource::Agents,
        Action::Files,
        "Reads a file (or a part of it) under the agent's file roots, with its SHA-256.",
    ),
    agent_op(
        "files.write",
        Resource::Agents,
        Action::Files,
        "Writes a file under the agent's file roots atomically, after checking its SHA-256.",
    ),
    agent_op(
        "info",
        Resource::Agents,
        Action::Read,
        "The machine and the agent: OS, CPUs, memory, disk, load, uptime, version, policy.",
    ),
    agent_op(
        "agent.restart",
        Resource::Agents,
        Action::Admin,
        "Restarts the agent; its robots keep running and are adopted again.",
    ),
    agent_op(
        "agent.update",
        Resource::Agents,
        Action::Admin,
        "Replaces the agent's binary with an uploaded one (checked by SHA-256, tried before it \
         is swapped in) and restarts it; its robots keep running.",
    ),
    agent_op(
        "session.screenshot",
        Resource::Sessions,
        Action::View,
        "A screenshot of one of the agent's graphical sessions.",
    ),
    agent_op(
        "session.restart",
        Resource::Sessions,
        Action::Control,
        "Makes a graphical session anew (one a run uses only with force).",
    ),
    server_op(
        "info",
        Resource::Server,
        Action::Read,
        "The orchestrator: version, node, database, uptime, maintenance, counts.",
    ),
    server_op(
        "maintenance",
        Resource::Server,
        Action::Admin,
        "Turns maintenance on or off: while on, no new run starts; running ones go on.",
    ),
    server_op(
        "robots.list",
        Resource::Robots,
        Action::Read,
        "Every robot.",
    ),
    server_op("robot.show", Resource::Robots, Action::Read, "One robot."),
    server_op(
        "run.start",
        Resource::Robots,
        Action::Run,
        "Starts a run of a robot.",
    ),
    server_op(
        "runs.list",
        Resource::Runs,
        Action::Read,
        "Runs, newest first.",
    ),
    server_op("run.show", Resource::Runs, Action::Read, "One run."),
    server_op(
        "run.stop",
        Resource::Robots,
        Action::Stop,
        "Stops a run safely.",
    ),
    server_op("run.kill", Resource::Robots, Action::Kill, "Kills a run."),
    server_op(
        "triggers.list",
        Resource::Triggers,
        Action::Read,
        "Every trigger.",
    ),
    server_op(
        "trigger.enable",
        Resource::Triggers,
        Action::Edit,
        "Enables a trigger.",
    ),
    server_op(
        "trigger.disable",
        Resource::Triggers,
        Action::Edit,
        "Disables a trigger.",
    ),
    server_op(
        "queues.list",
        Resource::Queues,
        Action::Read,
        "Every queue with its figures.",
    ),
    server_op(
        "queue.show",
        Resource::Queues,
        Action::Read,
        "One queue with its figures.",
    ),
];

/// The operation named `name` that runs where `runs` says.
pub fn operation(name: &str, runs: Runs) -> Option<&'static Operation> {
    CATALOG.iter().find(|op| op.name == name && op.runs == runs)
}

/// The operations an enrolled agent allows unless its owner says more.
pub const ENROLLED_AGENT_ALLOWS: [&str; 3] = ["info", "processes", "agent.restart"];

/// What an activity is aimed at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Server,
    Agent(String),
    /// Every agent with these labels: one child activity each.
    Labels(BTreeMap<String, String>),
}

impl Target {
    /// `server`, an agent's name, or `key=value,key=value`.
    pub fn parse(text: &str) -> Result<Target, InvalidField> {
        let text = text.trim();
        if text.is_empty() || 1024 < text.len() {
            return Err(InvalidField::new(
                "target",
                "must be `server`, an agent's name or a label selector `key=value,…`",
            ));
        }
        if text == "server" {
            return Ok(Target::Server);
        }
        if !text.contains('=') {
            return Ok(Target::Agent(text.to_owned()));
        }
        let mut labels = BTreeMap::new();
        for pair in text.split(',') {
            let Some((key, value)) = pair.split_once('=') else {
                return Err(InvalidField::new(
                    "target",
                    format!("{pair:?} is not `key=value`"),
                ));
            };
            let (key, value) = (key.trim(), value.trim());
            if key.is_empty() {
                return Err(InvalidField::new(
                    "target",
                    format!("{pair:?} has no label name"),
                ));
            }
            labels.insert(key.to_owned(), value.to_owned());
        }
        Ok(Target::Labels(labels))
    }

    pub fn runs(&self) -> Runs {
        match self {
            Target::Server => Runs::OnServer,
            Target::Agent(_) | Target::Labels(_) => Runs::OnAgent,
        }
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Server => f.write_str("server"),
            Target::Agent(name) => f.write_str(name),
            Target::Labels(labels) => {
                let pairs: Vec<String> = labels
                    .iter()
                    .map(|(key, value)| format!("{key}={value}"))
                    .collect();
                f.write_str(&pairs.join(","))
            }
        }
    }
}

/// Where an activity is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum State {
    Queued,
    Running,
    Succeeded,
    Failed,
    TimedOut,
    Cancelled,
}

impl State {
    pub const ALL: [State; 6] = [
        State::Queued,
        State::Running,
        State::Succeeded,
        State::Failed,
        State::TimedOut,
        State::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            State::Queued => "queued",
            State::Running => "running",
            State::Succeeded => "succeeded",
            State::Failed => "failed",
            State::TimedOut => "timed_out",
            State::Cancelled => "cancelled",
        }
    }

    pub fn parse(text: &str) -> Option<State> {
        State::ALL.into_iter().find(|state| state.as_str() == text)
    }

    pub fn is_final(self) -> bool {
        !matches!(self, State::Queued | State::Running)
    }
}

/// A fan-out's state once its children ended: succeeded when all of them did.
pub fn fan_out_state(children: &[State]) -> Option<(State, Option<String>)> {
    if children.iter().any(|state| !state.is_final()) {
        return None;
    }
    let n_failed = children
        .iter()
        .filter(|state| **state != State::Succeeded)
        .count();
    Some(match n_failed {
        0 => (State::Succeeded, None),
        n => (
            State::Failed,
            Some(format!(
                "{n} of {} children did not succeed",
                children.len()
            )),
        ),
    })
}

/// An activity's timeout when none is asked for.
pub const DEFAULT_TIMEOUT_SECONDS: u32 = 300;
/// The longest timeout.
pub const MAX_TIMEOUT_SECONDS: u32 = 86_400;

pub fn timeout_seconds(asked: Option<u32>) -> Result<u32, InvalidField> {
    match asked {
        None => Ok(DEFAULT_TIMEOUT_SECONDS),
        Some(seconds) if (1..=MAX_TIMEOUT_SECONDS).contains(&seconds) => Ok(seconds),
        Some(_) => Err(InvalidField::new(
            "timeout_seconds",
            format!("must be 1 to {MAX_TIMEOUT_SECONDS}"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets() {
        assert_eq!(Target::parse("server").unwrap(), Target::Server);
        assert_eq!(
            Target::parse("robot-host-1").unwrap(),
            Target::Agent("robot-host-1".to_owned())
        );
        let Target::Labels(labels) = Target::parse("site=berlin, os=linux").unwrap() else {
            panic!("not a selector");
        };
        assert_eq!(labels.len(), 2);
        assert_eq!(labels["os"], "linux");
        assert_eq!(
            Target::parse("site=berlin,os=linux").unwrap().to_string(),
            "os=linux,site=berlin"
        );
        assert_eq!(Target::parse("=x").unwrap_err().field, "target");
        assert!(Target::parse("").is_err());
    }

    #[test]
    fn each_operation_is_named_once_per_place() {
        for op in CATALOG {
            let same = CATALOG
                .iter()
                .filter(|other| other.name == op.name && other.runs == op.runs)
                .count();
            assert_eq!(same, 1, "{}", op.name);
            assert!(op.resource.actions().contains(&op.action), "{}", op.name);
        }
        assert_eq!(
            operation("info", Runs::OnServer).unwrap().resource,
            Resource::Server
        );
        assert!(operation("exec", Runs::OnServer).is_none());
    }

    #[test]
    fn a_fan_out_ends_with_its_last_child() {
        assert_eq!(fan_out_state(&[State::Succeeded, State::Running]), None);
        assert_eq!(
            fan_out_state(&[State::Succeeded, State::Succeeded]),
            Some((State::Succeeded, None))
        );
        assert_eq!(
            fan_out_state(&[State::Succeeded, State::TimedOut, State::Failed])
                .unwrap()
                .1
                .unwrap(),
            "2 of 3 children did not succeed"
        );
    }

    #[test]
    fn timeouts() {
        assert_eq!(timeout_seconds(None).unwrap(), DEFAULT_TIMEOUT_SECONDS);
        assert_eq!(timeout_seconds(Some(5)).unwrap(), 5);
        assert!(timeout_seconds(Some(0)).is_err());
        assert!(timeout_seconds(Some(MAX_TIMEOUT_SECONDS + 1)).is_err());
    }
}
