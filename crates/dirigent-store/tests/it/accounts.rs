//! Users, sessions and API tokens, on both backends.

use dirigent_store::{CredentialKind, NewApiToken, StoreError};
use jiff::Timestamp;

use crate::backends::store_test;

fn at(seconds: i64) -> Timestamp {
    Timestamp::from_second(1_800_000_000 + seconds).unwrap()
}

fn roles(names: &[&str]) -> Vec<String> {
    names.iter().map(|name| (*name).to_owned()).collect()
}

store_test!(first_user_is_created_once, |store| {
    assert!(!store.has_users().await.unwrap());
    assert!(
        store
            .create_first_user("admin", "hash-1", &roles(&["admin"]), at(0))
            .await
            .unwrap()
    );
    assert!(
        !store
            .create_first_user("admin", "hash-2", &roles(&["admin"]), at(1))
            .await
            .unwrap()
    );
    assert!(
        !store
            .create_first_user("other", "hash-3", &roles(&["admin"]), at(1))
            .await
            .unwrap()
    );
    assert!(store.has_users().await.unwrap());
    let record = store.login_record("admin").await.unwrap();
    assert_eq!(record.password_hash, "hash-1");
    assert_eq!(record.roles, ["admin"]);
    assert!(!record.disabled);
    assert!(matches!(
        store.login_record("other").await.unwrap_err(),
        StoreError::NotFound
    ));
});

store_test!(sessions_story, |store| {
    let alice = store
        .insert_user("alice", "h", &roles(&["viewer", "operator"]), at(0))
        .await
        .unwrap();
    let err = store
        .insert_user("alice", "h", &roles(&[]), at(0))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Conflict), "{err}");

    store
        .insert_session(alice, "digest-a", at(1), at(100))
        .await
        .unwrap();
    let credential = store.session_credential("digest-a").await.unwrap();
    assert_eq!(credential.user_id, alice);
    assert_eq!(credential.username, "alice");
    assert_eq!(credential.roles, ["viewer", "operator"]);
    assert_eq!(credential.kind, CredentialKind::Session);
    assert_eq!(credential.expires_at, Some(at(100)));
    assert!(matches!(
        store.session_credential("digest-b").await.unwrap_err(),
        StoreError::NotFound
    ));

    store
        .insert_session(alice, "digest-old", at(1), at(50))
        .await
        .unwrap();
    assert_eq!(store.delete_expired_sessions(at(60)).await.unwrap(), 1);
    assert!(store.session_credential("digest-a").await.is_ok());

    store.delete_session("digest-a").await.unwrap();
    assert!(matches!(
        store.session_credential("digest-a").await.unwrap_err(),
        StoreError::NotFound
    ));
    assert!(matches!(
        store.delete_session("digest-a").await.unwrap_err(),
        StoreError::NotFound
    ));
});

