//! `llmtrace bench ui`: fills a store with corpus spans (once), serves it, and times every
//! UI page over HTTP, whole responses, the way a browser asks for them.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::Value;

use super::export::FilledStore;

#[derive(clap::Args)]
pub struct UiArgs {
    #[command(flatten)]
    store: FilledStore,
    /// Requests per page (median and slowest reported).
    #[arg(long, default_value_t = 5)]
    repeat: usize,
}

pub fn run(args: UiArgs) -> Result<()> {
    args.store.fill_once()?;
    let (mut child, base) = super::serve(&args.store.dir, &[], std::process::Stdio::inherit())?;
    let outcome = measure(&args, &base);
    let _ = std::process::Command::new("kill")
        .arg(child.id().to_string())
        .status();
    let _ = child.wait();
    outcome
}

fn measure(args: &UiArgs, base: &str) -> Result<()> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(120)))
        .build()
        .into();
    let get = |path: &str| -> Result<(u16, String)> {
        let mut response = agent.get(&format!("{base}{path}")).call()?;
        let status = response.status().as_u16();
        let body = response
            .body_mut()
            .with_config()
            .limit(u64::MAX)
            .read_to_string()?;
        Ok((status, body))
    };
    // a span from the middle of the newest day names the session, trace, model and a word
    let (_, probe) = get("/api/v1/spans?project=bench&since=12h&limit=1")?;
    let probe: Value = serde_json::from_str(&probe)?;
    let span = probe["data"][0].clone();
    let text = |key: &str| span[key].as_str().unwrap_or_default().to_string();
    // a corpus filled without message text has no word to search for
    let word = format!("{} {}", text("output_text"), text("input_text"))
        .split(|c: char| !c.is_alphanumeric())
        .find(|w| w.len() > 3)
        .map(str::to_string);
    let encode = crate::client::encode;
    let pages = [
        (
            "traces, last 24 h".to_string(),
            "/traces?project=bench".to_string(),
        ),
        (
            "its charts (fragment)".into(),
            "/ui/charts?project=bench".into(),
        ),
        (
            "traces, last 30 days".into(),
            "/traces?project=bench&range=30d".into(),
        ),
        ("traces, 4th page".into(), String::new()),
        (
            format!("traces, model = {}", text("request_model")),
            format!(
                "/traces?project=bench&model={}",
                encode(&text("request_model"))
            ),
        ),
        (
            "traces, metadata tier".to_string(),
            "/traces?project=bench&meta=tier%3Dpro".into(),
        ),
        (
            "its charts (fragment)".to_string(),
            "/ui/charts?project=bench&meta=tier%3Dpro".into(),
        ),
        match &word {
            Some(word) => (
                format!("traces, text {word:?}"),
                format!("/traces?project=bench&q={}", encode(word)),
            ),
            None => (String::new(), String::new()),
        },
        (
            "traces, drawer open (shared link)".into(),
            format!(
                "/traces?project=bench&open={}%3A{}",
                text("trace_id"),
                text("span_id")
            ),
        ),
        (
            "drawer fragment".into(),
            format!(
                "/ui/span/{}/{}?project=bench",
                text("trace_id"),
                text("span_id")
            ),
        ),
        (
            "sessions, last 24 h".into(),
            "/sessions?project=bench".into(),
        ),
        (
            "sessions, last 7 days".into(),
            "/sessions?project=bench&range=7d".into(),
        ),
        (
            "one session's transcript".into(),
            format!("/sessions/{}?project=bench", encode(&text("session_id"))),
        ),
        (
            "run (trace waterfall)".into(),
            format!("/runs/{}?project=bench", text("trace_id")),
        ),
        ("dashboard, 24 h".into(), "/dashboard?project=bench".into()),
        (
            "dashboard, 30 days by model".into(),
            "/dashboard?project=bench&range=30d&group=model".into(),
        ),
        (
            "dashboard, 30 days by provider, errors only".into(),
            "/dashboard?project=bench&range=30d&group=provider&status=error".into(),
        ),
        (
            "dashboard, 24 h by user".into(),
            "/dashboard?project=bench&group=user".into(),
        ),
        (
            "dashboard, 24 h by session".into(),
            "/dashboard?project=bench&group=session".into(),
        ),
        (
            "dashboard, 24 h by metadata key tier".into(),
            "/dashboard?project=bench&group_key=tier".into(),
        ),
        (
            "dashboard, 7 days by user".into(),
            "/dashboard?project=bench&range=7d&group=user".into(),
        ),
        (
            "dashboard, 30 days by user".into(),
            "/dashboard?project=bench&range=30d&group=user".into(),
        ),
        (
            "dashboard, 30 days by metadata key tier".into(),
            "/dashboard?project=bench&range=30d&group_key=tier".into(),
        ),
        ("live (first page)".into(), "/live?project=bench".into()),
    ];
    // the 4th page: follow "Older" links from the first
    let mut fourth = "/traces?project=bench".to_string();
    for _ in 0..3 {
        let (_, body) = get(&fourth)?;
        let older = body
            .split("id=\"older\" href=\"")
            .nth(1)
            .and_then(|rest| rest.split('"').next())
            .context("no Older link")?;
        fourth = older.replace("&amp;", "&");
    }
    println!("| page | median | slowest | bytes |");
    println!("|---|---|---|---|");
    for (name, path) in pages {
        if name.is_empty() {
            continue;
        }
        let path = if path.is_empty() {
            fourth.clone()
        } else {
            path
        };
        let mut times = Vec::new();
        let mut bytes = 0;
        for _ in 0..args.repeat.max(1) {
            let started = Instant::now();
            let (status, body) = get(&path)?;
            times.push(started.elapsed());
            if status != 200 {
                bail!("{path} answered {status}: {}", &body[..body.len().min(300)]);
            }
            bytes = body.len();
        }
        times.sort();
        println!(
            "| {name} | {:.0} ms | {:.0} ms | {} KiB |",
            times[times.len() / 2].as_secs_f64() * 1e3,
            times[times.len() - 1].as_secs_f64() * 1e3,
            bytes >> 10
        );
    }
    Ok(())
}
