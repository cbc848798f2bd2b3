//! Surge: a real-time commerce server. Carts and stock live in actors, every
//! acknowledgement is durable in PostgreSQL, and shoppers see changes live.
//!
//! The binary (`src/main.rs`) only calls [`cli::main`]; everything else is here so
//! that integration tests can start a node in-process.

pub mod assets;
pub mod catalog;
pub mod cli;
pub mod client_ip;
pub mod commerce;
pub mod config;
pub mod error;
pub mod http;
pub mod live;
pub mod openapi;
pub mod rate_limit;
pub mod secret;
pub mod server;
pub mod session;
pub mod session_cookie;
pub mod state;
pub mod store;
pub mod telemetry;
pub mod views;
pub mod ws;
