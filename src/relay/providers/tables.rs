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

/// Usage from an OpenAI JSON object body without parsing the rest of it: the
/// last `"usage":` key (OpenAI writes it after `choices`) is read in place.
/// `None` when the body is not a braced object or carries no readable usage
/// (callers then parse the whole body). The body's middle is not validated:
/// a pass-through body reaches the client as the upstream wrote it.
pub fn openai_usage_fast(body: &[u8]) -> Option<Usage> {
    use serde::Deserialize as _;
    let t = body.trim_ascii();
    if t.first() != Some(&b'{') || t.last() != Some(&b'}') {
        return None;
    }
    let at = usage_key_at(t)?;
    if at > 0 && t[at - 1] == b'\\' {
        return None;
    }
    let rest = t[at + 7..].trim_ascii_start();
    let rest = rest.strip_prefix(b":")?;
    let mut de = serde_json::Deserializer::from_slice(rest);
    OpenAiUsage::deserialize(&mut de).ok().map(|u| u.to_usage())
}

/// Where the last `"usage"` in `t` starts (an OpenAI body or stream event).
/// OpenAI writes usage last, so this jumps back between `u`s (a SIMD
/// `memrchr`) and usually stops at the first: cheaper than a substring
/// searcher, which set up and stepped through the bytes after it at ~4
/// instructions each.
pub fn usage_key_at(t: &[u8]) -> Option<usize> {
    let mut end = t.len();
    while let Some(u) = memchr::memrchr(b'u', &t[..end]) {
        if u > 0 && t[u - 1] == b'"' && t[u..].starts_with(b"usage\"") {
            return Some(u - 1);
        }
        end = u;
    }
    None
}

/// Usage from an OpenAI JSON body in one pass that also checks the whole body
/// is valid JSON: `Err` for invalid JSON, `Ok(None)` when usage is absent.
pub fn openai_usage_checked(body: &[u8]) -> Result<Option<Usage>, serde_json::Error> {
    Ok(serde_json::from_slice::<UsageOnly>(body)?
        .usage
        .map(|u| u.to_usage()))
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

    /// The `"usage"` key is found where a reverse substring search finds
    /// it: last among several, after `u`s in other text, at the very start
    /// or end, and not at all when only parts of it are there.
    #[test]
    fn usage_key_is_found_as_a_substring_search_finds_it() {
        let cases: [&[u8]; 8] = [
            br#"{"id":"x","usage":{"prompt_tokens":1}}"#,
            br#"{"usage":{"a":1},"choices":[{"text":"usual \"usage\" unusual"}],"usage":{}}"#,
            br#"{"text":"uuu usage \"usag\" u","n":1}"#,
            br#""usage""#,
            br#"usage""#,
            br#"{"x":"u"}"#,
            b"",
            br#"{"usage_metadata":1,"usage":2}"#,
        ];
        for c in cases {
            let want = memchr::memmem::rfind(c, b"\"usage\"");
            assert_eq!(usage_key_at(c), want, "{}", String::from_utf8_lossy(c));
        }
    }

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

/// Anthropic's `usage`: `input_tokens` excludes cached tokens, so the prompt
/// total is input + cache writes + cache reads.
pub fn anthropic_usage(u: &serde_json::Value) -> Usage {
    let n = |k: &str| {
        u.get(k)
            .and_then(serde_json::Value::as_i64)
            .unwrap_or(0)
            .max(0)
    };
    let cached = n("cache_read_input_tokens");
    Usage {
        prompt_tokens: n("input_tokens") + n("cache_creation_input_tokens") + cached,
        completion_tokens: n("output_tokens"),
        cached_tokens: cached,
    }
}

/// Anthropic usage across a stream: `message_start` carries the input (and
/// cache) counts, each `message_delta` cumulative counts. A later event
/// overwrites only the fields it carries non-null (as the SDK does).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct AnthropicStreamUsage {
    input: i64,
    cache_creation: i64,
    cache_read: i64,
    output: i64,
}

