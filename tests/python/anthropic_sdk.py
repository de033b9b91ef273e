"""The official `anthropic` SDK against sluice's /v1/messages door.

Env: BASE (server URL), KEY (a key that may use every model in MODELS),
MODELS (JSON object: channel name -> model served by that channel),
BAD_MODEL_KEY (a key whose model limits exclude MODELS), POOR_KEY (a key
with almost no quota), RATE_MODEL (a model whose channel answers 429).

Prints one JSON report on the last line: what the SDK saw. The Rust side
(tests/sdk_anthropic.rs) asserts on it.
"""

import json
import os
import sys

import anthropic

BASE = os.environ["BASE"]
KEY = os.environ["KEY"]
MODELS = json.loads(os.environ["MODELS"])

TOOLS = [
    {
        "name": "lookup",
        "description": "Look something up",
        "input_schema": {
            "type": "object",
            "properties": {"q": {"type": "string"}},
            "required": ["q"],
        },
    }
]


def client(key=KEY):
    return anthropic.Anthropic(api_key=key, base_url=BASE, max_retries=0)


def block(b):
    d = b.model_dump()
    # Keep only what the wire format defines for the block types used here.
    keep = {"type", "text", "id", "name", "input"}
    return {k: v for k, v in d.items() if k in keep}


def message(m):
    return {
        "id": m.id,
        "type": m.type,
        "role": m.role,
        "model": m.model,
        "content": [block(b) for b in m.content],
        "stop_reason": m.stop_reason,
        "stop_sequence": m.stop_sequence,
        "usage": {
            "input_tokens": m.usage.input_tokens,
            "output_tokens": m.usage.output_tokens,
            "cache_read_input_tokens": m.usage.cache_read_input_tokens,
        },
    }


def one_channel(model):
    c = client()
    out = {}
    hello = [{"role": "user", "content": "hello"}]
    out["create"] = message(
        c.messages.create(model=model, max_tokens=16, system="be brief", messages=hello)
    )
    out["create_tools"] = message(
        c.messages.create(model=model, max_tokens=16, messages=hello, tools=TOOLS)
    )
    # A tool loop: the tool result goes back; the model answers in text.
    out["create_tool_result"] = message(
        c.messages.create(
            model=model,
            max_tokens=16,
            tools=TOOLS,
            messages=[
                {"role": "user", "content": "look it up"},
                {
                    "role": "assistant",
                    "content": [
                        {"type": "tool_use", "id": "toolu_01", "name": "lookup", "input": {"q": "x"}}
                    ],
                },
                {
                    "role": "user",
                    "content": [{"type": "tool_result", "tool_use_id": "toolu_01", "content": "42"}],
                },
            ],
        )
    )

    with c.messages.stream(model=model, max_tokens=16, system="be brief", messages=hello) as s:
        texts = list(s.text_stream)
        final = s.get_final_message()
    out["stream_text"] = {"pieces": texts, "final": message(final)}

    with c.messages.stream(model=model, max_tokens=16, messages=hello, tools=TOOLS) as s:
        kinds = [e.type for e in s]
        final = s.get_final_message()
    out["stream_tools"] = {"events": kinds, "final": message(final)}

    n = c.messages.count_tokens(model=model, messages=hello, system="be brief")
    out["count_tokens"] = {"input_tokens": n.input_tokens}
    return out


def error_of(fn):
    try:
        fn()
    except anthropic.APIStatusError as e:
        return {
            "class": type(e).__name__,
            "status": e.status_code,
            "body": e.body,
            "request_id": e.request_id,
        }
    return {"class": None}


def errors():
    model = next(iter(MODELS.values()))
    hello = [{"role": "user", "content": "hello"}]
    out = {}
    out["401"] = error_of(
        lambda: client("sk-not-a-real-key").messages.create(
            model=model, max_tokens=16, messages=hello
        )
    )
    out["403"] = error_of(
        lambda: client(os.environ["BAD_MODEL_KEY"]).messages.create(
            model=model, max_tokens=16, messages=hello
        )
    )
    out["429_quota"] = error_of(
        lambda: client(os.environ["POOR_KEY"]).messages.create(
            model=model, max_tokens=16, messages=hello
        )
    )
    out["429_upstream"] = error_of(
        lambda: client().messages.create(
            model=os.environ["RATE_MODEL"], max_tokens=16, messages=hello
        )
    )

    def stream_401():
        with client("sk-not-a-real-key").messages.stream(
            model=model, max_tokens=16, messages=hello
        ) as s:
            s.get_final_message()

    out["401_stream"] = error_of(stream_401)
    return out


def main():
    report = {"channels": {name: one_channel(m) for name, m in MODELS.items()}}
    report["errors"] = errors()
    sys.stdout.write(json.dumps(report) + "\n")


if __name__ == "__main__":
    main()
