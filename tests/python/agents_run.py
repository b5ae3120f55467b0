"""Runs a real OpenAI Agents SDK agent with a handoff and a tool through the llmtrace
gateway (model calls) and exports its trace with the SDK's own exporter to llmtrace.

Env: LLMTRACE_HTTP (the server's main URL). Prints the run's result as JSON.
"""
import asyncio
import json
import os

from agents import Agent, Runner, function_tool, set_default_openai_client, set_trace_processors, trace
from agents.tracing.processors import BackendSpanExporter, BatchTraceProcessor
from openai import AsyncOpenAI

http = os.environ["LLMTRACE_HTTP"]
client = AsyncOpenAI(base_url=f"{http}/v1", api_key="sk-test", max_retries=0)
set_default_openai_client(client, use_for_tracing=False)
processor = BatchTraceProcessor(BackendSpanExporter(api_key="sk-agents-test", endpoint=f"{http}/v1/traces/ingest"))
set_trace_processors([processor])


@function_tool
def get_weather(city: str) -> str:
    """The weather in a city."""
    return f"sunny in {city}"


weather_agent = Agent(name="WeatherAgent", instructions="Answer weather questions with the tool.",
                      tools=[get_weather], model="gpt-4o-mini")
triage = Agent(name="Triage", instructions="Hand weather questions to WeatherAgent.",
               handoffs=[weather_agent], model="gpt-4o-mini")


async def main():
    with trace("weather-workflow", group_id="conv-agents-1", metadata={"user_id": "u-agents"}) as run:
        result = await Runner.run(triage, "What's the weather in Paris?")
    processor.force_flush()
    print(json.dumps({"final": result.final_output, "last_agent": result.last_agent.name,
                      "trace_id": run.trace_id}))


asyncio.run(main())
