//! Agents (enrollment, connection, command outbox, graphical sessions) and runs (history,
//! output), on both backends.

use dirigent_domain::{
    robot::RobotMode,
    run::{Run, RunState, Transition},
    session::SessionState,
};
use dirigent_store::{
    AgentFacts, OutputOf, Placement, RunEnd, RunQuery, SessionUpdate, StoreError,
};
use jiff::Timestamp;

use crate::backends::store_test;

fn at(seconds: i64) -> Timestamp {
    Timestamp::from_second(1_800_000_000 + seconds).unwrap()
}

fn facts(capacity: u32) -> AgentFacts {
    AgentFacts {
        host: "pc-1".into(),
        os_user: "robot".into(),
        labels: [("os".to_owned(), "linux".to_owned())].into(),
        capacity,
        version: "0.1.0".into(),
        sessions_offered: 2,
        sessions_unavailable: None,
    }
}

/// Enrolls `pc-1` and connects it to `node-a`, with room for `capacity` runs.
pub(crate) async fn online_agent(
    store: &dirigent_store::Store,
    capacity: u32,
) -> dirigent_domain::agent::AgentId {
    store
        .insert_enrollment_token("e", at(0), at(60))
        .await
        .unwrap();
    let agent = store
        .enroll_agent("e", "pc-1", "cred", at(0))
        .await
        .unwrap();
    store
        .agent_connected(agent, &facts(capacity), "node-a", at(1))
        .await
        .unwrap();
    agent
}

pub(crate) fn queued(id: &str, robot: &str, created: i64) -> Run {
    Run {
        id: id.to_owned(),
        robot: robot.to_owned(),
        agent_id: None,
        agent: None,
        state: RunState::Queued,
        reason: Some("waiting".into()),
        stop_requested: false,
        automatic: false,
        pid: None,
        exit_code: None,
        signal: None,
        not_before: None,
        args: Vec::new(),
        env: Default::default(),
        created_at: at(created),
        started_at: None,
        ended_at: None,
        session: None,
        version: 0,
    }
}

pub(crate) fn transition(state: RunState, seconds: i64, cause: &str) -> Transition {
    Transition {
        state,
        at: at(seconds),
        cause: cause.to_owned(),
        reason: None,
    }
}