impl AnthropicStreamUsage {
    /// Takes the non-null fields of a `usage` object.
    pub fn merge(&mut self, u: &serde_json::Value) {
        let take = |k: &str, into: &mut i64| {
            if let Some(n) = u.get(k).and_then(serde_json::Value::as_i64) {
                *into = n.max(0);
            }
        };
        take("input_tokens", &mut self.input);
        take("cache_creation_input_tokens", &mut self.cache_creation);
        take("cache_read_input_tokens", &mut self.cache_read);
        take("output_tokens", &mut self.output);
    }

    /// In sluice's terms (see [`anthropic_usage`]).
    pub fn usage(&self) -> Usage {
        Usage {
            prompt_tokens: self.input + self.cache_creation + self.cache_read,
            completion_tokens: self.output,
            cached_tokens: self.cache_read,
        }
    }
}

/// Gemini's `usageMetadata`: thoughts are output; tool-use prompts are input.
pub fn gemini_usage(u: &serde_json::Value) -> Usage {
    let n = |a: &str, b: &str| {
        u.get(a)
            .or_else(|| u.get(b))
            .and_then(serde_json::Value::as_i64)
            .unwrap_or(0)
            .max(0)
    };
    let prompt = n("promptTokenCount", "prompt_token_count")
        + n("toolUsePromptTokenCount", "tool_use_prompt_token_count");
    Usage {
        prompt_tokens: prompt,
        completion_tokens: n("candidatesTokenCount", "candidates_token_count")
            + n("thoughtsTokenCount", "thoughts_token_count"),
        cached_tokens: n("cachedContentTokenCount", "cached_content_token_count").min(prompt),
    }
}

/// OpenAI `usage` JSON for a sluice [`Usage`] (the hub format's usage).
pub fn openai_usage_json(u: &Usage) -> serde_json::Value {
    serde_json::json!({
        "prompt_tokens": u.prompt_tokens,
        "completion_tokens": u.completion_tokens,
        "total_tokens": u.prompt_tokens + u.completion_tokens,
        "prompt_tokens_details": {"cached_tokens": u.cached_tokens},
    })
}

/// Anthropic `usage` JSON for a sluice [`Usage`].
pub fn anthropic_usage_json(u: &Usage) -> serde_json::Value {
    serde_json::json!({
        "input_tokens": (u.prompt_tokens - u.cached_tokens).max(0),
        "output_tokens": u.completion_tokens,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": u.cached_tokens,
    })
}

/// Gemini `usageMetadata` JSON for a sluice [`Usage`].
pub fn gemini_usage_json(u: &Usage) -> serde_json::Value {
    serde_json::json!({
        "promptTokenCount": u.prompt_tokens,
        "candidatesTokenCount": u.completion_tokens,
        "totalTokenCount": u.prompt_tokens + u.completion_tokens,
        "cachedContentTokenCount": u.cached_tokens,
    })
}

/// Responses API `usage` JSON for a sluice [`Usage`].
pub fn responses_usage_json(u: &Usage) -> serde_json::Value {
    serde_json::json!({
        "input_tokens": u.prompt_tokens,
        "input_tokens_details": {"cached_tokens": u.cached_tokens},
        "output_tokens": u.completion_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": u.prompt_tokens + u.completion_tokens,
    })
}

/// Why generation stopped, in OpenAI's words (the hub vocabulary).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// `stop`: natural end or a stop sequence.
    Stop,
    /// `length`: the output cap.
    Length,
    /// `tool_calls`: the model called tools.
    ToolCalls,
    /// `content_filter`: safety or refusal.
    ContentFilter,
}

/// The stop-reason table: one row per meaning, one column per API.
const STOPS: &[(Stop, &str, &str, &str)] = &[
    // (meaning, OpenAI finish_reason, Anthropic stop_reason, Gemini finishReason)
    (Stop::Stop, "stop", "end_turn", "STOP"),
    (Stop::Length, "length", "max_tokens", "MAX_TOKENS"),
    (Stop::ToolCalls, "tool_calls", "tool_use", "STOP"),
    (Stop::ContentFilter, "content_filter", "refusal", "SAFETY"),
];

