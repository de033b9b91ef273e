"""Drives sluice with the official `openai` Python SDK.

The Rust test (tests/sdk_openai.rs) starts the server and passes:
  SLUICE_BASE       http://127.0.0.1:<port>
  KEY_OK            a funded key limited to gpt-4o and text-embedding-3-small
  KEY_BAD           a key that does not exist            -> 401
  KEY_DISABLED      a disabled key                       -> 403
  KEY_EXHAUSTED     a key with no quota left             -> 429
Prints one JSON object with what the SDK returned; the Rust side checks it
against the server's ledger.
"""
import json
import os
import sys

import openai
from openai import OpenAI

BASE = os.environ["SLUICE_BASE"] + "/v1"


def client(key):
    # max_retries=0: the SDK must not retry refusals (the test would wait).
    return OpenAI(base_url=BASE, api_key=key, max_retries=0, timeout=30)


MESSAGES = [{"role": "user", "content": "Say hello"}]
out = {"sdk_version": openai.__version__}
ok = client(os.environ["KEY_OK"])

# Chat, not streamed; the raw response gives the request id header.
raw = ok.chat.completions.with_raw_response.create(
    model="gpt-4o", messages=MESSAGES, max_tokens=20
)
chat = raw.parse()
out["chat"] = {
    "request_id": raw.headers.get("x-request-id"),
    "content": chat.choices[0].message.content,
    "finish_reason": chat.choices[0].finish_reason,
    "usage": chat.usage.model_dump() if chat.usage else None,
}

# Chat, streamed, with the usage chunk asked for.
text, usage, chunks = "", None, 0
stream = ok.chat.completions.create(
    model="gpt-4o",
    messages=MESSAGES,
    max_tokens=20,
    stream=True,
    stream_options={"include_usage": True},
)
for chunk in stream:
    chunks += 1
    if chunk.choices:
        text += chunk.choices[0].delta.content or ""
    if chunk.usage is not None:
        usage = chunk.usage.model_dump()
out["stream"] = {"text": text, "usage": usage, "chunks": chunks}

# Embeddings.
emb = ok.embeddings.create(model="text-embedding-3-small", input=["one", "two"])
out["embeddings"] = {
    "count": len(emb.data),
    "dims": len(emb.data[0].embedding),
    "usage": emb.usage.model_dump(),
}

# Models: only what the key may use.
out["models"] = sorted(m.id for m in ok.models.list())

# Errors: each must be the SDK's own exception class.
out["errors"] = {}
for name, key, model in [
    ("bad_key", os.environ["KEY_BAD"], "gpt-4o"),
    ("disabled", os.environ["KEY_DISABLED"], "gpt-4o"),
    ("model_not_allowed", os.environ["KEY_OK"], "gpt-4o-mini"),
    ("exhausted", os.environ["KEY_EXHAUSTED"], "gpt-4o"),
]:
    try:
        client(key).chat.completions.create(model=model, messages=MESSAGES, max_tokens=5)
        out["errors"][name] = {"class": None}
    except openai.APIStatusError as e:
        body = e.body if isinstance(e.body, dict) else {}
        out["errors"][name] = {
            "class": type(e).__name__,
            "status": e.status_code,
            "code": e.code,
            "type": e.type,
            "message": body.get("message"),
            "request_id": e.response.headers.get("x-request-id"),
        }

print(json.dumps(out))
sys.stdout.flush()
