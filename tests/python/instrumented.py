"""One chat call through the real `openai` SDK to a fake upstream, traced by an unmodified
instrumentation from PyPI (openinference | otel-v2 | traceloop) exporting OTLP/HTTP to the
llmtrace server named by LLMTRACE_OTLP_HTTP."""

import os
import sys

import fake_upstream

which = sys.argv[1]
OTLP = os.environ["LLMTRACE_OTLP_HTTP"]
os.environ.setdefault("OPENAI_API_KEY", "sk-test")
QUESTION = "Where is my parcel number 4417?"

if which == "traceloop":
    os.environ["TRACELOOP_TELEMETRY"] = "false"
    os.environ["TRACELOOP_TRACE_CONTENT"] = "true"
    os.environ["TRACELOOP_METRICS_ENABLED"] = "false"
    from traceloop.sdk import Traceloop
    from traceloop.sdk.decorators import workflow

    Traceloop.init(app_name="tl-test", api_endpoint=OTLP, api_key="tl-key", disable_batch=True,
                   telemetry_enabled=False)
else:
    from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk._logs import LoggerProvider
    from opentelemetry.sdk._logs.export import SimpleLogRecordProcessor
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor

    resource = Resource.create({"service.name": f"{which}-test"})
    tracer_provider = TracerProvider(resource=resource)
    tracer_provider.add_span_processor(SimpleSpanProcessor(OTLPSpanExporter(endpoint=f"{OTLP}/v1/traces")))
    logger_provider = LoggerProvider(resource=resource)
    logger_provider.add_log_record_processor(SimpleLogRecordProcessor(OTLPLogExporter(endpoint=f"{OTLP}/v1/logs")))
    if which == "openinference":
        from openinference.instrumentation import using_attributes
        from openinference.instrumentation.openai import OpenAIInstrumentor

        OpenAIInstrumentor().instrument(tracer_provider=tracer_provider)
    elif which == "otel-v2":
        # Content only as log events: llmtrace must join them to the span.
        os.environ["OTEL_SEMCONV_STABILITY_OPT_IN"] = "gen_ai_latest_experimental"
        os.environ["OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT"] = "event_only"
        from opentelemetry.instrumentation.openai_v2 import OpenAIInstrumentor

        OpenAIInstrumentor().instrument(tracer_provider=tracer_provider, logger_provider=logger_provider)
    else:
        raise SystemExit(f"unknown instrumentation {which}")

import openai  # noqa: E402

client = openai.OpenAI(base_url=fake_upstream.start(), max_retries=0)


def call():
    stream = client.chat.completions.create(
        model="gpt-4o-mini", stream=True, stream_options={"include_usage": True}, user="user-7",
        messages=[{"role": "system", "content": "You are a shipping assistant."},
                  {"role": "user", "content": QUESTION}])
    text = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    assert text == fake_upstream.ANSWER, text


if which == "traceloop":
    @workflow(name="parcel_flow")
    def run():
        Traceloop.set_association_properties({"session_id": "sess-7", "user_id": "user-7", "tier": "gold"})
        call()

    run()
    from opentelemetry import trace

    trace.get_tracer_provider().force_flush()
elif which == "openinference":
    with using_attributes(session_id="sess-7", user_id="user-7", metadata={"tier": "gold"}):
        call()
    tracer_provider.shutdown()
else:
    call()
    tracer_provider.shutdown()
    logger_provider.shutdown()
print("done", which)
