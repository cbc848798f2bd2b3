//! Surge's domain: a functional core of plain structs (money, stock accounting, carts,
//! the Journal's batch planner, the reaper's arithmetic) and the actors that shell it
//! (inventory shards, carts). IO sits behind traits: the Journal and the store's reads
//! in [`ports`], live updates in [`cart_actor::CartEvents`]; the `surge` crate
//! implements them.

pub mod campaign;
pub mod cart;
pub mod cart_actor;
pub mod journal_plan;
pub mod lru;
pub mod money;
pub mod order;
pub mod ports;
pub mod queue;
pub mod reaper;
pub mod refusals;
pub mod shard;
pub mod stock;
pub mod validated;
