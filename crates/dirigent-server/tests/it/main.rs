//! The server's integration tests: the API in process through `Router::oneshot`, and real
//! sockets where starting and stopping matter.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "a failed test should panic"
)]

mod access_matrix;
mod agent_link;
mod api_contract;
mod audit;
mod auth;
mod logs;
mod metrics;
mod panel;
mod queues;
mod robots;
mod startup;
mod support;
mod triggers;
mod users;
