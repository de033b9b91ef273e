//! Relay errors and the one place that turns them into the caller's dialect
//! (SPEC §7): OpenAI `{"error":{"message","type","code"}}`, Anthropic
//! `{"type":"error","error":{"type","message"}}`, Gemini
//! `{"error":{"code","message","status"}}`.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde_json::json;

/// The API dialect a client speaks (decides the error shape).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    OpenAi,
    Anthropic,
    Gemini,
}

/// What went wrong, independent of dialect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// 400: the request itself is bad.
    InvalidRequest,
    /// 401: no key, or a key that does not exist.
    InvalidKey,
    /// 403: the key or user may not do this.
    Forbidden,
    /// 404: no such endpoint or model.
    NotFound,
    /// 413: request too large.
    TooLarge,
    /// 429: out of quota.
    Quota,
    /// 429: too many requests.
    RateLimited,
    /// 502: the upstream failed.
    Upstream,
    /// 503: no channel can serve this.
    Unavailable,
    /// 504: the upstream timed out.
    Timeout,
    /// 500: our fault.
    Internal,
}

impl Kind {
    fn status(self) -> StatusCode {
        match self {
            Kind::InvalidRequest => StatusCode::BAD_REQUEST,
            Kind::InvalidKey => StatusCode::UNAUTHORIZED,
            Kind::Forbidden => StatusCode::FORBIDDEN,
            Kind::NotFound => StatusCode::NOT_FOUND,
            Kind::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Kind::Quota | Kind::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            Kind::Upstream => StatusCode::BAD_GATEWAY,
            Kind::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            Kind::Timeout => StatusCode::GATEWAY_TIMEOUT,
            Kind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// OpenAI's `error.type`.
    fn openai_type(self) -> &'static str {
        match self {
            Kind::InvalidRequest | Kind::InvalidKey | Kind::NotFound | Kind::TooLarge => {
                "invalid_request_error"
            }
            Kind::Forbidden => "permission_error",
            Kind::Quota => "insufficient_quota",
            Kind::RateLimited => "rate_limit_error",
            Kind::Upstream | Kind::Timeout => "upstream_error",
            Kind::Unavailable => "service_unavailable_error",
            Kind::Internal => "server_error",
        }
    }

    /// Anthropic's `error.type`.
    fn anthropic_type(self) -> &'static str {
        match self {
            Kind::InvalidRequest | Kind::TooLarge => "invalid_request_error",
            Kind::InvalidKey => "authentication_error",
            Kind::Forbidden => "permission_error",
            Kind::NotFound => "not_found_error",
            Kind::Quota | Kind::RateLimited => "rate_limit_error",
            Kind::Unavailable => "overloaded_error",
            Kind::Timeout => "timeout_error",
            Kind::Upstream | Kind::Internal => "api_error",
        }
    }

    /// Google's `error.status`.
    fn gemini_status(self) -> &'static str {
        match self {
            Kind::InvalidRequest | Kind::TooLarge => "INVALID_ARGUMENT",
            Kind::InvalidKey => "UNAUTHENTICATED",
            Kind::Forbidden => "PERMISSION_DENIED",
            Kind::NotFound => "NOT_FOUND",
            Kind::Quota | Kind::RateLimited => "RESOURCE_EXHAUSTED",
            Kind::Upstream | Kind::Internal => "INTERNAL",
            Kind::Unavailable => "UNAVAILABLE",
            Kind::Timeout => "DEADLINE_EXCEEDED",
        }
    }
}

/// A relay failure: a kind, a machine-readable code and a human message.
#[derive(Debug, Clone)]
pub struct RelayError {
    pub kind: Kind,
    pub code: &'static str,
    pub message: String,
    /// Overrides the kind's status (upstream 4xx passed through).
    pub status: Option<StatusCode>,
    /// Seconds for a `Retry-After` header.
    pub retry_after: Option<u64>,
}

impl RelayError {
    /// A new error.
    pub fn new(kind: Kind, code: &'static str, message: impl Into<String>) -> RelayError {
        RelayError {
            kind,
            code,
            message: message.into(),
            status: None,
            retry_after: None,
        }
    }

    /// The HTTP status this error answers with.
    pub fn status(&self) -> StatusCode {
        self.status.unwrap_or(self.kind.status())
    }

    /// The error as a response in `dialect`, carrying the request id in the
    /// message (as new-api does) so users can quote it.
    pub fn into_dialect(self, dialect: Dialect, request_id: &str) -> Response {
        let status = self.status();
        let message = if request_id.is_empty() {
            self.message
        } else {
            format!("{} (request id: {request_id})", self.message)
        };
        let body = match dialect {
            Dialect::OpenAi => json!({"error": {
                "message": message,
                "type": self.kind.openai_type(),
                "param": null,
                "code": self.code,
            }}),
            Dialect::Anthropic => json!({"type": "error", "error": {
                "type": self.kind.anthropic_type(),
                "message": message,
            }}),
            Dialect::Gemini => json!({"error": {
                "code": status.as_u16(),
                "message": message,
                "status": self.kind.gemini_status(),
            }}),
        };
        let mut resp = (
            status,
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )],
            Bytes::from(body.to_string()),
        )
            .into_response();
        // Tell SDKs not to retry what cannot succeed on a retry (they
        // otherwise retry 409, 429 and 5xx by default).
        if matches!(
            self.kind,
            Kind::InvalidRequest
                | Kind::InvalidKey
                | Kind::Forbidden
                | Kind::NotFound
                | Kind::TooLarge
                | Kind::Quota
        ) {
            resp.headers_mut()
                .insert("x-should-retry", HeaderValue::from_static("false"));
        }
        if let Some(secs) = self.retry_after
            && let Ok(v) = HeaderValue::from_str(&secs.to_string())
        {
            resp.headers_mut().insert(header::RETRY_AFTER, v);
        }
        resp
    }
}

