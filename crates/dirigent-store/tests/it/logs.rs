//! The log store: one query over every source, the search language on each backend's index,
//! scopes, cursor paging under concurrent writes, an agent's records kept once.

use std::collections::BTreeSet;

use dirigent_domain::{
    log::{Level, Search, Source},
    run::RunState,
};
use dirigent_store::{LogQuery, LogRecord, LogScope, Store};
use jiff::Timestamp;

use crate::{
    agents_and_runs::{online_agent, queued, transition},
    backends::store_test,
};

fn at(seconds: i64) -> Timestamp {
    Timestamp::from_second(1_800_000_000 + seconds).unwrap()
}

/// A line of a run's output (of robot `invoices`, on `pc-1`).
pub(crate) fn output_line(run: &str, seq: u64, text: &str, when: Timestamp) -> LogRecord {
    LogRecord {
        id: 0,
        at: when,
        source: Source::Robot,
        level: Level::Info,
        robot: Some("invoices".to_owned()),
        run_id: Some(run.to_owned()),
        activity_id: None,
        agent: Some("pc-1".to_owned()),
        node: None,
        seq: Some(seq),
        stream: Some("stdout".to_owned()),
        fields: None,
        text: text.to_owned(),
    }
}

/// An agent's or the orchestrator's own record.
fn own(source: Source, level: Level, text: &str, when: Timestamp) -> LogRecord {
    LogRecord {
        source,
        level,
        robot: None,
        run_id: None,
        agent: (source == Source::Agent).then(|| "pc-1".to_owned()),
        node: (source == Source::Server).then(|| "node-a".to_owned()),
        seq: None,
        stream: None,
        ..output_line("", 0, text, when)
    }
}

async fn insert_run(store: &Store, id: &str, robot: &str) {
    store
        .insert_run(
            &queued(id, robot, 0),
            &transition(RunState::Queued, 0, "user:admin"),
            None,
        )
        .await
        .unwrap();
}

fn query<'a>(search: Option<&'a Search>) -> LogQuery<'a> {
    LogQuery {
        search,
        limit: 100,
        scope: LogScope::all(),
        ..LogQuery::default()
    }
}

async fn texts(store: &Store, query: &LogQuery<'_>) -> Vec<String> {
    let records = store.logs(query).await.unwrap();
    records.into_iter().map(|record| record.text).collect()
}

store_test!(one_query_over_every_source, |store| {
    insert_run(&store, "run_1", "invoices").await;
    insert_run(&store, "run_2", "hr-payroll").await;
    let mut booked = output_line("run_1", 2, "booked invoice", at(2));
    booked.level = Level::Warn;
    booked.fields = Some(
        serde_json::json!({"invoice": "INV-0042", "trace": "File x\nKeyError: 'due'"}).to_string(),
    );
    store
        .add_logs(&[
            output_line("run_1", 1, "portal timeout while logging in", at(1)),
            booked,
            LogRecord {
                robot: Some("hr-payroll".to_owned()),
                ..output_line("run_2", 1, "payroll timeout", at(3))
            },
            own(
                Source::Agent,
                Level::Info,
                "connection timeout to server",
                at(4),
            ),
            own(Source::Server, Level::Error, "database timeout", at(5)),
        ])
        .await
        .unwrap();

    let timeout = Search::parse("timeout").unwrap();
    assert_eq!(
        texts(&store, &query(Some(&timeout))).await,
        [
            "database timeout",
            "connection timeout to server",
            "payroll timeout",
            "portal timeout while logging in"
        ],
        "newest first, from every source"
    );
    let oldest_first = LogQuery {
        oldest_first: true,
        limit: 2,
        ..query(Some(&timeout))
    };
    assert_eq!(
        texts(&store, &oldest_first).await,
        ["portal timeout while logging in", "payroll timeout"]
    );

    // Fields are searched too; a prefix, a phrase, an alternative, an exclusion.
    for (q, expected) in [
        ("inv 0042", vec!["booked invoice"]),
        ("keyerror", vec!["booked invoice"]),
        ("inv*", vec!["booked invoice"]),
        ("\"timeout while\"", vec!["portal timeout while logging in"]),
        ("\"while timeout\"", vec![]),
        (
            "payroll OR database",
            vec!["database timeout", "payroll timeout"],
        ),
        (
            "timeout -portal -connection",
            vec!["database timeout", "payroll timeout"],
        ),
    ] {
        let search = Search::parse(q).unwrap();
        assert_eq!(texts(&store, &query(Some(&search))).await, expected, "{q}");
    }

    // Filters: source, level and above, robot, run, agent, time.
    let warn_and_above = LogQuery {
        level: Some(Level::Warn),
        ..query(None)
    };
    assert_eq!(
        texts(&store, &warn_and_above).await,
        ["database timeout", "booked invoice"]
    );
    let sources = [Source::Agent, Source::Server];
    let own_only = LogQuery {
        sources: &sources,
        ..query(None)
    };
    assert_eq!(texts(&store, &own_only).await.len(), 2);
    let of_run = LogQuery {
        run_id: Some("run_1"),
        ..query(None)
    };
    assert_eq!(texts(&store, &of_run).await.len(), 2);
    let in_time = LogQuery {
        since: Some(at(2)),
        until: Some(at(4)),
        ..query(Some(&timeout))
    };
    assert_eq!(texts(&store, &in_time).await, ["payroll timeout"]);
    // A record that comes late (an agent's journal after an outage) is found in its hour.
    store
        .add_logs(&[own(Source::Agent, Level::Info, "late timeout", at(-7200))])
        .await
        .unwrap();
    let hours_ago = LogQuery {
        since: Some(at(-7300)),
        until: Some(at(-7100)),
        ..query(Some(&timeout))
    };
    assert_eq!(texts(&store, &hours_ago).await, ["late timeout"]);
    let none_then = LogQuery {
        since: Some(at(-90_000)),
        until: Some(at(-80_000)),
        ..query(None)
    };
    assert!(texts(&store, &none_then).await.is_empty());
    let of_agent = LogQuery {
        agent: Some("pc-1"),
        robot: Some("invoices"),
        ..query(None)
    };
    assert_eq!(texts(&store, &of_agent).await.len(), 2);

    // A scope: robots by pattern only, nothing else.
    let scoped = LogQuery {
        scope: LogScope {
            robots: Some(vec!["hr-*".to_owned()]),
            ..LogScope::default()
        },
        ..query(Some(&timeout))
    };
    assert_eq!(texts(&store, &scoped).await, ["payroll timeout"]);
    let no_robot = LogQuery {
        scope: LogScope {
            robots: Some(Vec::new()),
            server: true,
            ..LogScope::default()
        },
        ..query(Some(&timeout))
    };
    assert_eq!(texts(&store, &no_robot).await, ["database timeout"]);
    // `_` and `%` in a pattern are themselves, not wildcards.
    let literal = LogQuery {
        scope: LogScope {
            robots: Some(vec!["hr_payroll".to_owned(), "%".to_owned()]),
            ..LogScope::default()
        },
        ..query(None)
    };
    assert!(texts(&store, &literal).await.is_empty());

    // A record goes with its run.
    let mut run = store.run("run_2").await.unwrap();
    run.state = RunState::Failed;
    run.ended_at = Some(at(9));
    store
        .update_run(
            &mut run,
            Some(&transition(RunState::Failed, 9, "agent:pc-1")),
        )
        .await
        .unwrap();
    let cutoffs = dirigent_store::Cutoffs {
        runs: Some(at(3600 * 24 * 400)),
        ..dirigent_store::Cutoffs::default()
    };
    store.prune(&cutoffs).await.unwrap();
    assert_eq!(texts(&store, &query(Some(&timeout))).await.len(), 4);
});

