"""A fake OpenAI + Anthropic upstream for gateway tests, run as a process:
`python fake_llm.py` prints `port N` and serves on 127.0.0.1 until killed.

Responses are canned and deterministic (same ids, same timestamps), so a test can call it
directly and through the gateway and compare what the client got. JSON is compact, as the
real APIs send it. The model name picks the behaviour:
  tool-*     chat answers with a tool call (streamed as argument fragments)
  chat calls with `store: true` get a new completion id each (chatcmpl-storedNNNN).
  Responses calls that offer tools play a small agent run: hand off (`transfer_to_*`),
  call `get_weather`, then answer with its result; each such answer has a new id.
  error-429  429 with an OpenAI error body;  error-500  500
  anything else: a text answer.
"""

import base64
import json
import struct
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

ANSWER = "Your parcel ships tomorrow."
CHAT_USAGE = {"prompt_tokens": 21, "completion_tokens": 6, "total_tokens": 27,
              "prompt_tokens_details": {"cached_tokens": 4, "audio_tokens": 0},
              "completion_tokens_details": {"reasoning_tokens": 2, "audio_tokens": 0}}


def dumps(value):
    return json.dumps(value, separators=(",", ":"))


STORED = [0]


def chat_body(model, request):
    message = {"role": "assistant", "content": ANSWER, "refusal": None, "annotations": []}
    finish = "stop"
    if model.startswith("tool"):
        message = {"role": "assistant", "content": None, "refusal": None, "annotations": [],
                   "tool_calls": [{"id": "call_w1", "type": "function",
                                   "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}}]}
        finish = "tool_calls"
    # stored completions need ids of their own; other answers stay byte-identical
    completion_id = "chatcmpl-fake1"
    if request.get("store") is True:
        STORED[0] += 1
        completion_id = f"chatcmpl-stored{STORED[0]:04d}"
    return {"id": completion_id, "object": "chat.completion", "created": 1795314700, "model": model + "-2024-07-18",
            "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish}],
            "usage": CHAT_USAGE, "service_tier": "default", "system_fingerprint": "fp_fake"}


def chat_chunks(model, request):
    include_usage = (request.get("stream_options") or {}).get("include_usage")
    base = {"id": "chatcmpl-fake2", "object": "chat.completion.chunk", "created": 1795314701,
            "model": model + "-2024-07-18", "service_tier": "default", "system_fingerprint": "fp_fake"}

    def chunk(delta, finish=None):
        out = dict(base, choices=[{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}])
        if include_usage:
            out["usage"] = None
        return out

    chunks = [chunk({"role": "assistant", "content": "", "refusal": None})]
    if model.startswith("tool"):
        chunks.append(chunk({"tool_calls": [{"index": 0, "id": "call_w1", "type": "function",
                                             "function": {"name": "get_weather", "arguments": ""}}]}))
        for piece in ["{\"ci", "ty\":\"Pa", "ris\"}"]:
            chunks.append(chunk({"tool_calls": [{"index": 0, "function": {"arguments": piece}}]}))
        chunks.append(chunk({}, "tool_calls"))
    else:
        for piece in ["Your parcel", " ships", " tomorrow."]:
            chunks.append(chunk({"content": piece}))
        chunks.append(chunk({}, "stop"))
    if include_usage:
        chunks.append(dict(base, choices=[], usage=CHAT_USAGE))
    return [f"data: {dumps(c)}\n\n" for c in chunks] + ["data: [DONE]\n\n"]


def response_object(model, request, status="completed", output=None):
    return {"id": "resp_fake1", "object": "response", "created_at": 1795314702, "status": status,
            "error": None, "incomplete_details": None, "instructions": request.get("instructions"),
            "max_output_tokens": None, "model": model + "-2026-01-01", "output": output or [],
            "parallel_tool_calls": True, "previous_response_id": request.get("previous_response_id"),
            "reasoning": {"effort": None, "summary": None}, "store": True, "temperature": 1.0,
            "text": {"format": {"type": "text"}}, "tool_choice": "auto", "tools": [], "top_p": 1.0,
            "truncation": "disabled",
            "usage": {"input_tokens": 30, "input_tokens_details": {"cached_tokens": 0},
                      "output_tokens": 7, "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": 37}
            if status == "completed" else None,
            "user": None, "metadata": request.get("metadata") or {}}


MESSAGE_ITEM = {"type": "message", "id": "msg_fake1", "status": "completed", "role": "assistant",
                "content": [{"type": "output_text", "text": "It is sunny in Paris.", "annotations": []}]}


AGENT_CALLS = [0]


def agent_response(model, request):
    """One step of an agent run, decided by what the request offers and already holds."""
    tools = [t.get("name", "") for t in request.get("tools") or []]
    items = request.get("input") if isinstance(request.get("input"), list) else []
    outputs = [i for i in items if isinstance(i, dict) and i.get("type") == "function_call_output"]
    AGENT_CALLS[0] += 1
    n = AGENT_CALLS[0]
    weather = [o for o in outputs if "sunny" in str(o.get("output", ""))]
    if weather:
        output = [{"type": "message", "id": f"msg_agent{n}", "status": "completed", "role": "assistant",
                   "content": [{"type": "output_text", "text": f"It is {weather[-1]['output']}.", "annotations": []}]}]
    elif "get_weather" in tools:
        output = [{"type": "function_call", "id": f"fc_agent{n}", "call_id": f"call_weather{n}",
                   "name": "get_weather", "arguments": dumps({"city": "Paris"}), "status": "completed"}]
    else:
        handoff = next(t for t in tools if t.startswith("transfer_to_"))
        output = [{"type": "function_call", "id": f"fc_agent{n}", "call_id": f"call_handoff{n}",
                   "name": handoff, "arguments": "{}", "status": "completed"}]
    body = response_object(model, request, output=output)
    body["id"] = f"resp_agent{n:04d}"
    return body


def responses_events(model, request):
    events = []

    def add(kind, **fields):
        events.append(f"event: {kind}\ndata: {dumps(dict(type=kind, sequence_number=len(events), **fields))}\n\n")

    add("response.created", response=response_object(model, request, "in_progress"))
    add("response.output_item.added", output_index=0,
        item={"type": "message", "id": "msg_fake1", "status": "in_progress", "role": "assistant", "content": []})
    for piece in ["It is", " sunny in", " Paris."]:
        add("response.output_text.delta", item_id="msg_fake1", output_index=0, content_index=0, delta=piece, logprobs=[])
    add("response.output_item.done", output_index=0, item=MESSAGE_ITEM)
    add("response.completed", response=response_object(model, request, output=[MESSAGE_ITEM]))
    return events


def embeddings_body(model, request):
    inputs = request["input"] if isinstance(request["input"], list) else [request["input"]]
    vector = [0.25, -0.5, 0.125, 1.0]
    data = []
    for index, _ in enumerate(inputs):
        if request.get("encoding_format") == "base64":
            embedding = base64.b64encode(struct.pack("<4f", *vector)).decode()
        else:
            embedding = vector
        data.append({"object": "embedding", "index": index, "embedding": embedding})
    return {"object": "list", "data": data, "model": model,
            "usage": {"prompt_tokens": 5 * len(inputs), "total_tokens": 5 * len(inputs)}}


ANTHROPIC_USAGE = {"input_tokens": 12, "cache_creation_input_tokens": 3, "cache_read_input_tokens": 5,
                   "output_tokens": 9, "service_tier": "standard"}


def anthropic_body(model, request):
    return {"id": "msg_fakeA", "type": "message", "role": "assistant", "model": model,
            "content": [{"type": "text", "text": "Bonjour! Il fait beau."}],
            "stop_reason": "end_turn", "stop_sequence": None, "usage": ANTHROPIC_USAGE}


def anthropic_events(model, request):
    events = []

    def add(kind, **fields):
        events.append(f"event: {kind}\ndata: {dumps(dict(type=kind, **fields))}\n\n")

    start_usage = dict(ANTHROPIC_USAGE, output_tokens=1)
    add("message_start", message={"id": "msg_fakeB", "type": "message", "role": "assistant", "model": model,
                                  "content": [], "stop_reason": None, "stop_sequence": None, "usage": start_usage})
    add("content_block_start", index=0, content_block={"type": "text", "text": ""})
    add("ping")
    for piece in ["Bonjour!", " Il fait", " beau."]:
        add("content_block_delta", index=0, delta={"type": "text_delta", "text": piece})
    add("content_block_stop", index=0)
    add("message_delta", delta={"stop_reason": "end_turn", "stop_sequence": None}, usage={"output_tokens": 9})
    add("message_stop")
    return events


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def send_json(self, status, body, headers=()):
        data = dumps(body).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.send_header("x-request-id", "req_fake")
        for name, value in headers:
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def send_sse(self, frames):
        self.send_response(200)
        self.send_header("content-type", "text/event-stream; charset=utf-8")
        self.send_header("x-request-id", "req_fake")
        self.send_header("connection", "close")
        self.end_headers()
        for frame in frames:
            self.wfile.write(frame.encode())
            self.wfile.flush()
        self.close_connection = True

    def do_GET(self):
        if self.path.rstrip("/").endswith("/models"):
            self.send_json(200, {"object": "list", "data": [
                {"id": "gpt-4o-mini", "object": "model", "created": 1, "owned_by": "fake"}]})
        else:
            self.send_json(404, {"error": {"message": f"no route {self.path}", "type": "invalid_request_error",
                                           "param": None, "code": "not_found"}})

    def do_POST(self):
        length = int(self.headers.get("content-length", "0"))
        request = json.loads(self.rfile.read(length) or b"{}")
        model = request.get("model", "")
        path = self.path.split("?")[0]
        if model.startswith("error-"):
            status = int(model.split("-")[1])
            body = {"error": {"message": f"fake upstream says {status}", "type": "rate_limit_error" if status == 429
                              else "server_error", "param": None, "code": None}}
            if path.endswith("/messages"):
                body = {"type": "error", "error": {"type": "overloaded_error", "message": f"fake upstream says {status}"}}
            self.send_json(status, body, [("x-should-retry", "false")])
        elif path.endswith("/chat/completions"):
            if request.get("stream"):
                self.send_sse(chat_chunks(model, request))
            else:
                self.send_json(200, chat_body(model, request))
        elif path.endswith("/responses"):
            if request.get("stream"):
                self.send_sse(responses_events(model, request))
            elif request.get("tools"):
                self.send_json(200, agent_response(model, request))
            else:
                self.send_json(200, response_object(model, request, output=[MESSAGE_ITEM]))
        elif path.endswith("/embeddings"):
            self.send_json(200, embeddings_body(model, request))
        elif path.endswith("/messages"):
            if request.get("stream"):
                self.send_sse(anthropic_events(model, request))
            else:
                self.send_json(200, anthropic_body(model, request))
        else:
            self.do_GET()


def main():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    print(f"port {server.server_address[1]}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
