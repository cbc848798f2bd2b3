//! Integration tests: real PostgreSQL, in-process servers on random ports.
//! One binary for all of them, so the suite links once.

mod admin;
mod bus;
mod catalog;
mod catalog_sync;
mod commerce;
mod common;
mod live;
mod migrations;
mod nodes;
mod ops;
mod proxy;
mod routes;
mod storefront;
