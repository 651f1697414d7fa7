//! Robots and their runs: the robot list (with the form that defines a new robot), a robot's
//! page (definition, mode, buttons, run history) and a run's page (timeline, live output).

use askama::Template;
use axum::{
    Json,
    extract::{Path, State},
    response::Response,
};
use dirigent_domain::access::{Action, NamePattern, Resource};
use dirigent_proto::{
    robot::{Robot, RobotMode},
    run::{Run, RunDetail, RunState},
};

use super::{Frame, Viewer};
use crate::{
    AppState,
    api::{
        self, ApiQuery, PathSegment,
        runs::{GetQuery, ListQuery},
    },
    auth::Caller,
    error::ApiError,
};

/// How many runs a robot's page lists.
const HISTORY: u32 = 50;

/// A button that calls the API: `method` and `path`, a JSON `body`, and what follows success
/// (`then`: `refresh` the page, or `go:` an address where `{id}` is the answer's `id`).
pub(super) struct Button {
    pub label: &'static str,
    pub method: &'static str,
    pub path: String,
    pub body: String,
    pub then: &'static str,
    pub confirm: bool,
    /// `danger` for what cannot be undone.
    pub class: &'static str,
}

impl Button {
    pub(super) fn post(label: &'static str, path: String) -> Button {
        Button {
            label,
            method: "POST",
            path,
            body: String::new(),
            then: "refresh",
            confirm: false,
            class: "",
        }
    }
}

/// Starts a run of `robot`, then shows the run.
fn start_button(caller: &Caller, robot: &str) -> Option<Button> {
    caller
        .may(Resource::Robots, Action::Run, Some(robot))
        .then(|| Button {
            body: serde_json::json!({ "robot": robot }).to_string(),
            then: "go:/runs/{id}",
            ..Button::post("Start", "/api/v1/runs".to_owned())
        })
}

/// The buttons of a run that its state allows and the reader may use.
fn run_buttons(caller: &Caller, run: &Run) -> Vec<Button> {
    let may = |action| caller.may(Resource::Robots, action, Some(&run.robot));
    let path = |operation: &str| format!("/api/v1/runs/{}/{operation}", run.id);
    let mut buttons = Vec::new();
    if run.state == RunState::Running && may(Action::Pause) {
        buttons.push(Button::post("Pause", path("pause")));
    }
    if run.state == RunState::Paused && may(Action::Pause) {
        buttons.push(Button::post("Resume", path("resume")));
    }
    let stoppable = matches!(
        run.state,
        RunState::Queued | RunState::Starting | RunState::Running | RunState::Paused
    );
    if stoppable && may(Action::Stop) {
        buttons.push(Button::post("Safe stop", path("stop")));
    }
    if !run.state.is_final() && may(Action::Kill) {
        buttons.push(Button {
            confirm: true,
            class: "danger",
            ..Button::post("Force stop", path("kill"))
        });
    }
    if !run.state.is_final() && may(Action::Stop) && may(Action::Run) {
        buttons.push(Button {
            then: "go:/runs/{id}",
            ..Button::post("Restart", path("restart"))
        });
    }
    buttons
}

/// A run with the buttons the reader may use on it.
pub(super) struct RunRow {
    pub run: Run,
    pub buttons: Vec<Button>,
}

fn rows(caller: &Caller, runs: Vec<Run>) -> Vec<RunRow> {
    runs.into_iter()
        .map(|run| RunRow {
            buttons: run_buttons(caller, &run),
            run,
        })
        .collect()
}

/// The runs not ended yet (at most 1,000) that the reader may see; none when the reader may
/// not read runs at all.
pub(super) async fn active_runs(
    state: &AppState,
    caller: &Caller,
) -> Result<Option<Vec<Run>>, ApiError> {
    if !caller.may(Resource::Runs, Action::Read, None) {
        return Ok(None);
    }
    let query = ListQuery {
        robot: None,
        active: true,
        limit: Some(1000),
    };
    let Json(runs) =
        api::runs::list_runs(State(state.clone()), caller.clone(), ApiQuery(query)).await?;
    Ok(Some(runs))
}

/// A robot in the list: what it is doing now.
pub(super) struct RobotRow {
    pub robot: Robot,
    pub active: Vec<Run>,
    pub start: Option<Button>,
}

#[derive(Template)]
#[template(path = "robots.html")]
struct RobotsPage<'a> {
    frame: &'a Frame,
    robots: Vec<RobotRow>,
    may_create: bool,
}

