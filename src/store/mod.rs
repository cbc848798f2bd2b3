//! Everything that talks to PostgreSQL: pools, migrations, catalog queries, demo data
//! and the stock check.

pub mod carts;
pub mod catalog_repo;
pub mod check;
pub mod inventory;
pub mod journal;
pub mod leases;
pub mod migrate;
pub mod pool;
pub mod seed;

pub use pool::Db;
