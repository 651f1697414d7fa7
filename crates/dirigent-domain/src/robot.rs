//! Robot definitions: what a robot is, its defaults, and the rules its fields obey.

use std::{collections::BTreeMap, fmt};

use jiff::Timestamp;

use crate::{InvalidField, access::NamePattern, user::check_name};

/// Bounds on a definition, so that one robot cannot exhaust the server or an agent.
pub mod limits {
    pub const MAX_ARGV: usize = 256;
    pub const MAX_ARG_BYTES: usize = 8192;
    pub const MAX_ENV: usize = 256;
    pub const MAX_ENV_VALUE_BYTES: usize = 8192;
    pub const MAX_DESCRIPTION_BYTES: usize = 4096;
    pub const MAX_PATH_BYTES: usize = 4096;
    pub const MAX_PARALLEL: u32 = 10_000;
    pub const MAX_STOP_GRACE_SECONDS: u32 = 24 * 3600;
    pub const MAX_DURATION_SECONDS: u32 = 31 * 24 * 3600;
    pub const MAX_BACKOFF_SECONDS: u32 = 24 * 3600;
    pub const MAX_CRASH_LOOP_WINDOW_SECONDS: u32 = 7 * 24 * 3600;
    pub const MAX_QUEUE_GRANTS: usize = 64;
}

/// Checks the arguments of a command (the field `field`): how many, how long, no NUL.
pub fn check_args(field: &str, args: &[String]) -> Result<(), InvalidField> {
    use limits::{MAX_ARG_BYTES, MAX_ARGV};
    if MAX_ARGV < args.len() {
        return Err(InvalidField::new(
            field,
            format!("must have at most {MAX_ARGV} elements"),
        ));
    }
    for (idx, arg) in args.iter().enumerate() {
        let field = format!("{field}[{idx}]");
        if arg.contains('\0') {
            return Err(InvalidField::new(field, "must not contain a NUL byte"));
        }
        if MAX_ARG_BYTES < arg.len() {
            return Err(InvalidField::new(
                field,
                format!("must be at most {MAX_ARG_BYTES} bytes"),
            ));
        }
    }
    Ok(())
}

/// Checks environment variables given to a robot: names, reserved names, sizes.
pub fn check_env(env: &BTreeMap<String, String>) -> Result<(), InvalidField> {
    use limits::{MAX_ENV, MAX_ENV_VALUE_BYTES};
    if MAX_ENV < env.len() {
        return Err(InvalidField::new(
            "env",
            format!("must have at most {MAX_ENV} variables"),
        ));
    }
    for (key, value) in env {
        let field = format!("env.{key}");
        let mut chars = key.chars();
        let valid_name = chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid_name {
            return Err(InvalidField::new(
                field,
                "is not a variable name ([A-Za-z_][A-Za-z0-9_]*)",
            ));
        }
        if key.starts_with("DIRIGENT_") {
            return Err(InvalidField::new(
                field,
                "names beginning with DIRIGENT_ are reserved",
            ));
        }
        if value.contains('\0') || MAX_ENV_VALUE_BYTES < value.len() {
            return Err(InvalidField::new(
                field,
                format!("must be at most {MAX_ENV_VALUE_BYTES} bytes without NUL"),
            ));
        }
    }
    Ok(())
}

/// Defaults for the fields a draft leaves out.
pub mod defaults {
    use super::{CrashLoopGuard, RestartBackoff};

    pub const MAX_PARALLEL: u32 = 1;
    pub const STOP_GRACE_SECONDS: u32 = 30;
    pub const RESTART_BACKOFF: RestartBackoff = RestartBackoff {
        initial_seconds: 1,
        max_seconds: 300,
    };
    pub const CRASH_LOOP: CrashLoopGuard = CrashLoopGuard {
        max_starts: 5,
        window_seconds: 300,
    };
}

/// A valid robot name: `[a-z0-9][a-z0-9._-]*`, at most 64 characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RobotName(String);

