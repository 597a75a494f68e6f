//! `POST /api/v1/webhook/github`: GitHub's push and ping events.
//!
//! The request proves itself with `X-Hub-Signature-256`, HMAC-SHA256 over the raw body
//! with the configured `webhook_secret`, compared in constant time (`hmac`'s
//! `verify_slice`). A missing or wrong signature is 401 and audited. The signature carries
//! no time, and `X-GitHub-Delivery` is not signed, so a delivery is known by its body's
//! SHA-256: each is audited under that key, and a body seen before is refused (409) however
//! its delivery header reads. A ping is answered 200; a push to the followed branch asks
//! the daemon to fetch and reconcile at once (202); other events and branches are answered
//! 202 and ignored.

use std::sync::Arc;

use axum::{
    Json, Router,
    body::Bytes,
    extract::{Request, State},
    http::HeaderMap,
    response::{IntoResponse, Response},
    routing::post,
};
use hmac::{Hmac, Mac};
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::{
    http::{ApiError, App, RequestId, limit},
    store::audit::{Actor, ActorKind, Outcome, Record},
};

pub fn routes() -> Router<Arc<App>> {
    Router::new().route("/api/v1/webhook/github", post(github))
}

/// The answer to a delivery that was accepted.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Delivery {
    /// ping, push, or the event's name.
    pub event: String,
    /// Whether it made the daemon fetch and reconcile.
    pub reconcile: bool,
    /// Why not, when it did not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ignored: Option<String>,
}

/// The longest event name or delivery id kept.
const MAX_HEADER: usize = 128;

fn header(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .and_then(|value| value.to_str().ok())
        .map(|value| value.chars().take(MAX_HEADER).collect())
}

/// Whether `signature` (`sha256=<hex>`) is the HMAC-SHA256 of `body` under `secret`.
pub fn verify(secret: &[u8], body: &[u8], signature: &str) -> bool {
    let Some(hex_digest) = signature.strip_prefix("sha256=") else {
        return false;
    };
    let Ok(expected) = hex::decode(hex_digest) else {
        return false;
    };
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret) else {
        return false;
    };
    mac.update(body);
    mac.verify_slice(&expected).is_ok()
}

#[utoipa::path(post, path = "/api/v1/webhook/github", tag = "webhook",
    request_body(content = String, description = "GitHub's event payload, signed with X-Hub-Signature-256"),
    responses(
        (status = 200, description = "a ping", body = Delivery),
        (status = 202, description = "a push, or an event that is ignored", body = Delivery),
        (status = 401, description = "a missing or wrong signature", body = crate::http::error::ErrorResponse),
        (status = 404, description = "no webhook secret is configured", body = crate::http::error::ErrorResponse),
        (status = 409, description = "a delivery seen before", body = crate::http::error::ErrorResponse)))]
