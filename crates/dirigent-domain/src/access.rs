//! The access policy: permissions are actions on kinds of resources, optionally limited to the
//! resources whose names match a pattern; roles bundle permissions; a caller holds roles.
//!
//! The server asks [`allows`] before every operation; nothing here knows about HTTP.

use std::fmt;

use crate::InvalidField;

/// A kind of thing permissions are about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Resource {
    Robots,
    Runs,
    Triggers,
    Calendars,
    Queues,
    Agents,
    Sessions,
    Logs,
    Users,
    Settings,
    Console,
    /// The orchestrator itself: its facts, and maintenance.
    Server,
}

/// Something a caller does to a resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Action {
    Read,
    Run,
    Pause,
    Stop,
    Kill,
    Edit,
    Logs,
    Add,
    Process,
    Admin,
    Exec,
    View,
    /// Take over a graphical session: its mouse and keyboard.
    Control,
    Use,
    /// Read and write files on an agent's machine.
    Files,
}

impl Resource {
    pub const ALL: [Resource; 12] = [
        Resource::Robots,
        Resource::Runs,
        Resource::Triggers,
        Resource::Calendars,
        Resource::Queues,
        Resource::Agents,
        Resource::Sessions,
        Resource::Logs,
        Resource::Users,
        Resource::Settings,
        Resource::Console,
        Resource::Server,
    ];

    /// The actions that mean something for this kind of resource.
    pub fn actions(self) -> &'static [Action] {
        use Action::*;
        match self {
            Resource::Robots => &[Read, Run, Pause, Stop, Kill, Edit],
            Resource::Runs => &[Read, Logs],
            Resource::Triggers | Resource::Calendars => &[Read, Edit],
            Resource::Queues => &[Read, Add, Process, Admin],
            Resource::Agents => &[Read, Admin, Exec, Files],
            Resource::Sessions => &[View, Control],
            Resource::Logs => &[Read],
            Resource::Users => &[Admin],
            Resource::Settings => &[Read, Admin],
            Resource::Console => &[Use],
            Resource::Server => &[Read, Admin],
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Resource::Robots => "robots",
            Resource::Runs => "runs",
            Resource::Triggers => "triggers",
            Resource::Calendars => "calendars",
            Resource::Queues => "queues",
            Resource::Agents => "agents",
            Resource::Sessions => "sessions",
            Resource::Logs => "logs",
            Resource::Users => "users",
            Resource::Settings => "settings",
            Resource::Console => "console",
            Resource::Server => "server",
        }
    }
}

impl Resource {
    pub fn parse(text: &str) -> Option<Resource> {
        Resource::ALL
            .into_iter()
            .find(|resource| resource.as_str() == text)
    }
}

impl Action {
    pub fn parse(text: &str) -> Option<Action> {
        use Action::*;
        [
            Read, Run, Pause, Stop, Kill, Edit, Logs, Add, Process, Admin, Exec, View, Control,
            Use, Files,
        ]
        .into_iter()
        .find(|action| action.as_str() == text)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Action::Read => "read",
            Action::Run => "run",
            Action::Pause => "pause",
            Action::Stop => "stop",
            Action::Kill => "kill",
            Action::Edit => "edit",
            Action::Logs => "logs",
            Action::Add => "add",
            Action::Process => "process",
            Action::Admin => "admin",
            Action::Exec => "exec",
            Action::View => "view",
            Action::Control => "control",
            Action::Use => "use",
            Action::Files => "files",
        }
    }
}

impl fmt::Display for Resource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A name pattern: `*` matches any run of characters, everything else matches itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamePattern(String);

impl NamePattern {
    pub fn any() -> NamePattern {
        NamePattern("*".to_owned())
    }

