//! The agent against a real WebSocket peer standing in for the server: what it does with
//! malformed, unexpected and repeated frames.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "a failed test should panic"
)]

mod link;
