//! Errors in the seeds' shape: `{"error":{"code","message","details","requestId","timestamp"}}`.
//!
//! A handler returns an `ApiError`; its response carries the error as an extension and no
//! body, and `render` (run by the outermost middleware, which knows the request id) writes
//! the body. A refusal from axum itself (a malformed path, query or JSON body, a body too
//! large) is turned into the same shape there, so no client ever sees another.

use axum::{
    body::Body,
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use serde::Serialize;

use crate::store;

/// The error codes of the seeds' API.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Code {
    Unauthorized,
    Forbidden,
    NotFound,
    ValidationError,
    Conflict,
    RateLimited,
    InternalError,
    ServiceUnavailable,
}

impl Code {
    /// The HTTP status a response with this code carries.
    pub fn status(self) -> StatusCode {
        match self {
            Code::Unauthorized => StatusCode::UNAUTHORIZED,
            Code::Forbidden => StatusCode::FORBIDDEN,
            Code::NotFound => StatusCode::NOT_FOUND,
            Code::ValidationError => StatusCode::BAD_REQUEST,
            Code::Conflict => StatusCode::CONFLICT,
            Code::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            Code::InternalError => StatusCode::INTERNAL_SERVER_ERROR,
            Code::ServiceUnavailable => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    fn of_status(status: StatusCode) -> Code {
        match status {
            StatusCode::UNAUTHORIZED => Code::Unauthorized,
            StatusCode::FORBIDDEN => Code::Forbidden,
            StatusCode::NOT_FOUND | StatusCode::METHOD_NOT_ALLOWED => Code::NotFound,
            StatusCode::CONFLICT => Code::Conflict,
            StatusCode::TOO_MANY_REQUESTS => Code::RateLimited,
            StatusCode::SERVICE_UNAVAILABLE => Code::ServiceUnavailable,
            status if status.is_client_error() => Code::ValidationError,
            _ => Code::InternalError,
        }
    }
}

/// A refused or failed request.
#[derive(Clone, Debug)]
pub struct ApiError {
    pub code: Code,
    pub message: String,
    pub details: Option<serde_json::Value>,
}

/// The wire form of an error.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorResponse {
    pub error: ErrorBody,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ErrorBody {
    pub code: Code,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub details: Option<serde_json::Value>,
    pub request_id: String,
    pub timestamp: String,
}

impl ApiError {
    pub fn new(code: Code, message: impl Into<String>) -> ApiError {
        ApiError {
            code,
            message: message.into(),
            details: None,
        }
    }

    pub fn unauthorized(message: impl Into<String>) -> ApiError {
        ApiError::new(Code::Unauthorized, message)
    }

    pub fn forbidden(message: impl Into<String>) -> ApiError {
        ApiError::new(Code::Forbidden, message)
    }

    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(Code::NotFound, message)
    }

    pub fn invalid(message: impl Into<String>) -> ApiError {
        ApiError::new(Code::ValidationError, message)
    }

    pub fn conflict(message: impl Into<String>) -> ApiError {
        ApiError::new(Code::Conflict, message)
    }

    pub fn unavailable(message: impl Into<String>) -> ApiError {
        ApiError::new(Code::ServiceUnavailable, message)
    }

    pub fn with_details(mut self, details: serde_json::Value) -> ApiError {
        self.details = Some(details);
        self
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = Response::new(Body::empty());
        *response.status_mut() = self.code.status();
        response.extensions_mut().insert(self);
        response
    }
}

/// A store that failed is unavailable to the caller; what failed goes to the log, not to
/// the client (a message may name a table or a host).
impl From<store::Error> for ApiError {
    fn from(error: store::Error) -> ApiError {
        tracing::warn!(%error, "a request failed on the store");
        ApiError::unavailable("the store cannot be read now; try again")
    }
}

/// Marks an error response whose body is already what the client should see (a page of
/// the dashboard).
#[derive(Clone, Copy, Debug)]
pub struct Rendered;

/// The biggest error body from axum that is copied into a message.
const MAX_REJECTION_BYTES: usize = 1024;

/// Writes the body of an error response in the seeds' shape; other responses pass as they
/// are.
pub async fn render(response: Response, request_id: &str) -> Response {
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error())
        || response.extensions().get::<Rendered>().is_some()
    {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let error = match parts.extensions.remove::<ApiError>() {
        Some(error) => error,
        None => {
            // A rejection from axum: its text says what was wrong with the request.
            let bytes = axum::body::to_bytes(body, MAX_REJECTION_BYTES)
                .await
                .unwrap_or_default();
            let text = String::from_utf8_lossy(&bytes).trim().to_string();
            let message = if text.is_empty() {
                status.canonical_reason().unwrap_or("error").to_string()
            } else {
                text
            };
            ApiError::new(Code::of_status(status), message)
        }
    };
    let body = ErrorResponse {
        error: ErrorBody {
            code: error.code,
            message: error.message,
            details: error.details,
            request_id: request_id.to_string(),
            timestamp: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        },
    };
    let bytes = serde_json::to_vec(&body).expect("an error body serializes");
    parts.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    parts.headers.remove(header::CONTENT_LENGTH);
    Response::from_parts(parts, Body::from(bytes))
}
