//! Opening a fresh store on each backend, and the `store_test!` macro that runs one story on
//! both; plus the tests of opening and migrating itself.

use std::str::FromStr;

use dirigent_store::{BackendKind, Store, StoreError};
use sqlx::{Connection, PgConnection, postgres::PgConnectOptions};

/// Defines `$name::sqlite` and `$name::postgres`, each running `$body` with a fresh store.
macro_rules! store_test {
    ($name:ident, |$store:ident| $body:block) => {
        mod $name {
            use super::*;

            #[tokio::test]
            async fn sqlite() {
                let (_dir, $store) = crate::backends::fresh_sqlite().await;
                $body
            }

            #[tokio::test]
            async fn postgres() {
                let schema = crate::backends::FreshSchema::create().await;
                let $store = schema.open().await;
                $body
                $store.close().await;
                schema.drop().await;
            }
        }
    };
}
pub(crate) use store_test;

pub(crate) async fn fresh_sqlite() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("dirigent.db").display());
    let store = Store::open(&url).await.unwrap();
    (dir, store)
}

pub(crate) fn pg_url() -> String {
    std::env::var("DIRIGENT_TEST_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

/// A schema of its own in the test database, so that tests run in parallel.
pub(crate) struct FreshSchema {
    name: String,
}

impl FreshSchema {
    pub(crate) async fn create() -> FreshSchema {
        let mut bytes = [0u8; 8];
        getrandom::fill(&mut bytes).unwrap();
        let name = format!("t_{}", u64::from_le_bytes(bytes));
        let mut conn = admin_connection().await;
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE SCHEMA {name}")))
            .execute(&mut conn)
            .await
            .unwrap();
        FreshSchema { name }
    }

    pub(crate) fn url(&self) -> String {
        let url = pg_url();
        let separator = if url.contains('?') { '&' } else { '?' };
        format!("{url}{separator}options=-c%20search_path%3D{}", self.name)
    }

    pub(crate) async fn open(&self) -> Store {
        Store::open(&self.url()).await.unwrap()
    }

    pub(crate) async fn drop(self) {
        let mut conn = admin_connection().await;
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "DROP SCHEMA {} CASCADE",
            self.name
        )))
        .execute(&mut conn)
        .await
        .unwrap();
    }
}

async fn admin_connection() -> PgConnection {
    let url = pg_url();
    let options = PgConnectOptions::from_str(&url).unwrap();
    PgConnection::connect_with(&options)
        .await
        .unwrap_or_else(|err| panic!("PostgreSQL at {url} is needed by the store tests: {err}"))
}

#[tokio::test]
async fn sqlite_file_is_created_in_wal_mode() {
    let (dir, store) = fresh_sqlite().await;
    assert_eq!(store.backend_kind(), BackendKind::Sqlite);
    store.ping().await.unwrap();
    assert!(dir.path().join("dirigent.db").exists());
    assert!(
        dir.path().join("dirigent.db-wal").exists(),
        "WAL journal expected"
    );
}

// Closing folds the write-ahead log into the file (the last connection to close does), so
// that a copy of the stopped server's database file holds everything, queue batches too.
#[tokio::test]
async fn closing_leaves_everything_in_the_database_file() {
    let (dir, store) = fresh_sqlite().await;
    store
        .create_queue("q", &Default::default(), jiff::Timestamp::UNIX_EPOCH)
        .await
        .unwrap();
    let add = dirigent_store::QueueOp::Add {
        queue: "q".to_owned(),
        items: vec![dirigent_store::NewItem {
            payload: "{}".to_owned(),
            reference: None,
            priority: Default::default(),
            deadline: None,
            postpone_until: None,
        }],
    };
    let mut session = store.write_session().await.unwrap();
    let applied = store
        .apply_queue_ops(
            &mut session,
            &[add],
            &[],
            |_, _| None,
            jiff::Timestamp::UNIX_EPOCH,
        )
        .await
        .unwrap();
    assert!(applied.answers[0].is_ok());
    drop(session);
    let wal = dir.path().join("dirigent.db-wal");
    assert!(wal.exists(), "the batch was written to the write-ahead log");
    store.close().await;
    assert!(!wal.exists(), "closing folded the log into the file");
}

#[tokio::test]
async fn reopening_applies_no_migration_twice() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("dirigent.db").display());
    let store = Store::open(&url).await.unwrap();
    store.close().await;
    let store = Store::open(&url).await.unwrap();
    store.ping().await.unwrap();
}

#[tokio::test]
async fn nodes_starting_together_on_one_postgres_do_not_race() {
    let schema = FreshSchema::create().await;
    let opening: Vec<_> = (0..6)
        .map(|_| {
            let url = schema.url();
            tokio::spawn(async move { Store::open(&url).await })
        })
        .collect();
    for handle in opening {
        let store = handle.await.unwrap().unwrap();
        assert_eq!(store.backend_kind(), BackendKind::Postgres);
        store.ping().await.unwrap();
        store.close().await;
    }
    schema.drop().await;
}

#[tokio::test]
async fn bad_urls_are_refused_with_a_reason() {
    let err = Store::open("mysql://localhost/x").await.unwrap_err();
    assert!(matches!(err, StoreError::InvalidUrl(_)), "{err}");
    let err = Store::open("postgres://postgres@127.0.0.1:1/test")
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Connect(_)), "{err}");
    let err = Store::open("sqlite:///nonexistent-dir/sub/dirigent.db")
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Connect(_)), "{err}");
}