store_test!(agents_story, |store| {
    store
        .insert_enrollment_token("digest-e", at(0), at(60))
        .await
        .unwrap();
    let err = store
        .enroll_agent("digest-x", "pc-1", "cred-1", at(1))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::NotFound), "{err}");
    let id = store
        .enroll_agent("digest-e", "pc-1", "cred-1", at(1))
        .await
        .unwrap();
    let err = store
        .enroll_agent("digest-e", "pc-2", "cred-2", at(2))
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::NotFound),
        "a token is used once: {err}"
    );
    store
        .insert_enrollment_token("digest-late", at(0), at(10))
        .await
        .unwrap();
    let err = store
        .enroll_agent("digest-late", "pc-3", "cred-3", at(10))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::NotFound), "expired: {err}");
    store
        .insert_enrollment_token("digest-f", at(0), at(60))
        .await
        .unwrap();
    let err = store
        .enroll_agent("digest-f", "pc-1", "cred-4", at(3))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Conflict), "{err}");

    let agent = store.agent_by_credential("cred-1").await.unwrap();
    assert_eq!(
        (agent.id, agent.name.as_str(), agent.online),
        (id, "pc-1", false)
    );
    assert_eq!(
        store
            .agent_connected(id, &facts(4), "node-a", at(5))
            .await
            .unwrap(),
        0
    );
    let agent = store.agent("pc-1").await.unwrap();
    assert!(agent.online);
    assert_eq!(
        (
            agent.capacity,
            agent.labels["os"].as_str(),
            agent.last_seen_at
        ),
        (4, "linux", Some(at(5)))
    );

    store.set_agent_last_event(id, 7).await.unwrap();
    store.set_agent_last_event(id, 3).await.unwrap();
    assert_eq!(
        store
            .agent_connected(id, &facts(4), "node-a", at(6))
            .await
            .unwrap(),
        7,
        "never goes back"
    );

    assert_eq!(
        store
            .queue_agent_command(id, "{\"a\":1}", at(7))
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        store
            .queue_agent_command(id, "{\"b\":2}", at(7))
            .await
            .unwrap(),
        2
    );
    store.ack_agent_commands(id, 1).await.unwrap();
    assert_eq!(
        store.pending_agent_commands(id, 0).await.unwrap(),
        [(2, "{\"b\":2}".to_owned())]
    );
    store.ack_agent_commands(id, 2).await.unwrap();
    assert_eq!(
        store.queue_agent_command(id, "{}", at(8)).await.unwrap(),
        3,
        "ids never repeat"
    );

    store.set_agent_draining("pc-1", true).await.unwrap();
    assert!(store.agent("pc-1").await.unwrap().draining);
    assert!(matches!(
        store.set_agent_draining("nope", true).await.unwrap_err(),
        StoreError::NotFound
    ));
    assert!(
        store
            .pending_agent_commands(id, 3)
            .await
            .unwrap()
            .is_empty(),
        "only those after the one given"
    );
    let kept = store
        .queue_agent_command(id, "{\"k\":1}", at(8))
        .await
        .unwrap();
    let dropped = store.queue_agent_command(id, "{}", at(8)).await.unwrap();
    store.drop_agent_command(id, dropped).await.unwrap();
    assert_eq!(
        store.pending_agent_commands(id, 3).await.unwrap(),
        [(kept, "{\"k\":1}".to_owned())],
        "a command dropped is never sent"
    );
    store.ack_agent_commands(id, kept).await.unwrap();

    // Another node's start leaves the agent alone; its own node's start does not.
    store.mark_node_agents_offline("node-b").await.unwrap();
    assert!(store.agents().await.unwrap()[0].online);
    store.mark_node_agents_offline("node-a").await.unwrap();
    assert!(!store.agents().await.unwrap()[0].online);

    // A connection that ended on a node the agent had left already changes nothing.
    store
        .agent_connected(id, &facts(4), "node-b", at(10))
        .await
        .unwrap();
    assert!(
        !store
            .agent_disconnected(id, "node-a", at(11))
            .await
            .unwrap()
    );
    assert!(store.agents().await.unwrap()[0].online);
    // Its node stops beating: the agent is offline, once.
    store
        .node_heartbeat("node-b", "0.1.0", at(0), at(10))
        .await
        .unwrap();
    assert!(
        store
            .disconnect_agents_of_dead_nodes(at(5))
            .await
            .unwrap()
            .is_empty(),
        "node-b beats"
    );
    assert_eq!(
        store.disconnect_agents_of_dead_nodes(at(20)).await.unwrap(),
        ["pc-1"]
    );
    assert!(!store.agents().await.unwrap()[0].online);

    store
        .upsert_agent_credential("local", "cred-local", at(9))
        .await
        .unwrap();
    store
        .upsert_agent_credential("local", "cred-local-2", at(9))
        .await
        .unwrap();
    assert_eq!(
        store
            .agent_by_credential("cred-local-2")
            .await
            .unwrap()
            .name,
        "local"
    );
    assert!(matches!(
        store.agent_by_credential("cred-local").await.unwrap_err(),
        StoreError::NotFound
    ));
});

