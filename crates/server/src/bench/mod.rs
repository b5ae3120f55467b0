//! `llmtrace bench`: measured, reproducible figures (docs/BENCHMARKS.md).
//!
//! - `bench ingest`: OTLP/HTTP protobuf ingest over loopback against any OTLP endpoint
//!   (llmtrace or a peer), then the time until every span is queryable;
//! - `bench store`: the embedded store directly: durable ingest at several batch sizes, query
//!   latencies and bytes on disk;
//! - `bench gateway`: the gateway's added latency, throughput, streaming and memory against a
//!   fake upstream, beside direct calls and (optionally) the LiteLLM proxy;
//! - `bench recorder`: what recording one gateway call costs, stage by stage, on one thread;
//! - `bench pricing`, `bench export`, `bench ui`: pricing per span, exports' memory, and
//!   every UI page's answer time against a filled store.

pub mod corpus;
mod export;
mod gateway;
mod otlp;
mod pricing;
mod recorder;
mod ui;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use llmtrace_model::{AggregateQuery, Dimension, SpanFilter, SpanQuery, Store};
use llmtrace_store::{Durability, EmbeddedStore, StoreConfig};

use corpus::Corpus;

#[derive(clap::Subcommand)]
pub enum BenchCommand {
    /// OTLP/HTTP ingest over loopback, then time until every span is queryable.
    Ingest(IngestArgs),
    /// The embedded store directly: durable ingest, queries, bytes on disk.
    Store(StoreArgs),
    /// The gateway against a fake upstream, beside direct calls and LiteLLM.
    Gateway(gateway::GatewayArgs),
    /// What pricing adds per span, with reported and with estimated tokens.
    Pricing(pricing::PricingArgs),
    /// What recording one gateway call costs, stage by stage, on one thread.
    Recorder(recorder::RecorderArgs),
    /// Exports of a whole store over HTTP, with the server's memory sampled.
    Export(export::ExportArgs),
    /// Every UI page over HTTP against a filled store.
    Ui(ui::UiArgs),
}

