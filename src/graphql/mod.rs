//! The GraphQL schema: roots, guards and shared types.
//!
//! Resolvers get the caller from request data: an `Arc<Session>` when a
//! valid bearer token came with the request (absent otherwise), the
//! [`ClientAddr`], and the [`BearerToken`] itself.

mod account;
mod all_requests;
mod codes;
mod guard;
mod instances;
mod models;
mod nodes;
mod pagination;
mod requests;
mod stats;
mod users;

use std::net::IpAddr;

use async_graphql::{MergedObject, MergedSubscription, Schema, SchemaBuilder};

pub use guard::{RequirePermission, RequireSession, RequireUser};
pub use instances::EventsLoader;
pub use models::ModelLoader;

use crate::config::GraphqlConfig;

#[derive(MergedObject, Default)]
pub struct Query(
    account::AccountQuery,
    all_requests::AllRequestsQuery,
    instances::InstancesQuery,
    models::ModelsQuery,
    nodes::NodesQuery,
    requests::RequestsQuery,
    stats::StatsQuery,
    users::UsersQuery,
);

#[derive(MergedObject, Default)]
pub struct Mutation(
    account::AccountMutation,
    instances::InstancesMutation,
    models::ModelsMutation,
    requests::RequestsMutation,
    users::UsersMutation,
);

#[derive(MergedSubscription, Default)]
pub struct Subscription(
    account::AccountSubscription,
    instances::InstancesSubscription,
    nodes::NodesSubscription,
    requests::RequestsSubscription,
);

pub type AppSchema = Schema<Query, Mutation, Subscription>;

/// The caller's network address, after `server.trust_forwarded_for`.
#[derive(Debug, Clone, Copy)]
pub struct ClientAddr(pub IpAddr);

/// The bearer token the request was made with.
#[derive(Debug, Clone)]
pub struct BearerToken(pub String);

/// The schema with its limits, before request-independent data is added.
pub fn builder(config: &GraphqlConfig) -> SchemaBuilder<Query, Mutation, Subscription> {
    Schema::build(
        Query::default(),
        Mutation::default(),
        Subscription::default(),
    )
    .limit_depth(config.max_depth)
    .limit_complexity(config.max_complexity)
    .limit_recursive_depth(config.max_depth.max(32))
    .limit_directives(16)
    .extension(codes::ErrorCodes)
}

/// The SDL of the schema, as checked in at `schema/schema.graphql`.
pub fn sdl() -> String {
    builder(&GraphqlConfig::default()).finish().sdl()
}
