//! Wire types of Dirigent's HTTP API: the JSON bodies that the server, the agent, the CLI and
//! the SDK exchange, and the stable error codes.
//!
//! **API Boundary.** Everything here is serialized; a change is a change of the public API.
//! Domain types never derive `Serialize`: the server converts them to and from these types at
//! the edge.

pub mod activity;
pub mod agent;
pub mod auth;
pub mod error;
pub mod link;
pub mod log;
pub mod queue;
pub mod retention;
pub mod robot;
pub mod run;
pub mod session;
pub mod trigger;
