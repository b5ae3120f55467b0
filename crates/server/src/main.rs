//! `llmtrace`: one binary that takes LLM traces in and answers questions about them.

mod agents;
mod bench;
mod bulk;
mod bulk_cli;
mod client;
mod completions;
mod config;
mod cost_api;
mod cost_cli;
mod grpc;
mod http;
mod join;
mod openapi;
mod params;
mod query_cli;
mod scores;
mod sql_cli;
mod ui;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use llmtrace_model::Store;
use llmtrace_store::{EmbeddedStore, StoreConfig};
use opentelemetry_proto::tonic::collector::logs::v1::logs_service_server::LogsServiceServer;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::TraceServiceServer;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tonic::codec::CompressionEncoding;

use crate::config::Config;

/// jemalloc rather than glibc's malloc: under gateway load glibc's malloc functions took
/// ~18% of the CPU, fastbin consolidation the largest part (docs/BENCHMARKS.md).
#[cfg(unix)]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Parser)]
#[command(
    name = "llmtrace",
    version,
    about = "Record every LLM call; search, trace and aggregate them"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server: OTLP ingest, search API, embedded store.
    Serve(ServeArgs),
    /// Search a running server and print the matching LLM calls.
    Query(query_cli::QueryArgs),
    /// Run a read-only SQL statement over the spans and scores tables of a running server.
    Sql(sql_cli::SqlArgs),
    /// Recompute the cost of stored calls after a price change (on a running server).
    Reprice(cost_cli::RepriceArgs),
    /// Import a provider's usage and cost report and compare it with computed costs.
    Reconcile(cost_cli::ReconcileArgs),
    /// Import files (OTLP/JSON, Agents SDK, JSON trace logs, llmtrace JSONL) into a server.
    Import(bulk_cli::ImportArgs),
    /// Export matching spans from a server as JSONL, CSV, Parquet or fine-tuning JSONL.
    Export(bulk_cli::ExportArgs),
    /// Benchmarks (figures in docs/BENCHMARKS.md).
    #[command(subcommand)]
    Bench(bench::BenchCommand),
}

#[derive(clap::Args)]
struct ServeArgs {
    /// TOML config file (settings in docs/CONFIG.md).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Where the embedded store keeps its data.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Main HTTP address (UI, API, OTLP/HTTP); `off` to disable.
    #[arg(long)]
    listen: Option<String>,
    /// Extra OTLP/HTTP address; `off` to disable.
    #[arg(long)]
    otlp_http_listen: Option<String>,
    /// OTLP/gRPC address; `off` to disable.
    #[arg(long)]
    otlp_grpc_listen: Option<String>,
    /// fsync, none or interval:<duration>.
    #[arg(long)]
    durability: Option<String>,
    /// Gateway upstream as name=base_url (repeatable; the first is the default), e.g.
    /// `--provider openai=https://api.openai.com/v1`. Replaces the file's providers.
    #[arg(long = "provider", value_name = "NAME=URL")]
    providers: Vec<String>,
    /// Print the effective configuration and exit.
    #[arg(long)]
    print_config: bool,
}

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("LLMTRACE_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().command {
        Command::Serve(args) => serve(args),
        Command::Query(args) => query_cli::run(args),
        Command::Sql(args) => sql_cli::run(args),
        Command::Reprice(args) => cost_cli::reprice(args),
        Command::Reconcile(args) => cost_cli::reconcile(args),
        Command::Import(args) => bulk_cli::import(args),
        Command::Export(args) => bulk_cli::export(args),
        Command::Bench(command) => bench::run(command),
    }
}