pub async fn github(State(app): State<Arc<App>>, request: Request) -> Result<Response, ApiError> {
    let Some(secret) = &app.webhook_secret else {
        return Err(ApiError::not_found(
            "no webhook is configured: set `webhook_secret` in the daemon's [source] configuration",
        ));
    };
    let remote = limit::remote(&request);
    let request_id = request
        .extensions()
        .get::<RequestId>()
        .map(|id| id.0.clone())
        .unwrap_or_default();
    let (parts, body) = request.into_parts();
    let body: Bytes = axum::body::to_bytes(body, MAX_BODY)
        .await
        .map_err(|_| ApiError::invalid(format!("the body is larger than {MAX_BODY} bytes")))?;
    let event = header(&parts.headers, "x-github-event").unwrap_or_default();
    let delivery = header(&parts.headers, "x-github-delivery");
    let audit = |action: &str| {
        let mut record = Record::new(
            Actor {
                kind: ActorKind::System,
                id: "webhook/github".to_string(),
                email: None,
            },
            action,
            "webhook/github",
        );
        let metadata = &mut record.metadata;
        metadata.insert("event".into(), event.clone().into());
        metadata.insert("remote".into(), remote.to_string().into());
        metadata.insert("request_id".into(), request_id.clone().into());
        if let Some(delivery) = &delivery {
            metadata.insert("delivery".into(), delivery.clone().into());
        }
        if let Some(agent) = header(&parts.headers, "user-agent") {
            metadata.insert("user_agent".into(), agent.into());
        }
        record
    };
    let signature = header(&parts.headers, "x-hub-signature-256").unwrap_or_default();
    if !verify(secret.expose().as_bytes(), &body, &signature) {
        let mut record = audit("webhook.refused");
        record.result = Outcome::Failure;
        record.error = Some(if signature.is_empty() {
            "refused: no X-Hub-Signature-256".to_string()
        } else {
            "refused: the signature does not match the body".to_string()
        });
        record.metadata.insert("code".into(), 401.into());
        append(&app, record).await?;
        return Err(ApiError::unauthorized(
            "the X-Hub-Signature-256 header is missing or does not match the body",
        ));
    }
    let digest = hex::encode(Sha256::digest(&body));
    let mut record = audit("webhook.received");
    record.key = Some(format!("webhook/github/{digest}"));
    let entry = app.store.append_one(record).await?;
    let ours = entry
        .record
        .metadata
        .get("request_id")
        .and_then(|id| id.as_str())
        == Some(request_id.as_str());
    if !ours {
        let mut record = audit("webhook.refused");
        record.result = Outcome::Failure;
        record.error = Some(format!(
            "refused: a replay of the delivery first received as audit record {}",
            entry.seq
        ));
        record.metadata.insert("code".into(), 409.into());
        append(&app, record).await?;
        return Err(ApiError::conflict(
            "this delivery was received before; a replay is refused",
        ));
    }
    let answer = |status: axum::http::StatusCode, reconcile: bool, ignored: Option<String>| {
        (
            status,
            Json(Delivery {
                event: event.clone(),
                reconcile,
                ignored,
            }),
        )
            .into_response()
    };
    match event.as_str() {
        "ping" => Ok(answer(axum::http::StatusCode::OK, false, None)),
        "push" => {
            let pushed = serde_json::from_slice::<serde_json::Value>(&body)
                .ok()
                .and_then(|push| push.get("ref").and_then(|r| r.as_str()).map(str::to_string));
            let followed = app
                .branch
                .as_ref()
                .map(|branch| format!("refs/heads/{branch}"));
            match (pushed, followed) {
                (Some(pushed), Some(followed)) if pushed == followed => {
                    app.control.fetch_now();
                    Ok(answer(axum::http::StatusCode::ACCEPTED, true, None))
                }
                (pushed, followed) => Ok(answer(
                    axum::http::StatusCode::ACCEPTED,
                    false,
                    Some(format!(
                        "a push to {}; the daemon follows {}",
                        pushed.as_deref().unwrap_or("no ref"),
                        followed.as_deref().unwrap_or("a folder, not a branch")
                    )),
                )),
            }
        }
        other => Ok(answer(
            axum::http::StatusCode::ACCEPTED,
            false,
            Some(format!("the event `{other}` is not acted on")),
        )),
    }
}

/// GitHub's payloads are at most 25 MB; a fleet's pushes are far smaller.
const MAX_BODY: usize = 5 << 20;

async fn append(app: &App, record: Record) -> Result<(), ApiError> {
    app.store.append_one(record).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn githubs_test_vector_verifies_and_a_changed_byte_does_not() {
        let secret = b"It's a Secret to Everybody";
        let signature = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";
        assert!(verify(secret, b"Hello, World!", signature));
        assert!(!verify(secret, b"Hello, World?", signature));
        assert!(!verify(b"another secret", b"Hello, World!", signature));
        assert!(!verify(secret, b"Hello, World!", "sha1=757107ea"));
        assert!(!verify(secret, b"Hello, World!", "sha256=zz"));
        assert!(!verify(secret, b"Hello, World!", ""));
    }
}
