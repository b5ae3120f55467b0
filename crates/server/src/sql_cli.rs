//! `llmtrace sql`: runs a read-only SQL statement on a running server and prints the answer
//! as an aligned table (or JSON).

use anyhow::Result;
use serde_json::{Value, json};

use crate::client::json_answer;

#[derive(clap::Args)]
pub struct SqlArgs {
    /// Server base URL.
    #[arg(long, default_value = "http://127.0.0.1:8080", env = "LLMTRACE_SERVER")]
    server: String,
    /// The statement, over the tables `spans` and `scores`.
    statement: String,
    /// The project whose tables the statement reads (default: the server's default).
    #[arg(long)]
    project: Option<String>,
    /// Rows of the answer at most.
    #[arg(long, default_value_t = 1000)]
    max_rows: usize,
    /// Print the server's JSON answer instead of a table.
    #[arg(long)]
    json: bool,
}

/// Widest a printed cell gets; longer values are cut with an ellipsis.
const CELL: usize = 60;

pub fn run(args: SqlArgs) -> Result<()> {
    let mut request = json!({"sql": args.statement, "max_rows": args.max_rows});
    if let Some(project) = &args.project {
        request["project"] = json!(project);
    }
    let url = format!("{}/api/v1/sql", args.server.trim_end_matches('/'));
    let body = json_answer(
        ureq::post(&url)
            .config()
            .http_status_as_error(false)
            .build()
            .send_json(&request),
        &args.server,
    )?;
    if args.json {
        println!("{body}");
        return Ok(());
    }
    print!("{}", table(&body));
    Ok(())
}

/// The answer as text: a header, a rule, one line per row, and a count.
fn table(body: &Value) -> String {
    let empty = Vec::new();
    let names: Vec<String> = body["columns"]
        .as_array()
        .unwrap_or(&empty)
        .iter()
        .map(|column| column["name"].as_str().unwrap_or("?").to_string())
        .collect();
    let rows: Vec<Vec<String>> = body["rows"]
        .as_array()
        .unwrap_or(&empty)
        .iter()
        .map(|row| {
            row.as_array()
                .unwrap_or(&empty)
                .iter()
                .map(|cell| {
                    let text = match cell {
                        Value::String(text) => text.clone(),
                        Value::Null => "NULL".into(),
                        other => other.to_string(),
                    };
                    let text: String = text
                        .chars()
                        .map(|c| if c.is_control() { ' ' } else { c })
                        .collect();
                    if text.chars().count() > CELL {
                        text.chars().take(CELL - 1).chain(['…']).collect()
                    } else {
                        text
                    }
                })
                .collect()
        })
        .collect();
    let widths: Vec<usize> = (0..names.len())
        .map(|at| {
            rows.iter()
                .filter_map(|row| row.get(at))
                .chain([&names[at]])
                .map(|text| text.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |cells: &[String]| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(cell, &width)| format!("{cell:<width$}"))
            .collect();
        format!("{}\n", padded.join("  ").trim_end())
    };
    let mut out = line(&names);
    let rule: Vec<String> = widths.iter().map(|&width| "-".repeat(width)).collect();
    out.push_str(&line(&rule));
    for row in &rows {
        out.push_str(&line(row));
    }
    let more = if body["truncated"].as_bool() == Some(true) {
        " (cut off: more rows than --max-rows)"
    } else {
        ""
    };
    out.push_str(&format!("({} rows{more})\n", rows.len()));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_table_aligns_columns_and_cuts_long_cells() {
        let body = json!({
            "columns": [{"name": "model", "type": "Utf8"}, {"name": "n", "type": "Int64"}],
            "rows": [["gpt-4o-mini", 12], [null, 3], ["x".repeat(80), 1]],
            "truncated": true
        });
        let text = table(&body);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0].find('n'), lines[1].find(' ').map(|at| at + 2));
        assert_eq!(lines[3], format!("NULL{}3", " ".repeat(CELL - 4 + 2)));
        assert!(lines[4].contains('…') && lines[4].chars().count() == CELL + 3);
        assert_eq!(lines[5], "(3 rows (cut off: more rows than --max-rows))");
    }
}