store_test!(runs_story, |store| {
    store
        .insert_enrollment_token("e", at(0), at(60))
        .await
        .unwrap();
    let agent = store
        .enroll_agent("e", "pc-1", "cred", at(0))
        .await
        .unwrap();

    let mut run = queued("run_1", "invoices", 10);
    store
        .insert_run(&run, &transition(RunState::Queued, 10, "user:admin"), None)
        .await
        .unwrap();
    store
        .insert_run(
            &queued("run_2", "invoices", 11),
            &transition(RunState::Queued, 11, "user:admin"),
            None,
        )
        .await
        .unwrap();
    store
        .insert_run(
            &queued("run_3", "archive", 12),
            &transition(RunState::Queued, 12, "restart_policy"),
            None,
        )
        .await
        .unwrap();

    run.agent_id = Some(agent);
    run.state = RunState::Running;
    run.reason = None;
    run.pid = Some(4242);
    run.started_at = Some(at(13));
    let mut decided_elsewhere = run.clone();
    store
        .update_run(
            &mut run,
            Some(&transition(RunState::Running, 13, "agent:pc-1")),
        )
        .await
        .unwrap();
    assert_eq!(run.version, 1);
    // A change decided on the version before is refused, and stores nothing.
    decided_elsewhere.state = RunState::Paused;
    assert!(matches!(
        store
            .update_run(
                &mut decided_elsewhere,
                Some(&transition(RunState::Paused, 13, "user:x"))
            )
            .await
            .unwrap_err(),
        StoreError::Stale
    ));
    let read = store.run("run_1").await.unwrap();
    assert_eq!(read.agent.as_deref(), Some("pc-1"));
    assert_eq!(
        (read.state, read.pid, read.started_at),
        (RunState::Running, Some(4242), Some(at(13)))
    );
    assert_eq!(store.agent("pc-1").await.unwrap().active_runs, 1);

    assert!(
        !store
            .renew_run_token("run_1", "token-digest")
            .await
            .unwrap(),
        "only a starting run gets a new token"
    );
    store
        .confirm_run_token("run_1", agent, "token-digest")
        .await
        .unwrap();
    assert_eq!(
        store.run_by_token("token-digest").await.unwrap().id,
        "run_1"
    );

    let lines: Vec<_> = (1..=3)
        .map(|seq| crate::logs::output_line("run_1", seq, &format!("line {seq}"), at(14)))
        .collect();
    store.add_logs(&lines).await.unwrap();
    store.add_logs(&lines[1..]).await.unwrap();
    let read = store.output(OutputOf::Run("run_1"), 1, 10).await.unwrap();
    assert_eq!(
        read.iter().map(|l| l.text.as_str()).collect::<Vec<_>>(),
        ["line 2", "line 3"],
        "resent lines are stored once"
    );

    run.state = RunState::Failed;
    run.exit_code = Some(3);
    run.ended_at = Some(at(20));
    let restart = Run {
        automatic: true,
        ..queued("run_5", "invoices", 20)
    };
    let restart_transition = transition(RunState::Queued, 20, "restart_policy");
    store
        .end_run(
            &mut run,
            &transition(RunState::Failed, 20, "agent:pc-1"),
            RunEnd {
                restart: Some((&restart, &restart_transition)),
                manual: None,
            },
        )
        .await
        .unwrap();
    assert!(
        matches!(
            store.run_by_token("token-digest").await.unwrap_err(),
            StoreError::NotFound
        ),
        "the token ended with the run"
    );
    assert_eq!(
        store.run("run_5").await.unwrap().reason.as_deref(),
        Some("waiting"),
        "the restart is stored with the end"
    );
    let history: Vec<RunState> = store
        .run_transitions("run_1")
        .await
        .unwrap()
        .iter()
        .map(|t| t.state)
        .collect();
    assert_eq!(
        history,
        [RunState::Queued, RunState::Running, RunState::Failed]
    );

    let active: Vec<String> = store
        .active_runs()
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(active, ["run_2", "run_3", "run_5"]);
    let listed = store
        .runs(&RunQuery {
            robot: Some("invoices"),
            active_only: false,
            limit: 10,
        })
        .await
        .unwrap();
    assert_eq!(
        listed.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(),
        ["run_5", "run_2", "run_1"]
    );
    let listed = store
        .runs(&RunQuery {
            robot: None,
            active_only: true,
            limit: 1,
        })
        .await
        .unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(
        store.ended_runs("invoices", 5).await.unwrap()[0].id,
        "run_1"
    );
    assert_eq!(
        store.automatic_starts("archive", at(0)).await.unwrap(),
        Vec::<Timestamp>::new()
    );

    store
        .insert_run(
            &Run {
                automatic: true,
                args: vec!["--day".into(), "monday".into()],
                env: [("REGION".to_owned(), "emea".to_owned())].into(),
                ..queued("run_4", "archive", 30)
            },
            &transition(RunState::Queued, 30, "restart_policy"),
            None,
        )
        .await
        .unwrap();
    let stored = store.run("run_4").await.unwrap();
    assert_eq!(stored.args, ["--day", "monday"]);
    assert_eq!(stored.env["REGION"], "emea");
    assert_eq!(
        store.automatic_starts("archive", at(0)).await.unwrap(),
        [at(30)]
    );

    let mut ghost = queued("run_9", "x", 1);
    assert!(matches!(
        store.update_run(&mut ghost, None).await.unwrap_err(),
        StoreError::NotFound
    ));
});

