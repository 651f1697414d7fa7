//! Starting real servers on sockets: the first administrator, and clear start-up errors.

use std::sync::Arc;

use dirigent_server::{StartError, clock::SystemClock};

use crate::support::config;

#[tokio::test]
async fn first_start_generates_the_admin_password_once() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("dirigent.db").display());
    let mut settings = config(url);
    settings.admin_password = None;

    let server = dirigent_server::start(settings.clone(), Arc::new(SystemClock))
        .await
        .unwrap();
    let password = server.generated_admin_password().unwrap().to_owned();
    assert_eq!(password.len(), 24);
    let store = dirigent_store::Store::open(settings.database_url.expose())
        .await
        .unwrap();
    let matched = dirigent_server::auth::check_login(&store, "admin", &password)
        .await
        .unwrap();
    assert!(matched.is_some(), "the printed password logs in");
    server.shutdown().await.unwrap();

    let server = dirigent_server::start(settings, Arc::new(SystemClock))
        .await
        .unwrap();
    assert_eq!(
        server.generated_admin_password(),
        None,
        "shown only on the first start"
    );
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_taken_port_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("dirigent.db").display());
    let first = dirigent_server::start(config(url.clone()), Arc::new(SystemClock))
        .await
        .unwrap();
    let mut settings = config(url);
    settings.listen = first.local_addr();
    let Err(err) = dirigent_server::start(settings, Arc::new(SystemClock)).await else {
        panic!("a second server on the same port must not start");
    };
    assert!(matches!(err, StartError::Listen { .. }), "{err}");
    assert!(
        err.to_string()
            .starts_with(&format!("cannot listen on {}", first.local_addr())),
        "{err}"
    );
    first.shutdown().await.unwrap();
}

#[tokio::test]
async fn an_unreachable_database_is_a_clear_error() {
    let settings = config("postgres://dirigent:secret@127.0.0.1:1/dirigent".to_owned());
    let Err(err) = dirigent_server::start(settings, Arc::new(SystemClock)).await else {
        panic!("no database, no server");
    };
    let message = err.to_string();
    assert!(
        message
            .starts_with("database postgres://dirigent:***@127.0.0.1:1/dirigent: cannot connect"),
        "{message}"
    );
    assert!(!message.contains("secret"), "{message}");
}
