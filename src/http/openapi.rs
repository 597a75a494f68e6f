//! The OpenAPI 3.1 document of `/api/v1`, generated from the handlers' annotations and the
//! wire types (`utoipa`), served at `/api/v1/openapi.json` and checked in as
//! `schemas/openapi.json`, where a test keeps the two the same.

use axum::{
    body::Body,
    http::{HeaderValue, header},
    response::Response,
};
use utoipa::{
    Modify, OpenApi,
    openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme},
};

use crate::http::{api, error, health, webhook};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "wakafleet",
        description = "The reconcile daemon's API: the fleet as the store sees it, the plan, the audit log and the operator verbs. Every `/api/v1` call but the webhook needs `Authorization: Bearer <token>`.",
        license(name = "Apache-2.0")
    ),
    paths(
        health::health, health::database, health::redis, health::reconcile,
        api::status_of, api::instances, api::instance, api::jobs, api::job, api::retry,
        api::cancel, api::plan_now, api::state, api::audit, api::audit_export,
        api::reconcile_now, api::pause, api::resume,
        webhook::github,
    ),
    components(schemas(error::ErrorResponse)),
    modifiers(&Bearer),
    tags(
        (name = "health", description = "Health in the provisioning runbook's shape; no token"),
        (name = "fleet", description = "The fleet, its plan and its recorded state"),
        (name = "jobs", description = "Jobs, their steps, retry and cancel"),
        (name = "audit", description = "The hash-chained audit log"),
        (name = "reconcile", description = "Pause, resume, reconcile now"),
        (name = "webhook", description = "GitHub's push events, verified by HMAC"),
    )
)]
struct Document;

struct Bearer;

impl Modify for Bearer {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "a token of the daemon's configuration (`wakafleet token create`)",
                    ))
                    .build(),
            ),
        );
    }
}

/// The document, as JSON text (what `schemas/openapi.json` holds).
pub fn text() -> String {
    let mut document = Document::openapi();
    document.info.version = env!("CARGO_PKG_VERSION").to_string();
    document
        .to_pretty_json()
        .expect("the OpenAPI document serializes")
        + "\n"
}

/// `GET /api/v1/openapi.json`.
pub async fn document() -> Response {
    let mut response = Response::new(Body::from(text()));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}