store_test!(api_tokens_story, |store| {
    let bob = store
        .insert_user("bob", "h", &roles(&["developer"]), at(0))
        .await
        .unwrap();
    let carol = store
        .insert_user("carol", "h", &roles(&["viewer"]), at(0))
        .await
        .unwrap();
    let token = |id: &str, name: &str, expires_at| NewApiToken {
        id: id.to_owned(),
        name: name.to_owned(),
        token_hash: format!("digest-{id}"),
        expires_at,
        permissions: (id == "t2").then(|| "[]".to_owned()),
    };

    store
        .insert_api_token(bob, &token("t1", "ci", None), at(1))
        .await
        .unwrap();
    store
        .insert_api_token(bob, &token("t2", "deploy", Some(at(500))), at(2))
        .await
        .unwrap();
    let err = store
        .insert_api_token(bob, &token("t3", "ci", None), at(3))
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::Conflict),
        "a live name is unique per user: {err}"
    );
    store
        .insert_api_token(carol, &token("t4", "ci", None), at(3))
        .await
        .unwrap();

    let listed = store.api_tokens(bob).await.unwrap();
    let names: Vec<&str> = listed.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["ci", "deploy"]);
    assert_eq!(listed[1].expires_at, Some(at(500)));

    let credential = store.api_token_credential("digest-t1").await.unwrap();
    assert_eq!(credential.username, "bob");
    assert_eq!(
        credential.kind,
        CredentialKind::ApiToken { id: "t1".into() }
    );
    assert_eq!(credential.last_used_at, None);
    assert_eq!(credential.token_permissions, None);
    assert_eq!(
        store
            .api_token_credential("digest-t2")
            .await
            .unwrap()
            .token_permissions
            .as_deref(),
        Some("[]")
    );
    store.touch_api_token("t1", at(7)).await.unwrap();
    assert_eq!(
        store
            .api_token_credential("digest-t1")
            .await
            .unwrap()
            .last_used_at,
        Some(at(7))
    );

    let err = store
        .revoke_api_token(carol, "t1", at(8))
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::NotFound),
        "only the owner revokes: {err}"
    );
    store.revoke_api_token(bob, "t1", at(8)).await.unwrap();
    assert!(matches!(
        store.api_token_credential("digest-t1").await.unwrap_err(),
        StoreError::NotFound
    ));
    assert!(matches!(
        store.revoke_api_token(bob, "t1", at(9)).await.unwrap_err(),
        StoreError::NotFound
    ));
    store
        .insert_api_token(bob, &token("t5", "ci", None), at(10))
        .await
        .unwrap();
    assert_eq!(store.api_tokens(bob).await.unwrap().len(), 2);
});

