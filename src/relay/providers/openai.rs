//! OpenAI and OpenAI-compatible channels (types 1 and 8), and Azure OpenAI
//! (type 3), which speaks the same body at a different address.

use bytes::Bytes;

use super::{Endpoint, Outbound, header};
use crate::relay::error::{RelayError, errors};
use crate::routing::ChannelRt;

/// Azure's `api-version` when the channel's `other` gives none.
pub const DEFAULT_AZURE_API_VERSION: &str = "2024-10-21";

/// `{base}/v1/<endpoint>` with `Authorization: Bearer <key>`; both were
/// prepared when the channel was loaded.
pub fn outbound(ch: &ChannelRt, ep: Endpoint, body: Bytes) -> Result<Outbound, RelayError> {
    let urls = ch
        .urls
        .as_ref()
        .ok_or_else(|| errors::internal(format!("channel {}: invalid base URL", ch.id)))?;
    let url = match ep {
        Endpoint::Completions => urls.completions.clone(),
        Endpoint::Embeddings => urls.embeddings.clone(),
        _ => urls.chat.clone(),
    };
    let mut headers = Vec::with_capacity(1);
    if let Some(b) = ch.bearers.get(ch.pick()) {
        headers.push((axum::http::header::AUTHORIZATION, b.clone()));
    }
    Ok(Outbound { url, headers, body })
}

/// `{base}/openai/deployments/{deployment}/<endpoint>?api-version=…` with an
/// `api-key` header. The deployment is the upstream model name without dots
/// (Azure forbids them: `gpt-3.5-turbo` → `gpt-35-turbo`), as new-api does.
pub fn azure_outbound(
    ch: &ChannelRt,
    ep: Endpoint,
    body: Bytes,
    upstream_model: &str,
) -> Result<Outbound, RelayError> {
    let version = ch.other.trim();
    let version = if version.is_empty() {
        DEFAULT_AZURE_API_VERSION
    } else {
        version
    };
    if !version
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
    {
        return Err(errors::internal(format!(
            "channel {}: invalid Azure api-version '{version}'",
            ch.id
        )));
    }
    let deployment: String = upstream_model.chars().filter(|c| *c != '.').collect();
    let mut headers = Vec::with_capacity(1);
    headers.extend(header("api-key", ch.pick_key()));
    Ok(Outbound {
        url: super::parse_url(&format!(
            "{}/openai/deployments/{deployment}{}?api-version={version}",
            ch.base_url,
            ep.openai_path()
        ))?,
        headers,
        body,
    })
}
