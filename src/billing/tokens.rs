//! Local token counts (tiktoken), used when an upstream reports no usage and
//! for the count-tokens endpoints. Counting is CPU work: callers with long
//! texts run it on the blocking pool. A vocabulary is loaded on first use
//! only (tens of MB), so a gateway whose upstreams report usage never pays it.

use serde_json::Value;
use tiktoken_rs::CoreBPE;

/// The tokenizer for `model`: the model's own when tiktoken knows it,
/// otherwise o200k (the current OpenAI vocabulary; a fair estimate for
/// others).
pub fn bpe(model: &str) -> &'static CoreBPE {
    tiktoken_rs::bpe_for_model(model).unwrap_or_else(|_| tiktoken_rs::o200k_base_singleton())
}

/// Tokens in a text.
pub fn count(model: &str, text: &str) -> i64 {
    if text.is_empty() {
        return 0;
    }
    bpe(model).encode_ordinary(text).len() as i64
}

/// Every string inside a JSON value, concatenated with spaces (message
/// contents, tool arguments, …) — what a prompt count should see.
pub fn text_of(v: &Value, out: &mut String) {
    match v {
        // Inline images are not text; a data URL would count as thousands
        // of tokens.
        Value::String(s) if !s.starts_with("data:") => {
            if !out.is_empty() {
                out.push(' ');
            }
            out.push_str(s);
        }
        Value::Array(a) => a.iter().for_each(|x| text_of(x, out)),
        Value::Object(o) => o.values().for_each(|x| text_of(x, out)),
        _ => {}
    }
}

/// Every string inside a JSON value appended as is: streamed deltas are
/// pieces of one text and must not gain separators.
pub fn append_text(v: &Value, out: &mut String) {
    match v {
        Value::String(s) if !s.starts_with("data:") => out.push_str(s),
        Value::Array(a) => a.iter().for_each(|x| append_text(x, out)),
        Value::Object(o) => o.values().for_each(|x| append_text(x, out)),
        _ => {}
    }
}

/// Prompt tokens of a chat request: the text of its messages plus a few
/// tokens of framing per message (OpenAI's documented overhead).
pub fn count_prompt(model: &str, request: &Value) -> i64 {
    let mut text = String::new();
    let mut messages = 0;
    for key in [
        "messages",
        "prompt",
        "input",
        "system",
        "contents",
        "systemInstruction",
        "tools",
    ] {
        if let Some(v) = request.get(key) {
            if let Some(a) = v.as_array() {
                messages += a.len() as i64;
            }
            text_of(v, &mut text);
        }
    }
    count(model, &text) + 3 * messages + 3
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_are_plausible() {
        assert_eq!(count("gpt-4o", ""), 0);
        let n = count("gpt-4o", "Hello, world!");
        assert!((2..=6).contains(&n), "{n}");
        let req = serde_json::json!({"messages":[{"role":"user","content":"Hello, world!"}]});
        assert!(count_prompt("gpt-4o", &req) > n);
    }
}
