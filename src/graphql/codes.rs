//! Gives every error a stable `extensions.code`, including those raised by
//! async-graphql itself before any resolver runs (syntax, validation, depth
//! and complexity limits), which come without one.

use std::sync::Arc;

use async_graphql::extensions::{
    Extension, ExtensionContext, ExtensionFactory, NextRequest, NextSubscribe,
};
use async_graphql::{Response, ServerError};
use futures_util::StreamExt;
use futures_util::stream::BoxStream;

pub struct ErrorCodes;

impl ExtensionFactory for ErrorCodes {
    fn create(&self) -> Arc<dyn Extension> {
        Arc::new(ErrorCodes)
    }
}

#[async_graphql::async_trait::async_trait]
impl Extension for ErrorCodes {
    async fn request(&self, ctx: &ExtensionContext<'_>, next: NextRequest<'_>) -> Response {
        let mut response = next.run(ctx).await;
        add_codes(&mut response.errors);
        response
    }

    fn subscribe<'s>(
        &self,
        ctx: &ExtensionContext<'_>,
        stream: BoxStream<'s, Response>,
        next: NextSubscribe<'_>,
    ) -> BoxStream<'s, Response> {
        next.run(ctx, stream)
            .map(|mut response| {
                add_codes(&mut response.errors);
                response
            })
            .boxed()
    }
}

fn add_codes(errors: &mut [ServerError]) {
    for error in errors {
        let extensions = error.extensions.get_or_insert_with(Default::default);
        if extensions.get("code").is_none() {
            // Errors outside resolvers carry no path: the document was
            // refused as a whole. Inside a resolver, an error without a code
            // is one this code base did not map, so it is not the caller's.
            let code = if error.path.is_empty() {
                "GRAPHQL_VALIDATION_FAILED"
            } else if is_input_coercion(&error.message) {
                "BAD_USER_INPUT"
            } else {
                "INTERNAL"
            };
            extensions.set("code", code);
        }
    }
}

/// Whether async-graphql refused an argument's value while resolving (a
/// variable that is null or of the wrong shape): the caller's mistake.
fn is_input_coercion(message: &str) -> bool {
    [
        "Expected input type",
        "Failed to parse",
        "Invalid value for argument",
    ]
    .iter()
    .any(|prefix| message.starts_with(prefix))
}