#[derive(clap::Args)]
pub struct IngestArgs {
    /// OTLP/HTTP traces endpoint.
    #[arg(long, default_value = "http://127.0.0.1:4318/v1/traces")]
    endpoint: String,
    #[arg(long, default_value_t = 200_000)]
    spans: u64,
    /// Spans per request.
    #[arg(long, default_value_t = 512)]
    batch: usize,
    /// Requests in flight.
    #[arg(long, default_value_t = 4)]
    concurrency: usize,
    /// New message text per span, bytes.
    #[arg(long, default_value_t = 2000)]
    text_bytes: usize,
    /// Project (resource attributes `llmtrace.project` and `openinference.project.name`).
    #[arg(long, default_value = "bench")]
    project: String,
    /// llmtrace API base URL to poll until every span is queryable.
    #[arg(long)]
    count_url: Option<String>,
    /// Arize Phoenix GraphQL URL (e.g. http://127.0.0.1:6006/graphql) to poll instead: the
    /// project's `recordCount`, since Phoenix acknowledges before it stores.
    #[arg(long)]
    count_phoenix_graphql: Option<String>,
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

#[derive(clap::Args)]
pub struct StoreArgs {
    /// Data directory (created; must not hold another store's data).
    #[arg(long)]
    dir: PathBuf,
    /// Spans on disk for the query measurements.
    #[arg(long, default_value_t = 1_000_000)]
    spans: u64,
    /// New message text per call, bytes (0: spans without content).
    #[arg(long, default_value_t = 2000)]
    text_bytes: usize,
    /// Days the spans are spread over.
    #[arg(long, default_value_t = 30)]
    days: i64,
    /// Spans appended after the segment measurements, to measure searches again while they
    /// sit in the memtable.
    #[arg(long, default_value_t = 20_000)]
    memtable_spans: u64,
    /// Spans appended per batch for the durable ingest measurements.
    #[arg(long, value_delimiter = ',', default_value = "1,100,1000")]
    batches: Vec<usize>,
    /// Spans appended at each batch size in the durable ingest measurements (default: 2,000
    /// batches, between 2,000 and 200,000 spans). Past about 200,000 spans of ~2 KB text the
    /// memtables reach their memory bound and appends wait for flushing: the sustained rate.
    #[arg(long)]
    ingest_spans: Option<usize>,
    /// Threads appending concurrently in the durable ingest measurements.
    #[arg(long, default_value_t = 1)]
    appenders: usize,
    /// Earlier turns each call of the durable ingest measurements resends, as chat and agent
    /// calls resend their history (0: every call carries only its own ~2 KB of new text).
    #[arg(long, default_value_t = 0)]
    ingest_history: usize,
    /// How the durable ingest measurements' store compresses its WAL records (`none`, the
    /// default, or `zstd`: the `wal_compression` setting).
    #[arg(long, default_value = "none")]
    wal_compression: llmtrace_store::WalCompression,
    /// Repetitions of each query (the median is reported).
    #[arg(long, default_value_t = 5)]
    repeat: usize,
    /// Skip the ingest measurements and the load: measure the queries again on the corpus an
    /// earlier run left in `--dir` (with the same `--spans`). The memtable measurements
    /// append `--memtable-spans` more spans to it; pass 0 to keep it as it is.
    #[arg(long)]
    reuse_corpus: bool,
    /// Measure only the queries whose name contains this (to profile one).
    #[arg(long)]
    only: Option<String>,
}

/// What the queries of `bench store` are built from, kept beside the corpus so that a later
/// run can measure them again without loading it (`--reuse-corpus`).
#[derive(serde::Serialize, serde::Deserialize)]
struct CorpusProbe {
    /// The corpus's newest time, nanoseconds since the epoch (the windows end there).
    end: i64,
    /// The first span of the batch in the middle of the load.
    probe: llmtrace_model::Span,
}

pub fn run(command: BenchCommand) -> Result<()> {
    match command {
        BenchCommand::Ingest(args) => ingest(args),
        BenchCommand::Store(args) => store(args),
        BenchCommand::Gateway(args) => gateway::run(args),
        BenchCommand::Pricing(args) => pricing::run(args),
        BenchCommand::Recorder(args) => recorder::run(args),
        BenchCommand::Export(args) => export::run(args),
        BenchCommand::Ui(args) => ui::run(args),
    }
}

fn now_ns() -> i64 {
    llmtrace_store::now_ns()
}

fn ingest(args: IngestArgs) -> Result<()> {
    let mut corpus = Corpus::new(args.seed, args.spans, 1, now_ns(), args.text_bytes);
    corpus.max_history = 0;
    eprintln!("generating {} spans…", args.spans);
    let mut bodies = Vec::new();
    let mut remaining = args.spans;
    let mut raw_bytes = 0usize;
    while remaining > 0 {
        let n = remaining.min(args.batch as u64);
        let spans: Vec<_> = (0..n).map(|_| corpus.next_span(&args.project)).collect();
        let body = otlp::encode(&spans, &args.project);
        raw_bytes += body.len();
        bodies.push((n, body));
        remaining -= n;
    }
    let bodies = Arc::new(bodies);
    let next = Arc::new(AtomicUsize::new(0));
    let acked = Arc::new(AtomicU64::new(0));
    let refused = Arc::new(AtomicU64::new(0));
    eprintln!(
        "sending {} requests ({} MB) with {} in flight…",
        bodies.len(),
        raw_bytes >> 20,
        args.concurrency
    );
    let started = Instant::now();
    let workers: Vec<_> = (0..args.concurrency)
        .map(|_| {
            let (bodies, next, acked, refused) =
                (bodies.clone(), next.clone(), acked.clone(), refused.clone());
            let endpoint = args.endpoint.clone();
            std::thread::spawn(move || {
                let agent: ureq::Agent = ureq::Agent::config_builder()
                    .http_status_as_error(false)
                    .timeout_global(Some(Duration::from_secs(120)))
                    .build()
                    .into();
                loop {
                    let index = next.fetch_add(1, Ordering::Relaxed);
                    let Some((count, body)) = bodies.get(index) else {
                        return;
                    };
                    // Retry refused requests (503/429) as an exporter would, after a pause.
                    for attempt in 0..50 {
                        let response = agent
                            .post(&endpoint)
                            .header("content-type", "application/x-protobuf")
                            .send(&body[..]);
                        match response {
                            Ok(response) if response.status().is_success() => {
                                acked.fetch_add(*count, Ordering::Relaxed);
                                break;
                            }
                            _ => {
                                refused.fetch_add(1, Ordering::Relaxed);
                                std::thread::sleep(Duration::from_millis(50 << attempt.min(4)));
                            }
                        }
                    }
                }
            })
        })
        .collect();
    for worker in workers {
        let _ = worker.join();
    }
    let send_time = started.elapsed();
    let acked = acked.load(Ordering::Relaxed);
    println!("endpoint {}", args.endpoint);
    println!(
        "acknowledged {acked} of {} spans in {:.2} s: {:.0} spans/s ({} refused attempts, retried)",
        args.spans,
        send_time.as_secs_f64(),
        acked as f64 / send_time.as_secs_f64(),
        refused.load(Ordering::Relaxed)
    );
    let counter: Option<Box<dyn Fn() -> u64>> = match (&args.count_url, &args.count_phoenix_graphql)
    {
        (Some(url), _) => {
            let url = format!(
                "{}/api/v1/aggregate?project={}",
                url.trim_end_matches('/'),
                args.project
            );
            Some(Box::new(move || {
                ureq::get(&url)
                    .call()
                    .ok()
                    .and_then(|mut r| r.body_mut().read_json::<serde_json::Value>().ok())
                    .and_then(|v| v["data"][0]["count"].as_u64())
                    .unwrap_or(0)
            }))
        }
        (None, Some(graphql)) => {
            let graphql = graphql.clone();
            let project = args.project.clone();
            Some(Box::new(move || {
                let query = serde_json::json!({"query": "{ projects { edges { node { name recordCount } } } }"});
                ureq::post(&graphql)
                    .send_json(&query)
                    .ok()
                    .and_then(|mut r| r.body_mut().read_json::<serde_json::Value>().ok())
                    .and_then(|v| {
                        v["data"]["projects"]["edges"]
                            .as_array()?
                            .iter()
                            .find_map(|edge| {
                                (edge["node"]["name"] == project.as_str())
                                    .then(|| edge["node"]["recordCount"].as_u64())?
                            })
                    })
                    .unwrap_or(0)
            }))
        }
        (None, None) => None,
    };
    if let Some(count) = counter {
        let after_ack = Instant::now();
        let (stored, visible_after) = loop {
            let stored = count();
            let waited = after_ack.elapsed();
            if stored >= args.spans || waited > Duration::from_secs(300) {
                break (stored, waited);
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        println!(
            "stored and queryable: {stored} of {} spans, all visible {:.0} ms after the last acknowledgement; end to end {:.0} spans/s stored",
            args.spans,
            visible_after.as_secs_f64() * 1000.0,
            stored as f64 / (send_time + visible_after).as_secs_f64()
        );
        if stored < args.spans {
            bail!(
                "only {stored} of {} spans became queryable within 300 s",
                args.spans
            );
        }
    }
    Ok(())
}

/// CPU time (user + system) a process has used, all its threads, from `/proc/{pid}/stat`
/// (`pid` may be "self"); in clock ticks of 10 ms.
pub(crate) fn process_cpu(pid: &str) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // fields after the command name: state is the 1st; utime the 12th, stime the 13th
    let rest = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or("");
    let ticks: u64 = rest
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|field| field.parse::<u64>().ok())
        .sum();
    Duration::from_millis(ticks * 10)
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

fn time<T>(repeat: usize, mut work: impl FnMut() -> Result<T>) -> Result<(Duration, T)> {
    let mut samples = Vec::new();
    let mut last = None;
    for _ in 0..repeat.max(1) {
        let started = Instant::now();
        last = Some(work()?);
        samples.push(started.elapsed());
    }
    Ok((median(samples), last.context("no run")?))
}

/// A query run for timing; answers how many rows it returned.
type TimedQuery<'a> = Box<dyn Fn() -> Result<usize> + 'a>;

/// Starts this binary's `serve` on `dir` (HTTP on a free port, no OTLP ports, retention
/// off) with `extra` flags; returns it and its base URL.
fn serve(
    dir: &std::path::Path,
    extra: &[&str],
    stderr: std::process::Stdio,
) -> Result<(std::process::Child, String)> {
    use std::io::BufRead;
    let mut child = std::process::Command::new(std::env::current_exe()?)
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--otlp-http-listen",
            "off",
        ])
        .args(["--otlp-grpc-listen", "off", "--data-dir"])
        .arg(dir)
        .args(extra)
        .env("LLMTRACE_LOG", "warn")
        .env("LLMTRACE_RETENTION_DAYS", "0")
        .stdout(std::process::Stdio::piped())
        .stderr(stderr)
        .spawn()?;
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().context("no stdout")?).read_line(&mut line)?;
    let base = line
        .split_whitespace()
        .find_map(|part| part.strip_prefix("http="))
        .map(|address| format!("http://{address}"))
        .with_context(|| format!("unexpected first line {line:?}"))?;
    Ok((child, base))
}

