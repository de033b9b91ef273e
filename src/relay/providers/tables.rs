//! Cross-provider tables, in exactly one place: usage field names and stop
//! reasons per API.

use serde::Deserialize;

use crate::billing::Usage;

/// OpenAI's `usage` (chat, completions, embeddings).
#[derive(Debug, Default, Deserialize)]
pub struct OpenAiUsage {
    #[serde(default)]
    pub prompt_tokens: Option<i64>,
    #[serde(default)]
    pub completion_tokens: Option<i64>,
    #[serde(default)]
    pub total_tokens: Option<i64>,
    #[serde(default)]
    pub prompt_tokens_details: Option<PromptDetails>,
}

/// `prompt_tokens_details`.
#[derive(Debug, Default, Deserialize)]
pub struct PromptDetails {
    #[serde(default)]
    pub cached_tokens: Option<i64>,
}

impl OpenAiUsage {
    /// In sluice's terms. Embeddings report only prompt/total tokens.
    pub fn to_usage(&self) -> Usage {
        let prompt = self.prompt_tokens.unwrap_or(0).max(0);
        let completion = match self.completion_tokens {
            Some(c) => c,
            None => self.total_tokens.map(|t| t - prompt).unwrap_or(0),
        }
        .max(0);
        Usage {
            prompt_tokens: prompt,
            completion_tokens: completion,
            cached_tokens: self
                .prompt_tokens_details
                .as_ref()
                .and_then(|d| d.cached_tokens)
                .unwrap_or(0)
                .clamp(0, prompt),
        }
    }
}

#[derive(Deserialize)]
struct UsageOnly {
    #[serde(default)]
    usage: Option<OpenAiUsage>,
}

/// Usage from an OpenAI JSON body or stream chunk; `None` when absent or null.
pub fn openai_usage(body: &[u8]) -> Option<Usage> {
    serde_json::from_slice::<UsageOnly>(body)
        .ok()?
        .usage
        .map(|u| u.to_usage())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openai_usage_fields() {
        let u = openai_usage(
            br#"{"id":"x","usage":{"prompt_tokens":10,"completion_tokens":20,"total_tokens":30,"prompt_tokens_details":{"cached_tokens":4}}}"#,
        )
        .unwrap();
        assert_eq!(
            u,
            Usage {
                prompt_tokens: 10,
                completion_tokens: 20,
                cached_tokens: 4
            }
        );
        let e = openai_usage(br#"{"usage":{"prompt_tokens":7,"total_tokens":7}}"#).unwrap();
        assert_eq!(e.completion_tokens, 0);
        assert!(openai_usage(br#"{"usage":null}"#).is_none());
        assert!(openai_usage(b"not json").is_none());
    }
}
