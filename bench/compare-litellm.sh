#!/usr/bin/env bash
# The gateway beside direct calls and the LiteLLM proxy, against the same in-process fake
# upstream, in one run (docs/BENCHMARKS.md). Loopback only; stops what it starts.
#   bash bench/compare-litellm.sh [extra `llmtrace bench gateway` flags]
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q
if [ ! -x .bench-venv/litellm/bin/litellm ]; then
  python3 -m venv .bench-venv/litellm
  .bench-venv/litellm/bin/pip install -q 'litellm[proxy]==1.106.2'
fi
# held streams need two sockets each in this process and in the proxy
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
exec target/release/llmtrace bench gateway --litellm .bench-venv/litellm/bin/litellm "$@"