fn open(dir: &std::path::Path, durability: Durability) -> Result<EmbeddedStore> {
    open_with(dir, durability, llmtrace_store::WalCompression::default())
}

fn open_with(
    dir: &std::path::Path,
    durability: Durability,
    wal_compression: llmtrace_store::WalCompression,
) -> Result<EmbeddedStore> {
    let mut config = StoreConfig::new(dir);
    config.durability = durability;
    config.wal_compression = wal_compression;
    config.default_retention_days = 0;
    config.flush_interval = Duration::from_secs(3600);
    Ok(EmbeddedStore::open(config)?)
}

/// What the appending thread spends on one batch's WAL record (taking each span's
/// documents out as text for the memtable, serializing and compressing the batch), as the
/// batch is and with every span's text changed so that it is no longer its messages' text:
/// the WAL then keeps both copies, as it did before it derived one.
fn print_wal_encoding(what: &str, batch: &[llmtrace_model::Span]) -> Result<()> {
    use llmtrace_store::WalCompression;
    use llmtrace_store::memtable::Prepared;
    use llmtrace_store::wal::EncodedEntry;
    const ROUNDS: u32 = 20;
    let per_span = |spans: &[llmtrace_model::Span],
                    compression: WalCompression|
     -> Result<(f64, usize)> {
        let prepare = |spans: Vec<llmtrace_model::Span>| -> Vec<Prepared> {
            spans.into_iter().map(Prepared::new).collect()
        };
        // once untimed: the thread's buffer and compressor are made on first use
        EncodedEntry::rows(&mut prepare(spans.to_vec()), compression)?;
        // copies made (and the rows kept, as the memtable keeps them) outside the timing
        let copies: Vec<Vec<llmtrace_model::Span>> = (0..ROUNDS).map(|_| spans.to_vec()).collect();
        let mut kept = Vec::with_capacity(copies.len());
        let started = Instant::now();
        let mut bytes = 0;
        for copy in copies {
            let mut rows = prepare(copy);
            bytes = EncodedEntry::rows(&mut rows, compression)?.len();
            kept.push(rows);
        }
        let micros = started.elapsed().as_secs_f64() * 1e6 / f64::from(ROUNDS);
        drop(kept);
        Ok((micros / spans.len() as f64, bytes / spans.len()))
    };
    let (derived, derived_bytes) = per_span(batch, WalCompression::None)?;
    let (zstd, zstd_bytes) = per_span(batch, WalCompression::Zstd)?;
    let mut kept: Vec<_> = batch.to_vec();
    for span in &mut kept {
        span.input_text.push(' ');
        span.output_text.push(' ');
    }
    let (whole, whole_bytes) = per_span(&kept, WalCompression::None)?;
    println!(
        "| WAL record of {what} ({} spans): documents to text, serialize and compress | {derived:.1} µs/span, {derived_bytes} bytes/span (`wal_compression = \"zstd\"`: {zstd:.1} µs/span, {zstd_bytes} bytes/span; text kept twice: {whole:.1} µs/span, {whole_bytes} bytes/span) |",
        batch.len()
    );
    Ok(())
}

