#!/usr/bin/env bash
# OTLP/HTTP ingest, llmtrace and Arize Phoenix side by side on the same machine and the same
# payloads (docs/BENCHMARKS.md). Loopback only; stops what it starts.
#   bash bench/compare-phoenix.sh [SPANS]
set -euo pipefail
cd "$(dirname "$0")/.."
spans=${1:-10000}
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT

cargo build --release -q
bin=target/release/llmtrace
if [ ! -x .bench-venv/phoenix/bin/phoenix ]; then
  python3 -m venv .bench-venv/phoenix
  .bench-venv/phoenix/bin/pip install -q arize-phoenix==20.26.1
fi
phoenix=.bench-venv/phoenix/bin/phoenix

echo "== llmtrace ($spans spans, 512 per request, 4 in flight, durability fsync)"
"$bin" serve --data-dir "$work/llmtrace" --listen 127.0.0.1:18080 --otlp-http-listen 127.0.0.1:18318 \
  --otlp-grpc-listen off > "$work/llmtrace.log" 2>&1 &
server=$!
sleep 1
"$bin" bench ingest --endpoint http://127.0.0.1:18318/v1/traces --spans "$spans" --count-url http://127.0.0.1:18080
kill "$server"; wait "$server" || true

echo "== Arize Phoenix ($spans spans, same payloads)"
PHOENIX_WORKING_DIR="$work/phoenix" PHOENIX_HOST=127.0.0.1 PHOENIX_PORT=6006 PHOENIX_GRPC_PORT=14317 \
  PHOENIX_TELEMETRY_ENABLED=false "$phoenix" serve > "$work/phoenix.log" 2>&1 &
server=$!
for _ in $(seq 1 120); do
  curl -sf -o /dev/null http://127.0.0.1:6006/healthz && break
  sleep 1
done
"$bin" bench ingest --endpoint http://127.0.0.1:6006/v1/traces --spans "$spans" \
  --count-phoenix-graphql http://127.0.0.1:6006/graphql
kill "$server"; wait "$server" || true
