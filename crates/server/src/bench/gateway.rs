//! `llmtrace bench gateway`: the gateway against a fake upstream, side by side with calling
//! the upstream directly and (optionally) through the LiteLLM proxy, in one run on one
//! machine. The fake upstream runs in this process on its own thread; llmtrace and LiteLLM
//! run as child processes, so their CPU time and memory can be read from /proc.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use axum::body::{Body, Bytes};
use axum::http::{Request, header};
use axum::response::{IntoResponse, Response};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};

#[derive(clap::Args)]
pub struct GatewayArgs {
    /// Seconds each measurement runs (after a 1 s warm-up).
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Connections for the throughput runs against a 20 ms upstream.
    #[arg(long, value_delimiter = ',', default_value = "100,400")]
    concurrency: Vec<usize>,
    /// Streams held open for the memory measurement (0 skips it). Each takes a socket at
    /// both ends of both hops: 9,000 fits a 20,000-descriptor limit.
    #[arg(long, default_value_t = 9_000)]
    open_streams: usize,
    /// The `litellm` executable (PyPI `litellm[proxy]`) to run side by side.
    #[arg(long)]
    litellm: Option<PathBuf>,
}

/// What the fake upstream does; changed between measurements.
#[derive(Default)]
struct Behaviour {
    delay_ms: AtomicU64,
    chunks: AtomicU64,
    chunk_gap_ms: AtomicU64,
    /// Held streams send one chunk, then wait for this (at most two minutes).
    release: tokio::sync::Notify,
    releasing: std::sync::atomic::AtomicBool,
    held: AtomicUsize,
}

const ANSWER: &str = "Your parcel ships tomorrow. It left the warehouse this morning.";

fn completion(model: &str) -> String {
    json!({"id": "chatcmpl-bench", "object": "chat.completion", "created": 1795314700, "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": ANSWER, "refusal": null},
            "logprobs": null, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 41, "completion_tokens": 12, "total_tokens": 53},
        "system_fingerprint": "fp_bench"})
    .to_string()
}

fn chunk(model: &str, text: &str, usage: bool) -> Bytes {
    let mut chunk = json!({"id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": 1795314700,
        "model": model, "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": null}]});
    if usage {
        chunk["usage"] = Value::Null;
    }
    Bytes::from(format!("data: {chunk}\n\n"))
}

async fn upstream_chat(behaviour: Arc<Behaviour>, body: Bytes) -> Response {
    let request: Value = serde_json::from_slice(&body).unwrap_or_default();
    let model = request["model"]
        .as_str()
        .unwrap_or("gpt-4o-mini")
        .to_string();
    let delay = behaviour.delay_ms.load(Ordering::Relaxed);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    if request["stream"] != true {
        return (
            [(header::CONTENT_TYPE, "application/json")],
            completion(&model),
        )
            .into_response();
    }
    let usage = request["stream_options"]["include_usage"] == true;
    let hold = model == "hold";
    let chunks = behaviour.chunks.load(Ordering::Relaxed).max(1);
    let gap = behaviour.chunk_gap_ms.load(Ordering::Relaxed);
    let (sender, receiver) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(4);
    tokio::spawn(async move {
        if hold {
            let released = behaviour.release.notified();
            let _ = sender.send(Ok(chunk(&model, "held", usage))).await;
            // a stream that arrives after the release (a proxy's backlog) is not held
            if !behaviour.releasing.load(Ordering::SeqCst) {
                behaviour.held.fetch_add(1, Ordering::Relaxed);
                let _ = tokio::time::timeout(Duration::from_secs(120), released).await;
            }
        } else {
            for i in 0..chunks {
                if i > 0 && gap > 0 {
                    tokio::time::sleep(Duration::from_millis(gap)).await;
                }
                if sender
                    .send(Ok(chunk(&model, "word ", usage)))
                    .await
                    .is_err()
                {
                    return;
                }
            }
        }
        if usage {
            let last = json!({"id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": 1795314700,
                "model": model, "choices": [], "usage": {"prompt_tokens": 41, "completion_tokens": 12, "total_tokens": 53}});
            let _ = sender
                .send(Ok(Bytes::from(format!("data: {last}\n\n"))))
                .await;
        }
        let _ = sender
            .send(Ok(Bytes::from_static(b"data: [DONE]\n\n")))
            .await;
    });
    let body = Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(receiver));
    ([(header::CONTENT_TYPE, "text/event-stream")], body).into_response()
}