/// What a client appending one span at a time waits for at the WAL: commits of a one-span
/// record, fdatasync each, into a new file and into a file kept from an earlier one and
/// written over (as the WAL thread does once a flush has given one back).
fn print_wal_commits(dir: &std::path::Path, span: &llmtrace_model::Span) -> Result<()> {
    use llmtrace_store::memtable::Prepared;
    use llmtrace_store::wal::{self, EncodedEntry, WalWriter};
    const COMMITS: u64 = 2000;
    let wal_dir = dir.join("wal-commits");
    std::fs::create_dir_all(&wal_dir)?;
    let entry = EncodedEntry::rows(
        &mut [Prepared::new(span.clone())],
        llmtrace_store::WalCompression::None,
    )?;
    let commits = |first_seq: u64| -> Result<(f64, f64)> {
        let mut writer = WalWriter::create(&wal_dir, first_seq)?;
        let cpu = process_cpu("self");
        let started = Instant::now();
        for seq in first_seq..first_seq + COMMITS {
            writer.write(seq, &entry)?;
            writer.sync(true)?;
        }
        let per = |d: Duration| d.as_secs_f64() * 1e6 / COMMITS as f64;
        Ok((per(started.elapsed()), per(process_cpu("self") - cpu)))
    };
    let (new_wall, new_cpu) = commits(1)?;
    wal::retire(&wal_dir, 1, true)?;
    let (reused_wall, reused_cpu) = commits(COMMITS + 1)?;
    println!(
        "| WAL commit of one span ({} bytes), fdatasync each, {COMMITS} commits | new file: {new_wall:.0} µs, {new_cpu:.1} µs CPU per commit; written over a kept file: {reused_wall:.0} µs, {reused_cpu:.1} µs CPU |",
        entry.len()
    );
    std::fs::remove_dir_all(&wal_dir)?;
    Ok(())
}

