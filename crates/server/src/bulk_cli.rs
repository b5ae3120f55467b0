//! `llmtrace import` and `llmtrace export`: files in and out through a running server.
//!
//! `import` reads each file as a stream, recognizes every line's format — OTLP/JSON (as the
//! OpenTelemetry file exporter writes it), Agents SDK items or batches, JSON trace logs,
//! llmtrace's own JSONL export — and sends runs of lines of one format to the route that
//! ingests it. Ids are kept, so running it twice stores everything once. A line that cannot
//! be read is reported with its number and skipped.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::Value;

use crate::client::{agent, encode, unix_seconds};

#[derive(clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct ImportArgs {
    #[command(subcommand)]
    from: Option<ImportFrom>,
    /// Files to import (NDJSON/JSONL, or one JSON document per file).
    files: Vec<PathBuf>,
    /// Server base URL.
    #[arg(long, default_value = "http://127.0.0.1:8080", env = "LLMTRACE_SERVER")]
    server: String,
    /// Store everything in this project (default: the project each span names, or the
    /// server's default).
    #[arg(long)]
    project: Option<String>,
}

#[derive(clap::Subcommand)]
enum ImportFrom {
    /// Backfill from an OpenAI-compatible stored-completions API (before OpenAI's ~30-day
    /// expiry): resumable, and safe to run again.
    Openai(OpenaiArgs),
}

#[derive(clap::Args)]
pub struct OpenaiArgs {
    /// The API's base URL.
    #[arg(long, default_value = "https://api.openai.com/v1")]
    base_url: String,
    /// Environment variable holding the API key.
    #[arg(long, default_value = "OPENAI_API_KEY")]
    key_env: String,
    /// Only completions with this metadata, as key=value (repeatable).
    #[arg(long = "metadata", value_name = "KEY=VALUE")]
    metadata: Vec<String>,
    /// Only completions created at or after this time (RFC 3339, YYYY-MM-DD, unix seconds).
    #[arg(long)]
    since: Option<String>,
    /// Only completions created before this time.
    #[arg(long)]
    until: Option<String>,
    /// The provider name the imported calls carry.
    #[arg(long, default_value = "openai")]
    provider: String,
    /// Where progress is kept, so an interrupted import continues where it stopped.
    #[arg(long, default_value = "llmtrace-import-openai.state.json")]
    state: PathBuf,
    /// llmtrace server base URL.
    #[arg(long, default_value = "http://127.0.0.1:8080", env = "LLMTRACE_SERVER")]
    server: String,
    /// Project to store them in (default: the server's default project).
    #[arg(long)]
    project: Option<String>,
}

#[derive(clap::Args)]
pub struct ExportArgs {
    /// jsonl (llmtrace spans, importable), csv, parquet, openai-finetune.
    #[arg(long, default_value = "jsonl")]
    format: String,
    /// Write here instead of standard output.
    #[arg(long, short)]
    output: Option<PathBuf>,
    /// Server base URL.
    #[arg(long, default_value = "http://127.0.0.1:8080", env = "LLMTRACE_SERVER")]
    server: String,
    /// Search filters as name=value (since=7d, model=gpt-4o, project=…, kind=llm, q=…).
    filters: Vec<String>,
}

/// What one line is.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Otlp,
    AgentsItem,
    AgentsBatch,
    Spans,
    Logs,
}

fn kind_of(value: &Value) -> Option<Kind> {
    let object = value.as_object()?;
    if object.contains_key("resourceSpans") {
        Some(Kind::Otlp)
    } else if object.get("data").is_some_and(Value::is_array) {
        Some(Kind::AgentsBatch)
    } else if matches!(
        object.get("object").and_then(Value::as_str),
        Some("trace" | "trace.span")
    ) {
        Some(Kind::AgentsItem)
    } else if object.contains_key("trace_id") && object.contains_key("span_id") {
        Some(Kind::Spans)
    } else if object.get("trace").is_some_and(Value::is_object) {
        Some(Kind::Logs)
    } else {
        None
    }
}

/// Sends runs of same-format lines to the server and keeps the tally.
struct Sender {
    agent: ureq::Agent,
    server: String,
    project: Option<String>,
    run: Vec<u8>,
    run_kind: Option<Kind>,
    run_first_line: usize,
    run_items: Vec<Value>,
    sent_lines: u64,
    problems: Vec<String>,
}

/// Bytes of lines gathered before a run is sent.
const RUN_BYTES: usize = 4 << 20;

impl Sender {
    fn new(agent: ureq::Agent, server: &str, project: Option<String>) -> Sender {
        Sender {
            agent,
            server: server.trim_end_matches('/').to_string(),
            project,
            run: Vec::new(),
            run_kind: None,
            run_first_line: 1,
            run_items: Vec::new(),
            sent_lines: 0,
            problems: Vec::new(),
        }
    }