store_test!(audit_story, |store| {
    use dirigent_store::{AuditQuery, AuditRecord};
    let record = |actor: &str, outcome: &str, seconds: i64| AuditRecord {
        id: 0,
        at: at(seconds),
        actor: actor.to_owned(),
        action: "POST /api/v1/robots".to_owned(),
        target: "/api/v1/robots".to_owned(),
        address: "127.0.0.1".to_owned(),
        outcome: outcome.to_owned(),
        status: if outcome == "denied" { 403 } else { 201 },
        resources: vec![format!("robot:{actor}_x"), "robot:hr-b".to_owned()],
        changes: (outcome == "allowed").then(|| r#"{"argv":[["a"],["b"]]}"#.to_owned()),
    };
    store
        .insert_audit(&[record("user:alice", "allowed", 1)])
        .await
        .unwrap();
    // Several in one transaction keep their order.
    store
        .insert_audit(&[
            record("user:bob", "denied", 2),
            record("user:alice", "denied", 3),
        ])
        .await
        .unwrap();

    // By resource: a whole item of the list, `_` and `%` taken as themselves.
    let about = |resource: &'static str| {
        let store = store.clone();
        async move {
            let query = AuditQuery {
                resource: Some(resource),
                limit: 10,
                ..AuditQuery::default()
            };
            store.audit(&query).await.unwrap().len()
        }
    };
    assert_eq!(about("robot:hr-b").await, 3);
    assert_eq!(about("robot:user:bob_x").await, 1);
    assert_eq!(about("robot:user:bob%").await, 0);
    assert_eq!(about("robot:user:bobxx").await, 0);
    assert_eq!(about("robot:hr").await, 0);

    let all = store
        .audit(&AuditQuery {
            limit: 10,
            ..AuditQuery::default()
        })
        .await
        .unwrap();
    assert_eq!(
        all.iter().map(|r| r.at).collect::<Vec<_>>(),
        [at(3), at(2), at(1)],
        "newest first"
    );
    assert_eq!(all[2].changes.as_deref(), Some(r#"{"argv":[["a"],["b"]]}"#));
    assert_eq!(all[0].changes, None);
    let alice = store
        .audit(&AuditQuery {
            actor: Some("user:alice"),
            limit: 10,
            ..AuditQuery::default()
        })
        .await
        .unwrap();
    assert_eq!(alice.len(), 2);
    let denied = store
        .audit(&AuditQuery {
            outcome: Some("denied"),
            limit: 10,
            ..AuditQuery::default()
        })
        .await
        .unwrap();
    assert_eq!(
        denied.iter().map(|r| r.actor.as_str()).collect::<Vec<_>>(),
        ["user:alice", "user:bob"]
    );
    let page = store
        .audit(&AuditQuery {
            before_id: Some(all[1].id),
            limit: 10,
            ..AuditQuery::default()
        })
        .await
        .unwrap();
    assert_eq!(page.len(), 1);
    let recent = store
        .audit(&AuditQuery {
            since: Some(at(2)),
            limit: 10,
            ..AuditQuery::default()
        })
        .await
        .unwrap();
    assert_eq!(recent.len(), 2);
    assert_eq!(all[0].status, 403);
});

store_test!(users_and_roles_story, |store| {
    use dirigent_store::RoleRecord;
    let carol = store
        .insert_user("carol", "h1", &roles(&["viewer"]), at(0))
        .await
        .unwrap();
    store
        .insert_user("dave", "h1", &roles(&["operator"]), at(0))
        .await
        .unwrap();
    store
        .insert_session(carol, "s1", at(1), at(100))
        .await
        .unwrap();
    store
        .insert_session(carol, "s2", at(1), at(100))
        .await
        .unwrap();

    let names: Vec<String> = store
        .users()
        .await
        .unwrap()
        .into_iter()
        .map(|u| u.username)
        .collect();
    assert_eq!(names, ["carol", "dave"]);
    store
        .update_user("carol", Some(&roles(&["developer"])), None, None, at(2))
        .await
        .unwrap();
    let read = store.user("carol").await.unwrap();
    assert_eq!(
        (read.roles.clone(), read.disabled, read.updated_at),
        (roles(&["developer"]), false, at(2))
    );
    assert!(
        store.session_credential("s1").await.is_ok(),
        "a change of roles keeps sessions"
    );

    store
        .update_user("carol", None, None, Some("h2"), at(3))
        .await
        .unwrap();
    assert_eq!(
        store.login_record("carol").await.unwrap().password_hash,
        "h2"
    );
    assert!(
        matches!(
            store.session_credential("s1").await.unwrap_err(),
            StoreError::NotFound
        ),
        "a new password ends sessions"
    );

    store
        .insert_session(carol, "s3", at(4), at(100))
        .await
        .unwrap();
    store
        .update_user("carol", None, Some(true), None, at(5))
        .await
        .unwrap();
    assert!(store.user("carol").await.unwrap().disabled);
    assert!(matches!(
        store.session_credential("s3").await.unwrap_err(),
        StoreError::NotFound
    ));
    assert!(matches!(
        store
            .update_user("nobody", None, Some(true), None, at(5))
            .await
            .unwrap_err(),
        StoreError::NotFound
    ));

    store
        .insert_session(carol, "s4", at(6), at(100))
        .await
        .unwrap();
    assert_eq!(store.delete_user_sessions(carol).await.unwrap(), 1);
    store.delete_user("dave").await.unwrap();
    assert!(matches!(
        store.delete_user("dave").await.unwrap_err(),
        StoreError::NotFound
    ));

    let role = RoleRecord {
        name: "finance-operator".into(),
        description: "runs finance robots".into(),
        permissions: "[]".into(),
        created_at: at(7),
    };
    store.insert_role(&role).await.unwrap();
    assert!(matches!(
        store.insert_role(&role).await.unwrap_err(),
        StoreError::Conflict
    ));
    assert_eq!(store.role("finance-operator").await.unwrap(), role);
    assert_eq!(store.roles().await.unwrap().len(), 1);
    store.delete_role("finance-operator").await.unwrap();
    assert!(matches!(
        store.role("finance-operator").await.unwrap_err(),
        StoreError::NotFound
    ));
});
