//! Dirigent's domain: what robots, users and permissions are, and the rules about them.
//!
//! **Architecture Invariant.** This crate does no IO, spawns nothing and never reads the
//! clock: every function that depends on time takes `now` as an argument. That keeps the rules
//! testable with plain values and lets every caller (server, store, tests) share them.

pub mod access;
pub mod activity;
pub mod agent;
pub mod log;
pub mod queue;
pub mod robot;
pub mod run;
pub mod schedule;
pub mod session;
pub mod user;

use std::fmt;

/// Input that breaks a rule, naming the field at fault (a path such as `crash_loop.max_starts`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct InvalidField {
    pub field: String,
    pub reason: String,
}

impl InvalidField {
    pub fn new(field: impl Into<String>, reason: impl fmt::Display) -> InvalidField {
        InvalidField {
            field: field.into(),
            reason: reason.to_string(),
        }
    }
}