    fn post(&mut self, path: &str, body: Vec<u8>, first_line: usize, label: &str) -> Result<()> {
        let url = format!("{}{}", self.server, path);
        let mut request = self
            .agent
            .post(&url)
            .header("content-type", "application/json")
            .header("x-llmtrace-line", &first_line.to_string());
        if let Some(project) = &self.project {
            request = request.header("x-llmtrace-project", project);
        }
        let mut response = request
            .send(&body[..])
            .with_context(|| format!("cannot reach {}", self.server))?;
        let status = response.status();
        let text = response.body_mut().read_to_string().unwrap_or_default();
        let answer: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        for error in answer["errors"].as_array().into_iter().flatten() {
            match (
                error["line"].as_u64(),
                error["error"].as_str(),
                error.as_str(),
            ) {
                (Some(line), Some(message), _) => self
                    .problems
                    .push(format!("{label} line {line}: {message}")),
                (_, _, Some(message)) => self.problems.push(format!("{label}: {message}")),
                _ => {}
            }
        }
        if status.as_u16() >= 500 || (status.as_u16() >= 400 && answer["errors"].is_null()) {
            bail!("{url} answered {status}: {}", text.trim());
        }
        Ok(())
    }

    fn flush(&mut self, label: &str) -> Result<()> {
        let Some(kind) = self.run_kind.take() else {
            return Ok(());
        };
        let first = self.run_first_line;
        match kind {
            Kind::Spans => {
                let body = std::mem::take(&mut self.run);
                self.post("/api/v1/import", body, first, label)?;
            }
            Kind::Logs => {
                let body = std::mem::take(&mut self.run);
                self.post("/api/v1/ingest/logs", body, first, label)?;
            }
            Kind::AgentsItem => {
                let items = std::mem::take(&mut self.run_items);
                let body = serde_json::to_vec(&serde_json::json!({"data": items}))?;
                self.post("/v1/traces/ingest", body, first, label)?;
            }
            Kind::Otlp | Kind::AgentsBatch => {}
        }
        self.run.clear();
        Ok(())
    }

    fn line(&mut self, label: &str, number: usize, line: &[u8]) -> Result<()> {
        let value: Value = match serde_json::from_slice(line) {
            Ok(value) => value,
            Err(e) => {
                self.problems
                    .push(format!("{label} line {number}: not JSON ({e})"));
                return Ok(());
            }
        };
        let Some(kind) = kind_of(&value) else {
            self.problems.push(format!(
                "{label} line {number}: neither OTLP/JSON, an Agents SDK item, a trace-log line nor an llmtrace span"
            ));
            return Ok(());
        };
        self.sent_lines += 1;
        match kind {
            // whole requests: sent one by one
            Kind::Otlp => {
                self.flush(label)?;
                self.post("/v1/traces", line.to_vec(), number, label)?;
            }
            Kind::AgentsBatch => {
                self.flush(label)?;
                self.post("/v1/traces/ingest", line.to_vec(), number, label)?;
            }
            _ => {
                if self.run_kind != Some(kind)
                    || self.run.len() >= RUN_BYTES
                    || self.run_items.len() >= 1000
                {
                    self.flush(label)?;
                    self.run_kind = Some(kind);
                    self.run_first_line = number;
                }
                if kind == Kind::AgentsItem {
                    self.run_items.push(value);
                } else {
                    self.run.extend_from_slice(line);
                    self.run.push(b'\n');
                }
            }
        }
        Ok(())
    }
}

/// Progress on standard error, at most twice a second.
struct Progress {
    label: String,
    total: u64,
    last: Instant,
    started: Instant,
}

impl Progress {
    fn show(&mut self, done: u64, lines: usize, force: bool) {
        if !force && self.last.elapsed() < Duration::from_millis(500) {
            return;
        }
        self.last = Instant::now();
        let percent = if self.total > 0 {
            done as f64 * 100.0 / self.total as f64
        } else {
            100.0
        };
        let rate = lines as f64 / self.started.elapsed().as_secs_f64().max(1e-3);
        eprint!(
            "\r{}: {:>5.1}%  {} lines  {:.0} lines/s   ",
            self.label, percent, lines, rate
        );
        let _ = std::io::stderr().flush();
    }
}

/// Counts bytes read, for the progress line.
struct Counting<R> {
    inner: R,
    read: std::rc::Rc<std::cell::Cell<u64>>,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read.set(self.read.get() + n as u64);
        Ok(n)
    }
}

