//! Integration tests: real PostgreSQL, in-process servers on random ports.
//! One binary for all of them, so the suite links once.

mod admin;
mod bounded;
mod bus;
mod campaigns;
mod catalog;
mod catalog_sync;
mod cluster;
mod commerce;
mod common;
mod dashboards;
mod leases;
mod limits;
mod live;
mod liveness;
mod migrations;
mod nodes;
mod ops;
mod orders;
mod outcomes;
mod proxy;
mod queue;
mod rate_limits;
mod reports;
mod routes;
mod storefront;
mod tls;
mod writes;
