//! The store's story suite: the same assertions on SQLite and on PostgreSQL.
//!
//! PostgreSQL tests connect to `DIRIGENT_TEST_PG_URL` (the test command `scripts/test` sets
//! it, starting a server when none runs) and work in a schema of their own, dropped at the end.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "a failed test should panic"
)]

mod accounts;
mod activities;
mod agents_and_runs;
mod backends;
mod logs;
mod queue_model;
mod queues;
mod retention;
mod robots;
mod triggers;