impl RobotName {
    pub fn parse(name: &str) -> Result<RobotName, InvalidField> {
        check_name("name", name, "._-")?;
        Ok(RobotName(name.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RobotName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Which agents may run a robot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentSelector {
    /// Any agent with free capacity.
    Any,
    /// Only the agent with this name.
    Named(String),
    /// Agents carrying every one of these labels (`key=value,key=value`).
    Labels(BTreeMap<String, String>),
}

impl AgentSelector {
    /// Parses the text form: empty for any agent, `key=value[,key=value…]` for labels,
    /// otherwise an agent name.
    pub fn parse(text: &str) -> Result<AgentSelector, InvalidField> {
        let text = text.trim();
        if text.is_empty() {
            return Ok(AgentSelector::Any);
        }
        if !text.contains('=') {
            check_name("agent", text, "._-")?;
            return Ok(AgentSelector::Named(text.to_owned()));
        }
        let mut labels = BTreeMap::new();
        for pair in text.split(',') {
            let Some((key, value)) = pair.split_once('=') else {
                return Err(InvalidField::new(
                    "agent",
                    format!("{pair:?} is not a key=value label"),
                ));
            };
            let (key, value) = (key.trim(), value.trim());
            check_name("agent", key, "._-/").map_err(|err| {
                InvalidField::new("agent", format!("label key {key:?}: {}", err.reason))
            })?;
            if value.is_empty() || value.contains(|c: char| c.is_whitespace() || c == '=') {
                return Err(InvalidField::new(
                    "agent",
                    format!("label {key:?} needs a value without spaces or '='"),
                ));
            }
            if labels.insert(key.to_owned(), value.to_owned()).is_some() {
                return Err(InvalidField::new(
                    "agent",
                    format!("label {key:?} is given twice"),
                ));
            }
        }
        Ok(AgentSelector::Labels(labels))
    }
}

impl fmt::Display for AgentSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AgentSelector::Any => Ok(()),
            AgentSelector::Named(name) => f.write_str(name),
            AgentSelector::Labels(labels) => {
                for (idx, (key, value)) in labels.iter().enumerate() {
                    if 0 < idx {
                        f.write_str(",")?;
                    }
                    write!(f, "{key}={value}")?;
                }
                Ok(())
            }
        }
    }
}

/// What happens when a run of a robot in auto mode ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestartPolicy {
    Never,
    OnFailure,
    Always,
}

impl RestartPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            RestartPolicy::Never => "never",
            RestartPolicy::OnFailure => "on_failure",
            RestartPolicy::Always => "always",
        }
    }

    pub fn parse(text: &str) -> Option<RestartPolicy> {
        match text {
            "never" => Some(RestartPolicy::Never),
            "on_failure" => Some(RestartPolicy::OnFailure),
            "always" => Some(RestartPolicy::Always),
            _ => None,
        }
    }
}

/// Delay before an automatic restart, doubled per consecutive failure up to the maximum.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RestartBackoff {
    pub initial_seconds: u32,
    pub max_seconds: u32,
}

/// More than `max_starts` automatic starts within `window_seconds` is a crash loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CrashLoopGuard {
    pub max_starts: u32,
    pub window_seconds: u32,
}

/// A robot definition as a client proposed it, before validation. `None` takes the default.
#[derive(Debug, Clone, Default)]
pub struct RobotDraft {
    pub name: String,
    pub description: Option<String>,
    pub argv: Vec<String>,
    pub working_dir: Option<String>,
    pub env: Option<BTreeMap<String, String>>,
    pub agent: Option<String>,
    pub max_parallel: Option<u32>,
    pub stop_grace_seconds: Option<u32>,
    pub max_duration_seconds: Option<u32>,
    pub restart_policy: Option<RestartPolicy>,
    pub restart_backoff: Option<RestartBackoff>,
    pub crash_loop: Option<CrashLoopGuard>,
    pub needs_display: Option<bool>,
    pub queues: Option<Vec<String>>,
}

/// A valid robot definition: every field checked, every default filled in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RobotDefinition {
    pub name: RobotName,
    pub description: String,
    /// Never empty; no element holds a NUL byte.
    pub argv: Vec<String>,
    /// Absolute when present.
    pub working_dir: Option<String>,
    /// No name begins with `DIRIGENT_`.
    pub env: BTreeMap<String, String>,
    pub agent: AgentSelector,
    pub max_parallel: u32,
    pub stop_grace_seconds: u32,
    pub max_duration_seconds: Option<u32>,
    pub restart_policy: RestartPolicy,
    pub restart_backoff: RestartBackoff,
    pub crash_loop: CrashLoopGuard,
    pub needs_display: bool,
    /// Name patterns of the queues the robot's runs may read, add to and process with their
    /// run token.
    pub queues: Vec<NamePattern>,
}

/// Who drives a robot: automation (restart policy, triggers) or an operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RobotMode {
    /// Automation acts on the robot.
    Auto,
    /// An operator took control; automation leaves the robot alone until switched back.
    Manual,
}

