//! Agents as the scheduler sees them, and placing a run on one.

use std::collections::BTreeMap;

use crate::robot::AgentSelector;

/// The store's id of an agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AgentId(pub i64);

/// An enrolled agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Agent {
    pub id: AgentId,
    pub name: String,
    pub host: String,
    pub os_user: String,
    pub labels: BTreeMap<String, String>,
    pub capacity: u32,
    pub version: String,
    pub online: bool,
    pub draining: bool,
    pub last_seen_at: Option<jiff::Timestamp>,
    /// The orchestrator node that holds (or last held) its connection.
    pub node: Option<String>,
    /// Runs placed on it that have not ended.
    pub active_runs: u32,
    /// The graphical sessions it offers.
    pub sessions_offered: u32,
    /// Why it offers none although asked to (`xvfb` is not installed, say).
    pub sessions_unavailable: Option<String>,
}

impl Agent {
    pub fn slot(&self) -> AgentSlot {
        AgentSlot {
            name: self.name.clone(),
            labels: self.labels.clone(),
            capacity: self.capacity,
            active_runs: self.active_runs,
            online: self.online,
            draining: self.draining,
            free_sessions: Vec::new(),
            sessions_unavailable: self.sessions_unavailable.clone(),
        }
    }
}

/// What placement needs to know about an agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentSlot {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub capacity: u32,
    /// Runs placed on it that have not ended.
    pub active_runs: u32,
    pub online: bool,
    pub draining: bool,
    /// Its graphical sessions ready and used by no run, by number.
    pub free_sessions: Vec<u32>,
    /// Why it offers no graphical session although asked to.
    pub sessions_unavailable: Option<String>,
}

impl AgentSelector {
    pub fn matches(&self, agent: &AgentSlot) -> bool {
        match self {
            AgentSelector::Any => true,
            AgentSelector::Named(name) => agent.name == *name,
            AgentSelector::Labels(labels) => labels
                .iter()
                .all(|(key, value)| agent.labels.get(key) == Some(value)),
        }
    }
}

/// The agent a run of a robot with this selector should go to: among the matching agents that
/// are online, not draining and not full (and, for a robot that needs a display, with a free
/// graphical session), the one with the most free places (then by name). When there is none,
/// the reason, for the queued run to show.
pub fn place<'a>(
    selector: &AgentSelector,
    needs_display: bool,
    agents: &'a [AgentSlot],
) -> Result<&'a AgentSlot, String> {
    let matching: Vec<&AgentSlot> = agents
        .iter()
        .filter(|agent| selector.matches(agent))
        .collect();
    let open: Vec<&&AgentSlot> = matching
        .iter()
        .filter(|agent| agent.online && !agent.draining && agent.active_runs < agent.capacity)
        .collect();
    let best = open
        .iter()
        .filter(|agent| !needs_display || !agent.free_sessions.is_empty())
        .max_by(|a, b| {
            let free = |agent: &AgentSlot| agent.capacity - agent.active_runs;
            free(a).cmp(&free(b)).then_with(|| b.name.cmp(&a.name))
        });
    if let Some(agent) = best {
        return Ok(agent);
    }
    let wanted = match selector {
        AgentSelector::Any => "any agent".to_owned(),
        AgentSelector::Named(name) => format!("agent {name}"),
        AgentSelector::Labels(_) => format!("an agent labelled {selector}"),
    };
    let unavailable = open.iter().find_map(|agent| {
        let why = agent.sessions_unavailable.as_ref()?;
        Some(format!("agent {}: {why}", agent.name))
    });
    let reason = if matching.is_empty() {
        format!("waiting for {wanted}: none is enrolled")
    } else if matching.iter().all(|agent| !agent.online) {
        format!("waiting for {wanted}: offline")
    } else if open.is_empty() {
        format!("waiting for {wanted}: full or draining")
    } else if let Some(unavailable) = unavailable {
        format!("waiting for {wanted} with a free graphical session: {unavailable}")
    } else {
        format!("waiting for {wanted}: no agent offers a free graphical session")
    };
    Err(reason)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slot(
        name: &str,
        labels: &[(&str, &str)],
        capacity: u32,
        active_runs: u32,
        online: bool,
    ) -> AgentSlot {
        AgentSlot {
            name: name.to_owned(),
            labels: labels
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            capacity,
            active_runs,
            online,
            draining: false,
            free_sessions: Vec::new(),
            sessions_unavailable: None,
        }
    }

    #[track_caller]
    fn check(selector: &str, agents: &[AgentSlot], expect: Result<&str, &str>) {
        check_display(selector, false, agents, expect);
    }

    #[track_caller]
    fn check_display(
        selector: &str,
        needs_display: bool,
        agents: &[AgentSlot],
        expect: Result<&str, &str>,
    ) {
        let selector = AgentSelector::parse(selector).unwrap();
        let placed = place(&selector, needs_display, agents).map(|agent| agent.name.as_str());
        assert_eq!(placed, expect.map_err(str::to_owned));
    }

    #[test]
    fn a_run_that_needs_a_display_goes_where_a_session_is_free() {
        let mut busy = slot("busy", &[], 8, 0, true);
        busy.free_sessions = Vec::new();
        let mut free = slot("free", &[], 2, 1, true);
        free.free_sessions = vec![2];
        check_display("", true, &[busy.clone(), free.clone()], Ok("free"));
        check_display("", false, &[busy.clone(), free], Ok("busy"));
        check_display(
            "",
            true,
            &[busy.clone()],
            Err("waiting for any agent: no agent offers a free graphical session"),
        );
        busy.sessions_unavailable = Some("`xvfb` is not installed".to_owned());
        check_display(
            "busy",
            true,
            &[busy],
            Err(
                "waiting for agent busy with a free graphical session: agent busy: `xvfb` is not installed",
            ),
        );
    }

    #[test]
    fn placement() {
        let fleet = [
            slot("a", &[("os", "linux")], 4, 3, true),
            slot("b", &[("os", "linux"), ("site", "berlin")], 4, 1, true),
            slot("c", &[("os", "windows")], 8, 0, false),
        ];
        check("", &fleet, Ok("b"));
        check("os=linux", &fleet, Ok("b"));
        check("a", &fleet, Ok("a"));
        check("site=berlin,os=linux", &fleet, Ok("b"));
        check(
            "os=windows",
            &fleet,
            Err("waiting for an agent labelled os=windows: offline"),
        );
        check("c", &fleet, Err("waiting for agent c: offline"));
        check("zz", &fleet, Err("waiting for agent zz: none is enrolled"));
        let full = [slot("a", &[], 1, 1, true)];
        check("", &full, Err("waiting for any agent: full or draining"));
        let mut draining = slot("a", &[], 4, 0, true);
        draining.draining = true;
        check(
            "",
            &[draining],
            Err("waiting for any agent: full or draining"),
        );
    }
}
