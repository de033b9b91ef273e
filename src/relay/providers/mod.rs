//! Upstream providers: how to call each channel type, one module per provider.
//! Providers know nothing about the store or the management API.
//!
//! The cross-provider tables (usage fields, stop reasons, roles) live in
//! [`tables`] and nowhere else.

pub mod openai;
pub mod tables;

use axum::http::{HeaderName, HeaderValue};
use bytes::Bytes;

use super::error::{RelayError, errors};
use crate::routing::{ChannelKind, ChannelRt};

/// Which API operation a call is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    ChatCompletions,
    Completions,
    Embeddings,
}

impl Endpoint {
    /// Path under an OpenAI-style `/v1`.
    pub fn openai_path(self) -> &'static str {
        match self {
            Endpoint::ChatCompletions => "/chat/completions",
            Endpoint::Completions => "/completions",
            Endpoint::Embeddings => "/embeddings",
        }
    }

    /// Whether the operation can stream (and report usage in-stream).
    pub fn streams(self) -> bool {
        !matches!(self, Endpoint::Embeddings)
    }

    /// Name used in logs.
    pub fn name(self) -> &'static str {
        match self {
            Endpoint::ChatCompletions => "chat.completions",
            Endpoint::Completions => "completions",
            Endpoint::Embeddings => "embeddings",
        }
    }
}

/// A request ready to send upstream.
#[derive(Debug)]
pub struct Outbound {
    pub url: String,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub body: Bytes,
}

/// Builds the upstream request for `channel`. `body` is already in the
/// channel's dialect, with the upstream model name in it.
pub fn outbound(
    ch: &ChannelRt,
    ep: Endpoint,
    body: Bytes,
    upstream_model: &str,
) -> Result<Outbound, RelayError> {
    if ch.base_url.is_empty() {
        return Err(errors::internal(format!(
            "channel {} has no base URL",
            ch.id
        )));
    }
    match ch.kind {
        ChannelKind::OpenAi | ChannelKind::Custom => Ok(openai::outbound(ch, ep, body)),
        ChannelKind::Azure => openai::azure_outbound(ch, ep, body, upstream_model),
        ChannelKind::Anthropic | ChannelKind::Gemini => Err(errors::internal(format!(
            "channel {} ({:?}) cannot serve {} yet",
            ch.id,
            ch.kind,
            ep.name()
        ))),
    }
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