impl RobotMode {
    pub fn as_str(self) -> &'static str {
        match self {
            RobotMode::Auto => "auto",
            RobotMode::Manual => "manual",
        }
    }

    pub fn parse(text: &str) -> Option<RobotMode> {
        match text {
            "auto" => Some(RobotMode::Auto),
            "manual" => Some(RobotMode::Manual),
            _ => None,
        }
    }
}

/// A stored robot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Robot {
    pub definition: RobotDefinition,
    pub mode: RobotMode,
    /// Why the robot is in its mode (who switched it, or which rule).
    pub mode_reason: Option<String>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

impl RobotDraft {
    /// Checks every field and fills in the defaults. The error names the first field at fault.
    pub fn validate(self) -> Result<RobotDefinition, InvalidField> {
        use limits::*;

        let name = RobotName::parse(&self.name)?;
        let description = self.description.unwrap_or_default();
        if MAX_DESCRIPTION_BYTES < description.len() {
            return Err(InvalidField::new(
                "description",
                format!("must be at most {MAX_DESCRIPTION_BYTES} bytes"),
            ));
        }

        if self.argv.is_empty() {
            return Err(InvalidField::new(
                "argv",
                "must name at least the program to run",
            ));
        }
        check_args("argv", &self.argv)?;
        if self.argv[0].trim().is_empty() {
            return Err(InvalidField::new("argv[0]", "must name the program to run"));
        }

        let working_dir = match self.working_dir {
            Some(dir) if dir.is_empty() => None,
            Some(dir) => {
                if !dir.starts_with('/') {
                    return Err(InvalidField::new("working_dir", "must be an absolute path"));
                }
                if dir.contains('\0') || MAX_PATH_BYTES < dir.len() {
                    return Err(InvalidField::new(
                        "working_dir",
                        format!("must be a path of at most {MAX_PATH_BYTES} bytes without NUL"),
                    ));
                }
                Some(dir)
            }
            None => None,
        };

        let env = self.env.unwrap_or_default();
        check_env(&env)?;

        let agent = AgentSelector::parse(self.agent.as_deref().unwrap_or(""))?;

        let max_parallel = self.max_parallel.unwrap_or(defaults::MAX_PARALLEL);
        check_range("max_parallel", max_parallel, 1, MAX_PARALLEL)?;
        let stop_grace_seconds = self
            .stop_grace_seconds
            .unwrap_or(defaults::STOP_GRACE_SECONDS);
        check_range(
            "stop_grace_seconds",
            stop_grace_seconds,
            0,
            MAX_STOP_GRACE_SECONDS,
        )?;
        if let Some(seconds) = self.max_duration_seconds {
            check_range("max_duration_seconds", seconds, 1, MAX_DURATION_SECONDS)?;
        }

        let restart_backoff = self.restart_backoff.unwrap_or(defaults::RESTART_BACKOFF);
        check_range(
            "restart_backoff.initial_seconds",
            restart_backoff.initial_seconds,
            0,
            MAX_BACKOFF_SECONDS,
        )?;
        check_range(
            "restart_backoff.max_seconds",
            restart_backoff.max_seconds,
            0,
            MAX_BACKOFF_SECONDS,
        )?;
        if restart_backoff.max_seconds < restart_backoff.initial_seconds {
            return Err(InvalidField::new(
                "restart_backoff.max_seconds",
                "must not be less than initial_seconds",
            ));
        }

        let crash_loop = self.crash_loop.unwrap_or(defaults::CRASH_LOOP);
        check_range("crash_loop.max_starts", crash_loop.max_starts, 1, 1000)?;
        check_range(
            "crash_loop.window_seconds",
            crash_loop.window_seconds,
            1,
            MAX_CRASH_LOOP_WINDOW_SECONDS,
        )?;

        let queues = self
            .queues
            .unwrap_or_default()
            .iter()
            .enumerate()
            .map(|(index, pattern)| {
                NamePattern::parse(pattern)
                    .map_err(|err| InvalidField::new(format!("queues[{index}]"), err.reason))
            })
            .collect::<Result<Vec<_>, _>>()?;
        if limits::MAX_QUEUE_GRANTS < queues.len() {
            return Err(InvalidField::new(
                "queues",
                format!("more than {} patterns", limits::MAX_QUEUE_GRANTS),
            ));
        }
        Ok(RobotDefinition {
            name,
            description,
            argv: self.argv,
            working_dir,
            env,
            agent,
            max_parallel,
            stop_grace_seconds,
            max_duration_seconds: self.max_duration_seconds,
            restart_policy: self.restart_policy.unwrap_or(RestartPolicy::Never),
            restart_backoff,
            crash_loop,
            needs_display: self.needs_display.unwrap_or(false),
            queues,
        })
    }
}