/// Starts the fake upstream on its own single-threaded runtime; returns its address.
fn start_upstream(behaviour: Arc<Behaviour>) -> Result<String> {
    let (sender, receiver) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("bench-upstream".into())
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime,
                Err(e) => {
                    let _ = sender.send(Err(e.to_string()));
                    return;
                }
            };
            runtime.block_on(async move {
                let listener = match tokio::net::TcpListener::bind("127.0.0.1:0").await {
                    Ok(listener) => listener,
                    Err(e) => {
                        let _ = sender.send(Err(e.to_string()));
                        return;
                    }
                };
                let address = listener.local_addr().map_err(|e| e.to_string());
                let _ = sender.send(address.map(|a| a.to_string()));
                let app = axum::Router::new().route(
                    "/v1/chat/completions",
                    axum::routing::post(move |body: Bytes| upstream_chat(behaviour.clone(), body)),
                );
                let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
                    let _ = tcp.set_nodelay(true);
                });
                let _ = axum::serve(listener, app).await;
            });
        })?;
    let address = receiver
        .recv()
        .context("upstream thread died")?
        .map_err(anyhow::Error::msg)?;
    Ok(address)
}

/// A child process under test, with its /proc readings.
struct Proxy {
    name: &'static str,
    child: Child,
    base: String,
    auth: Option<String>,
}

