//! The server's integration tests: the API in process through `Router::oneshot`, and real
//! sockets where starting and stopping matter.

mod api_contract;
mod auth;
mod robots;
mod startup;
mod support;