store_test!(
    paging_never_skips_or_repeats_under_concurrent_writes,
    |store| {
        let first: Vec<LogRecord> = (0..300)
            .map(|i| own(Source::Server, Level::Info, &format!("tick {i}"), at(i)))
            .collect();
        store.add_logs(&first).await.unwrap();
        let writer = {
            let store = store.clone();
            tokio::spawn(async move {
                for batch in 0..20 {
                    let more: Vec<LogRecord> = (0..10)
                        .map(|i| {
                            own(
                                Source::Server,
                                Level::Info,
                                &format!("late {batch} {i}"),
                                at(500),
                            )
                        })
                        .collect();
                    store.add_logs(&more).await.unwrap();
                    tokio::task::yield_now().await;
                }
            })
        };
        let tick = Search::parse("tick").unwrap();
        let mut seen = Vec::new();
        let mut cursor = None;
        loop {
            let page = store
                .logs(&LogQuery {
                    cursor,
                    limit: 7,
                    ..query(Some(&tick))
                })
                .await
                .unwrap();
            seen.extend(page.iter().map(|record| record.id));
            if page.len() < 7 {
                break;
            }
            cursor = page.last().map(|record| record.id);
        }
        writer.await.unwrap();
        assert_eq!(seen.len(), 300, "every record once");
        assert!(
            seen.windows(2).all(|w| w[1] < w[0]),
            "newest first, no repeat"
        );

        // Oldest first to the end takes in what was written meanwhile, in order.
        let mut seen = Vec::new();
        let mut cursor = None;
        loop {
            let page = store
                .logs(&LogQuery {
                    cursor,
                    limit: 64,
                    oldest_first: true,
                    ..query(None)
                })
                .await
                .unwrap();
            seen.extend(page.iter().map(|record| record.id));
            if page.len() < 64 {
                break;
            }
            cursor = page.last().map(|record| record.id);
        }
        assert_eq!(seen.len(), 500);
        assert_eq!(seen.iter().collect::<BTreeSet<_>>().len(), 500);
        assert!(seen.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(store.last_log_id().await.unwrap(), *seen.last().unwrap());
    }
);

store_test!(
    an_agents_records_are_kept_once_however_often_sent,
    |store| {
        let agent = online_agent(&store, 1).await;
        let records = [own(Source::Agent, Level::Warn, "disk almost full", at(1))];
        store.add_agent_logs(agent, 5, &records).await.unwrap();
        store.add_agent_logs(agent, 5, &records).await.unwrap();
        store.add_agent_logs(agent, 4, &records).await.unwrap();
        assert_eq!(texts(&store, &query(None)).await, ["disk almost full"]);
        store.add_agent_logs(agent, 6, &records).await.unwrap();
        assert_eq!(texts(&store, &query(None)).await.len(), 2);
    }
);
