//! Upstream providers: how to call each channel type, one module per provider.
//! Providers know nothing about the store or the management API.
//!
//! The cross-provider tables (usage fields, stop reasons, roles) live in
//! [`tables`] and nowhere else.

pub mod anthropic;
pub mod gemini;
pub mod openai;
pub mod responses;
pub mod tables;

use axum::http::{HeaderName, HeaderValue};
use bytes::Bytes;

use super::error::{RelayError, errors};
use crate::routing::{ChannelKind, ChannelRt};

/// Which API operation a call is (its inbound door).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    ChatCompletions,
    Completions,
    Embeddings,
    /// Anthropic `/v1/messages`.
    Messages,
    /// Gemini `:generateContent` / `:streamGenerateContent`.
    GenerateContent,
    /// OpenAI `/v1/responses`.
    Responses,
}

impl Endpoint {
    /// Path under an OpenAI-style `/v1` (for OpenAI-style channels).
    pub fn openai_path(self) -> &'static str {
        match self {
            Endpoint::Completions => "/completions",
            Endpoint::Embeddings => "/embeddings",
            _ => "/chat/completions",
        }
    }

    /// Whether the operation can stream.
    pub fn streams(self) -> bool {
        !matches!(self, Endpoint::Embeddings)
    }

    /// Name used in logs.
    pub fn name(self) -> &'static str {
        match self {
            Endpoint::ChatCompletions => "chat.completions",
            Endpoint::Completions => "completions",
            Endpoint::Embeddings => "embeddings",
            Endpoint::Messages => "messages",
            Endpoint::GenerateContent => "generateContent",
            Endpoint::Responses => "responses",
        }
    }
}

/// How a call reaches a channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// Same dialect both ends: the body passes (model name patched).
    Pass,
    /// Different dialects: through the hub format (OpenAI Chat Completions).
    Convert,
}

/// The channel's own dialect for chat-like calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wire {
    OpenAi,
    Anthropic,
    Gemini,
}

impl Wire {
    /// The dialect a channel kind speaks.
    pub fn of(kind: ChannelKind) -> Wire {
        match kind {
            ChannelKind::OpenAi | ChannelKind::Custom | ChannelKind::Azure => Wire::OpenAi,
            ChannelKind::Anthropic => Wire::Anthropic,
            ChannelKind::Gemini => Wire::Gemini,
        }
    }
}

/// How `ep` reaches a channel of `kind`; `None` when it cannot (embeddings
/// and legacy completions only go to OpenAI-style channels).
pub fn route(ep: Endpoint, kind: ChannelKind) -> Option<Route> {
    let wire = Wire::of(kind);
    Some(match (ep, wire) {
        (
            Endpoint::ChatCompletions | Endpoint::Completions | Endpoint::Embeddings,
            Wire::OpenAi,
        ) => Route::Pass,
        (Endpoint::Completions | Endpoint::Embeddings, _) => return None,
        (Endpoint::Messages, Wire::Anthropic) | (Endpoint::GenerateContent, Wire::Gemini) => {
            Route::Pass
        }
        _ => Route::Convert,
    })
}

/// A request ready to send upstream.
#[derive(Debug)]
pub struct Outbound {
    pub url: axum::http::Uri,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub body: Bytes,
}

/// Builds the upstream request for `channel`. `body` is already in the
/// channel's dialect, with the upstream model name in it (Gemini: in the URL).
pub fn outbound(
    ch: &ChannelRt,
    ep: Endpoint,
    body: Bytes,
    upstream_model: &str,
    stream: bool,
) -> Result<Outbound, RelayError> {
    if ch.base_url.is_empty() {
        return Err(errors::internal(format!(
            "channel {} has no base URL",
            ch.id
        )));
    }
    // Converted calls speak chat to OpenAI-style channels.
    let ep = match ep {
        Endpoint::Completions | Endpoint::Embeddings => ep,
        _ => Endpoint::ChatCompletions,
    };
    match ch.kind {
        ChannelKind::OpenAi | ChannelKind::Custom => openai::outbound(ch, ep, body),
        ChannelKind::Azure => openai::azure_outbound(ch, ep, body, upstream_model),
        ChannelKind::Anthropic => anthropic::outbound(ch, body),
        ChannelKind::Gemini => gemini::outbound(ch, upstream_model, stream, body),
    }
}

/// Parses an upstream address built at request time.
pub fn parse_url(s: &str) -> Result<axum::http::Uri, RelayError> {
    s.parse::<axum::http::Uri>()
        .map_err(|e| errors::internal(format!("invalid upstream URL {s}: {e}")))
}

/// Joins a base URL and an API path, not doubling a trailing `/v1`.
pub fn join_v1(base: &str, path: &str) -> String {
    let base = base.trim_end_matches('/');
    if base.ends_with("/v1") {
        format!("{base}{path}")
    } else {
        format!("{base}/v1{path}")
    }
}

fn header(name: &'static str, value: &str) -> Option<(HeaderName, HeaderValue)> {
    HeaderValue::from_str(value)
        .ok()
        .map(|v| (HeaderName::from_static(name), v))
}
