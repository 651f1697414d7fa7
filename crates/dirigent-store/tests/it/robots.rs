//! Robot definitions: create, read, replace, delete, on both backends.

use dirigent_domain::robot::{RestartPolicy, RobotDraft};
use dirigent_store::StoreError;
use jiff::Timestamp;

use crate::backends::store_test;

fn definition(name: &str) -> dirigent_domain::robot::RobotDefinition {
    RobotDraft {
        name: name.to_owned(),
        argv: vec!["python3".into(), "-u".into(), "bot.py".into()],
        env: Some([("MODE".into(), "prod".into())].into()),
        agent: Some("os=linux,site=berlin".into()),
        max_duration_seconds: Some(600),
        restart_policy: Some(RestartPolicy::OnFailure),
        needs_display: Some(true),
        ..RobotDraft::default()
    }
    .validate()
    .unwrap()
}

fn at(seconds: i64) -> Timestamp {
    Timestamp::from_second(1_800_000_000 + seconds).unwrap()
}

store_test!(robot_story, |store| {
    assert!(store.robots().await.unwrap().is_empty());

    let created = store
        .insert_robot(&definition("invoices"), at(0))
        .await
        .unwrap();
    store
        .insert_robot(&definition("archive"), at(1))
        .await
        .unwrap();
    let err = store
        .insert_robot(&definition("invoices"), at(2))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Conflict), "{err}");

    let read = store.robot("invoices").await.unwrap();
    assert_eq!(read, created);
    assert_eq!(read.created_at, at(0));

    let names: Vec<String> = store
        .robots()
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.definition.name.to_string())
        .collect();
    assert_eq!(names, ["archive", "invoices"]);

    let mut changed = definition("invoices");
    changed.argv = vec!["sh".into(), "-c".into(), "echo hi".into()];
    changed.working_dir = Some("/srv/robots".into());
    changed.max_duration_seconds = None;
    let replaced = store.replace_robot(&changed, at(10)).await.unwrap();
    assert_eq!(replaced.created_at, at(0));
    assert_eq!(replaced.updated_at, at(10));
    assert_eq!(store.robot("invoices").await.unwrap(), replaced);

    let err = store
        .replace_robot(&definition("missing"), at(11))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::NotFound), "{err}");

    store.delete_robot("invoices").await.unwrap();
    assert!(matches!(
        store.robot("invoices").await.unwrap_err(),
        StoreError::NotFound
    ));
    assert!(matches!(
        store.delete_robot("invoices").await.unwrap_err(),
        StoreError::NotFound
    ));
    assert_eq!(store.robots().await.unwrap().len(), 1);
});