store_test!(graphical_sessions_story, |store| {
    let agent = online_agent(&store, 4).await;
    let report = |number, state, run_id: Option<&str>, at| SessionUpdate {
        number,
        display: Some(format!(":{}", 99 + number)),
        width: 1920,
        height: 1080,
        state,
        run_id: run_id.map(str::to_owned),
        reason: None,
        at: Timestamp::from_millisecond(at).unwrap(),
    };
    store
        .update_session(agent, &report(1, SessionState::Starting, None, 10), true)
        .await
        .unwrap();
    store
        .update_session(agent, &report(1, SessionState::Ready, None, 11), true)
        .await
        .unwrap();
    // The snapshot sent on connecting updates the state without adding to the history.
    store
        .update_session(agent, &report(2, SessionState::Ready, None, 12), false)
        .await
        .unwrap();
    let sessions = store.sessions(None).await.unwrap();
    let listed: Vec<(String, SessionState)> = sessions
        .iter()
        .map(|session| (session.id(), session.state))
        .collect();
    assert_eq!(
        listed,
        [
            ("pc-1/1".to_owned(), SessionState::Ready),
            ("pc-1/2".to_owned(), SessionState::Ready)
        ]
    );
    let (one, history) = store.session("pc-1", 1, 10).await.unwrap();
    assert_eq!(one.display.as_deref(), Some(":100"));
    let states: Vec<SessionState> = history.iter().map(|change| change.state).collect();
    assert_eq!(
        states,
        [SessionState::Ready, SessionState::Starting],
        "newest first"
    );
    assert!(store.session("pc-1", 2, 10).await.unwrap().1.is_empty());
    assert!(matches!(
        store.session("pc-1", 3, 10).await.unwrap_err(),
        StoreError::NotFound
    ));

    // A session is given to one run at a time, checked where the placement is stored.
    let place = async |id: &str, session: u32| {
        let mut run = queued(id, id, 20);
        store
            .insert_run(&run, &transition(RunState::Queued, 20, "user:admin"), None)
            .await
            .unwrap();
        run.agent_id = Some(agent);
        run.agent = Some("pc-1".into());
        run.state = RunState::Starting;
        run.session = Some(session);
        let placed = transition(RunState::Starting, 21, "rule:dispatch");
        store
            .place_run(&mut run, &placed, &format!("digest-{id}"), "{}", 5)
            .await
    };
    assert!(matches!(
        place("run_a", 1).await.unwrap(),
        Placement::Placed { .. }
    ));
    assert_eq!(store.run("run_a").await.unwrap().session, Some(1));
    assert_eq!(
        place("run_b", 1).await.unwrap(),
        Placement::Refused("waiting: agent pc-1 has no free graphical session any more".into())
    );
    store
        .update_session(agent, &report(2, SessionState::Restarting, None, 22), true)
        .await
        .unwrap();
    assert_eq!(
        place("run_c", 2).await.unwrap(),
        Placement::Refused("waiting: agent pc-1 has no free graphical session any more".into()),
        "nor one that is not ready"
    );

    // An agent that offers fewer sessions than before loses the others.
    let mut fewer = facts(4);
    fewer.sessions_offered = 1;
    store
        .agent_connected(
            agent,
            &fewer,
            "node-a",
            Timestamp::from_millisecond(30).unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(store.sessions(Some("pc-1")).await.unwrap().len(), 1);
    assert_eq!(store.agent("pc-1").await.unwrap().sessions_offered, 1);
});

store_test!(runs_keep_their_newest_frames_and_the_last, |store| {
    let run = queued("run_f", "painter", 10);
    store
        .insert_run(&run, &transition(RunState::Queued, 10, "user:admin"), None)
        .await
        .unwrap();
    let png = |n: u8| vec![0x89, b'P', b'N', b'G', n];
    for n in 0..70u8 {
        let at = Timestamp::from_millisecond(1000 + i64::from(n)).unwrap();
        store
            .add_run_frame("run_f", at, &png(n), false)
            .await
            .unwrap();
    }
    store
        .add_run_frame(
            "run_f",
            Timestamp::from_millisecond(2000).unwrap(),
            &png(99),
            true,
        )
        .await
        .unwrap();
    let frames = store.run_frames("run_f").await.unwrap();
    assert_eq!(
        frames.len(),
        60,
        "the newest 59 thumbnails and the last screen"
    );
    assert_eq!(frames.first().unwrap().seq, 12);
    let last = frames.last().unwrap();
    assert_eq!((last.seq, last.last, last.bytes), (71, true, 5));
    assert_eq!(store.run_frame("run_f", 71).await.unwrap(), png(99));
    assert!(matches!(
        store.run_frame("run_f", 1).await.unwrap_err(),
        StoreError::NotFound
    ));
    assert!(store.run_frames("run_none").await.unwrap().is_empty());
});

store_test!(placement_is_checked_where_it_is_stored, |store| {
    let agent = online_agent(&store, 2).await;
    let mut runs = Vec::new();
    for (n, id) in ["run_1", "run_2", "run_3"].into_iter().enumerate() {
        let run = queued(id, "invoices", 10 + n as i64);
        let first = transition(RunState::Queued, 10, "user:admin");
        store.insert_run(&run, &first, None).await.unwrap();
        runs.push(run);
    }
    // Two nodes decided on the same snapshot: each would place its run as the only one.
    let place = async |run: &mut Run, max_parallel: u32| {
        run.agent_id = Some(agent);
        run.agent = Some("pc-1".into());
        run.state = RunState::Starting;
        let placed = transition(RunState::Starting, 12, "rule:dispatch");
        let digest = format!("digest-{}", run.id);
        store
            .place_run(run, &placed, &digest, "{}", max_parallel)
            .await
    };
    let mut twice = runs[0].clone();
    assert!(matches!(
        place(&mut runs[0], 1).await.unwrap(),
        Placement::Placed { command_id: 1 }
    ));
    assert!(
        matches!(place(&mut twice, 5).await.unwrap_err(), StoreError::Stale),
        "one run is placed once"
    );
    assert_eq!(
        place(&mut runs[1], 1).await.unwrap(),
        Placement::Refused("waiting: the robot runs 1 of 1 allowed at once".into()),
        "the robot's parallel runs are counted in the store"
    );
    assert!(matches!(
        place(&mut runs[1], 5).await.unwrap(),
        Placement::Placed { .. }
    ));
    assert_eq!(
        place(&mut runs[2], 5).await.unwrap(),
        Placement::Refused("waiting: agent pc-1 has no free place any more".into()),
        "and so is the agent's capacity"
    );
    assert_eq!(store.agent("pc-1").await.unwrap().active_runs, 2);
    assert_eq!(
        store.run("run_3").await.unwrap().state,
        RunState::Queued,
        "a refused run stays queued"
    );
    assert!(store.renew_run_token("run_1", "digest-new").await.unwrap());
    assert_eq!(
        store.run_by_token("digest-new").await.unwrap().id,
        "run_1",
        "a start command sent again carries a new token"
    );
    // Its agent's reconnection is a change of its runs: what was decided on them while it
    // was away (that they are lost) is refused.
    let mut decided_while_away = store.run("run_1").await.unwrap();
    store
        .agent_connected(agent, &facts(2), "node-b", at(20))
        .await
        .unwrap();
    decided_while_away.state = RunState::Lost;
    assert!(matches!(
        store
            .update_run(&mut decided_while_away, None)
            .await
            .unwrap_err(),
        StoreError::Stale
    ));
});

store_test!(robot_modes, |store| {
    let definition = dirigent_domain::robot::RobotDraft {
        name: "bot".into(),
        argv: vec!["x".into()],
        ..Default::default()
    }
    .validate()
    .unwrap();
    store.insert_robot(&definition, at(0)).await.unwrap();
    assert_eq!(store.robot("bot").await.unwrap().mode, RobotMode::Auto);
    store
        .set_robot_mode("bot", RobotMode::Manual, "started by admin")
        .await
        .unwrap();
    let robot = store.robot("bot").await.unwrap();
    assert_eq!(
        (robot.mode, robot.mode_reason.as_deref()),
        (RobotMode::Manual, Some("started by admin"))
    );
    assert!(matches!(
        store
            .set_robot_mode("nope", RobotMode::Auto, "")
            .await
            .unwrap_err(),
        StoreError::NotFound
    ));
});