    pub fn parse(pattern: &str) -> Result<NamePattern, InvalidField> {
        if pattern.is_empty() || 128 < pattern.len() {
            return Err(InvalidField::new(
                "pattern",
                "must have 1 to 128 characters",
            ));
        }
        Ok(NamePattern(pattern.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn matches(&self, name: &str) -> bool {
        let mut parts = self.0.split('*');
        let first = parts.next().unwrap_or_default();
        let Some(mut rest) = name.strip_prefix(first) else {
            return false;
        };
        let parts: Vec<&str> = parts.collect();
        let Some((last, middle)) = parts.split_last() else {
            // No `*` at all: the whole name must equal the pattern.
            return rest.is_empty();
        };
        for part in middle {
            match rest.find(part) {
                Some(idx) => rest = &rest[idx + part.len()..],
                None => return false,
            }
        }
        rest.ends_with(last)
    }
}

/// Some actions on the resources of one kind whose names match a pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Permission {
    pub resource: Resource,
    pub actions: Vec<Action>,
    pub pattern: NamePattern,
}

impl Permission {
    /// Checks a permission given as text: a resource kind, actions that mean something for it,
    /// and a name pattern (`*` when absent). The error names the field at fault.
    pub fn parse(
        resource: &str,
        actions: &[String],
        pattern: Option<&str>,
    ) -> Result<Permission, InvalidField> {
        let resource = Resource::parse(resource).ok_or_else(|| {
            let kinds: Vec<&str> = Resource::ALL.iter().map(|kind| kind.as_str()).collect();
            InvalidField::new(
                "resource",
                format!("{resource:?} is not one of {}", kinds.join(", ")),
            )
        })?;
        if actions.is_empty() {
            return Err(InvalidField::new(
                "actions",
                "must name at least one action",
            ));
        }
        let mut parsed = Vec::with_capacity(actions.len());
        for action in actions {
            match Action::parse(action) {
                Some(action) if resource.actions().contains(&action) => parsed.push(action),
                _ => {
                    let valid: Vec<&str> = resource
                        .actions()
                        .iter()
                        .map(|action| action.as_str())
                        .collect();
                    return Err(InvalidField::new(
                        "actions",
                        format!(
                            "{action:?} is not an action on {resource}: use {}",
                            valid.join(", ")
                        ),
                    ));
                }
            }
        }
        let pattern = NamePattern::parse(pattern.unwrap_or("*"))?;
        Ok(Permission {
            resource,
            actions: parsed,
            pattern,
        })
    }

    fn all_of(resource: Resource) -> Permission {
        Permission {
            resource,
            actions: resource.actions().to_vec(),
            pattern: NamePattern::any(),
        }
    }

    fn some_of(resource: Resource, actions: &[Action]) -> Permission {
        Permission {
            resource,
            actions: actions.to_vec(),
            pattern: NamePattern::any(),
        }
    }
}

/// The names of the roles every installation has.
pub const BUILTIN_ROLES: [&str; 4] = ["admin", "operator", "developer", "viewer"];

/// The permissions of a built-in role, or `None` for another name.
///
/// - `admin`: everything.
/// - `developer`: what an operator may, plus editing robots, triggers and calendars,
///   administering queues and using the debug console.
/// - `operator`: reading everything but users and settings' secrets, running, pausing,
///   stopping and killing robots, reading run output, adding and processing queue items,
///   viewing and taking over graphical sessions, reading the orchestrator's facts.
/// - `viewer`: reading robots, runs and their output, triggers, calendars, queues, agents
///   and logs.
pub fn builtin_role(name: &str) -> Option<Vec<Permission>> {
    use Action::*;
    use Resource::*;
    let viewer = vec![
        Permission::some_of(Robots, &[Read]),
        Permission::all_of(Runs),
        Permission::some_of(Triggers, &[Read]),
        Permission::some_of(Calendars, &[Read]),
        Permission::some_of(Queues, &[Read]),
        Permission::some_of(Agents, &[Read]),
        Permission::all_of(Resource::Logs),
    ];
    let operator = {
        let mut perms = viewer.clone();
        perms[0] = Permission::some_of(Robots, &[Read, Run, Pause, Stop, Kill]);
        perms[4] = Permission::some_of(Queues, &[Read, Add, Process]);
        perms.push(Permission::all_of(Sessions));
        perms.push(Permission::some_of(Settings, &[Read]));
        perms.push(Permission::some_of(Server, &[Read]));
        perms
    };
    let developer = {
        let mut perms = operator.clone();
        perms[0] = Permission::all_of(Robots);
        perms[2] = Permission::all_of(Triggers);
        perms[3] = Permission::all_of(Calendars);
        perms[4] = Permission::all_of(Queues);
        perms.push(Permission::all_of(Console));
        perms
    };
    match name {
        "admin" => Some(Resource::ALL.into_iter().map(Permission::all_of).collect()),
        "developer" => Some(developer),
        "operator" => Some(operator),
        "viewer" => Some(viewer),
        _ => None,
    }
}

/// Whether `permissions` allow `action` on the resource of kind `resource` named `target`, or,
/// with no target, on at least some resource of that kind (to list them, say).
pub fn allows(
    permissions: &[Permission],
    resource: Resource,
    action: Action,
    target: Option<&str>,
) -> bool {
    permissions.iter().any(|perm| {
        perm.resource == resource
            && perm.actions.contains(&action)
            && target.is_none_or(|name| perm.pattern.matches(name))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[track_caller]
    fn check_pattern(pattern: &str, name: &str, expect: bool) {
        assert_eq!(
            NamePattern::parse(pattern).unwrap().matches(name),
            expect,
            "{pattern} ~ {name}"
        );
    }

    #[test]
    fn patterns() {
        check_pattern("*", "anything", true);
        check_pattern("finance-*", "finance-invoices", true);
        check_pattern("finance-*", "finance-", true);
        check_pattern("finance-*", "hr-payroll", false);
        check_pattern("*-nightly", "sync-nightly", true);
        check_pattern("*-nightly", "sync-nightly-2", false);
        check_pattern("a*b*c", "axxbyyc", true);
        check_pattern("a*b*c", "axxcyyb", false);
        check_pattern("exact", "exact", true);
        check_pattern("exact", "exactly", false);
        check_pattern("a**", "a", true);
    }

    #[track_caller]
    fn check_role(role: &str, resource: Resource, action: Action, expect: bool) {
        let perms = builtin_role(role).unwrap();
        assert_eq!(
            allows(&perms, resource, action, Some("x")),
            expect,
            "{role}: {action} {resource}"
        );
    }

    #[test]
    fn builtin_role_matrix() {
        use Action::*;
        use Resource::*;
        check_role("admin", Agents, Exec, true);
        check_role("admin", Users, Admin, true);
        check_role("developer", Robots, Edit, true);
        check_role("developer", Console, Use, true);
        check_role("developer", Agents, Exec, false);
        check_role("developer", Agents, Files, false);
        check_role("operator", Server, Read, true);
        check_role("operator", Server, Admin, false);
        check_role("operator", Console, Use, false);
        check_role("developer", Users, Admin, false);
        check_role("operator", Robots, Run, true);
        check_role("operator", Robots, Kill, true);
        check_role("operator", Robots, Edit, false);
        check_role("operator", Queues, Admin, false);
        check_role("viewer", Robots, Read, true);
        check_role("viewer", Runs, Action::Logs, true);
        check_role("viewer", Robots, Run, false);
        check_role("viewer", Sessions, View, false);
        assert!(builtin_role("root").is_none());
    }

    #[test]
    fn scoped_permissions_reach_only_matching_names() {
        let perms = vec![Permission {
            resource: Resource::Robots,
            actions: vec![Action::Read, Action::Run],
            pattern: NamePattern::parse("finance-*").unwrap(),
        }];
        assert!(allows(
            &perms,
            Resource::Robots,
            Action::Run,
            Some("finance-invoices")
        ));
        assert!(!allows(
            &perms,
            Resource::Robots,
            Action::Run,
            Some("hr-payroll")
        ));
        assert!(allows(&perms, Resource::Robots, Action::Read, None));
        assert!(!allows(&perms, Resource::Robots, Action::Stop, None));
        assert!(!allows(&perms, Resource::Queues, Action::Read, None));
    }
}
