//! Everything that talks to PostgreSQL: pools, migrations, catalog queries, demo data
//! and the stock check; and the TLS of the links to PostgreSQL and Redis.

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
pub mod reports;
pub mod seed;
pub mod tls;

pub use error::{is_transient, DbError};
pub use pool::Db;
