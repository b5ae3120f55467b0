//! `llmtrace bench pricing`: what pricing adds to ingest, per span — with the source's
//! token counts (catalogue lookup and breakdown) and without them (tiktoken estimate of the
//! content first).

use std::time::Instant;

use anyhow::Result;
use llmtrace_cost::{Pricer, PricingConfig};
use llmtrace_model::Span;

use super::corpus::Corpus;

#[derive(clap::Args)]
pub struct PricingArgs {
    /// Spans to price.
    #[arg(long, default_value_t = 200_000)]
    spans: u64,
    /// New message text per span, bytes (calls also resend up to 8 earlier turns).
    #[arg(long, default_value_t = 2000)]
    text_bytes: usize,
}

fn time(spans: &mut [Span], pricer: &Pricer) -> f64 {
    let started = Instant::now();
    for span in spans.iter_mut() {
        pricer.price(span);
    }
    started.elapsed().as_secs_f64()
}

pub fn run(args: PricingArgs) -> Result<()> {
    let pricer = Pricer::new(&PricingConfig::default()).map_err(anyhow::Error::msg)?;

    // warm the tokenizers once so their one-off construction is reported apart
    let started = Instant::now();
    let _ = llmtrace_cost::estimate::Counter::for_model("gpt-4o").text("warm");
    let _ = llmtrace_cost::estimate::Counter::for_model("gpt-4").text("warm");
    let warm_ms = started.elapsed().as_secs_f64() * 1e3;

    // batches as ingest sees them: generated, priced, dropped (only pricing is timed)
    let mut corpus = Corpus::new(
        11,
        args.spans,
        30,
        llmtrace_store::now_ns(),
        args.text_bytes,
    );
    let (mut reported_s, mut estimated_s) = (0.0, 0.0);
    let (mut text_bytes, mut priced) = (0usize, 0usize);
    let mut left = args.spans;
    while left > 0 {
        let n = left.min(512);
        left -= n;
        let mut batch: Vec<Span> = (0..n).map(|_| corpus.next_span("bench")).collect();
        text_bytes += batch
            .iter()
            .map(|s| s.input_text.len() + s.output_text.len())
            .sum::<usize>();
        let mut missing: Vec<Span> = batch
            .iter()
            .cloned()
            .map(|mut span| {
                span.input_tokens = None;
                span.output_tokens = None;
                span.total_tokens = None;
                span.total_cost_usd = None;
                span.input_cost_usd = None;
                span.output_cost_usd = None;
                span
            })
            .collect();
        reported_s += time(&mut batch, &pricer);
        priced += batch.iter().filter(|s| s.total_cost_usd.is_some()).count();
        estimated_s += time(&mut missing, &pricer);
    }
    let n = args.spans as f64;
    println!(
        "pricing {} corpus spans in batches of 512 ({} MiB of message text)",
        args.spans,
        text_bytes >> 20
    );
    println!("  tokenizer construction (o200k + cl100k, once per process): {warm_ms:.0} ms");
    println!(
        "  usage reported:  {:>10.0} spans/s  {:>8.2} µs/span  ({priced} priced)",
        n / reported_s,
        reported_s * 1e6 / n
    );
    println!(
        "  usage estimated: {:>10.0} spans/s  {:>8.2} µs/span  {:>6.1} MiB/s of text",
        n / estimated_s,
        estimated_s * 1e6 / n,
        text_bytes as f64 / estimated_s / (1 << 20) as f64
    );
    Ok(())
}