fn load_config(args: &ServeArgs) -> Result<Config> {
    let env: HashMap<String, String> = std::env::vars().collect();
    let mut config = Config::load(args.config.as_deref(), &env)?;
    let flags = [
        (
            "data_dir",
            args.data_dir.as_ref().map(|p| p.display().to_string()),
        ),
        ("listen", args.listen.clone()),
        ("otlp_http_listen", args.otlp_http_listen.clone()),
        ("otlp_grpc_listen", args.otlp_grpc_listen.clone()),
        ("durability", args.durability.clone()),
    ];
    for (name, value) in flags {
        if let Some(value) = value {
            config
                .set(name, &value)
                .with_context(|| format!("flag --{}", name.replace('_', "-")))?;
        }
    }
    if !args.providers.is_empty() {
        config.gateway.providers = args
            .providers
            .iter()
            .map(|flag| llmtrace_gateway::ProviderConfig::parse_flag(flag))
            .collect::<Result<_, _>>()
            .map_err(anyhow::Error::msg)?;
        config.gateway.default_provider = None;
    }
    config.validate()?;
    Ok(config)
}

fn serve(args: ServeArgs) -> Result<()> {
    let config = load_config(&args)?;
    if args.print_config {
        println!("{config:#?}");
        return Ok(());
    }
    let mut store_config = StoreConfig::new(&config.data_dir);
    store_config.durability = config.durability()?;
    store_config.wal_compression = config.wal_compression()?;
    store_config.default_retention_days = config.retention_days;
    store_config.flush_interval = config.flush_interval();
    let store = Arc::new(
        EmbeddedStore::open(store_config)
            .with_context(|| format!("cannot open the store in {}", config.data_dir.display()))?,
    );
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if config.worker_threads > 0 {
        runtime.worker_threads(config.worker_threads);
    }
    let runtime = runtime.enable_all().build()?;
    runtime.block_on(run(config, store.clone(), args.config.clone()))?;
    tracing::info!("flushing the store");
    store.close().context("final flush failed")?;
    tracing::info!("stopped");
    Ok(())
}

/// Applies `[pricing]` edits without a restart: the config file is checked every
/// `PRICING_RELOAD_EVERY`; a bad edit is logged and the prices in force stay.
const PRICING_RELOAD_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

async fn reload_pricing(
    path: PathBuf,
    pricer: Arc<llmtrace_cost::Pricer>,
    mut stop: watch::Receiver<bool>,
) {
    let modified = |path: &std::path::Path| std::fs::metadata(path).and_then(|m| m.modified()).ok();
    let mut seen = modified(&path);
    loop {
        tokio::select! {
            _ = tokio::time::sleep(PRICING_RELOAD_EVERY) => {}
            _ = stop.wait_for(|stopped| *stopped) => return,
        }
        let now = modified(&path);
        if now == seen {
            continue;
        }
        seen = now;
        let loaded = config::Config::pricing_from_file(&path)
            .and_then(|pricing| pricer.reload(&pricing).map_err(anyhow::Error::msg));
        match loaded {
            Ok(()) => tracing::info!(file = %path.display(), "pricing reloaded"),
            Err(err) => {
                tracing::error!(file = %path.display(), "pricing not reloaded, previous prices stay: {err:#}")
            }
        }
    }
}

async fn shutdown_signal(sender: watch::Sender<bool>) {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = terminate => {},
    }
    tracing::info!("shutdown requested: finishing in-flight requests");
    let _ = sender.send(true);
}

