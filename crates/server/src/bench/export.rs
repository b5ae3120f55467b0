//! `llmtrace bench export`: fills a store with corpus spans (once), serves it, and exports
//! everything in each format over HTTP while sampling the server's resident memory, to show
//! that an export holds one page in memory whatever its size.

use std::io::Read;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use llmtrace_model::Store;
use llmtrace_store::Durability;

use super::corpus::Corpus;

/// A store of corpus calls that benchmarks serve: filled once, reused by later runs.
#[derive(clap::Args)]
pub struct FilledStore {
    /// Data directory: filled with `--spans` corpus spans if empty, reused otherwise.
    #[arg(long)]
    pub dir: PathBuf,
    #[arg(long, default_value_t = 1_000_000)]
    pub spans: u64,
    /// New message text per call, bytes.
    #[arg(long, default_value_t = 300)]
    pub text_bytes: usize,
}

#[derive(clap::Args)]
pub struct ExportArgs {
    #[command(flatten)]
    store: FilledStore,
    /// Formats to export, in order.
    #[arg(long, value_delimiter = ',', default_value = "jsonl,parquet,csv")]
    formats: Vec<String>,
}

/// Resident memory of a process, KiB.
fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status.lines().find_map(|line| {
                line.strip_prefix("VmRSS:")?
                    .trim()
                    .trim_end_matches(" kB")
                    .parse()
                    .ok()
            })
        })
        .unwrap_or(0)
}

impl FilledStore {
    /// Fills `dir` with `spans` corpus spans over 30 days (project `bench`), unless it
    /// already holds a store.
    pub fn fill_once(&self) -> Result<()> {
        let (dir, spans) = (&self.dir, self.spans);
        if dir.exists() && std::fs::read_dir(dir)?.next().is_some() {
            return Ok(());
        }
        let started = Instant::now();
        let store = super::open(dir, Durability::None)?;
        let mut corpus = Corpus::new(5, spans, 30, llmtrace_store::now_ns(), self.text_bytes);
        let mut left = spans;
        while left > 0 {
            let n = left.min(5000);
            left -= n;
            store.append((0..n).map(|_| corpus.next_span("bench")).collect())?;
        }
        store.close()?;
        println!(
            "filled {spans} spans in {:.0} s",
            started.elapsed().as_secs_f64()
        );
        Ok(())
    }
}

pub fn run(args: ExportArgs) -> Result<()> {
    args.store.fill_once()?;
    let (mut child, base) = super::serve(&args.store.dir, &[], Stdio::inherit())?;
    let pid = child.id();
    std::thread::sleep(Duration::from_secs(2));
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    println!("| format | rows | bytes | time | rows/s | server RSS before → peak |");
    println!("|---|---|---|---|---|---|");
    for format in &args.formats {
        let before = rss_kib(pid);
        let peak = Arc::new(AtomicU64::new(before));
        let done = Arc::new(AtomicBool::new(false));
        let sampler = {
            let (peak, done) = (peak.clone(), done.clone());
            std::thread::spawn(move || {
                while !done.load(Ordering::Relaxed) {
                    peak.fetch_max(rss_kib(pid), Ordering::Relaxed);
                    std::thread::sleep(Duration::from_millis(50));
                }
            })
        };
        let started = Instant::now();
        let url = format!("{base}/api/v1/export?project=bench&format={format}");
        let mut response = agent.get(&url).call()?;
        if !response.status().is_success() {
            bail!("{url} answered {}", response.status());
        }
        let mut body = response.body_mut().with_config().limit(u64::MAX).reader();
        let (mut bytes, mut newlines) = (0u64, 0u64);
        let mut buffer = vec![0u8; 1 << 20];
        loop {
            let n = body.read(&mut buffer)?;
            if n == 0 {
                break;
            }
            bytes += n as u64;
            newlines += buffer[..n].iter().filter(|&&b| b == b'\n').count() as u64;
        }
        let seconds = started.elapsed().as_secs_f64();
        done.store(true, Ordering::Relaxed);
        let _ = sampler.join();
        // JSONL has one line per span; CSV text may hold newlines and Parquet has no lines
        let rows = if format == "jsonl" {
            newlines
        } else {
            args.store.spans
        };
        println!(
            "| {format} | {rows} | {:.0} MiB | {seconds:.1} s | {:.0} | {} → {} MiB |",
            bytes as f64 / (1 << 20) as f64,
            rows as f64 / seconds,
            before >> 10,
            peak.load(Ordering::Relaxed) >> 10
        );
    }
    let _ = Command::new("kill").arg(pid.to_string()).status();
    let _ = child.wait();
    Ok(())
}
