//! Activities (with the agent commands that carry them, their ends stored once, their output
//! and paging) and the orchestrator's switches, on both backends.

use dirigent_domain::activity::State;
use dirigent_store::{ActivityQuery, ActivityRecord, LogRecord, NewActivity, OutputOf};
use jiff::{SignedDuration, Timestamp};

use crate::{agents_and_runs::online_agent, backends::store_test};

fn at(seconds: i64) -> Timestamp {
    Timestamp::from_second(1_800_000_000 + seconds).unwrap()
}

pub(crate) fn record(id: &str, created: i64) -> ActivityRecord {
    ActivityRecord {
        id: id.to_owned(),
        parent: None,
        target: "server".to_owned(),
        agent_id: None,
        operation: "info".to_owned(),
        args: "{}".to_owned(),
        parallel: false,
        state: State::Queued,
        reason: None,
        result: None,
        timeout: SignedDuration::from_secs(60),
        requested_by: "admin".to_owned(),
        created_at: at(created),
        started_at: None,
        ended_at: None,
        command_id: None,
        node: Some("node-a".to_owned()),
    }
}

store_test!(activities_story, |store| {
    let agent = online_agent(&store, 4).await;
    // A fan-out and its child, whose command is queued for the agent in the same transaction.
    let parent = ActivityRecord {
        target: "os=linux".to_owned(),
        node: None,
        ..record("act_parent", 1)
    };
    let child = ActivityRecord {
        parent: Some("act_parent".to_owned()),
        target: "pc-1".to_owned(),
        agent_id: Some(agent),
        operation: "exec".to_owned(),
        node: None,
        ..record("act_child", 1)
    };
    store
        .insert_activities(&[
            NewActivity {
                record: parent,
                command: None,
            },
            NewActivity {
                record: child,
                command: Some(r#"{"op":"cancel_activity","id":"x"}"#.to_owned()),
            },
            NewActivity {
                record: record("act_server", 2),
                command: None,
            },
        ])
        .await
        .unwrap();
    let stored = store.activity("act_child").await.unwrap();
    let pending = store.pending_agent_commands(agent, 0).await.unwrap();
    assert_eq!(pending.len(), 1);
    assert_eq!(stored.command_id, Some(pending[0].0));
    assert_eq!(stored.deadline(), at(61));
    let children = store.activity_children("act_parent").await.unwrap();
    assert_eq!(
        children
            .iter()
            .map(|child| child.id.as_str())
            .collect::<Vec<_>>(),
        ["act_child"]
    );

    // Started once; ended once, whoever comes second finds it ended.
    assert!(
        store
            .start_activity("act_child", at(3), None)
            .await
            .unwrap()
    );
    assert!(
        !store
            .start_activity("act_child", at(4), None)
            .await
            .unwrap()
    );
    let ended = store
        .end_activity(
            "act_child",
            State::Succeeded,
            None,
            Some(r#"{"exit_code":0}"#),
            at(5),
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (ended.state, ended.started_at, ended.ended_at),
        (State::Succeeded, Some(at(3)), Some(at(5)))
    );
    assert_eq!(ended.result.as_deref(), Some(r#"{"exit_code":0}"#));
    assert!(
        store
            .end_activity("act_child", State::TimedOut, Some("late"), None, at(6))
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(
        store.activity("act_child").await.unwrap().state,
        State::Succeeded
    );
    assert_eq!(store.active_activities(Some(agent)).await.unwrap().len(), 0);
    assert_eq!(store.active_activities(None).await.unwrap().len(), 2);

    // Output sent twice is kept once.
    let line = |seq, text: &str| LogRecord {
        source: dirigent_domain::log::Source::Activity,
        run_id: None,
        robot: None,
        activity_id: Some("act_child".to_owned()),
        ..crate::logs::output_line("", seq, text, at(4))
    };
    store.add_logs(&[line(1, "a"), line(2, "b")]).await.unwrap();
    store.add_logs(&[line(2, "b"), line(3, "c")]).await.unwrap();
    let texts: Vec<String> = store
        .output(OutputOf::Activity("act_child"), 1, 10)
        .await
        .unwrap()
        .into_iter()
        .map(|line| line.text)
        .collect();
    assert_eq!(texts, ["b", "c"]);

    // Newest first, filtered, paged by the last id of the page before.
    for n in 0..5 {
        store
            .insert_activities(&[NewActivity {
                record: record(&format!("act_page{n}"), 10 + n),
                command: None,
            }])
            .await
            .unwrap();
    }
    let page = |before: Option<&'static str>| {
        let store = store.clone();
        async move {
            let query = ActivityQuery {
                operation: Some("info"),
                before,
                limit: 3,
                ..ActivityQuery::default()
            };
            store
                .activities(&query)
                .await
                .unwrap()
                .into_iter()
                .map(|activity| activity.id)
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(page(None).await, ["act_page4", "act_page3", "act_page2"]);
    assert_eq!(
        page(Some("act_page2")).await,
        ["act_page1", "act_page0", "act_server"]
    );
    let succeeded = ActivityQuery {
        state: Some(State::Succeeded),
        limit: 10,
        ..ActivityQuery::default()
    };
    assert_eq!(store.activities(&succeeded).await.unwrap().len(), 1);

    // Switches.
    assert!(store.switch("maintenance").await.unwrap().is_none());
    store
        .set_switch("maintenance", Some("patching"), "admin", at(7))
        .await
        .unwrap();
    let on = store.switch("maintenance").await.unwrap().unwrap();
    assert_eq!(
        (on.value.as_str(), on.changed_by.as_str(), on.changed_at),
        ("patching", "admin", at(7))
    );
    store
        .set_switch("maintenance", None, "admin", at(8))
        .await
        .unwrap();
    assert!(store.switch("maintenance").await.unwrap().is_none());
    let counts = store.counts().await.unwrap();
    assert_eq!((counts.agents, counts.agents_online), (1, 1));
});
