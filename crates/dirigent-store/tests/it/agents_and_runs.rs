//! Agents (enrollment, connection, command outbox) and runs (history, output), on both
//! backends.

use dirigent_domain::{
    robot::RobotMode,
    run::{Run, RunState, Transition},
};
use dirigent_store::{AgentFacts, OutputLine, RunQuery, StoreError};
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
    }
}

fn queued(id: &str, robot: &str, created: i64) -> Run {
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
    }
}

fn transition(state: RunState, seconds: i64, cause: &str) -> Transition {
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
        store.agent_connected(id, &facts(4), at(5)).await.unwrap(),
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
        store.agent_connected(id, &facts(4), at(6)).await.unwrap(),
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
        store.pending_agent_commands(id).await.unwrap(),
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
    store.mark_all_agents_offline().await.unwrap();
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
        .insert_run(&run, &transition(RunState::Queued, 10, "user:admin"))
        .await
        .unwrap();
    store
        .insert_run(
            &queued("run_2", "invoices", 11),
            &transition(RunState::Queued, 11, "user:admin"),
        )
        .await
        .unwrap();
    store
        .insert_run(
            &queued("run_3", "archive", 12),
            &transition(RunState::Queued, 12, "restart_policy"),
        )
        .await
        .unwrap();

    run.agent_id = Some(agent);
    run.state = RunState::Running;
    run.reason = None;
    run.pid = Some(4242);
    run.started_at = Some(at(13));
    store
        .update_run(&run, Some(&transition(RunState::Running, 13, "agent:pc-1")))
        .await
        .unwrap();
    let read = store.run("run_1").await.unwrap();
    assert_eq!(read.agent.as_deref(), Some("pc-1"));
    assert_eq!(
        (read.state, read.pid, read.started_at),
        (RunState::Running, Some(4242), Some(at(13)))
    );
    assert_eq!(store.agent("pc-1").await.unwrap().active_runs, 1);

    store
        .set_run_token("run_1", Some("token-digest"))
        .await
        .unwrap();
    assert_eq!(
        store.run_by_token("token-digest").await.unwrap().id,
        "run_1"
    );

    let lines: Vec<OutputLine> = (1..=3)
        .map(|seq| OutputLine {
            seq,
            stream: "stdout".into(),
            at: at(14),
            text: format!("line {seq}"),
        })
        .collect();
    store.append_output("run_1", &lines).await.unwrap();
    store.append_output("run_1", &lines[1..]).await.unwrap();
    let read = store.output("run_1", 1, 10).await.unwrap();
    assert_eq!(
        read.iter().map(|l| l.text.as_str()).collect::<Vec<_>>(),
        ["line 2", "line 3"],
        "resent lines are stored once"
    );

    run.state = RunState::Failed;
    run.exit_code = Some(3);
    run.ended_at = Some(at(20));
    store
        .update_run(&run, Some(&transition(RunState::Failed, 20, "agent:pc-1")))
        .await
        .unwrap();
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
    assert_eq!(active, ["run_2", "run_3"]);
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
        ["run_2", "run_1"]
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

    let ghost = queued("run_9", "x", 1);
    assert!(matches!(
        store.update_run(&ghost, None).await.unwrap_err(),
        StoreError::NotFound
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
