"""The `openai` SDK's Responses API against sluice's /v1/responses door.

Env: BASE (server URL), KEY (a key that may use every model in MODELS),
MODELS (JSON object: channel name -> model served by that channel).

Prints one JSON report on the last line: what the SDK saw. The Rust side
(tests/sdk_responses.rs) asserts on it.
"""

import json
import os
import sys

import openai

BASE = os.environ["BASE"]
KEY = os.environ["KEY"]
MODELS = json.loads(os.environ["MODELS"])

TOOLS = [
    {
        "type": "function",
        "name": "lookup",
        "description": "Look something up",
        "parameters": {
            "type": "object",
            "properties": {"q": {"type": "string"}},
            "required": ["q"],
        },
    }
]


def client(key=KEY):
    return openai.OpenAI(api_key=key, base_url=BASE + "/v1", max_retries=0)


def item(i):
    d = i.model_dump()
    keep = {"type", "role", "status", "content", "name", "arguments", "call_id"}
    out = {k: v for k, v in d.items() if k in keep}
    if "content" in out:
        out["content"] = [{"type": c["type"], "text": c.get("text")} for c in out["content"]]
    out["has_id"] = bool(d.get("id"))
    return out


def response(r):
    u = r.usage
    return {
        "object": r.object,
        "model": r.model,
        "status": r.status,
        "output_text": r.output_text,
        "output": [item(i) for i in r.output],
        "incomplete_details": r.incomplete_details.model_dump() if r.incomplete_details else None,
        "usage": None
        if u is None
        else {
            "input_tokens": u.input_tokens,
            "output_tokens": u.output_tokens,
            "total_tokens": u.total_tokens,
            "cached_tokens": u.input_tokens_details.cached_tokens,
            "reasoning_tokens": u.output_tokens_details.reasoning_tokens,
        },
        "has_id": bool(r.id),
        "created_at_is_number": isinstance(r.created_at, (int, float)),
        "tools_is_list": isinstance(r.tools, list),
        "parallel_tool_calls": r.parallel_tool_calls,
    }


def one_channel(model):
    c = client()
    out = {}
    out["create"] = response(
        c.responses.create(model=model, input="hello", instructions="be brief", max_output_tokens=16)
    )
    out["create_tools"] = response(
        c.responses.create(model=model, input="look it up", tools=TOOLS, max_output_tokens=16)
    )
    out["create_tool_result"] = response(
        c.responses.create(
            model=model,
            max_output_tokens=16,
            tools=TOOLS,
            input=[
                {"role": "user", "content": [{"type": "input_text", "text": "look it up"}]},
                {"type": "function_call", "call_id": "call_1", "name": "lookup", "arguments": '{"q":"x"}'},
                {"type": "function_call_output", "call_id": "call_1", "output": "42"},
            ],
        )
    )

    events = []
    text = ""
    completed = None
    for e in c.responses.create(model=model, input="hello", max_output_tokens=16, stream=True):
        events.append({"type": e.type, "seq": e.sequence_number})
        if e.type == "response.output_text.delta":
            text += e.delta
        if e.type == "response.completed":
            completed = response(e.response)
    out["stream"] = {"events": events, "text": text, "completed": completed}

    with c.responses.stream(model=model, input="hello", max_output_tokens=16) as s:
        deltas = [e.delta for e in s if e.type == "response.output_text.delta"]
        final = s.get_final_response()
    out["stream_helper"] = {"deltas": deltas, "final": response(final)}

    with c.responses.stream(model=model, input="look it up", tools=TOOLS, max_output_tokens=16) as s:
        kinds = [e.type for e in s]
        final = s.get_final_response()
    out["stream_helper_tools"] = {"events": kinds, "final": response(final)}
    return out


def main():
    report = {"channels": {name: one_channel(m) for name, m in MODELS.items()}}
    bad = client("sk-not-a-real-key")
    try:
        bad.responses.create(model=next(iter(MODELS.values())), input="hi")
        report["error"] = None
    except openai.APIStatusError as e:
        report["error"] = {"class": type(e).__name__, "status": e.status_code, "body": e.body}
    sys.stdout.write(json.dumps(report) + "\n")


if __name__ == "__main__":
    main()
