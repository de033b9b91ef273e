//! sluice: a self-hosted LLM API gateway.
//!
//! The crate is one library plus the `sluice` binary. Modules are named for the
//! domain; dependencies point one way: routes (`api`, `relay`) → services
//! (`auth`, `billing`, `routing`, `ledger`, `cache`) → `store`.

pub mod api;
pub mod auth;
pub mod billing;
pub mod cache;
pub mod config;
pub mod ledger;
pub mod mock;
pub mod ratelimit;
pub mod relay;
pub mod routing;
pub mod server;
pub mod state;
pub mod store;
pub mod telemetry;
pub mod util;
