"""Google's `google-genai` SDK against sluice's Gemini door
(/v1beta/models/{model}:generateContent, :streamGenerateContent, :countTokens).

Env: BASE (server URL), KEY (a key that may use every model in MODELS),
MODELS (JSON object: channel name -> model served by that channel),
ERROR_MODEL (a model whose channel answers 503).

Prints one JSON report on the last line: what the SDK saw. The Rust side
(tests/sdk_gemini.rs) asserts on it.
"""

import json
import os
import sys

from google import genai
from google.genai import errors, types

BASE = os.environ["BASE"]
KEY = os.environ["KEY"]
MODELS = json.loads(os.environ["MODELS"])

LOOKUP = types.Tool(
    function_declarations=[
        types.FunctionDeclaration(
            name="lookup",
            description="Look something up",
            parameters=types.Schema(
                type="OBJECT",
                properties={"q": types.Schema(type="STRING")},
                required=["q"],
            ),
        )
    ]
)


def client(key=KEY):
    return genai.Client(api_key=key, http_options={"base_url": BASE})


def usage(u):
    if u is None:
        return None
    return {
        "prompt": u.prompt_token_count,
        "candidates": u.candidates_token_count,
        "total": u.total_token_count,
    }


def response(r):
    c = r.candidates[0] if r.candidates else None
    calls = [{"name": f.name, "args": f.args} for f in (r.function_calls or [])]
    texts = []
    if c is not None and c.content is not None:
        texts = [p.text for p in (c.content.parts or []) if p.text is not None]
    return {
        "text": "".join(texts),
        "role": c.content.role if c is not None and c.content is not None else None,
        "finish_reason": c.finish_reason.value if c is not None and c.finish_reason else None,
        "function_calls": calls,
        "usage": usage(r.usage_metadata),
    }


def one_channel(model):
    c = client()
    cfg = types.GenerateContentConfig(system_instruction="be brief", max_output_tokens=16)
    out = {"generate": response(c.models.generate_content(model=model, contents="hello", config=cfg))}

    chunks = [response(x) for x in c.models.generate_content_stream(model=model, contents="hello", config=cfg)]
    out["stream"] = chunks

    tcfg = types.GenerateContentConfig(max_output_tokens=16, tools=[LOOKUP])
    out["generate_tools"] = response(c.models.generate_content(model=model, contents="look it up", config=tcfg))
    out["stream_tools"] = [
        response(x) for x in c.models.generate_content_stream(model=model, contents="look it up", config=tcfg)
    ]

    # The function's answer goes back; the model answers in text.
    history = [
        types.Content(role="user", parts=[types.Part(text="look it up")]),
        types.Content(role="model", parts=[types.Part(function_call=types.FunctionCall(name="lookup", args={"q": "x"}))]),
        types.Content(
            role="user",
            parts=[types.Part(function_response=types.FunctionResponse(name="lookup", response={"answer": 42}))],
        ),
    ]
    out["generate_tool_result"] = response(c.models.generate_content(model=model, contents=history, config=tcfg))

    n = c.models.count_tokens(model=model, contents="hello there")
    out["count_tokens"] = {"total_tokens": n.total_tokens}
    return out


def error_of(fn):
    try:
        fn()
    except errors.APIError as e:
        return {"class": type(e).__name__, "code": e.code, "status": e.status, "message": e.message}
    return {"class": None}


def main():
    report = {"channels": {name: one_channel(m) for name, m in MODELS.items()}}
    model = next(iter(MODELS.values()))
    # Keep the clients referenced: a dropped Client closes its HTTP client.
    bad, good = client("sk-not-a-real-key"), client()
    report["errors"] = {
        "bad_key": error_of(lambda: bad.models.generate_content(model=model, contents="hi")),
        "bad_key_stream": error_of(lambda: list(bad.models.generate_content_stream(model=model, contents="hi"))),
        "upstream_503": error_of(
            lambda: good.models.generate_content(model=os.environ["ERROR_MODEL"], contents="hi")
        ),
    }
    sys.stdout.write(json.dumps(report) + "\n")


if __name__ == "__main__":
    main()