pub fn import(args: ImportArgs) -> Result<()> {
    if let Some(ImportFrom::Openai(openai)) = args.from {
        return import_openai(openai);
    }
    if args.files.is_empty() {
        bail!("name the files to import (or `import openai` to backfill stored completions)");
    }
    let mut sender = Sender::new(
        agent(Duration::from_secs(600)),
        &args.server,
        args.project.clone(),
    );
    for path in &args.files {
        let label = path.display().to_string();
        let file = std::fs::File::open(path).with_context(|| format!("cannot open {label}"))?;
        let total = file.metadata().map(|m| m.len()).unwrap_or(0);
        let read = std::rc::Rc::new(std::cell::Cell::new(0));
        let mut reader = BufReader::with_capacity(
            1 << 20,
            Counting {
                inner: file,
                read: read.clone(),
            },
        );
        let mut progress = Progress {
            label: label.clone(),
            total,
            last: Instant::now(),
            started: Instant::now(),
        };
        // NDJSON, unless the first line is not a whole JSON value: then the file is one
        // (pretty-printed) document, an OTLP request or an Agents SDK batch
        let mut line = Vec::new();
        let mut number = 0;
        let mut lines = 0;
        let mut whole_document = None;
        loop {
            line.clear();
            if reader.read_until(b'\n', &mut line)? == 0 {
                break;
            }
            number += 1;
            let text = line.trim_ascii();
            if text.is_empty() {
                continue;
            }
            if lines == 0
                && serde_json::from_slice::<Value>(text).is_err()
                && text.starts_with(b"{")
            {
                let mut rest = line.clone();
                reader.read_to_end(&mut rest)?;
                whole_document = Some(rest);
                break;
            }
            lines += 1;
            sender.line(&label, number, text)?;
            progress.show(read.get(), lines, false);
        }
        if let Some(document) = whole_document {
            match serde_json::from_slice::<Value>(&document) {
                Ok(value) => {
                    let compact = serde_json::to_vec(&value)?;
                    lines = 1;
                    sender.line(&label, 1, &compact)?;
                }
                Err(e) => sender.problems.push(format!(
                    "{label}: neither JSON lines nor one JSON document ({e})"
                )),
            }
        }
        sender.flush(&label)?;
        progress.show(read.get(), lines, true);
        eprintln!();
        sender.flush(&label)?;
    }
    eprintln!(
        "imported {} lines; {} problems",
        sender.sent_lines,
        sender.problems.len()
    );
    for problem in sender.problems.iter().take(50) {
        eprintln!("  {problem}");
    }
    if sender.problems.len() > 50 {
        eprintln!("  … and {} more", sender.problems.len() - 50);
    }
    Ok(())
}

pub fn export(args: ExportArgs) -> Result<()> {
    let mut url = format!(
        "{}/api/v1/export?format={}",
        args.server.trim_end_matches('/'),
        encode(&args.format)
    );
    for filter in &args.filters {
        let Some((name, value)) = filter.split_once('=') else {
            bail!("filter {filter:?} is not name=value");
        };
        url.push_str(&format!("&{}={}", encode(name), encode(value)));
    }
    let mut response = agent(Duration::from_secs(600))
        .get(&url)
        .call()
        .with_context(|| format!("cannot reach {}", args.server))?;
    if !response.status().is_success() {
        let status = response.status();
        let body = response.body_mut().read_to_string().unwrap_or_default();
        bail!("{url} answered {status}: {}", body.trim());
    }
    let mut out: Box<dyn Write> = match &args.output {
        Some(path) => Box::new(std::io::BufWriter::new(
            std::fs::File::create(path)
                .with_context(|| format!("cannot create {}", path.display()))?,
        )),
        None => Box::new(std::io::BufWriter::new(std::io::stdout().lock())),
    };
    let mut body = response.body_mut().with_config().limit(u64::MAX).reader();
    let mut buffer = vec![0u8; 1 << 20];
    let (mut written, started, mut shown) = (0u64, Instant::now(), Instant::now());
    loop {
        let n = body
            .read(&mut buffer)
            .context("the export stream broke off (the server logged why)")?;
        if n == 0 {
            break;
        }
        out.write_all(&buffer[..n])?;
        written += n as u64;
        if args.output.is_some() && shown.elapsed() > Duration::from_millis(500) {
            shown = Instant::now();
            eprint!("\r{:.1} MiB", written as f64 / (1 << 20) as f64);
        }
    }
    out.flush()?;
    if args.output.is_some() {
        eprintln!(
            "\rexported {:.1} MiB in {:.1} s",
            written as f64 / (1 << 20) as f64,
            started.elapsed().as_secs_f64()
        );
    }
    Ok(())
}