pub(super) async fn list(State(state): State<AppState>, viewer: Viewer) -> Response {
    viewer.page(robots_page(&state, &viewer).await)
}

async fn robots_page<'a>(state: &AppState, viewer: &'a Viewer) -> Result<RobotsPage<'a>, ApiError> {
    let caller = &viewer.caller;
    let Json(robots) = api::robots::list_robots(State(state.clone()), caller.clone()).await?;
    let active = active_runs(state, caller).await?.unwrap_or_default();
    let robots = robots
        .into_iter()
        .map(|robot| RobotRow {
            active: active
                .iter()
                .filter(|run| run.robot == robot.name)
                .cloned()
                .collect(),
            start: start_button(caller, &robot.name),
            robot,
        })
        .collect();
    Ok(RobotsPage {
        frame: &viewer.frame,
        robots,
        may_create: caller.may(Resource::Robots, Action::Edit, None),
    })
}

#[derive(Template)]
#[template(path = "robot.html")]
struct RobotPage<'a> {
    frame: &'a Frame,
    robot: Robot,
    start: Option<Button>,
    back_to_auto: Option<Button>,
    /// The definition as JSON to edit, when the reader may edit it.
    edit: Option<String>,
    /// None when the reader may not read the robot's runs.
    runs: Option<Vec<RunRow>>,
    /// Its triggers with their next firings; none when the reader may not read them.
    triggers: Option<Vec<super::triggers::TriggerRow>>,
    /// The queues it may work on (and those its queue triggers follow) with their figures;
    /// none when the reader may read no queue.
    queues: Option<Vec<dirigent_proto::queue::Queue>>,
}

pub(super) async fn robot(
    State(state): State<AppState>,
    viewer: Viewer,
    Path(name): Path<String>,
) -> Response {
    viewer.page(robot_page(&state, &viewer, name).await)
}

async fn robot_page<'a>(
    state: &AppState,
    viewer: &'a Viewer,
    name: String,
) -> Result<RobotPage<'a>, ApiError> {
    let caller = &viewer.caller;
    let Json(robot) = api::robots::get_robot(
        State(state.clone()),
        caller.clone(),
        PathSegment(name.clone()),
    )
    .await?;
    let runs = if caller.may(Resource::Runs, Action::Read, Some(&name)) {
        let query = ListQuery {
            robot: Some(name.clone()),
            active: false,
            limit: Some(HISTORY),
        };
        let Json(runs) =
            api::runs::list_runs(State(state.clone()), caller.clone(), ApiQuery(query)).await?;
        Some(rows(caller, runs))
    } else {
        None
    };
    let triggers = if caller.may(Resource::Triggers, Action::Read, Some(&name)) {
        let query = api::triggers::TriggerQuery {
            robot: Some(name.clone()),
        };
        let Json(triggers) =
            api::triggers::list_triggers(State(state.clone()), caller.clone(), ApiQuery(query))
                .await?;
        Some(triggers)
    } else {
        None
    };
    let queues = if caller.may(Resource::Queues, Action::Read, None) {
        let granted: Vec<NamePattern> = robot
            .queues
            .iter()
            .filter_map(|pattern| NamePattern::parse(pattern).ok())
            .collect();
        let followed: Vec<&str> = triggers
            .iter()
            .flatten()
            .filter_map(|trigger| trigger.spec.queue.as_deref())
            .collect();
        let Json(queues) = api::queues::list_queues(State(state.clone()), caller.clone()).await?;
        Some(
            queues
                .into_iter()
                .filter(|queue| {
                    followed.contains(&queue.name.as_str())
                        || granted.iter().any(|pattern| pattern.matches(&queue.name))
                })
                .collect(),
        )
    } else {
        None
    };
    let triggers = triggers.map(|triggers| {
        triggers
            .into_iter()
            .map(|trigger| super::triggers::TriggerRow {
                schedule: super::triggers::schedule(&trigger.spec),
                toggle: None,
                trigger,
            })
            .collect()
    });
    let back_to_auto = (robot.mode == RobotMode::Manual
        && caller.may(Resource::Robots, Action::Run, Some(&name)))
    .then(|| Button::post("Back to auto", format!("/api/v1/robots/{name}/auto")));
    let edit = caller
        .may(Resource::Robots, Action::Edit, Some(&name))
        .then(|| serde_json::to_string_pretty(&robot.to_spec()))
        .transpose()
        .map_err(ApiError::internal)?;
    Ok(RobotPage {
        frame: &viewer.frame,
        edit,
        start: start_button(caller, &name),
        back_to_auto,
        robot,
        runs,
        triggers,
        queues,
    })
}