fn check_range(field: &str, value: u32, min: u32, max: u32) -> Result<(), InvalidField> {
    if value < min || max < value {
        return Err(InvalidField::new(
            field,
            format!("must be between {min} and {max}, not {value}"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn draft() -> RobotDraft {
        RobotDraft {
            name: "invoices".into(),
            argv: vec!["python3".into(), "bot.py".into()],
            ..RobotDraft::default()
        }
    }

    #[track_caller]
    fn check_rejects(edit: impl FnOnce(&mut RobotDraft), field: &str, reason_part: &str) {
        let mut robot = draft();
        edit(&mut robot);
        let err = robot.validate().expect_err("the draft should be rejected");
        assert_eq!(err.field, field, "{err}");
        assert!(err.reason.contains(reason_part), "{err}");
    }

    #[test]
    fn defaults_fill_a_minimal_draft() {
        let robot = draft().validate().unwrap();
        assert_eq!(robot.name.as_str(), "invoices");
        assert_eq!(robot.max_parallel, 1);
        assert_eq!(robot.stop_grace_seconds, 30);
        assert_eq!(robot.max_duration_seconds, None);
        assert_eq!(robot.restart_policy, RestartPolicy::Never);
        assert_eq!(robot.restart_backoff, defaults::RESTART_BACKOFF);
        assert_eq!(robot.crash_loop, defaults::CRASH_LOOP);
        assert_eq!(robot.agent, AgentSelector::Any);
        assert!(!robot.needs_display);
    }

    #[test]
    fn each_rule_names_its_field() {
        check_rejects(|r| r.name = "Invoices".into(), "name", "must start with");
        check_rejects(
            |r| r.name = "inv oices".into(),
            "name",
            "' ' is not allowed",
        );
        check_rejects(|r| r.name = String::new(), "name", "must not be empty");
        check_rejects(|r| r.name = "a".repeat(65), "name", "at most 64");
        check_rejects(|r| r.argv.clear(), "argv", "at least the program");
        check_rejects(|r| r.argv = vec![" ".into()], "argv[0]", "program");
        check_rejects(|r| r.argv.push("a\0b".into()), "argv[2]", "NUL");
        check_rejects(
            |r| r.working_dir = Some("relative/dir".into()),
            "working_dir",
            "absolute",
        );
        check_rejects(
            |r| r.env = Some([("1X".into(), "v".into())].into()),
            "env.1X",
            "variable name",
        );
        check_rejects(
            |r| r.env = Some([("DIRIGENT_RUN_ID".into(), "v".into())].into()),
            "env.DIRIGENT_RUN_ID",
            "reserved",
        );
        check_rejects(|r| r.agent = Some("os=".into()), "agent", "needs a value");
        check_rejects(
            |r| r.agent = Some("os=linux,os=mac".into()),
            "agent",
            "twice",
        );
        check_rejects(
            |r| r.agent = Some("PC 1".into()),
            "agent",
            "must start with",
        );
        check_rejects(
            |r| r.max_parallel = Some(0),
            "max_parallel",
            "between 1 and",
        );
        check_rejects(
            |r| r.stop_grace_seconds = Some(100_000),
            "stop_grace_seconds",
            "between 0 and",
        );
        check_rejects(
            |r| r.max_duration_seconds = Some(0),
            "max_duration_seconds",
            "between 1 and",
        );
        check_rejects(
            |r| {
                r.restart_backoff = Some(RestartBackoff {
                    initial_seconds: 10,
                    max_seconds: 5,
                })
            },
            "restart_backoff.max_seconds",
            "less than initial",
        );
        check_rejects(
            |r| {
                r.crash_loop = Some(CrashLoopGuard {
                    max_starts: 0,
                    window_seconds: 60,
                })
            },
            "crash_loop.max_starts",
            "between 1 and",
        );
    }

    #[test]
    fn agent_selector_round_trips_through_its_text_form() {
        for (text, expect) in [
            ("", AgentSelector::Any),
            ("pc-17", AgentSelector::Named("pc-17".into())),
            (
                " site=berlin , os=linux",
                AgentSelector::Labels(
                    [
                        ("os".into(), "linux".into()),
                        ("site".into(), "berlin".into()),
                    ]
                    .into(),
                ),
            ),
        ] {
            let parsed = AgentSelector::parse(text).unwrap();
            assert_eq!(parsed, expect, "{text:?}");
            assert_eq!(AgentSelector::parse(&parsed.to_string()).unwrap(), parsed);
        }
    }
}