/// Where an `import openai` run got to.
#[derive(serde::Serialize, serde::Deserialize, Default)]
struct ImportState {
    source: String,
    after: Option<String>,
    imported: u64,
}

fn get_json(agent: &ureq::Agent, url: &str, key: &str) -> Result<Value> {
    let mut response = agent
        .get(url)
        .header("authorization", &format!("Bearer {key}"))
        .call()
        .with_context(|| format!("cannot reach {url}"))?;
    let status = response.status();
    let body = response.body_mut().read_to_string().unwrap_or_default();
    if !status.is_success() {
        bail!("{url} answered {status}: {}", body.trim());
    }
    serde_json::from_str(&body).with_context(|| format!("{url} did not answer JSON"))
}

fn import_openai(args: OpenaiArgs) -> Result<()> {
    let key = std::env::var(&args.key_env)
        .with_context(|| format!("set {} to the API key (or pass --key-env)", args.key_env))?;
    let base = args.base_url.trim_end_matches('/');
    let since = args.since.as_deref().map(unix_seconds).transpose()?;
    let until = args.until.as_deref().map(unix_seconds).transpose()?;
    let mut filters = String::new();
    for pair in &args.metadata {
        let Some((name, value)) = pair.split_once('=') else {
            bail!("--metadata {pair:?} is not key=value");
        };
        filters.push_str(&format!(
            "&metadata%5B{}%5D={}",
            encode(name),
            encode(value)
        ));
    }
    // a state file belongs to one source and filter set; another one starts afresh
    let source = format!("{base}?{filters}&since={since:?}&until={until:?}");
    let mut state: ImportState = std::fs::read(&args.state)
        .ok()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .filter(|state: &ImportState| state.source == source)
        .unwrap_or(ImportState {
            source: source.clone(),
            ..ImportState::default()
        });
    if let Some(after) = &state.after {
        eprintln!(
            "resuming after {after} ({} imported before)",
            state.imported
        );
    }
    let agent = agent(Duration::from_secs(600));
    let mut sender = Sender::new(agent.clone(), &args.server, args.project.clone());
    let project = args.project.clone().unwrap_or_default();
    let started = Instant::now();
    let mut new = 0u64;
    'pages: loop {
        let mut url = format!("{base}/chat/completions?limit=100&order=asc{filters}");
        if let Some(after) = &state.after {
            url.push_str(&format!("&after={}", encode(after)));
        }
        let page = get_json(&agent, &url, &key)?;
        let completions = page["data"].as_array().cloned().unwrap_or_default();
        let mut lines = Vec::new();
        let mut last = None;
        for completion in &completions {
            let Some(id) = completion["id"].as_str() else {
                continue;
            };
            let created = completion["created"].as_i64().unwrap_or(0);
            if until.is_some_and(|until| created >= until) {
                break 'pages;
            }
            last = Some(id.to_string());
            if since.is_some_and(|since| created < since) {
                continue;
            }
            let mut messages = Vec::new();
            let mut after: Option<String> = None;
            loop {
                let mut url = format!(
                    "{base}/chat/completions/{}/messages?limit=100&order=asc",
                    encode(id)
                );
                if let Some(after) = &after {
                    url.push_str(&format!("&after={}", encode(after)));
                }
                let page = get_json(&agent, &url, &key)?;
                let data = page["data"].as_array().cloned().unwrap_or_default();
                after = data
                    .last()
                    .and_then(|m| m["id"].as_str())
                    .map(str::to_string);
                messages.extend(data);
                if page["has_more"] != Value::Bool(true) || after.is_none() {
                    break;
                }
            }
            if let Some(span) =
                llmtrace_ingest::stored::to_span(completion, &messages, &project, &args.provider)
            {
                lines.push(serde_json::to_string(&span)?);
            }
        }
        if !lines.is_empty() {
            new += lines.len() as u64;
            let mut body = lines.join("\n").into_bytes();
            body.push(b'\n');
            sender.post("/api/v1/import", body, 1, "openai")?;
        }
        if let Some(last) = last {
            state.after = Some(last);
        }
        state.imported += lines.len() as u64;
        std::fs::write(&args.state, serde_json::to_vec_pretty(&state)?)
            .with_context(|| format!("cannot write {}", args.state.display()))?;
        eprint!(
            "\r{} completions imported ({:.0}/s)   ",
            new,
            new as f64 / started.elapsed().as_secs_f64().max(1e-3)
        );
        if page["has_more"] != Value::Bool(true) || completions.is_empty() {
            break;
        }
    }
    eprintln!(
        "\rimported {new} completions ({} in all from this source)",
        state.imported
    );
    for problem in &sender.problems {
        eprintln!("  {problem}");
    }
    Ok(())
}
