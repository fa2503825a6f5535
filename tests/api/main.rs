//! Integration tests: the real server on a free port, over HTTP and
//! WebSocket, against SQLite and PostgreSQL.

#[macro_use]
mod support;

mod accounts;
mod admin_requests;
mod browser;
mod cli;
mod console;
mod database;
mod graphql_surface;
mod instances;
mod models;
mod permissions;
mod postgres_schema;
mod requests;
mod restart;
mod retention;
mod sessions;
mod stats;
mod stats_export;
mod websocket;