fn store(args: StoreArgs) -> Result<()> {
    println!("| measurement | result |");
    println!("|---|---|");
    let probe_path = args.dir.join("corpus-probe.json");
    let (store, CorpusProbe { end, probe }) = if args.reuse_corpus {
        let probe: CorpusProbe = serde_json::from_slice(
            &std::fs::read(&probe_path)
                .with_context(|| format!("{}: no corpus to reuse", probe_path.display()))?,
        )?;
        (open(&args.dir.join("corpus"), Durability::None)?, probe)
    } else {
        if args.dir.exists() && std::fs::read_dir(&args.dir)?.next().is_some() {
            bail!("{} is not empty", args.dir.display());
        }
        let end = now_ns();
        measure_ingest(&args, end)?;
        let (store, probe) = load_corpus(&args, end)?;
        let probe = CorpusProbe { end, probe };
        std::fs::write(&probe_path, serde_json::to_vec(&probe)?)?;
        (store, probe)
    };
    measure_queries(&args, &store, end, &probe)?;
    store.close()?;
    Ok(())
}

/// Durable ingest at each batch size, fsync per group commit, `appenders` threads
/// appending concurrently (as concurrent requests do; group commit shares fsyncs).
fn measure_ingest(args: &StoreArgs, end: i64) -> Result<()> {
    for &batch in &args.batches {
        let dir = args.dir.join(format!("ingest-batch-{batch}"));
        let store = open_with(&dir, Durability::Fsync, args.wal_compression)?;
        let count = args
            .ingest_spans
            .unwrap_or((batch * 2000).clamp(2000, 200_000))
            .max(batch);
        let mut corpus = Corpus::new(batch as u64, count as u64, 1, end, args.text_bytes);
        corpus.max_history = args.ingest_history;
        let mut batches: Vec<Vec<_>> = Vec::new();
        for _ in 0..count / batch {
            batches.push((0..batch).map(|_| corpus.next_span("bench")).collect());
        }
        let written = (batches.len() * batch) as u64;
        if let Some(first) = batches.first() {
            print_wal_encoding("a durable ingest batch", first)?;
            if batch == 1 {
                print_wal_commits(&args.dir, &first[0])?;
            }
        }
        let mut lanes: Vec<Vec<Vec<_>>> = (0..args.appenders.max(1)).map(|_| Vec::new()).collect();
        let lane_count = lanes.len();
        for (n, spans) in batches.into_iter().enumerate() {
            lanes[n % lane_count].push(spans);
        }
        let cpu_before = process_cpu("self");
        let started = Instant::now();
        std::thread::scope(|scope| {
            let store = &store;
            let appenders: Vec<_> = lanes
                .into_iter()
                .map(|lane| {
                    scope.spawn(move || -> Result<()> {
                        for spans in lane {
                            store.append(spans)?;
                        }
                        Ok(())
                    })
                })
                .collect();
            appenders.into_iter().try_for_each(|appender| {
                appender
                    .join()
                    .map_err(|_| anyhow::anyhow!("appender panicked"))?
            })
        })?;
        let rate = written as f64 / started.elapsed().as_secs_f64();
        let cpu_acknowledged = process_cpu("self") - cpu_before;
        // A burst larger than the memtables' bound runs at flushing's pace once it is reached.
        let waited = Duration::from_millis(store.stats()?.append_wait_ms);
        // Closing flushes the memtables: the segments and term indexes the burst left behind.
        let closing = Instant::now();
        store.close()?;
        let cpu_all = process_cpu("self") - cpu_before;
        let per_span = |cpu: Duration| cpu.as_secs_f64() * 1e6 / written as f64;
        println!(
            "| durable ingest (fsync), batch {batch}, {} B text/span{}, {written} spans, {lane_count} appender(s), WAL `{}` | {rate:.0} spans/s; CPU {:.1} µs/span until acknowledged, {:.1} µs/span with the flush at close ({:.1} s); appends waited {:.2} s for flushing |",
            args.text_bytes,
            if args.ingest_history > 0 {
                format!(" resending up to {} turns", args.ingest_history)
            } else {
                String::new()
            },
            format!("{:?}", args.wal_compression).to_lowercase(),
            per_span(cpu_acknowledged),
            per_span(cpu_all),
            closing.elapsed().as_secs_f64(),
            waited.as_secs_f64()
        );
        std::fs::remove_dir_all(&dir)?;
    }
    Ok(())
}

