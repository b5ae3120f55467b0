"""Aggregates over a filled store, side by side: llmtrace's aggregate API, llmtrace's SQL
API, and DuckDB reading the same segment Parquet files directly (docs/BENCHMARKS.md).

    python bench/compare-duckdb.py --server http://127.0.0.1:7411 --data-dir /tmp/bs10m

The server must be serving --data-dir (flushed: DuckDB sees segments only). Each query runs
--repeat times per engine, one engine after the other, on the same machine; medians are
printed with the ratio to DuckDB. DuckDB reads every row version in the files (the bench
corpus writes each span once and deletes nothing, so the rows are the same).
"""

import argparse
import datetime
import json
import statistics
import time
import urllib.parse
import urllib.request

import duckdb


def http(url, body=None):
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"content-type": "application/json"})
    with urllib.request.urlopen(request, timeout=600) as response:
        return json.loads(response.read())


def timed(run, repeat):
    times, answer = [], None
    for _ in range(repeat):
        started = time.perf_counter()
        answer = run()
        times.append(time.perf_counter() - started)
    return statistics.median(times), min(times), max(times), answer


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--server", default="http://127.0.0.1:7411")
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--project", default="default")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    files = f"{args.data_dir}/segments/project={args.project}/*/*.parquet"
    con = duckdb.connect()
    con.execute(f"SET threads = {args.threads}")
    con.execute(f"CREATE VIEW spans AS SELECT * FROM read_parquet('{files}', hive_partitioning = false)")
    # start_time is a UTC-adjusted nanosecond timestamp: DuckDB hands it back zoned
    newest = con.execute("SELECT max(start_time) FROM spans").fetchone()[0]
    newest = newest.astimezone(datetime.timezone.utc).replace(tzinfo=None)
    # every engine asks for the same window: the 30 days up to the newest span
    until = newest + datetime.timedelta(microseconds=1)
    since = until - datetime.timedelta(days=30)
    iso = lambda t: t.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    window_sql = f"start_time >= TIMESTAMPTZ '{iso(since)}' AND start_time < TIMESTAMPTZ '{iso(until)}'"
    window_api = "since=" + urllib.parse.quote(iso(since)) + "&until=" + urllib.parse.quote(iso(until))

    base = args.server.rstrip("/")

    def api(params):
        extra = f"&{params}" if params else ""
        return lambda: http(f"{base}/api/v1/aggregate?project={args.project}&{window_api}{extra}")["data"]

    def sql(statement):
        body = {"sql": statement, "project": args.project, "max_rows": 1000000, "max_scan_rows": 200000000}
        return lambda: http(f"{base}/api/v1/sql", body)["rows"]

    def duck(statement):
        return lambda: con.execute(statement).fetchall()

    queries = [
        (
            "count of spans, 30 days",
            api(""),
            sql(f"SELECT count(*) FROM spans WHERE {window_sql}"),
            duck(f"SELECT count(*) FROM spans WHERE {window_sql}"),
        ),
        (
            "cost per model per day, 30 days",
            api("group_by=model&bucket=1d"),
            sql(
                "SELECT coalesce(model, request_model) AS m, date_trunc('day', start_time) AS d, "
                f"sum(total_cost_usd), count(*) FROM spans WHERE {window_sql} GROUP BY 1, 2"
            ),
            duck(
                "SELECT coalesce(model, request_model) AS m, date_trunc('day', start_time) AS d, "
                f"sum(total_cost_usd), count(*) FROM spans WHERE {window_sql} GROUP BY 1, 2"
            ),
        ),
        (
            "p99 latency per model, 30 days",
            api("group_by=model"),
            sql(
                "SELECT coalesce(model, request_model) AS m, approx_percentile_cont(duration_ms, 0.99) "
                f"FROM spans WHERE {window_sql} GROUP BY 1"
            ),
            duck(
                "SELECT coalesce(model, request_model) AS m, approx_quantile(duration_ms, 0.99) "
                f"FROM spans WHERE {window_sql} GROUP BY 1"
            ),
        ),
        (
            "tokens and cost per user, 30 days",
            api("group_by=user"),
            sql(
                "SELECT user_id, sum(input_tokens), sum(output_tokens), sum(total_cost_usd), count(*) "
                f"FROM spans WHERE {window_sql} GROUP BY 1"
            ),
            duck(
                "SELECT user_id, sum(input_tokens), sum(output_tokens), sum(total_cost_usd), count(*) "
                f"FROM spans WHERE {window_sql} GROUP BY 1"
            ),
        ),
    ]
    print(f"window {iso(since)} .. {iso(until)}; {args.repeat} runs each; DuckDB {duckdb.__version__}, {args.threads} threads")
    print("| query | llmtrace aggregate API | llmtrace SQL | DuckDB on the same files | API / DuckDB | SQL / DuckDB |")
    print("|---|---|---|---|---|---|")
    for name, ours, ours_sql, reference in queries:
        a = timed(ours, args.repeat)
        s = timed(ours_sql, args.repeat)
        d = timed(reference, args.repeat)
        groups = (len(a[3]), len(s[3]), len(d[3]))
        ms = lambda t: f"{t[0] * 1e3:,.1f} ms"
        print(
            f"| {name} ({groups[2]} groups; api {groups[0]}, sql {groups[1]}) | {ms(a)} | {ms(s)} | {ms(d)} "
            f"| {a[0] / d[0]:.2f}× | {s[0] / d[0]:.2f}× |"
        )


if __name__ == "__main__":
    main()