#[derive(Template)]
#[template(path = "run.html")]
struct RunPage<'a> {
    frame: &'a Frame,
    detail: RunDetail,
    buttons: Vec<Button>,
    may_read_output: bool,
    started_by: Origin,
    /// From its start to its end, or to now while it runs.
    duration: Option<String>,
    /// The frames kept of its screen (for a reader who may view sessions), oldest first.
    frames: Vec<dirigent_proto::session::RunFrame>,
}

/// What started a run, with a link to it where there is a page.
struct Origin {
    text: String,
    link: Option<String>,
}

impl Origin {
    /// Read from the cause of a run's first transition (`user:NAME`, `trigger:ID#FIRING`,
    /// `restart_policy`, …).
    fn of(cause: &str) -> Origin {
        match cause.split_once(':') {
            Some(("trigger", firing)) => {
                let trigger = firing.split('#').next().unwrap_or(firing);
                Origin {
                    text: format!("trigger {firing}"),
                    link: Some(format!("/triggers/{trigger}")),
                }
            }
            Some((kind, name)) => Origin {
                text: format!("{kind} {name}"),
                link: None,
            },
            None => Origin {
                text: cause.replace('_', " "),
                link: None,
            },
        }
    }
}

/// A duration as hours, minutes and seconds: `1 h 02 min 05 s`, `3 min 10 s`, `4 s`.
fn duration_text(duration: jiff::SignedDuration) -> String {
    let seconds = duration.as_secs().max(0);
    let (hours, minutes, seconds) = (seconds / 3600, seconds / 60 % 60, seconds % 60);
    match (hours, minutes) {
        (0, 0) => format!("{seconds} s"),
        (0, _) => format!("{minutes} min {seconds:02} s"),
        _ => format!("{hours} h {minutes:02} min {seconds:02} s"),
    }
}

pub(super) async fn run(
    State(state): State<AppState>,
    viewer: Viewer,
    Path(id): Path<String>,
) -> Response {
    viewer.page(run_page(&state, &viewer, id).await)
}

async fn run_page<'a>(
    state: &AppState,
    viewer: &'a Viewer,
    id: String,
) -> Result<RunPage<'a>, ApiError> {
    let caller = &viewer.caller;
    let Json(detail) = api::runs::get_run(
        State(state.clone()),
        caller.clone(),
        PathSegment(id),
        ApiQuery(GetQuery::default()),
    )
    .await?;
    let started_by = detail
        .transitions
        .first()
        .map_or(Origin::of(""), |first| Origin::of(&first.cause));
    let duration = detail.run.started_at.map(|started| {
        let until = detail.run.ended_at.unwrap_or_else(|| state.clock.now());
        duration_text(until.duration_since(started))
    });
    let frames = match caller.may(
        Resource::Sessions,
        Action::View,
        detail.run.agent.as_deref(),
    ) {
        true => {
            let id = PathSegment(detail.run.id.clone());
            let frames = api::sessions::run_frames(State(state.clone()), caller.clone(), id);
            frames.await.map(|Json(frames)| frames).unwrap_or_default()
        }
        false => Vec::new(),
    };
    Ok(RunPage {
        frames,
        frame: &viewer.frame,
        buttons: run_buttons(caller, &detail.run),
        may_read_output: caller.may(Resource::Runs, Action::Logs, Some(&detail.run.robot)),
        started_by,
        duration,
        detail,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_and_durations_read_as_people_say_them() {
        for (cause, text, link) in [
            ("user:alice", "user alice", None),
            (
                "trigger:trg_1#42",
                "trigger trg_1#42",
                Some("/triggers/trg_1"),
            ),
            ("restart_policy", "restart policy", None),
            ("rule:dispatch", "rule dispatch", None),
        ] {
            let origin = Origin::of(cause);
            assert_eq!((origin.text.as_str(), origin.link.as_deref()), (text, link));
        }
        for (seconds, text) in [(4, "4 s"), (190, "3 min 10 s"), (3725, "1 h 02 min 05 s")] {
            assert_eq!(
                duration_text(jiff::SignedDuration::from_secs(seconds)),
                text
            );
        }
    }
}