/// Loads a corpus of `spans` into `--dir/corpus` and reports its size on disk; answers the
/// store and the span the queries look for.
fn load_corpus(args: &StoreArgs, end: i64) -> Result<(EmbeddedStore, llmtrace_model::Span)> {
    let dir = args.dir.join("corpus");
    let store = open(&dir, Durability::None)?;
    let mut corpus = Corpus::new(42, args.spans, args.days, end, args.text_bytes);
    let mut raw_json_bytes = 0u64;
    // the message fields as the raw JSON holds them (each value serialized)
    let mut raw_message_bytes = 0u64;
    let started = Instant::now();
    let mut probe = None;
    let mut middle_batch = Vec::new();
    for chunk_start in (0..args.spans).step_by(1000) {
        let n = (args.spans - chunk_start).min(1000);
        let spans: Vec<_> = (0..n).map(|_| corpus.next_span("bench")).collect();
        raw_json_bytes += spans
            .iter()
            .map(|s| serde_json::to_vec(s).map(|v| v.len() as u64).unwrap_or(0))
            .sum::<u64>();
        raw_message_bytes += spans
            .iter()
            .map(|s| {
                let json =
                    |value: &serde_json::Value| serde_json::to_vec(value).map_or(0, |v| v.len());
                (json(&s.input) + json(&s.output) + s.input_text.len() + s.output_text.len()) as u64
            })
            .sum::<u64>();
        if chunk_start == args.spans / 2 {
            probe = spans.first().cloned();
            middle_batch = spans.clone();
        }
        store.append(spans)?;
    }
    store.flush()?;
    let load_time = started.elapsed();
    let probe = probe.context("corpus too small")?;
    print_wal_encoding("a multi-turn corpus batch", &middle_batch)?;
    let stats = store.stats()?;
    println!(
        "| corpus load (no fsync) + flush, {} spans | {:.1} s |",
        args.spans,
        load_time.as_secs_f64()
    );
    println!(
        "| on disk: {} segments, {} MB | {:.0} bytes/span, {:.1}% of the raw JSON ({} MB) |",
        stats.segments,
        stats.segment_bytes >> 20,
        stats.segment_bytes as f64 / args.spans as f64,
        100.0 * stats.segment_bytes as f64 / raw_json_bytes as f64,
        raw_json_bytes >> 20
    );
    // Where the bytes go: message content versus every other column.
    let columns = store.column_bytes();
    // the message columns, the chunk ids of the pooled ones, and the pool itself
    let content = [
        "input",
        "output",
        "input_text",
        "output_text",
        "input_chunks",
        "input_text_chunks",
        "(message pool)",
    ];
    let content_bytes: u64 = columns
        .iter()
        .filter(|(name, _)| content.contains(&name.as_str()))
        .map(|(_, bytes)| bytes)
        .sum();
    let other_bytes: u64 = columns.values().sum::<u64>() - content_bytes;
    println!(
        "| message columns (input, output, input_text, output_text, with chunk ids and pool) | {:.0} bytes/span, {:.1}× smaller than their raw {:.0} bytes/span |",
        content_bytes as f64 / args.spans as f64,
        raw_message_bytes as f64 / content_bytes.max(1) as f64,
        raw_message_bytes as f64 / args.spans as f64
    );
    for name in content {
        let bytes = columns.get(name).copied().unwrap_or(0);
        println!(
            "| column {name} | {:.1} bytes/span |",
            bytes as f64 / args.spans as f64
        );
    }
    println!(
        "| every other column (ids, times, usage, metadata, attributes, …) | {:.0} bytes/span |",
        other_bytes as f64 / args.spans as f64
    );
    let mut largest: Vec<(&String, &u64)> = columns
        .iter()
        .filter(|(name, _)| !content.contains(&name.as_str()))
        .collect();
    largest.sort_by_key(|(_, bytes)| std::cmp::Reverse(**bytes));
    for (name, bytes) in largest.into_iter().take(6) {
        println!(
            "| column {name} | {:.1} bytes/span |",
            *bytes as f64 / args.spans as f64
        );
    }
    Ok((store, probe))
}