impl Stop {
    /// OpenAI's `finish_reason`.
    pub fn openai(self) -> &'static str {
        STOPS
            .iter()
            .find(|r| r.0 == self)
            .map(|r| r.1)
            .unwrap_or("stop")
    }

    /// Anthropic's `stop_reason`.
    pub fn anthropic(self) -> &'static str {
        STOPS
            .iter()
            .find(|r| r.0 == self)
            .map(|r| r.2)
            .unwrap_or("end_turn")
    }

    /// Gemini's `finishReason`.
    pub fn gemini(self) -> &'static str {
        STOPS
            .iter()
            .find(|r| r.0 == self)
            .map(|r| r.3)
            .unwrap_or("STOP")
    }

    /// From OpenAI's `finish_reason` (`function_call` is the legacy tool call).
    pub fn from_openai(s: &str) -> Stop {
        match s {
            "function_call" => Stop::ToolCalls,
            _ => STOPS
                .iter()
                .find(|r| r.1 == s)
                .map(|r| r.0)
                .unwrap_or(Stop::Stop),
        }
    }

    /// From Anthropic's `stop_reason` (`stop_sequence` and `pause_turn` are
    /// ends; a full context window is a length stop).
    pub fn from_anthropic(s: &str) -> Stop {
        match s {
            "stop_sequence" | "pause_turn" => Stop::Stop,
            "model_context_window_exceeded" => Stop::Length,
            _ => STOPS
                .iter()
                .find(|r| r.2 == s)
                .map(|r| r.0)
                .unwrap_or(Stop::Stop),
        }
    }

    /// From Gemini's `finishReason` (Gemini has no tool-call reason: callers
    /// use [`Stop::ToolCalls`] when function calls were produced). Every
    /// safety-like or unknown reason is a content filter, except the
    /// unspecified one.
    pub fn from_gemini(s: &str) -> Stop {
        match s {
            "STOP" | "FINISH_REASON_UNSPECIFIED" | "" => Stop::Stop,
            "MAX_TOKENS" => Stop::Length,
            _ => Stop::ContentFilter,
        }
    }
}

#[cfg(test)]
mod stop_tests {
    use super::*;

    #[test]
    fn stop_reasons_round_trip_where_meaning_is_kept() {
        for s in [
            Stop::Stop,
            Stop::Length,
            Stop::ToolCalls,
            Stop::ContentFilter,
        ] {
            assert_eq!(Stop::from_openai(s.openai()), s);
            assert_eq!(Stop::from_anthropic(s.anthropic()), s);
        }
        assert_eq!(Stop::from_gemini("MAX_TOKENS"), Stop::Length);
        assert_eq!(Stop::from_gemini("RECITATION"), Stop::ContentFilter);
        assert_eq!(Stop::from_anthropic("stop_sequence"), Stop::Stop);
    }

    #[test]
    fn usage_tables() {
        let a = anthropic_usage(
            &serde_json::json!({"input_tokens": 5, "cache_read_input_tokens": 3, "cache_creation_input_tokens": 2, "output_tokens": 7}),
        );
        assert_eq!(
            (a.prompt_tokens, a.cached_tokens, a.completion_tokens),
            (10, 3, 7)
        );
        let g = gemini_usage(
            &serde_json::json!({"promptTokenCount": 8, "candidatesTokenCount": 4, "thoughtsTokenCount": 2, "cachedContentTokenCount": 1}),
        );
        assert_eq!(
            (g.prompt_tokens, g.cached_tokens, g.completion_tokens),
            (8, 1, 6)
        );
        let back = anthropic_usage(&anthropic_usage_json(&a));
        assert_eq!(back, a);
    }
}

#[cfg(test)]
mod fast_tests {
    use super::*;

    #[test]
    fn fast_usage_matches_the_full_parse() {
        let body = br#"{"id":"x","choices":[{"message":{"content":"the \"usage\": is here"}}],"usage":{"prompt_tokens":10,"completion_tokens":20,"prompt_tokens_details":{"cached_tokens":3}}}"#;
        assert_eq!(openai_usage_fast(body), openai_usage(body));
        assert_eq!(openai_usage_fast(body).unwrap().cached_tokens, 3);
        assert!(openai_usage_fast(b"<html>").is_none());
        assert!(openai_usage_fast(br#"{"usage":null}"#).is_none());
        assert!(openai_usage_fast(br#"{"a":"\"usage\""}"#).is_none());
    }
}
