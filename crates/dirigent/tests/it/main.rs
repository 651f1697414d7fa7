//! End-to-end tests of the `dirigent` binary: a real `dirigent serve` process on a free port
//! and the CLI talking to it, as a newcomer would use them.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "a failed test should panic"
)]
#![allow(
    clippy::disallowed_methods,
    reason = "these tests run the dirigent binary itself"
)]

mod activities;
mod agent_link;
mod browser;
mod cli;
mod lifecycle;
mod logs;
mod nodes;
mod panel;
mod queues;
mod serve;
mod sessions;
mod support;
mod tidy;
mod tls;
mod triggers;
