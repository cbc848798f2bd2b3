//! `GET /ws`: the live socket. The protocol is transport-free (`protocol`); everything
//! that depends on the WebSocket library sits in `session`, so that moving from
//! actix-web-actors to actix-ws stays a change to that one module.

pub mod protocol;
pub mod session;
