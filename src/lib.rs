//! modelfleet: a GraphQL API server that runs machine-learning models on
//! demand. See `README.md` for use and `../shared/DESIGN.md` for the design.
//!
//! | module | holds |
//! | --- | --- |
//! | [`app`] | building and running the server |
//! | [`auth`] | accounts, sessions, roles |
//! | [`cli`] | the command line |
//! | [`config`] | typed configuration |
//! | [`db`] | connection and migrations |
//! | [`graphql`] | the schema |
//! | [`http`] | routes and handlers |

pub mod app;
pub mod auth;
pub mod cli;
pub mod config;
pub mod db;
pub mod error;
pub mod fleet;
pub mod graphql;
pub mod http;
pub mod metrics;
pub mod models;
pub mod requests;
pub mod stats;
pub mod telemetry;