/// Shorthands for the checks of SPEC §7, each with its own code.
pub mod errors {
    use super::{Kind, RelayError};

    pub fn invalid_key() -> RelayError {
        RelayError::new(Kind::InvalidKey, "invalid_api_key", "invalid API key")
    }
    pub fn missing_key() -> RelayError {
        RelayError::new(
            Kind::InvalidKey,
            "invalid_api_key",
            "no API key provided (use Authorization: Bearer sk-…)",
        )
    }
    pub fn token_disabled() -> RelayError {
        RelayError::new(
            Kind::Forbidden,
            "token_disabled",
            "this API key is disabled",
        )
    }
    pub fn token_expired() -> RelayError {
        RelayError::new(Kind::Forbidden, "token_expired", "this API key has expired")
    }
    pub fn token_exhausted() -> RelayError {
        RelayError::new(
            Kind::Quota,
            "insufficient_quota",
            "this API key's quota is exhausted",
        )
    }
    pub fn token_insufficient() -> RelayError {
        RelayError::new(
            Kind::Quota,
            "insufficient_quota",
            "this API key's remaining quota is insufficient for this request",
        )
    }
    pub fn ip_not_allowed(ip: &str) -> RelayError {
        RelayError::new(
            Kind::Forbidden,
            "ip_not_allowed",
            format!("this API key may not be used from {ip}"),
        )
    }
    pub fn model_not_allowed(model: &str) -> RelayError {
        RelayError::new(
            Kind::Forbidden,
            "model_not_allowed",
            format!("this API key may not use model '{model}'"),
        )
    }
    pub fn user_disabled() -> RelayError {
        RelayError::new(
            Kind::Forbidden,
            "user_disabled",
            "the key's user is disabled",
        )
    }
    pub fn user_quota() -> RelayError {
        RelayError::new(
            Kind::Quota,
            "insufficient_user_quota",
            "the key's user has insufficient quota",
        )
    }
    pub fn group_forbidden(group: &str) -> RelayError {
        RelayError::new(
            Kind::Forbidden,
            "group_not_allowed",
            format!("the key's group '{group}' is not available to its user"),
        )
    }
    pub fn no_channel(group: &str, model: &str) -> RelayError {
        RelayError::new(
            Kind::Unavailable,
            "no_available_channel",
            format!("no available channel for model '{model}' in group '{group}'"),
        )
    }
    pub fn pin_forbidden() -> RelayError {
        RelayError::new(
            Kind::Forbidden,
            "channel_pin_forbidden",
            "only administrators may pin a channel with sk-<key>-<channel id>",
        )
    }
    /// A pinned channel that is disabled (new-api refuses these too).
    pub fn channel_disabled(id: i64) -> RelayError {
        RelayError::new(
            Kind::Forbidden,
            "channel_disabled",
            format!("channel #{id} is disabled"),
        )
    }
    pub fn bad_request(msg: impl Into<String>) -> RelayError {
        RelayError::new(Kind::InvalidRequest, "invalid_request", msg)
    }
    /// A balance could not be read or held.
    pub fn bank(e: crate::billing::bank::BankError) -> RelayError {
        use crate::billing::bank::{BankError, Refusal};
        match e {
            BankError::Refused(Refusal::Token) => token_insufficient(),
            BankError::Refused(Refusal::User) => user_quota(),
            BankError::Unavailable(m) => RelayError::new(
                Kind::Unavailable,
                "balance_unavailable",
                format!("balances are unavailable, try again shortly ({m})"),
            ),
            BankError::Store(e) => internal(format!("balance lookup failed: {e}")),
        }
    }
    /// A rate limit refused the call.
    pub fn rate_limited(r: crate::ratelimit::Refused) -> RelayError {
        let mut e = RelayError::new(Kind::RateLimited, "rate_limit_exceeded", r.limit.describe());
        // Whole seconds, rounded up: retrying at the advertised time works.
        e.retry_after = Some(r.retry_after.as_millis().div_ceil(1000).max(1) as u64);
        e
    }
    /// The rate-limit counters could not be read.
    pub fn rate_unavailable(e: crate::ratelimit::Unavailable) -> RelayError {
        RelayError::new(
            Kind::Unavailable,
            "rate_limit_unavailable",
            format!("rate limits cannot be checked, try again shortly ({})", e.0),
        )
    }
    pub fn internal(msg: impl Into<String>) -> RelayError {
        RelayError::new(Kind::Internal, "internal_error", msg)
    }
}
