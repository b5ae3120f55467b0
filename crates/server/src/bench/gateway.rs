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
use axum::body::Bytes;
use axum::http::{HeaderValue, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper::body::{Frame, Incoming};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
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
    /// both ends of the client's hop; llmtrace's go upstream over one HTTP/2 connection.
    #[arg(long, default_value_t = 10_000)]
    open_streams: usize,
    /// Streams LiteLLM is asked to hold: it forwards at most 500 at once and refuses or
    /// times out the rest, and a backlog of thousands keeps it busy through the later runs.
    #[arg(long, default_value_t = 1_000)]
    litellm_open_streams: usize,
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

pub(super) fn completion(model: &str) -> Bytes {
    Bytes::from(
        json!({"id": "chatcmpl-bench", "object": "chat.completion", "created": 1795314700, "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": ANSWER, "refusal": null},
                "logprobs": null, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 41, "completion_tokens": 12, "total_tokens": 53},
            "system_fingerprint": "fp_bench"})
        .to_string(),
    )
}

fn chunk(model: &str, text: &str, usage: bool) -> Bytes {
    let mut chunk = json!({"id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": 1795314700,
        "model": model, "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": null}]});
    if usage {
        chunk["usage"] = Value::Null;
    }
    Bytes::from(format!("data: {chunk}\n\n"))
}

/// The fields of a chat request the fake upstream answers by.
#[derive(serde::Deserialize)]
struct ChatHead {
    model: Option<String>,
    stream: Option<bool>,
    stream_options: Option<StreamOptions>,
}

#[derive(serde::Deserialize)]
struct StreamOptions {
    include_usage: Option<bool>,
}

type AnswerBody = http_body_util::combinators::BoxBody<Bytes, std::convert::Infallible>;

fn answer(content_type: &'static str, body: AnswerBody) -> Response<AnswerBody> {
    let mut response = Response::new(body);
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

/// The fake upstream's one route. Every answer to the default model is the same bytes,
/// made once, so the upstream spends as little of the shared CPU as it can.
async fn upstream_chat(
    behaviour: Arc<Behaviour>,
    usual: Bytes,
    request: Request<Incoming>,
) -> Result<Response<AnswerBody>, std::convert::Infallible> {
    let body = request
        .into_body()
        .collect()
        .await
        .map(|collected| collected.to_bytes())
        .unwrap_or_default();
    let Ok(request) = serde_json::from_slice::<ChatHead>(&body) else {
        let mut response = answer("text/plain", Full::new(Bytes::from("bad request")).boxed());
        *response.status_mut() = StatusCode::BAD_REQUEST;
        return Ok(response);
    };
    let model = request.model.unwrap_or_else(|| MODEL.to_string());
    let delay = behaviour.delay_ms.load(Ordering::Relaxed);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    if request.stream != Some(true) {
        let body = if model == MODEL {
            usual
        } else {
            completion(&model)
        };
        return Ok(answer("application/json", Full::new(body).boxed()));
    }
    let usage = request.stream_options.and_then(|o| o.include_usage) == Some(true);
    let hold = model == "hold";
    let chunks = behaviour.chunks.load(Ordering::Relaxed).max(1);
    let gap = behaviour.chunk_gap_ms.load(Ordering::Relaxed);
    let (sender, receiver) = tokio::sync::mpsc::channel::<Bytes>(4);
    tokio::spawn(async move {
        if hold {
            let released = behaviour.release.notified();
            let _ = sender.send(chunk(&model, "held", usage)).await;
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
                if sender.send(chunk(&model, "word ", usage)).await.is_err() {
                    return;
                }
            }
        }
        if usage {
            let last = json!({"id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": 1795314700,
                "model": model, "choices": [], "usage": {"prompt_tokens": 41, "completion_tokens": 12, "total_tokens": 53}});
            let _ = sender.send(Bytes::from(format!("data: {last}\n\n"))).await;
        }
        let _ = sender.send(Bytes::from_static(b"data: [DONE]\n\n")).await;
    });
    let frames = tokio_stream::StreamExt::map(
        tokio_stream::wrappers::ReceiverStream::new(receiver),
        |bytes| Ok(Frame::data(bytes)),
    );
    Ok(answer(
        "text/event-stream",
        http_body_util::StreamBody::new(frames).boxed(),
    ))
}

