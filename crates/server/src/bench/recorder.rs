//! `llmtrace bench recorder`: what recording one gateway call costs, stage by stage, on one
//! thread and away from the proxy: the call turned into a span (`capture::to_span`), priced,
//! and appended to a durable store in the batches the recorder makes. The gateway benchmark
//! measures the same work inside the serving process, where it shares two cores with the
//! proxy, the load generator and the upstream, and its figure moves with them.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::Result;
use llmtrace_cost::{Pricer, PricingConfig};
use llmtrace_gateway::api::Api;
use llmtrace_gateway::capture::{Exchange, to_span};
use llmtrace_gateway::relay::{Captured, Outcome};
use llmtrace_model::{Span, Store};
use llmtrace_store::Durability;

use super::gateway::{MODEL, chat_body, completion};

#[derive(clap::Args)]
pub struct RecorderArgs {
    /// Calls recorded per round.
    #[arg(long, default_value_t = 100_000)]
    calls: usize,
    /// Calls per store append (the recorder appends what gathered in 50 ms: about 500 at
    /// 10,000 calls/s).
    #[arg(long, default_value_t = 500)]
    batch: usize,
    /// Rounds; each is reported.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
}

/// CPU time of the calling thread, from the scheduler's account (nanoseconds).
fn thread_cpu() -> Duration {
    let text = std::fs::read_to_string("/proc/thread-self/schedstat").unwrap_or_default();
    let nanos = text
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    Duration::from_nanos(nanos)
}

/// The benchmark gateway's plain chat call, completed, as the proxy hands it over.
fn exchange(n: usize, request: &bytes::Bytes, answer: &bytes::Bytes) -> Exchange {
    let started = Instant::now();
    Exchange {
        api: Api::Chat,
        method: "POST".into(),
        path: "/v1/chat/completions".into(),
        project: "default".into(),
        trace_id: format!("{n:032x}"),
        span_id: format!("{n:016x}"),
        parent_span_id: None,
        start_unix_nano: 1_800_000_000_000_000_000 + n as i64 * 1000,
        started,
        provider: "bench".into(),
        request_model: Some(MODEL.into()),
        alias: None,
        session_id: None,
        user_id: None,
        metadata: BTreeMap::new(),
        keep_content: true,
        caller: None,
        request: request.clone(),
        http_status: Some(200),
        response_encoding: None,
        streamed: false,
        response: Some(Captured {
            body: answer.clone(),
            truncated: false,
            chunk_times: vec![],
            outcome: Outcome::Completed,
            ended: started + Duration::from_micros(300),
        }),
        failure: None,
        attempts: vec![],
    }
}

pub fn run(args: RecorderArgs) -> Result<()> {
    let request = chat_body(MODEL, false);
    let answer = completion(MODEL);
    let pricer = Pricer::new(&PricingConfig::default()).map_err(anyhow::Error::msg)?;
    let temp = std::env::temp_dir().join(format!("llmtrace-bench-recorder-{}", std::process::id()));
    let store = super::open(&temp, Durability::Fsync)?;
    let per_call = |cpu: Duration| cpu.as_secs_f64() * 1e6 / args.calls.max(1) as f64;
    println!(
        "{} calls per round ({} B request, {} B answer: the gateway benchmark's plain chat call), appended {} per batch, durability fsync",
        args.calls,
        request.len(),
        answer.len(),
        args.batch
    );
    println!();
    println!("| round | call → span µs | pricing µs | append µs | the three µs |");
    println!("|---|---|---|---|---|");
    let mut next = 0;
    for round in 1..=args.rounds.max(1) {
        // batch by batch, as the recorder takes them: the calls of one batch are built
        // (not timed), turned into spans, priced and appended
        let (mut spanning, mut pricing, mut appending) =
            (Duration::ZERO, Duration::ZERO, Duration::ZERO);
        let mut done = 0;
        while done < args.calls {
            let size = args.batch.max(1).min(args.calls - done);
            let exchanges: Vec<Exchange> = (next..next + size)
                .map(|n| exchange(n, &request, &answer))
                .collect();
            next += size;
            done += size;
            let started = thread_cpu();
            let mut spans: Vec<Span> = exchanges.into_iter().map(to_span).collect();
            let spanned = thread_cpu();
            for span in &mut spans {
                pricer.price(span);
            }
            let priced = thread_cpu();
            store.append(spans)?;
            let appended = thread_cpu();
            spanning += spanned - started;
            pricing += priced - spanned;
            appending += appended - priced;
        }
        println!(
            "| {round} | {:.2} | {:.2} | {:.2} | {:.1} |",
            per_call(spanning),
            per_call(pricing),
            per_call(appending),
            per_call(spanning + pricing + appending),
        );
    }
    store.close()?;
    let _ = std::fs::remove_dir_all(&temp);
    Ok(())
}
