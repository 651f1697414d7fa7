//! An agent's own policy: which operations it allows, under which directories files may be
//! listed, read and written, and as which user programs run. Set by the machine's owner (the
//! agent's settings file and flags); the orchestrator cannot widen it.

use std::{collections::BTreeSet, path::PathBuf};

use dirigent_proto::activity::{AgentOperation, PolicyInfo};

/// What an agent allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// The operations allowed, by name; `*` allows all.
    pub operations: BTreeSet<String>,
    /// Files may be touched only under these directories.
    pub file_roots: Vec<PathBuf>,
    /// Also under the working directories of the runs this agent started.
    pub robot_dirs: bool,
    /// Programs run by `exec` run as this user (the agent must be able to switch to it).
    pub exec_user: Option<String>,
}

impl Policy {
    /// An enrolled agent's policy unless its owner says more: its facts, its processes, and
    /// restarting it.
    pub fn enrolled() -> Policy {
        Policy {
            operations: ["info", "processes", "agent.restart"]
                .into_iter()
                .map(str::to_owned)
                .collect(),
            file_roots: Vec::new(),
            robot_dirs: false,
            exec_user: None,
        }
    }

    pub fn allows(&self, operation: &str) -> bool {
        self.operations.contains("*") || self.operations.contains(operation)
    }

    /// Whether the operation is allowed; if not, the rule that refuses it.
    pub fn check(&self, operation: &AgentOperation) -> Result<(), String> {
        let name = operation.name();
        if self.allows(name) {
            return Ok(());
        }
        let allowed: Vec<&str> = self.operations.iter().map(String::as_str).collect();
        Err(format!(
            "refused by this agent's policy: it allows {} only, not {name:?} (its owner allows more \
             with `allow` in its settings file or --allow)",
            match allowed.is_empty() {
                true => "nothing".to_owned(),
                false => allowed.join(", "),
            }
        ))
    }

    pub fn info(&self) -> PolicyInfo {
        let mut file_roots: Vec<String> = self
            .file_roots
            .iter()
            .map(|root| root.display().to_string())
            .collect();
        if self.robot_dirs {
            file_roots.push("(the working directories of its robots)".to_owned());
        }
        PolicyInfo {
            operations: self.operations.iter().cloned().collect(),
            file_roots,
            exec_user: self.exec_user.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use dirigent_proto::activity::{ExecArgs, NoArgs};

    use super::*;

    #[test]
    fn an_enrolled_agent_refuses_exec_and_says_which_rule() {
        let policy = Policy::enrolled();
        assert!(policy.check(&AgentOperation::Info(NoArgs {})).is_ok());
        let exec = AgentOperation::Exec(ExecArgs {
            argv: vec!["true".to_owned()],
            working_dir: None,
            env: Default::default(),
            stdin: None,
        });
        let refusal = policy.check(&exec).unwrap_err();
        assert!(refusal.contains("not \"exec\""), "{refusal}");
        assert!(
            refusal.contains("agent.restart, info, processes"),
            "{refusal}"
        );
        let everything = Policy {
            operations: ["*".to_owned()].into(),
            ..Policy::enrolled()
        };
        assert!(everything.check(&exec).is_ok());
    }
}