/// Streams one HTTP/2 connection to the fake upstream may carry.
const HELD_STREAMS_MAX: u32 = 100_000;

/// Starts the fake upstream (hyper's connection server, HTTP/1.1 and HTTP/2 prior
/// knowledge, no router) on its own single-threaded runtime; returns its address.
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
                let usual = completion(MODEL);
                loop {
                    let Ok((tcp, _)) = listener.accept().await else {
                        // out of descriptors: let held streams finish before accepting again
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    };
                    let _ = tcp.set_nodelay(true);
                    let (behaviour, usual) = (behaviour.clone(), usual.clone());
                    tokio::spawn(async move {
                        let service = hyper::service::service_fn(move |request| {
                            upstream_chat(behaviour.clone(), usual.clone(), request)
                        });
                        let mut builder = hyper_util::server::conn::auto::Builder::new(
                            hyper_util::rt::TokioExecutor::new(),
                        );
                        // llmtrace's held streams share one HTTP/2 connection
                        builder.http2().max_concurrent_streams(HELD_STREAMS_MAX);
                        let _ = builder.serve_connection(TokioIo::new(tcp), service).await;
                    });
                }
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
    /// The model a held stream asks for (the upstream holds every `hold`).
    hold_model: &'static str,
}

impl Proxy {
    fn cpu_ticks(&self) -> u64 {
        (super::process_cpu(&self.child.id().to_string()).as_millis() / 10) as u64
    }

    /// Waits (at most a minute) until the process has been idle for a second, so the work
    /// one measurement left behind (released streams being recorded, a backlog) is not
    /// charged to the next.
    fn settle(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut last = self.cpu_ticks();
        while Instant::now() < deadline {
            std::thread::sleep(Duration::from_secs(1));
            let now = self.cpu_ticks();
            // a tick is 10 ms: idle, give or take housekeeping
            if now.saturating_sub(last) <= 2 {
                return;
            }
            last = now;
        }
    }

