//! The one integration-test binary: a module per area, sharing the harness.

mod cli;
mod conformance;
mod dashboard;
mod guard;
mod harness;
mod mcp;
mod multiprocess;
mod postgres;
mod server;