async fn run(
    config: Config,
    store: Arc<EmbeddedStore>,
    config_file: Option<PathBuf>,
) -> Result<()> {
    let pricer = Arc::new(
        llmtrace_cost::Pricer::new(&config.pricing)
            .map_err(anyhow::Error::msg)
            .context("[pricing]")?,
    );
    let sql = Arc::new(llmtrace_sql::Sql::new(store.clone()));
    // every door in stores through the pricer: one place computes cost
    let store: Arc<dyn Store> = Arc::new(llmtrace_model::Layered {
        inner: store,
        layer: llmtrace_cost::Priced {
            pricer: pricer.clone(),
        },
    });
    // the live tail sees each batch once it is acknowledged, priced
    let (store, live) = ui::live::Tail::wrap(store);
    let billing = Arc::new(cost_api::Billing::open(&config.data_dir)?);
    let env: HashMap<String, String> = std::env::vars().collect();
    let gateway = Arc::new(
        llmtrace_gateway::Gateway::new(
            llmtrace_gateway::config::GatewayConfig {
                state_dir: Some(config.data_dir.clone()),
                ..config.gateway.clone()
            },
            store.clone(),
            config.default_project.clone(),
            config.max_body_bytes,
            &env,
            Some(pricer.clone()),
        )
        .map_err(anyhow::Error::msg)
        .context("gateway")?,
    );
    tracing::info!(providers = ?gateway.providers(), "gateway routes /v1/chat/completions, /v1/responses, /v1/embeddings, /v1/messages, …");
    let state = Arc::new(http::AppState {
        store,
        sql,
        gateway: gateway.clone(),
        pricer: pricer.clone(),
        billing,
        default_project: config.default_project.clone(),
        max_body_bytes: config.max_body_bytes,
        ingest_slots: tokio::sync::Semaphore::new(config.max_inflight_ingest),
        metrics_requests: Default::default(),
        log_records: Default::default(),
        join: Default::default(),
        agent_traces: Default::default(),
        live,
    });
    let (stop_sender, stop) = watch::channel(false);
    let mut tasks = tokio::task::JoinSet::new();
    let mut bound = Vec::new();

    let wait_for = |mut stop: watch::Receiver<bool>| async move {
        let _ = stop.wait_for(|stopped| *stopped).await;
    };
    let http_listeners = [
        (
            "http",
            &config.listen,
            http::router(state.clone())
                .merge(ui::router(state.clone()))
                .merge(llmtrace_gateway::router(gateway.clone())),
        ),
        (
            "otlp_http",
            &config.otlp_http_listen,
            http::otlp_only(state.clone()),
        ),
    ];
    for (name, address, app) in http_listeners {
        let Some(address) = address else { continue };
        let listener = TcpListener::bind(address)
            .await
            .with_context(|| format!("cannot listen on {address}"))?;
        bound.push(format!("{name}={}", listener.local_addr()?));
        let signal = wait_for(stop.clone());
        // small writes (SSE frames, proxied chunks) go out at once, not after Nagle's wait
        let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
            let _ = tcp.set_nodelay(true);
        });
        tasks.spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(signal)
                .await
                .map_err(anyhow::Error::from)
        });
    }
    if let Some(address) = &config.otlp_grpc_listen {
        let listener = TcpListener::bind(address)
            .await
            .with_context(|| format!("cannot listen on {address}"))?;
        bound.push(format!("otlp_grpc={}", listener.local_addr()?));
        let limit = config.max_body_bytes;
        let traces = TraceServiceServer::new(grpc::Otlp {
            state: state.clone(),
        })
        .max_decoding_message_size(limit)
        .accept_compressed(CompressionEncoding::Gzip);
        let logs = LogsServiceServer::new(grpc::Otlp {
            state: state.clone(),
        })
        .max_decoding_message_size(limit)
        .accept_compressed(CompressionEncoding::Gzip);
        let signal = wait_for(stop.clone());
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
        tasks.spawn(async move {
            tonic::transport::Server::builder()
                .add_service(traces)
                .add_service(logs)
                .serve_with_incoming_shutdown(incoming, signal)
                .await
                .map_err(anyhow::Error::from)
        });
    }
    // One machine-readable line so scripts and tests learn the bound ports.
    println!("llmtrace listening {}", bound.join(" "));
    tracing::info!(listeners = %bound.join(" "), data_dir = %config.data_dir.display(), "ready");
    tokio::spawn(shutdown_signal(stop_sender));
    if let Some(path) = config_file {
        tokio::spawn(reload_pricing(path, pricer, stop.clone()));
    }
    let mut outcome = Ok(());
    while let Some(result) = tasks.join_next().await {
        if let Err(err) = result.map_err(anyhow::Error::from).and_then(|r| r) {
            outcome = Err(err);
            break;
        }
    }
    // calls proxied before shutdown are recorded before the store's final flush
    let stopping = gateway.clone();
    tokio::task::spawn_blocking(move || stopping.stop()).await?;
    outcome
}
