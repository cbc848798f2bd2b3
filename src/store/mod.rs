//! Everything that talks to PostgreSQL: pools, migrations, catalog queries, demo data
//! and the stock check.

pub mod campaigns;
pub mod carts;
pub mod catalog_repo;
pub mod check;
mod error;
pub mod inventory;
pub mod journal;
pub mod leases;
pub mod migrate;
pub mod orders;
pub mod pool;
pub mod purge;
pub mod queue;
pub mod seed;

pub use error::{is_transient, DbError};
pub use pool::Db;
