"""Drives the unmodified openai and anthropic SDKs against a fake upstream twice — directly
and through the llmtrace gateway — and checks the client gets exactly the same thing.
Each gateway call is tagged with `x-llmtrace-user-id: <scenario>` so the test can find its
span. Usage: gateway_client.py GATEWAY_URL UPSTREAM_URL. Prints one JSON line of facts."""

import asyncio
import json
import sys

import anthropic
import openai

GATEWAY, UPSTREAM = sys.argv[1], sys.argv[2]
SYSTEM = {"role": "system", "content": "You are a shipping assistant."}
ASK = {"role": "user", "content": "Where is my parcel number 4417?"}
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Weather for a city",
                                           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]
facts = {}


def clients(kind=openai.OpenAI):
    direct = kind(base_url=UPSTREAM + "/v1", api_key="sk-test", max_retries=0)
    proxied = kind(base_url=GATEWAY + "/v1", api_key="sk-test", max_retries=0)
    return direct, proxied


def tag(scenario, **more):
    return {"x-llmtrace-user-id": scenario, **more}


def same(scenario, call, dump=lambda r: r.model_dump()):
    """Runs `call(client, headers)` directly and through the gateway; results must match."""
    direct, proxied = clients()
    want = dump(call(direct, tag(scenario)))
    got = dump(call(proxied, tag(scenario)))
    assert got == want, f"{scenario}: through the gateway\n{got}\nbut directly\n{want}"


def stream_dump(stream):
    return [chunk.model_dump() for chunk in stream]


# chat, plain, with everything a call can carry
direct, proxied = clients()
kwargs = dict(model="gpt-4o-mini", messages=[SYSTEM, ASK], user="end-user-1", metadata={"tier": "gold"},
              temperature=0.2, max_completion_tokens=50)
want = direct.chat.completions.create(**kwargs).model_dump()
raw = proxied.chat.completions.with_raw_response.create(
    **kwargs, extra_headers=tag("chat-plain", **{"x-llmtrace-session-id": "sess-1",
                                                 "x-llmtrace-metadata-team": "search"}))
assert raw.parse().model_dump() == want, "chat-plain differs"
assert raw.headers.get("x-request-id") == "req_fake", "upstream headers are relayed"
facts["chat_plain_trace_id"] = raw.headers.get("x-llmtrace-trace-id")

same("chat-stream", lambda c, h: c.chat.completions.create(
    model="gpt-4o-mini", messages=[SYSTEM, ASK], stream=True, extra_headers=h), stream_dump)
same("chat-stream-usage", lambda c, h: c.chat.completions.create(
    model="gpt-4o-mini", messages=[SYSTEM, ASK], stream=True, stream_options={"include_usage": True},
    extra_headers=h), stream_dump)
same("chat-tools", lambda c, h: c.chat.completions.create(
    model="tool-model", messages=[ASK], tools=TOOLS, extra_headers=h))
same("chat-tools-stream", lambda c, h: c.chat.completions.create(
    model="tool-model", messages=[ASK], tools=TOOLS, stream=True, extra_headers=h), stream_dump)


async def async_chat():
    direct, proxied = clients(openai.AsyncOpenAI)
    results = []
    for client in (direct, proxied):
        answer = await client.chat.completions.create(model="gpt-4o-mini", messages=[ASK],
                                                      extra_headers=tag("chat-async"))
        results.append(answer.model_dump())
    assert results[0] == results[1], "chat-async differs"

asyncio.run(async_chat())

same("responses", lambda c, h: c.responses.create(
    model="gpt-4.1-mini", instructions="Answer briefly.", input="Weather in Paris?", extra_headers=h))
same("responses-stream", lambda c, h: c.responses.create(
    model="gpt-4.1-mini", input=[{"role": "user", "content": "Weather in Paris?"}], stream=True,
    extra_headers=h), stream_dump)
same("embeddings", lambda c, h: c.embeddings.create(
    model="text-embedding-3-small", input=["parcel 4417", "refund"], extra_headers=h))
same("embeddings-float", lambda c, h: c.embeddings.create(
    model="text-embedding-3-small", input="parcel", encoding_format="float", extra_headers=h))
same("models", lambda c, h: c.models.list(extra_headers=h), lambda page: [m.model_dump() for m in page])

# an upstream error reaches the client unchanged
errors = []
for client in clients():
    try:
        client.chat.completions.create(model="error-429", messages=[ASK], extra_headers=tag("error-429"))
        errors.append(None)
    except openai.RateLimitError as e:
        errors.append((e.status_code, e.body))
assert errors[0] == errors[1] and errors[0][0] == 429, f"errors differ: {errors}"

# Anthropic, plain and streaming
a_direct = anthropic.Anthropic(base_url=UPSTREAM, api_key="sk-ant-test", max_retries=0)
a_proxied = anthropic.Anthropic(base_url=GATEWAY, api_key="sk-ant-test", max_retries=0)
results = []
for client in (a_direct, a_proxied):
    results.append(client.messages.create(
        model="claude-sonnet-4-5", max_tokens=64, system="Be polite.",
        messages=[{"role": "user", "content": "Bonjour?"}], extra_headers=tag("anthropic")).model_dump())
assert results[0] == results[1], f"anthropic differs: {results}"
results = []
for client in (a_direct, a_proxied):
    with client.messages.stream(model="claude-sonnet-4-5", max_tokens=64,
                                messages=[{"role": "user", "content": "Bonjour?"}],
                                extra_headers=tag("anthropic-stream")) as stream:
        events = [event.model_dump() for event in stream]
        results.append((events, stream.get_final_message().model_dump()))
assert results[0] == results[1], "anthropic-stream differs"

# the caller's span becomes the parent
proxied.chat.completions.create(model="gpt-4o-mini", messages=[ASK], extra_headers=tag(
    "traceparent", traceparent="00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"))

# privacy
proxied.chat.completions.create(model="gpt-4o-mini", messages=[ASK],
                                extra_headers=tag("trace-off", **{"x-llmtrace-trace": "off"}))
proxied.chat.completions.create(model="gpt-4o-mini", messages=[ASK],
                                extra_headers=tag("metadata-only", **{"x-llmtrace-trace": "metadata-only"}))
proxied.chat.completions.create(model="gpt-4o-mini", messages=[ASK], store=False,
                                extra_headers=tag("store-false"))

# a conversation without session ids: each turn resends the history plus the answer
history = [SYSTEM, ASK]
for turn in ["And the one after?", "Thanks!"]:
    answer = proxied.chat.completions.create(model="gpt-4o-mini", messages=history,
                                             extra_headers=tag("multi-turn"))
    history = history + [answer.choices[0].message.model_dump(exclude_none=True), {"role": "user", "content": turn}]
proxied.chat.completions.create(model="gpt-4o-mini", messages=history, extra_headers=tag("multi-turn"))
proxied.chat.completions.create(model="gpt-4o-mini", messages=[SYSTEM, {"role": "user", "content": "New topic"}],
                                extra_headers=tag("multi-turn"))

print(json.dumps(facts))
