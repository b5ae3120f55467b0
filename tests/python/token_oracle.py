"""Reference token counts from OpenAI's tiktoken, for llmtrace's estimator tests.

Reads {"texts": [{"model", "text"}], "chats": [{"model", "messages"}]} on stdin and prints
{"texts": [count…], "chats": [count…]}. The BPE files come from --bpe-dir (the copies that
ship inside the tiktoken-rs crate); tiktoken checks each against OpenAI's published
SHA-256 before using it, so a file that differed would fail here, not pass silently.
"""
import argparse
import hashlib
import json
import os
import shutil
import sys
import tempfile

parser = argparse.ArgumentParser()
parser.add_argument("--bpe-dir", required=True)
args = parser.parse_args()

cache = tempfile.mkdtemp(prefix="tiktoken-cache-")
for name in ("o200k_base", "cl100k_base", "p50k_base", "r50k_base"):
    url = f"https://openaipublic.blob.core.windows.net/encodings/{name}.tiktoken"
    shutil.copy(os.path.join(args.bpe_dir, f"{name}.tiktoken"),
                os.path.join(cache, hashlib.sha1(url.encode()).hexdigest()))
os.environ["TIKTOKEN_CACHE_DIR"] = cache

import tiktoken  # noqa: E402  (after the cache is in place)


def chat_tokens(encoding, messages):
    # OpenAI's documented count for chat models: 3 per message, every value, 1 per name,
    # 3 to prime the reply
    total = 3
    for message in messages:
        total += 3
        for key, value in message.items():
            total += len(encoding.encode_ordinary(value))
            if key == "name":
                total += 1
    return total


request = json.load(sys.stdin)
out = {
    "texts": [len(tiktoken.encoding_for_model(case["model"]).encode_ordinary(case["text"]))
              for case in request["texts"]],
    "chats": [chat_tokens(tiktoken.encoding_for_model(case["model"]), case["messages"])
              for case in request["chats"]],
}
print(json.dumps(out))
