//! Surge's domain: a functional core of plain structs (money, stock accounting, carts)
//! and the actors that shell it (inventory shards, carts). IO sits behind the traits
//! in [`ports`], implemented by the `surge` crate on PostgreSQL.

pub mod cart;
pub mod cart_actor;
pub mod money;
pub mod order;
pub mod ports;
pub mod shard;
pub mod stock;
pub mod validated;