/// Times each search, lookup and aggregate on the corpus, then again with
/// `--memtable-spans` recent spans still in the memtable.
fn measure_queries(
    args: &StoreArgs,
    store: &EmbeddedStore,
    end: i64,
    probe: &llmtrace_model::Span,
) -> Result<()> {
    let project = SpanFilter::for_project("bench");
    let longest_word = probe
        .output_text
        .split(|c: char| !c.is_alphanumeric())
        .max_by_key(|w| w.len())
        .unwrap_or("x")
        .to_string();
    let first_word = probe
        .output_text
        .split(|c: char| !c.is_alphanumeric())
        .find(|w| !w.is_empty())
        .unwrap_or("x")
        .to_string();
    // Every search filter of `GET /v1/traces` (and a range filter the index cannot answer),
    // each as the first page of 50, newest first.
    let searches: Vec<(String, SpanFilter)> = vec![
        ("newest page".into(), project.clone()),
        (
            format!("model = {}", probe.request_model.as_deref().unwrap_or("")),
            SpanFilter {
                model: probe.request_model.clone(),
                ..project.clone()
            },
        ),
        (
            format!("provider = {}", probe.provider.as_deref().unwrap_or("")),
            SpanFilter {
                provider: probe.provider.clone(),
                ..project.clone()
            },
        ),
        (
            "status = error".into(),
            SpanFilter {
                status: Some(llmtrace_model::SpanStatus::Error),
                ..project.clone()
            },
        ),
        (
            "user_id".into(),
            SpanFilter {
                user_id: probe.user_id.clone(),
                ..project.clone()
            },
        ),
        (
            "session_id".into(),
            SpanFilter {
                session_id: probe.session_id.clone(),
                ..project.clone()
            },
        ),
        (
            "metadata tier=pro, feature=agent".into(),
            SpanFilter {
                metadata: vec![
                    ("tier".into(), "pro".into()),
                    ("feature".into(), "agent".into()),
                ],
                ..project.clone()
            },
        ),
        (
            "routing_alias (no match)".into(),
            SpanFilter {
                routing_alias: Some("smart".into()),
                ..project.clone()
            },
        ),
        (
            format!("q = {longest_word}"),
            SpanFilter {
                text: Some(longest_word.clone()),
                ..project.clone()
            },
        ),
        (
            format!("q = {first_word} {longest_word}"),
            SpanFilter {
                text: Some(format!("{first_word} {longest_word}")),
                ..project.clone()
            },
        ),
        (
            "since/until: one hour, a day ago".into(),
            SpanFilter {
                since: Some(end - 25 * 3_600_000_000_000),
                until: Some(end - 24 * 3_600_000_000_000),
                ..project.clone()
            },
        ),
        (
            "model + status = error + q".into(),
            SpanFilter {
                model: probe.request_model.clone(),
                status: Some(llmtrace_model::SpanStatus::Error),
                text: Some(first_word.clone()),
                ..project.clone()
            },
        ),
        (
            "duration ≥ 20 s (not indexed)".into(),
            SpanFilter {
                min_duration_ms: Some(20_000.0),
                ..project.clone()
            },
        ),
    ];
    let mut queries: Vec<(String, TimedQuery)> = Vec::new();
    for (name, filter) in searches {
        let second_page = SpanQuery::new(filter.clone());
        queries.push((
            format!("search, {name}"),
            Box::new(move || Ok(store.search(&SpanQuery::new(filter.clone()))?.spans.len())),
        ));
        if name == "newest page" {
            queries.push((
                "search, newest page, pages 1 to 10 by cursor (all ten)".into(),
                Box::new(move || {
                    let mut query = second_page.clone();
                    for _ in 0..9 {
                        query.cursor = store.search(&query)?.next_cursor;
                    }
                    Ok(store.search(&query)?.spans.len())
                }),
            ));
        }
    }
    let lookups: Vec<(String, TimedQuery)> = vec![
        (
            "trace by id".into(),
            Box::new(|| Ok(store.trace("bench", &probe.trace_id)?.len())),
        ),
        (
            "session by id".into(),
            Box::new(|| {
                Ok(store
                    .session("bench", probe.session_id.as_deref().unwrap_or(""))?
                    .len())
            }),
        ),
        (
            "cost per model per day (all days)".into(),
            Box::new(|| {
                let query = AggregateQuery {
                    filter: project.clone(),
                    bucket_seconds: Some(86_400),
                    group_by: vec![Dimension::Model],
                };
                Ok(store.aggregate(&query)?.len())
            }),
        ),
        (
            "cost per model per day, last 30 days (ragged edges)".into(),
            Box::new(|| {
                let query = AggregateQuery {
                    filter: SpanFilter {
                        since: Some(end - 30 * 86_400_000_000_000),
                        until: Some(end),
                        ..project.clone()
                    },
                    bucket_seconds: Some(86_400),
                    group_by: vec![Dimension::Model],
                };
                Ok(store.aggregate(&query)?.len())
            }),
        ),
        (
            "error rate per provider per hour, last 24 h".into(),
            Box::new(|| {
                let query = AggregateQuery {
                    filter: SpanFilter {
                        since: Some(end - 86_400_000_000_000),
                        ..project.clone()
                    },
                    bucket_seconds: Some(3_600),
                    group_by: vec![Dimension::Provider, Dimension::Status],
                };
                Ok(store.aggregate(&query)?.len())
            }),
        ),
        (
            "tokens per user (not rolled up: reads rows)".into(),
            Box::new(|| {
                let query = AggregateQuery {
                    filter: project.clone(),
                    bucket_seconds: None,
                    group_by: vec![Dimension::User],
                };
                Ok(store.aggregate(&query)?.len())
            }),
        ),
        (
            "p99 latency per model".into(),
            Box::new(|| {
                let query = AggregateQuery {
                    filter: project.clone(),
                    bucket_seconds: None,
                    group_by: vec![Dimension::Model],
                };
                Ok(store.aggregate(&query)?.len())
            }),
        ),
    ];
    queries.extend(lookups);
    if let Some(only) = &args.only {
        queries.retain(|(name, _)| name.contains(only.as_str()));
    }
    for (name, query) in &queries {
        let (took, rows) = time(args.repeat, query)?;
        println!(
            "| {name} at {} spans | {:.1} ms ({rows} rows) |",
            args.spans,
            took.as_secs_f64() * 1000.0
        );
    }
    // The same searches while recent rows are still in the memtable (scanned, not indexed).
    if args.memtable_spans == 0 {
        return Ok(());
    }
    let mut fresh = Corpus::new(7, args.memtable_spans, 1, now_ns(), args.text_bytes);
    for chunk_start in (0..args.memtable_spans).step_by(1000) {
        let n = (args.memtable_spans - chunk_start).min(1000);
        store.append((0..n).map(|_| fresh.next_span("bench")).collect())?;
    }
    let in_memtable = store.stats()?.memtable_rows;
    for (name, query) in &queries {
        let (took, rows) = time(args.repeat, query)?;
        println!(
            "| {name}, {in_memtable} of them in the memtable | {:.1} ms ({rows} rows) |",
            took.as_secs_f64() * 1000.0
        );
    }
    Ok(())
}
