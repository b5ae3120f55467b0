//! Kill -9 a writer at random moments; every acknowledged span must survive, intact and
//! exactly once.
//!
//! The test binary plays both roles: with `LLMTRACE_CRASH_CHILD_DIR` set, `crash_child`
//! appends batches forever (flushing now and then) and prints `ack N` after each append
//! returns; the parent kills it with SIGKILL and checks the store. Once with flushes and
//! compactions only where the child asks for them, once with background flushing as a
//! server runs it, where small memtables are frozen by the appends and flushed one by one.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use llmtrace_model::{Span, SpanFilter, SpanQuery, Store};
use llmtrace_store::{Durability, EmbeddedStore, StoreConfig};

const CHILD_ENV: &str = "LLMTRACE_CRASH_CHILD_DIR";
const BACKGROUND_ENV: &str = "LLMTRACE_CRASH_BACKGROUND";
const BATCH: u64 = 20;

/// A chat call. Its text is usually its messages' text, which the WAL stores once and
/// derives again on replay; every third span's input text is not, and is kept as it came.
fn span(batch: u64, index: u64) -> Span {
    let n = batch * BATCH + index;
    let prompt = format!("prompt number {n} {}", "x".repeat((n % 50) as usize));
    let answer = format!("answer {n}");
    let message = |role: &str, text: &str| serde_json::json!([{"role": role, "content": [{"type": "text", "text": text}]}]);
    Span {
        project: "crash".into(),
        trace_id: format!("{:032x}", batch + 1),
        span_id: format!("{:016x}", n + 1),
        name: format!("call {n}"),
        start_time: 1_795_000_000_000_000_000 + n as i64 * 1_000,
        input: message("user", &prompt),
        output: message("assistant", &answer),
        input_text: if n.is_multiple_of(3) {
            format!("{prompt} (edited)")
        } else {
            prompt
        },
        output_text: answer,
        input_tokens: Some(n as i64),
        metadata: BTreeMap::from([("batch".into(), batch.to_string())]),
        ..Span::default()
    }
}

fn config(dir: &str, background: bool) -> StoreConfig {
    let mut config = StoreConfig::new(dir);
    config.durability = Durability::Fsync;
    config.background = background;
    // with background flushing, a memtable is frozen every three batches
    config.flush_rows = 3 * BATCH as usize;
    config.compact_min_segments = 3;
    config
}

#[test]
fn crash_child() {
    let Ok(dir) = std::env::var(CHILD_ENV) else {
        return;
    };
    let background = std::env::var(BACKGROUND_ENV).is_ok_and(|value| value == "1");
    let store = EmbeddedStore::open(config(&dir, background)).unwrap();
    let start: u64 = std::env::var("LLMTRACE_CRASH_FIRST_BATCH")
        .unwrap()
        .parse()
        .unwrap();
    for batch in start.. {
        let spans = (0..BATCH).map(|i| span(batch, i)).collect();
        store.append(spans).unwrap();
        println!("ack {batch}");
        if batch % 7 == 3 {
            store.flush().unwrap();
        }
        if batch % 23 == 5 {
            store.compact(false).unwrap();
        }
    }
}

fn all_spans(store: &EmbeddedStore) -> Vec<Span> {
    let mut query = SpanQuery::new(SpanFilter::for_project("crash"));
    query.limit = 1000;
    let mut out = vec![];
    loop {
        let page = store.search(&query).unwrap();
        out.extend(page.spans);
        match page.next_cursor {
            Some(cursor) => query.cursor = Some(cursor),
            None => return out,
        }
    }
}

#[test]
fn acknowledged_spans_survive_sigkill() {
    survive_sigkill(false);
}

#[test]
fn acknowledged_spans_survive_sigkill_with_background_flushing() {
    survive_sigkill(true);
}

fn survive_sigkill(background: bool) {
    if std::env::var(CHILD_ENV).is_ok() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let dir_text = dir.path().to_str().unwrap().to_string();
    let mut rng = 0x9E37_79B9_7F4A_7C15u64 ^ u64::from(std::process::id());
    let mut next_batch = 0u64;
    let mut acked: Vec<u64> = vec![];
    let rounds = 50;
    for round in 0..rounds {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let run_for = Duration::from_millis(20 + rng % 250);
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "crash_child", "--nocapture", "--test-threads=1"])
            .env(CHILD_ENV, &dir_text)
            .env(BACKGROUND_ENV, if background { "1" } else { "0" })
            .env("LLMTRACE_CRASH_FIRST_BATCH", next_batch.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (lines_tx, lines_rx) = mpsc::channel();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(n) = line.strip_prefix("ack ") {
                    let _ = lines_tx.send(n.parse::<u64>().unwrap());
                }
            }
        });
        // Wait for the first ack so every round kills a child that is really writing.
        let first = lines_rx
            .recv_timeout(Duration::from_secs(60))
            .expect("child never acknowledged");
        acked.push(first);
        let deadline = Instant::now() + run_for;
        while let Ok(n) = lines_rx.recv_timeout(deadline.saturating_duration_since(Instant::now()))
        {
            acked.push(n);
            if Instant::now() >= deadline {
                break;
            }
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        reader.join().unwrap();
        acked.extend(lines_rx.try_iter());
        next_batch = acked.iter().max().map_or(next_batch, |max| max + 1) + 1000;

        // checked without background work, which would outlive this round's `drop`
        let store = EmbeddedStore::open(config(&dir_text, false)).unwrap();
        let spans = all_spans(&store);
        let mut seen: BTreeMap<String, usize> = BTreeMap::new();
        for stored in &spans {
            *seen.entry(stored.span_id.clone()).or_default() += 1;
        }
        assert!(
            seen.values().all(|&count| count == 1),
            "round {round}: a span appears twice"
        );
        let by_id: BTreeMap<&str, &Span> = spans.iter().map(|s| (s.span_id.as_str(), s)).collect();
        for &batch in &acked {
            for i in 0..BATCH {
                let expected = span(batch, i);
                let got = by_id.get(expected.span_id.as_str());
                assert_eq!(
                    got,
                    Some(&&expected),
                    "round {round}: acknowledged span of batch {batch} lost or changed"
                );
            }
        }
        drop(store);
    }
    assert!(
        acked.len() >= rounds,
        "too few acknowledged batches to mean anything"
    );
}
