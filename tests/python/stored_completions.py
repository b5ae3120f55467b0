"""The real openai SDK's stored-completions calls against llmtrace: chat calls go through
the gateway (to the fake upstream) with store=True and metadata, then list (with metadata
and model filters, both orders, paging), retrieve, messages.list and delete.
Env: LLMTRACE_HTTP. Prints what the SDK returned as JSON."""
import json
import os
import time

from openai import NotFoundError, OpenAI

client = OpenAI(base_url=os.environ["LLMTRACE_HTTP"] + "/v1", api_key="sk-test", max_retries=0)
made = []
for i, (model, topic) in enumerate([("gpt-4o-mini", "billing"), ("gpt-4o-mini", "billing"),
                                    ("gpt-4.1", "billing"), ("gpt-4o-mini", "shipping")]):
    done = client.chat.completions.create(
        model=model, store=True, metadata={"topic": topic},
        messages=[{"role": "system", "content": "Be brief."},
                  {"role": "user", "content": f"Question {i}: where is my parcel?"}])
    made.append(done.id)

# the gateway records off the request path (batches of 50 ms): wait until all four show
deadline = time.time() + 10
while len(client.chat.completions.list(limit=10).data) < len(made) and time.time() < deadline:
    time.sleep(0.05)

out = {"made": made}
billing = client.chat.completions.list(metadata={"topic": "billing"}, order="asc", limit=10)
out["billing_ids"] = [c.id for c in billing.data]
out["billing_models"] = [c.model for c in billing.data]
newest = client.chat.completions.list(order="desc", limit=2)
out["desc_page1"] = [c.id for c in newest.data]
out["desc_has_more"] = newest.has_more
out["desc_all"] = [c.id for c in client.chat.completions.list(order="desc", limit=2)]  # auto-paging
out["by_model"] = [c.id for c in client.chat.completions.list(model="gpt-4.1-2024-07-18")]

one = client.chat.completions.retrieve(made[0])
out["retrieved"] = {"id": one.id, "content": one.choices[0].message.content,
                    "prompt_tokens": one.usage.prompt_tokens, "metadata": one.metadata}
messages = client.chat.completions.messages.list(made[0])
out["messages"] = [{"id": m.id, "role": m.role, "content": m.content} for m in messages.data]

deleted = client.chat.completions.delete(made[1])
out["deleted"] = {"id": deleted.id, "deleted": deleted.deleted}
out["after_delete"] = [c.id for c in client.chat.completions.list(metadata={"topic": "billing"})]
try:
    client.chat.completions.retrieve(made[1])
    out["retrieve_deleted"] = "found"
except NotFoundError:
    out["retrieve_deleted"] = "not found"
print(json.dumps(out))
