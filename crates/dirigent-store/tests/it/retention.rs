//! Retention: what is old goes, in batches, and nothing of an active run, on both backends.

use dirigent_domain::log::Source;
use dirigent_domain::run::RunState;
use dirigent_store::{AuditRecord, Cutoffs, LogRecord, OutputOf};
use jiff::Timestamp;

use crate::{
    agents_and_runs::{queued, transition},
    backends::store_test,
};

fn day(n: i64) -> Timestamp {
    Timestamp::from_second(1_800_000_000 + n * 86_400).unwrap()
}

fn lines(run: &str, count: u64, bytes: usize, when: Timestamp) -> Vec<LogRecord> {
    (1..=count)
        .map(|seq| crate::logs::output_line(run, seq, &"x".repeat(bytes), when))
        .collect()
}

fn audit(at: Timestamp) -> AuditRecord {
    AuditRecord {
        id: 0,
        at,
        actor: "user:admin".to_owned(),
        action: "POST /api/v1/runs".to_owned(),
        target: "/api/v1/runs".to_owned(),
        address: "127.0.0.1".to_owned(),
        outcome: "allowed".to_owned(),
        status: 201,
        resources: Vec::new(),
        changes: None,
    }
}

store_test!(retention_story, |store| {
    // An old ended run, an old run still running, a recent ended run.
    for (id, created) in [("run_old", 1), ("run_active", 1), ("run_new", 99)] {
        let mut run = queued(id, "invoices", 0);
        run.created_at = day(created);
        store
            .insert_run(&run, &transition(RunState::Queued, 0, "user:admin"), None)
            .await
            .unwrap();
    }
    for (id, state, ended) in [
        ("run_old", RunState::Failed, Some(day(2))),
        ("run_active", RunState::Running, None),
        ("run_new", RunState::Failed, Some(day(100))),
    ] {
        let mut run = store.run(id).await.unwrap();
        run.state = state;
        run.ended_at = ended;
        store
            .update_run(&mut run, Some(&transition(state, 1, "agent:pc-1")))
            .await
            .unwrap();
    }
    store
        .add_logs(&lines("run_old", 3, 10, day(1)))
        .await
        .unwrap();
    store
        .add_logs(&lines("run_active", 2, 500, day(1)))
        .await
        .unwrap();
    store
        .add_logs(&lines("run_new", 3, 500, day(99)))
        .await
        .unwrap();
    store
        .insert_audit(&[audit(day(1)), audit(day(100))])
        .await
        .unwrap();

    let cutoffs = Cutoffs {
        runs: Some(day(50)),
        audit: Some(day(50)),
        ..Cutoffs::default()
    };
    let pruned = store.prune(&cutoffs).await.unwrap();
    assert_eq!((pruned.runs, pruned.audit), (1, 1));
    assert!(store.run("run_old").await.is_err());
    assert!(
        store
            .output(OutputOf::Run("run_old"), 0, 10)
            .await
            .unwrap()
            .is_empty(),
        "its output went with it"
    );
    assert_eq!(
        store.run("run_active").await.unwrap().state,
        RunState::Running,
        "an active run stays"
    );
    assert!(store.run_transitions("run_old").await.unwrap().is_empty());

    // Over the output cap, the oldest ended runs' output goes; an active run's stays.
    let capped = Cutoffs {
        output_max_bytes: Some(1200),
        ..Cutoffs::default()
    };
    assert_eq!(store.prune(&capped).await.unwrap().outputs, 1);
    assert!(
        store
            .output(OutputOf::Run("run_new"), 0, 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        store
            .output(OutputOf::Run("run_active"), 0, 10)
            .await
            .unwrap()
            .len(),
        2
    );
    let tight = Cutoffs {
        output_max_bytes: Some(10),
        ..Cutoffs::default()
    };
    assert_eq!(
        store.prune(&tight).await.unwrap().outputs,
        0,
        "nothing ended is left to cut"
    );
    assert_eq!(
        store
            .output(OutputOf::Run("run_active"), 0, 10)
            .await
            .unwrap()
            .len(),
        2
    );

    let kept = store.kept().await.unwrap();
    let count = |kind: &str| kept.iter().find(|kept| kept.kind == kind).unwrap().count;
    assert_eq!(count("runs"), 2);
    assert_eq!(count("run_output_lines"), 2);
    assert_eq!(count("run_output_bytes"), 1000);
    assert_eq!(count("audit_records"), 1);
    let oldest_audit = kept
        .iter()
        .find(|kept| kept.kind == "audit_records")
        .unwrap()
        .oldest;
    assert_eq!(oldest_audit, Some(day(100)));
});

store_test!(own_logs_go_by_age_and_by_size, |store| {
    let record = |source: Source, when: Timestamp, bytes: usize| LogRecord {
        source,
        run_id: None,
        robot: None,
        seq: None,
        ..crate::logs::output_line("", 0, &"y".repeat(bytes), when)
    };
    store
        .add_logs(&[
            record(Source::Agent, day(1), 100),
            record(Source::Agent, day(60), 100),
            record(Source::Agent, day(61), 100),
            record(Source::Server, day(1), 100),
            record(Source::Server, day(60), 100),
        ])
        .await
        .unwrap();
    let pruned = store
        .prune(&Cutoffs {
            agent_logs: Some(day(30)),
            agent_logs_max_bytes: Some(150),
            server_logs_max_bytes: Some(100),
            ..Cutoffs::default()
        })
        .await
        .unwrap();
    assert_eq!((pruned.agent_logs, pruned.server_logs), (2, 1));
    let kept = store.kept().await.unwrap();
    let kept = |kind: &str| {
        kept.iter()
            .find(|kept| kept.kind == kind)
            .map(|kept| (kept.count, kept.oldest))
            .unwrap()
    };
    assert_eq!(kept("agent_log_records"), (1, Some(day(61))));
    assert_eq!(kept("server_log_records"), (1, Some(day(60))));
});

store_test!(
    ended_activities_output_goes_beyond_its_cap_an_active_ones_stays,
    |store| {
        use dirigent_domain::activity::State;
        use dirigent_store::NewActivity;
        for id in ["act_ended", "act_running"] {
            store
                .insert_activities(&[NewActivity {
                    record: crate::activities::record(id, 1),
                    command: None,
                }])
                .await
                .unwrap();
        }
        store
            .end_activity("act_ended", State::Succeeded, None, None, day(2))
            .await
            .unwrap();
        let output = |id: &str| -> Vec<LogRecord> {
            (1..=3)
                .map(|seq| LogRecord {
                    source: Source::Activity,
                    run_id: None,
                    robot: None,
                    activity_id: Some(id.to_owned()),
                    ..crate::logs::output_line("", seq, &"z".repeat(100), day(1))
                })
                .collect()
        };
        store.add_logs(&output("act_ended")).await.unwrap();
        store.add_logs(&output("act_running")).await.unwrap();
        let pruned = store
            .prune(&Cutoffs {
                activity_output_max_bytes: Some(1),
                ..Cutoffs::default()
            })
            .await
            .unwrap();
        assert_eq!(pruned.activity_output, 3);
        assert!(
            store
                .output(OutputOf::Activity("act_ended"), 0, 10)
                .await
                .unwrap()
                .is_empty()
        );
        assert_eq!(
            store
                .output(OutputOf::Activity("act_running"), 0, 10)
                .await
                .unwrap()
                .len(),
            3,
            "a running activity's output stays"
        );
    }
);
