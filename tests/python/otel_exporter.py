"""Exports an agent span and a chat span with GenAI attributes through the stock
OpenTelemetry SDK exporter for the protocol given on the command line
(http/protobuf, http/json or grpc), at the llmtrace server named by LLMTRACE_* variables."""

import json
import os
import sys

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

protocol = sys.argv[1]
if protocol == "http/protobuf":
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    exporter = OTLPSpanExporter(endpoint=os.environ["LLMTRACE_OTLP_HTTP"] + "/v1/traces")
elif protocol == "http/json":
    from opentelemetry.exporter.otlp.json.http.trace_exporter import OTLPSpanExporter

    exporter = OTLPSpanExporter(endpoint=os.environ["LLMTRACE_HTTP"] + "/v1/traces")
elif protocol == "grpc":
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

    exporter = OTLPSpanExporter(endpoint=os.environ["LLMTRACE_OTLP_GRPC"], insecure=True)
else:
    raise SystemExit(f"unknown protocol {protocol}")

provider = TracerProvider(resource=Resource.create({"service.name": "exporter-test"}))
provider.add_span_processor(SimpleSpanProcessor(exporter))
tracer = provider.get_tracer("llmtrace.tests")

with tracer.start_as_current_span("invoke_agent WeatherBot") as agent:
    agent.set_attribute("gen_ai.operation.name", "invoke_agent")
    agent.set_attribute("gen_ai.agent.name", "WeatherBot")
    with tracer.start_as_current_span("chat gpt-4o-mini") as chat:
        chat.set_attribute("gen_ai.operation.name", "chat")
        chat.set_attribute("gen_ai.provider.name", "openai")
        chat.set_attribute("gen_ai.request.model", "gpt-4o-mini")
        chat.set_attribute("gen_ai.response.model", "gpt-4o-mini-2024-07-18")
        chat.set_attribute("gen_ai.usage.input_tokens", 19)
        chat.set_attribute("gen_ai.usage.output_tokens", 10)
        chat.set_attribute("gen_ai.conversation.id", "conv-7")
        chat.set_attribute("user.id", "user-42")
        chat.set_attribute("metadata", json.dumps({"tier": "gold"}))
        chat.set_attribute(
            "gen_ai.input.messages",
            json.dumps([{"role": "user", "parts": [{"type": "text", "content": "What is the weather in Paris?"}]}]),
        )
        chat.set_attribute(
            "gen_ai.output.messages",
            json.dumps([{"role": "assistant", "parts": [{"type": "text", "content": "Rainy, 12 degrees."}], "finish_reason": "stop"}]),
        )

if not provider.force_flush(10_000):
    raise SystemExit("export did not finish")
provider.shutdown()
print("exported")
