"""Reads llmtrace exports the way analysts do: Parquet with pandas and DuckDB, CSV with
pandas. Prints what each saw as JSON, for the export tests to compare with the API."""
import json
import sys

import duckdb
import pandas

parquet, csv = sys.argv[1], sys.argv[2]
frame = pandas.read_parquet(parquet)
row = duckdb.sql(f"SELECT count(*), sum(total_cost_usd), count(DISTINCT trace_id), "
                 f"max(start_time) FROM read_parquet('{parquet}')").fetchall()[0]
table = pandas.read_csv(csv)
print(json.dumps({
    "pandas_rows": len(frame),
    "pandas_cost": float(frame["total_cost_usd"].fillna(0).sum()),
    "pandas_columns": list(frame.columns),
    "start_time_dtype": str(frame["start_time"].dtype),
    "duckdb_rows": row[0],
    "duckdb_cost": float(row[1] or 0),
    "duckdb_traces": row[2],
    "csv_rows": len(table),
    "csv_cost": float(table["total_cost_usd"].fillna(0).sum()),
    "csv_texts": table["input_text"].fillna("").tolist(),
}))
