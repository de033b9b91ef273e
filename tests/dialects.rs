//! Every door (OpenAI chat, Anthropic messages, Gemini, Responses) against
//! every channel dialect (OpenAI, Anthropic, Gemini), plain and streamed, with
//! and without tools, through the mock upstream. The same call costs the same
//! quota whichever door it came in by.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::spawn;
use serde_json::{Value, json};
use sluice::mock::{COMPLETION_TOKENS, PROMPT_TOKENS};

/// The mock model each channel serves; ratio 1, completion ratio 1 so the
/// cost is prompt + completion tokens.
const MODEL: &str = "dialect-model";

fn expected_cost(max_tokens: i64) -> i64 {
    PROMPT_TOKENS + max_tokens.min(COMPLETION_TOKENS)
}

#[derive(Clone, Copy, Debug)]
enum Door {
    Chat,
    Messages,
    Gemini,
    Responses,
}

fn request(door: Door, stream: bool, tools: bool) -> (String, Value) {
    let max = 16;
    match door {
        Door::Chat => {
            let mut b = json!({"model": MODEL, "max_tokens": max, "stream": stream,
                "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello"}]});
            if tools {
                b["tools"] = json!([{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object", "properties": {"q": {"type": "string"}}}}}]);
            }
            ("/v1/chat/completions".into(), b)
        }
        Door::Messages => {
            let mut b = json!({"model": MODEL, "max_tokens": max, "stream": stream, "system": "be brief",
                "messages": [{"role": "user", "content": "hello"}]});
            if tools {
                b["tools"] = json!([{"name": "lookup", "input_schema": {"type": "object", "properties": {"q": {"type": "string"}}}}]);
            }
            ("/v1/messages".into(), b)
        }
        Door::Gemini => {
            let action = if stream {
                "streamGenerateContent?alt=sse"
            } else {
                "generateContent"
            };
            let mut b = json!({"systemInstruction": {"parts": [{"text": "be brief"}]},
                "contents": [{"role": "user", "parts": [{"text": "hello"}]}],
                "generationConfig": {"maxOutputTokens": max}});
            if tools {
                b["tools"] = json!([{"functionDeclarations": [{"name": "lookup", "parameters": {"type": "object", "properties": {"q": {"type": "string"}}}}]}]);
            }
            (format!("/v1beta/models/{MODEL}:{action}"), b)
        }
        Door::Responses => {
            let mut b = json!({"model": MODEL, "max_output_tokens": max, "stream": stream,
                "instructions": "be brief", "input": "hello"});
            if tools {
                b["tools"] = json!([{"type": "function", "name": "lookup", "parameters": {"type": "object", "properties": {"q": {"type": "string"}}}}]);
            }
            ("/v1/responses".into(), b)
        }
    }
}

/// Checks the body is the door's dialect and carries the mock's answer.
fn check(door: Door, stream: bool, tools: bool, text: &str) {
    if !stream {
        let v: Value =
            serde_json::from_str(text).unwrap_or_else(|_| panic!("{door:?}: not JSON: {text}"));
        match door {
            Door::Chat => {
                let m = &v["choices"][0]["message"];
                if tools {
                    assert_eq!(
                        m["tool_calls"][0]["function"]["name"],
                        json!("lookup"),
                        "{v}"
                    );
                    assert_eq!(v["choices"][0]["finish_reason"], json!("tool_calls"), "{v}");
                } else {
                    assert!(m["content"].as_str().unwrap().contains("word0"), "{v}");
                }
            }
            Door::Messages => {
                assert_eq!(v["type"], json!("message"), "{v}");
                if tools {
                    assert_eq!(v["content"][0]["type"], json!("tool_use"), "{v}");
                    assert_eq!(v["content"][0]["input"], json!({"q": "mock"}), "{v}");
                    assert_eq!(v["stop_reason"], json!("tool_use"), "{v}");
                } else {
                    assert!(
                        v["content"][0]["text"].as_str().unwrap().contains("word0"),
                        "{v}"
                    );
                    assert_eq!(v["stop_reason"], json!("end_turn"), "{v}");
                }
            }
            Door::Gemini => {
                let p = &v["candidates"][0]["content"]["parts"][0];
                if tools {
                    assert_eq!(p["functionCall"]["args"], json!({"q": "mock"}), "{v}");
                } else {
                    assert!(p["text"].as_str().unwrap().contains("word0"), "{v}");
                }
                assert!(
                    v["usageMetadata"]["promptTokenCount"].as_i64().unwrap() > 0,
                    "{v}"
                );
            }
            Door::Responses => {
                assert_eq!(v["object"], json!("response"), "{v}");
                let item = &v["output"][0];
                if tools {
                    assert_eq!(item["type"], json!("function_call"), "{v}");
                    assert_eq!(item["name"], json!("lookup"), "{v}");
                } else {
                    assert!(
                        item["content"][0]["text"]
                            .as_str()
                            .unwrap()
                            .contains("word0"),
                        "{v}"
                    );
                }
                assert!(v["usage"]["input_tokens"].as_i64().unwrap() > 0, "{v}");
            }
        }
        return;
    }
    match door {
        Door::Chat => {
            assert!(text.contains("[DONE]"), "{text}");
            if tools {
                assert!(text.contains("\"tool_calls\""), "{text}");
            } else {
                assert!(text.contains("word0"), "{text}");
            }
        }
        Door::Messages => {
            for e in [
                "event: message_start",
                "event: content_block_start",
                "event: content_block_delta",
                "event: content_block_stop",
                "event: message_delta",
                "event: message_stop",
            ] {
                assert!(text.contains(e), "{e} missing: {text}");
            }
            if tools {
                assert!(text.contains("input_json_delta"), "{text}");
                assert!(text.contains("\"stop_reason\":\"tool_use\""), "{text}");
            } else {
                assert!(text.contains("text_delta"), "{text}");
            }
        }
        Door::Gemini => {
            assert!(!text.contains("[DONE]"), "{text}");
            assert!(text.contains("finishReason"), "{text}");
            if tools {
                assert!(text.contains("functionCall"), "{text}");
            } else {
                assert!(text.contains("word0"), "{text}");
            }
        }
        Door::Responses => {
            assert!(text.contains("event: response.created"), "{text}");
            assert!(text.contains("event: response.completed"), "{text}");
            if tools {
                assert!(
                    text.contains("response.function_call_arguments.delta"),
                    "{text}"
                );
            } else {
                assert!(text.contains("response.output_text.delta"), "{text}");
            }
        }
    }
}

#[tokio::test]
async fn every_door_reaches_every_channel_and_costs_the_same() {
    let ts = spawn().await;
    let mock = common::relay::mock().await;
    ts.option("ModelRatio", &format!(r#"{{"{MODEL}":1}}"#))
        .await;
    ts.option("CompletionRatio", &format!(r#"{{"{MODEL}":1}}"#))
        .await;
    let user = ts.user("dialects", 1).await;
    ts.give_quota(&user, 10_000_000).await;
    let channels = [(1, "openai"), (14, "anthropic"), (24, "gemini")];
    for (ty, name) in channels {
        let id = ts
            .channel(
                json!({"type": ty, "name": name, "key": "ok", "base_url": mock.url(),
                "models": MODEL, "group": name}),
            )
            .await;
        assert!(id > 0);
    }
    ts.option(
        "UserUsableGroups",
        r#"{"default":"d","openai":"o","anthropic":"a","gemini":"g"}"#,
    )
    .await;
    for (_, group) in channels {
        let (tid, key) = ts
            .key(
                &user,
                json!({"name": group, "unlimited_quota": true, "group": group}),
            )
            .await;
        for door in [Door::Chat, Door::Messages, Door::Gemini, Door::Responses] {
            for stream in [false, true] {
                for tools in [false, true] {
                    let (path, body) = request(door, stream, tools);
                    let r = ts
                        .http
                        .post(ts.url(&path))
                        .header("x-goog-api-key", &key)
                        .header("x-api-key", &key)
                        .json(&body)
                        .send()
                        .await
                        .unwrap();
                    let status = r.status();
                    let text = r.text().await.unwrap();
                    assert_eq!(
                        status, 200,
                        "{group} {door:?} stream={stream} tools={tools}: {text}"
                    );
                    check(door, stream, tools, &text);
                }
            }
        }
        ts.flush().await;
        let logs = ts
            .get(
                &user,
                &format!("/api/log/self?type=2&token_name={group}&page_size=100"),
            )
            .await;
        let items = logs.ok()["items"].as_array().unwrap().clone();
        assert_eq!(items.len(), 16, "{group}");
        for it in &items {
            assert_eq!(it["quota"], json!(expected_cost(16)), "{group}: {it}");
            assert_eq!(it["token_id"], json!(tid));
        }
        let doors: std::collections::BTreeSet<String> = items
            .iter()
            .map(|i| {
                serde_json::from_str::<Value>(i["other"].as_str().unwrap()).unwrap()["dialect"]
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect();
        assert_eq!(
            doors.into_iter().collect::<Vec<_>>(),
            vec!["anthropic", "gemini", "openai", "responses"]
        );
    }
    ts.stop().await;
}
