//! Changes that reach past one repository: each writes PostgreSQL through `store`,
//! then brings this node's memory, its shards and the shoppers' screens up to date.
//! Handlers call these and only parse and answer.

pub mod orders;
pub mod restock;