impl Proxy {
    fn cpu_ticks(&self) -> u64 {
        let stat =
            std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).unwrap_or_default();
        // fields after the command name: state is 3rd; utime 14th, stime 15th
        let rest = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or("");
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let field = |i: usize| {
            fields
                .get(i)
                .and_then(|f| f.parse::<u64>().ok())
                .unwrap_or(0)
        };
        field(11) + field(12)
    }

    /// Resident memory of the process and its children (LiteLLM forks workers), KiB.
    fn rss_kib(&self) -> u64 {
        let mut total = 0;
        let mut pids = vec![self.child.id()];
        while let Some(pid) = pids.pop() {
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
            total += status
                .lines()
                .find_map(|line| line.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0);
            let children = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
                .unwrap_or_default();
            pids.extend(
                children
                    .split_whitespace()
                    .filter_map(|c| c.parse::<u32>().ok()),
            );
        }
        total
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_llmtrace(upstream: &str, dir: &std::path::Path) -> Result<Proxy> {
    let provider = format!("bench=http://{upstream}/v1");
    let (child, base) = super::serve(
        dir,
        &["--provider", &provider],
        Stdio::from(std::fs::File::create(dir.with_extension("log"))?),
    )?;
    Ok(Proxy {
        name: "llmtrace",
        child,
        base,
        auth: None,
    })
}

fn start_litellm(bin: &PathBuf, upstream: &str, dir: &std::path::Path) -> Result<Proxy> {
    let config = dir.join("litellm.yaml");
    std::fs::write(
        &config,
        format!(
            "model_list:\n  - model_name: gpt-4o-mini\n    litellm_params:\n      model: openai/gpt-4o-mini\n      api_base: http://{upstream}/v1\n      api_key: sk-upstream\n  - model_name: hold\n    litellm_params:\n      model: openai/hold\n      api_base: http://{upstream}/v1\n      api_key: sk-upstream\ngeneral_settings:\n  master_key: sk-bench\nlitellm_settings:\n  telemetry: false\n"
        ),
    )?;
    let port = free_port()?;
    let child = Command::new(bin)
        .arg("--config")
        .arg(&config)
        .args(["--host", "127.0.0.1", "--port", &port.to_string()])
        .env("LITELLM_TELEMETRY", "False")
        .env("DISABLE_SCHEMA_UPDATE", "True")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("litellm.log"))?)
        .spawn()?;
    let proxy = Proxy {
        name: "LiteLLM",
        child,
        base: format!("http://127.0.0.1:{port}"),
        auth: Some("Bearer sk-bench".into()),
    };
    let deadline = Instant::now() + Duration::from_secs(180);
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    while agent
        .get(format!("{}/health/liveliness", proxy.base))
        .call()
        .map(|r| r.status().as_u16())
        .unwrap_or(0)
        != 200
    {
        if Instant::now() > deadline {
            bail!(
                "LiteLLM did not start (see {})",
                dir.join("litellm.log").display()
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    Ok(proxy)
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

type HttpClient = Client<HttpConnector, Full<Bytes>>;

fn client(connections: usize) -> HttpClient {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(connections)
        .build(connector)
}

/// One target of the measurements: a base URL and headers.
#[derive(Clone)]
struct Target {
    name: String,
    base: String,
    headers: Vec<(&'static str, String)>,
}

fn chat_request(target: &Target, model: &str, stream: bool) -> Request<Full<Bytes>> {
    let body = json!({"model": model, "stream": stream,
        "messages": [{"role": "system", "content": "You are a shipping assistant."},
                     {"role": "user", "content": "Where is my parcel number 4417? It was due yesterday."}]});
    let mut builder = Request::post(format!("{}/v1/chat/completions", target.base))
        .header(header::CONTENT_TYPE, "application/json");
    for (name, value) in &target.headers {
        builder = builder.header(*name, value);
    }
    builder
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap_or_default()
}

/// Latencies of one run (µs, sorted) and what the chunks looked like.
#[derive(Default)]
struct Run {
    /// Requests completed, warm-up included.
    sent: u64,
    latencies: Vec<u64>,
    first_chunk: Vec<u64>,
    chunk_gaps: Vec<u64>,
    errors: u64,
    elapsed: Duration,
}

impl Run {
    fn absorb(&mut self, other: Run) {
        self.sent += other.sent;
        self.latencies.extend(other.latencies);
        self.first_chunk.extend(other.first_chunk);
        self.chunk_gaps.extend(other.chunk_gaps);
        self.errors += other.errors;
        self.elapsed += other.elapsed;
    }
}

const ROUNDS: u64 = 3;
/// A request that takes longer counts as an error (a proxy may stall under overload).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1] as f64
}

/// Sends requests on `connections` loops for `seconds` (after a warm-up second).
async fn load(
    client: &HttpClient,
    target: &Target,
    connections: usize,
    seconds: u64,
    stream: bool,
) -> Run {
    let warm_until = Instant::now() + Duration::from_millis(500);
    let stop_at = warm_until + Duration::from_secs(seconds);
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..connections {
        let (client, target) = (client.clone(), target.clone());
        tasks.spawn(async move {
            let mut run = Run::default();
            loop {
                let now = Instant::now();
                if now >= stop_at {
                    return run;
                }
                let started = Instant::now();
                let request = client.request(chat_request(&target, "gpt-4o-mini", stream));
                let Ok(Ok(response)) = tokio::time::timeout(REQUEST_TIMEOUT, request).await else {
                    run.errors += 1;
                    continue;
                };
                let ok = response.status().is_success();
                let mut body = response.into_body();
                let mut first = None;
                let mut last = started;
                let mut gaps = Vec::new();
                while let Ok(Some(frame)) =
                    tokio::time::timeout_at((started + REQUEST_TIMEOUT).into(), body.frame()).await
                {
                    let Ok(frame) = frame else {
                        run.errors += 1;
                        break;
                    };
                    if frame.is_data() {
                        let at = Instant::now();
                        if first.is_none() {
                            first = Some(at.duration_since(started).as_micros() as u64);
                        } else {
                            gaps.push(at.duration_since(last).as_micros() as u64);
                        }
                        last = at;
                    }
                }
                if !ok {
                    run.errors += 1;
                }
                run.sent += 1;
                if started >= warm_until {
                    run.latencies.push(started.elapsed().as_micros() as u64);
                    if stream {
                        run.first_chunk.extend(first);
                        run.chunk_gaps.extend(gaps);
                    }
                }
            }
        });
    }
    let mut total = Run {
        elapsed: Duration::from_secs(seconds),
        ..Run::default()
    };
    while let Some(Ok(run)) = tasks.join_next().await {
        total.absorb(Run {
            elapsed: Duration::ZERO,
            ..run
        });
    }
    total.latencies.sort_unstable();
    total.first_chunk.sort_unstable();
    total.chunk_gaps.sort_unstable();
    total
}

fn ms(us: f64) -> String {
    format!("{:.3}", us / 1000.0)
}

pub fn run(args: GatewayArgs) -> Result<()> {
    let behaviour = Arc::new(Behaviour::default());
    let upstream = start_upstream(behaviour.clone())?;
    let temp = tempfile_dir()?;
    let llmtrace = start_llmtrace(&upstream, &temp.join("llmtrace"))?;
    std::thread::sleep(Duration::from_millis(300));
    let mut proxies = vec![llmtrace];
    if let Some(bin) = &args.litellm {
        eprintln!("starting LiteLLM…");
        proxies.push(start_litellm(bin, &upstream, &temp)?);
    }
    let idle: Vec<u64> = proxies.iter().map(Proxy::rss_kib).collect();

    let mut targets = vec![(
        Target {
            name: "direct".into(),
            base: format!("http://{upstream}"),
            headers: vec![],
        },
        None,
    )];
    for (index, proxy) in proxies.iter().enumerate() {
        let mut headers = vec![];
        if let Some(auth) = &proxy.auth {
            headers.push(("authorization", auth.clone()));
        }
        targets.push((
            Target {
                name: proxy.name.to_string(),
                base: proxy.base.clone(),
                headers: headers.clone(),
            },
            Some(index),
        ));
        if proxy.name == "llmtrace" {
            headers.push(("x-llmtrace-trace", "off".to_string()));
            targets.push((
                Target {
                    name: "llmtrace, recording off".into(),
                    base: proxy.base.clone(),
                    headers,
                },
                Some(index),
            ));
        }
    }

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let max_connections = args
        .concurrency
        .iter()
        .copied()
        .max()
        .unwrap_or(1)
        .max(args.open_streams);
    let http = client(max_connections);

    println!(
        "upstream: in-process axum on one thread; load: one tokio thread; {}s per measurement after 0.5 s warm-up",
        args.seconds
    );
    println!();
    println!("## Memory (RSS, process and children), measured first, on fresh processes");
    println!(
        "| proxy | idle MiB | before holding MiB | with {} open streams MiB | per stream KiB |",
        args.open_streams
    );
    println!("|---|---|---|---|---|");
    for (index, proxy) in proxies.iter().enumerate() {
        let before = proxy.rss_kib();
        behaviour.releasing.store(false, Ordering::SeqCst);
        let held = if args.open_streams == 0 {
            "—".to_string()
        } else {
            let target = Target {
                name: proxy.name.into(),
                base: proxy.base.clone(),
                headers: proxy
                    .auth
                    .iter()
                    .map(|a| ("authorization", a.clone()))
                    .collect(),
            };
            match runtime.block_on(hold_streams(&http, &target, args.open_streams, &behaviour)) {
                Ok(()) => {
                    let rss = proxy.rss_kib();
                    behaviour.releasing.store(true, Ordering::SeqCst);
                    behaviour.release.notify_waiters();
                    format!(
                        "{:.0} | {:.1}",
                        rss as f64 / 1024.0,
                        rss.saturating_sub(before) as f64 / args.open_streams as f64
                    )
                }
                Err(e) => {
                    let rss = proxy.rss_kib();
                    behaviour.releasing.store(true, Ordering::SeqCst);
                    behaviour.release.notify_waiters();
                    format!("{:.0} ({e}) | —", rss as f64 / 1024.0)
                }
            }
        };
        println!(
            "| {} | {:.0} | {:.0} | {} |",
            proxy.name,
            idle[index] as f64 / 1024.0,
            before as f64 / 1024.0,
            held
        );
        behaviour.held.store(0, Ordering::Relaxed);
        std::thread::sleep(Duration::from_secs(2));
    }
    println!();
    println!(
        "## Added latency, concurrency 1, zero-delay upstream, plain chat completion ({ROUNDS} interleaved rounds)"
    );
    println!(
        "| target | requests | p50 ms | p99 ms | added p50 µs | added p99 µs | proxy CPU µs/request |"
    );
    println!("|---|---|---|---|---|---|---|");
    // targets take turns, so drift on a shared machine hits them alike
    let mut runs: Vec<(Run, u64)> = targets.iter().map(|_| (Run::default(), 0)).collect();
    for _ in 0..ROUNDS {
        for ((target, proxy), (total, ticks)) in targets.iter().zip(runs.iter_mut()) {
            let before = proxy.map(|i| proxies[i].cpu_ticks()).unwrap_or(0);
            let run =
                runtime.block_on(load(&http, target, 1, args.seconds.div_ceil(ROUNDS), false));
            *ticks += proxy.map(|i| proxies[i].cpu_ticks() - before).unwrap_or(0);
            total.absorb(run);
        }
    }
    let mut direct = (0.0, 0.0);
    for ((target, proxy), (run, ticks)) in targets.iter().zip(runs.iter_mut()) {
        run.latencies.sort_unstable();
        let (p50, p99) = (
            percentile(&run.latencies, 50.0),
            percentile(&run.latencies, 99.0),
        );
        if proxy.is_none() {
            direct = (p50, p99);
        }
        let added = |value: f64, base: f64| match proxy {
            Some(_) => format!("{:.0}", value - base),
            None => "—".into(),
        };
        // clock ticks are 10 ms; warm-up requests used CPU too, so they are counted
        let cpu = match proxy {
            Some(_) => format!("{:.0}", *ticks as f64 * 10_000.0 / run.sent.max(1) as f64),
            None => "—".into(),
        };
        println!(
            "| {} | {} | {} | {} | {} | {} | {} |",
            target.name,
            run.latencies.len(),
            ms(p50),
            ms(p99),
            added(p50, direct.0),
            added(p99, direct.1),
            cpu,
        );
        if run.errors > 0 {
            println!("|   errors: {} | | | | | | |", run.errors);
        }
    }

    behaviour.delay_ms.store(20, Ordering::Relaxed);
    for &connections in &args.concurrency {
        println!();
        println!("## Throughput, {connections} connections, upstream answers after 20 ms");
        println!("| target | requests/s | p50 ms | p99 ms | errors |");
        println!("|---|---|---|---|---|");
        for (target, _) in &targets {
            let run = runtime.block_on(load(&http, target, connections, args.seconds, false));
            println!(
                "| {} | {:.0} | {} | {} | {} |",
                target.name,
                run.latencies.len() as f64 / run.elapsed.as_secs_f64(),
                ms(percentile(&run.latencies, 50.0)),
                ms(percentile(&run.latencies, 99.0)),
                run.errors
            );
        }
    }

    behaviour.delay_ms.store(0, Ordering::Relaxed);
    behaviour.chunks.store(20, Ordering::Relaxed);
    behaviour.chunk_gap_ms.store(2, Ordering::Relaxed);
    println!();
    println!("## Streaming, concurrency 1: 20 chunks 2 ms apart, no usage requested by the client");
    println!(
        "| target | streams | first chunk p50 ms | first chunk p99 ms | chunk gap p50 ms | chunk gap p99 ms |"
    );
    println!("|---|---|---|---|---|---|");
    for (target, _) in &targets {
        let run = runtime.block_on(load(&http, target, 1, args.seconds, true));
        println!(
            "| {} | {} | {} | {} | {} | {} |",
            target.name,
            run.latencies.len(),
            ms(percentile(&run.first_chunk, 50.0)),
            ms(percentile(&run.first_chunk, 99.0)),
            ms(percentile(&run.chunk_gaps, 50.0)),
            ms(percentile(&run.chunk_gaps, 99.0)),
        );
    }

    if let Some(proxy) = proxies.iter().find(|p| p.name == "llmtrace") {
        // the recorder lingers 50 ms per batch; give the queue a moment to drain
        std::thread::sleep(Duration::from_secs(2));
        let metrics = ureq::get(format!("{}/metrics", proxy.base))
            .call()
            .ok()
            .and_then(|mut r| r.body_mut().read_to_string().ok())
            .unwrap_or_default();
        let counter = |name: &str| {
            metrics
                .lines()
                .find_map(|line| line.strip_prefix(&format!("{name} ")))
                .unwrap_or("?")
                .to_string()
        };
        println!();
        println!(
            "llmtrace gateway counters: {} calls, {} recorded, {} not traced (recording off), {} dropped (queue full), {} refused by the store",
            counter("llmtrace_gateway_calls_total"),
            counter("llmtrace_gateway_recorded_total"),
            counter("llmtrace_gateway_not_traced_total"),
            counter("llmtrace_gateway_dropped_total"),
            counter("llmtrace_gateway_failed_total"),
        );
    }

    drop(proxies);
    let _ = std::fs::remove_dir_all(&temp);
    Ok(())
}

/// Opens `count` streams that the upstream holds after one chunk; returns once every
/// stream has delivered its first chunk to the client (so the proxy holds them all).
async fn hold_streams(
    client: &HttpClient,
    target: &Target,
    count: usize,
    behaviour: &Arc<Behaviour>,
) -> Result<()> {
    let ready = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..count {
        let (client, target, ready, failed) = (
            client.clone(),
            target.clone(),
            ready.clone(),
            failed.clone(),
        );
        tasks.spawn(async move {
            match client.request(chat_request(&target, "hold", true)).await {
                Ok(response) => {
                    let mut body = response.into_body();
                    if let Some(Ok(_)) = body.frame().await {
                        ready.fetch_add(1, Ordering::Relaxed);
                    } else {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                    while let Some(Ok(_)) = body.frame().await {}
                }
                Err(_) => {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    while ready.load(Ordering::Relaxed) + failed.load(Ordering::Relaxed) < count {
        if Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (ready_n, failed_n) = (
        ready.load(Ordering::Relaxed),
        failed.load(Ordering::Relaxed),
    );
    let result = if ready_n == count {
        Ok(())
    } else {
        Err(anyhow::anyhow!(
            "{ready_n} of {count} streams open, {failed_n} failed, upstream holds {}",
            behaviour.held.load(Ordering::Relaxed)
        ))
    };
    // the caller reads RSS now; then releases the streams, and these tasks finish
    let stopper = tasks;
    tokio::spawn(async move {
        let mut stopper = stopper;
        while stopper.join_next().await.is_some() {}
    });
    result
}

fn tempfile_dir() -> Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("llmtrace-bench-gateway-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}