    /// CPU time of the process's thread named `name` (as `/proc` shows it: at most 15
    /// bytes).
    fn thread_cpu(&self, name: &str) -> Option<Duration> {
        let tasks = format!("/proc/{}/task", self.child.id());
        std::fs::read_dir(&tasks).ok()?.flatten().find_map(|task| {
            let comm = std::fs::read_to_string(task.path().join("comm")).ok()?;
            (comm.trim_end() == name).then(|| {
                super::process_cpu(&format!(
                    "{}/task/{}",
                    self.child.id(),
                    task.file_name().to_string_lossy()
                ))
            })
        })
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

/// llmtrace with two providers on the same upstream: `bench` (HTTP/1.1, every measured
/// call) and `bench-h2` (HTTP/2 prior knowledge, the held streams: one connection carries
/// them all, so 10,000 fit the descriptor limit).
fn start_llmtrace(upstream: &str, dir: &std::path::Path) -> Result<Proxy> {
    std::fs::create_dir_all(dir)?;
    let config = dir.join("llmtrace.toml");
    std::fs::write(
        &config,
        format!(
            "[[gateway.providers]]\nname = \"bench\"\nbase_url = \"http://{upstream}/v1\"\n\n[[gateway.providers]]\nname = \"bench-h2\"\nbase_url = \"http://{upstream}/v1\"\nhttp2_prior_knowledge = true\n"
        ),
    )?;
    let (child, base) = super::serve(
        dir,
        &["--config", &config.to_string_lossy()],
        Stdio::from(std::fs::File::create(dir.with_extension("log"))?),
    )?;
    Ok(Proxy {
        name: "llmtrace",
        child,
        base,
        auth: None,
        hold_model: "bench-h2/hold",
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
        hold_model: "hold",
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

/// One target of the measurements: where it listens and the headers each request carries.
#[derive(Clone)]
struct Target {
    name: String,
    /// `host:port`
    address: String,
    headers: Vec<(&'static str, String)>,
}

impl Target {
    fn new(name: &str, base: &str, headers: Vec<(&'static str, String)>) -> Target {
        let address = base.trim_start_matches("http://").trim_end_matches('/');
        Target {
            name: name.to_string(),
            address: address.to_string(),
            headers,
        }
    }

    fn request(&self, body: &Bytes) -> Request<Full<Bytes>> {
        let mut builder = Request::post("/v1/chat/completions")
            .header(header::HOST, &self.address)
            .header(header::CONTENT_TYPE, "application/json");
        for (name, value) in &self.headers {
            builder = builder.header(*name, value);
        }
        builder.body(Full::new(body.clone())).unwrap_or_default()
    }

    /// One HTTP/1.1 connection (hyper's connection-level client: no pool to share, so a load
    /// loop spends as little of the shared CPU as it can).
    async fn connect(&self) -> Result<SendRequest<Full<Bytes>>> {
        let tcp = tokio::net::TcpStream::connect(&self.address).await?;
        tcp.set_nodelay(true)?;
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
        tokio::spawn(connection);
        Ok(sender)
    }

    /// Sends one request on `sender` (reconnecting when it closed); `None` when that failed.
    async fn send(
        &self,
        sender: &mut Option<SendRequest<Full<Bytes>>>,
        body: &Bytes,
    ) -> Option<Response<Incoming>> {
        let sent = async {
            if sender.as_ref().is_none_or(SendRequest::is_closed) {
                *sender = self.connect().await.ok();
            }
            let connection = sender.as_mut()?;
            connection.ready().await.ok()?;
            connection.send_request(self.request(body)).await.ok()
        };
        let response = tokio::time::timeout(REQUEST_TIMEOUT, sent)
            .await
            .ok()
            .flatten();
        if response.is_none() {
            *sender = None;
        }
        response
    }
}

pub(super) const MODEL: &str = "gpt-4o-mini";

pub(super) fn chat_body(model: &str, stream: bool) -> Bytes {
    Bytes::from(
        json!({"model": model, "stream": stream,
        "messages": [{"role": "system", "content": "You are a shipping assistant."},
                     {"role": "user", "content": "Where is my parcel number 4417? It was due yesterday."}]})
        .to_string(),
    )
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

/// Sends requests on `connections` loops, each on its own connection, for `seconds` (after
/// a warm-up half second).
async fn load(target: &Target, connections: usize, seconds: u64, stream: bool) -> Run {
    let warm_until = Instant::now() + Duration::from_millis(500);
    let stop_at = warm_until + Duration::from_secs(seconds);
    let body = chat_body(MODEL, stream);
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..connections {
        let (target, body) = (target.clone(), body.clone());
        tasks.spawn(async move {
            let mut run = Run::default();
            let mut sender = None;
            loop {
                let now = Instant::now();
                if now >= stop_at {
                    return run;
                }
                let started = Instant::now();
                let Some(response) = target.send(&mut sender, &body).await else {
                    run.errors += 1;
                    // a refused connection is not retried in a tight loop
                    tokio::time::sleep(Duration::from_millis(10)).await;
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

/// Proxy CPU per request from clock ticks (10 ms each) over requests sent, warm-up included
/// (its requests used CPU too); a dash for the direct target.
fn cpu_per_request(ticks: Option<u64>, sent: u64) -> String {
    match ticks {
        Some(ticks) => format!("{:.0}", ticks as f64 * 10_000.0 / sent.max(1) as f64),
        None => "—".into(),
    }
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

    let mut targets = vec![(Target::new("direct", &upstream, vec![]), None)];
    for (index, proxy) in proxies.iter().enumerate() {
        let mut headers = vec![];
        if let Some(auth) = &proxy.auth {
            headers.push(("authorization", auth.clone()));
        }
        targets.push((
            Target::new(proxy.name, &proxy.base, headers.clone()),
            Some(index),
        ));
        if proxy.name == "llmtrace" {
            headers.push(("x-llmtrace-trace", "off".to_string()));
            targets.push((
                Target::new("llmtrace, recording off", &proxy.base, headers),
                Some(index),
            ));
        }
    }

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;

    println!(
        "upstream: in-process hyper server (HTTP/1.1 and HTTP/2) on one thread; load: one tokio thread, one hyper connection per loop; {}s per measurement after 0.5 s warm-up",
        args.seconds
    );
    println!();
    println!("## Memory (RSS, process and children), measured first, on fresh processes");
    println!(
        "| proxy | idle MiB | before holding MiB | streams held | with them MiB | per stream KiB |"
    );
    println!("|---|---|---|---|---|---|");
    for (index, proxy) in proxies.iter().enumerate() {
        let before = proxy.rss_kib();
        behaviour.releasing.store(false, Ordering::SeqCst);
        let count = match proxy.name {
            "LiteLLM" => args.litellm_open_streams,
            _ => args.open_streams,
        };
        let held = if count == 0 {
            "— | —".to_string()
        } else {
            let headers = proxy.auth.iter().map(|a| ("authorization", a.clone()));
            let target = Target::new(proxy.name, &proxy.base, headers.collect());
            let held = runtime.block_on(hold_streams(&target, proxy.hold_model, count, &behaviour));
            let rss = proxy.rss_kib();
            behaviour.releasing.store(true, Ordering::SeqCst);
            behaviour.release.notify_waiters();
            match held {
                Ok(()) => format!(
                    "{:.0} | {:.1}",
                    rss as f64 / 1024.0,
                    rss.saturating_sub(before) as f64 / count as f64
                ),
                Err(e) => format!("{:.0} ({e}) | —", rss as f64 / 1024.0),
            }
        };
        println!(
            "| {} | {:.0} | {:.0} | {count} | {} |",
            proxy.name,
            idle[index] as f64 / 1024.0,
            before as f64 / 1024.0,
            held
        );
        behaviour.held.store(0, Ordering::Relaxed);
        proxy.settle();
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
            let run = runtime.block_on(load(target, 1, args.seconds.div_ceil(ROUNDS), false));
            *ticks += proxy
                .map(|i| proxies[i].cpu_ticks().saturating_sub(before))
                .unwrap_or(0);
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
        let cpu = cpu_per_request(proxy.map(|_| *ticks), run.sent);
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
        println!("| target | requests/s | p50 ms | p99 ms | errors | proxy CPU µs/request |");
        println!("|---|---|---|---|---|---|");
        for (target, proxy) in &targets {
            proxies.iter().for_each(Proxy::settle);
            let before = proxy.map(|i| proxies[i].cpu_ticks()).unwrap_or(0);
            let run = runtime.block_on(load(target, connections, args.seconds, false));
            let ticks = proxy.map(|i| proxies[i].cpu_ticks().saturating_sub(before));
            println!(
                "| {} | {:.0} | {} | {} | {} | {} |",
                target.name,
                run.latencies.len() as f64 / run.elapsed.as_secs_f64(),
                ms(percentile(&run.latencies, 50.0)),
                ms(percentile(&run.latencies, 99.0)),
                run.errors,
                cpu_per_request(ticks, run.sent),
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
        let run = runtime.block_on(load(target, 1, args.seconds, true));
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
        // the thread that turns calls into spans and appends them: its CPU per call is the
        // cost of recording that the request path does not see
        if let (Some(cpu), Ok(recorded)) = (
            proxy.thread_cpu("gateway-recorde"),
            counter("llmtrace_gateway_recorded_total").parse::<u64>(),
        ) {
            println!(
                "recorder thread: {:.2} s CPU for {recorded} recorded calls, {:.1} µs per call",
                cpu.as_secs_f64(),
                cpu.as_secs_f64() * 1e6 / recorded.max(1) as f64
            );
        }
    }

    drop(proxies);
    let _ = std::fs::remove_dir_all(&temp);
    Ok(())
}

/// Opens `count` streams that the upstream holds after one chunk; returns once every
/// stream has delivered its first chunk to the client (so the proxy holds them all).
async fn hold_streams(
    target: &Target,
    model: &str,
    count: usize,
    behaviour: &Arc<Behaviour>,
) -> Result<()> {
    let ready = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    let body = chat_body(model, true);
    for _ in 0..count {
        let (target, ready, failed, body) =
            (target.clone(), ready.clone(), failed.clone(), body.clone());
        tasks.spawn(async move {
            // the connection lives as long as its sender
            let mut sender = None;
            match target.send(&mut sender, &body).await {
                Some(response) => {
                    let mut body = response.into_body();
                    if let Some(Ok(_)) = body.frame().await {
                        ready.fetch_add(1, Ordering::Relaxed);
                    } else {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                    while let Some(Ok(_)) = body.frame().await {}
                }
                None => {
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
