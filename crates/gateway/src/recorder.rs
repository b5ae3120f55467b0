//! Capture off the request path: a bounded queue of exchanges and one thread that turns
//! them into spans (sessions inferred, content dropped where asked) and appends them to the
//! store in batches. A full queue or a failing store never blocks a proxied call: what could
//! not be recorded is counted and logged.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use llmtrace_model::json::at;
use llmtrace_model::{Span, SpanKind, Store};
use serde_json::Value;

use crate::capture::{Exchange, to_span};
use crate::priority::Priority;
use crate::sessions::Sessions;

/// Counters, exported as metrics.
#[derive(Debug, Default)]
pub struct Stats {
    /// Calls proxied (every route, recorded or not).
    pub calls: AtomicU64,
    /// Spans appended to the store.
    pub recorded: AtomicU64,
    /// Calls not recorded because the queue was full.
    pub dropped: AtomicU64,
    /// Spans the store refused after retries.
    pub failed: AtomicU64,
    /// Calls the client asked not to trace (`x-llmtrace-trace: off`).
    pub not_traced: AtomicU64,
}

enum Message {
    Exchange(Box<Exchange>),
    Stop,
}

#[derive(Clone)]
pub struct RecorderHandle {
    sender: SyncSender<Message>,
    stats: Arc<Stats>,
    priority: Arc<Priority>,
}

impl RecorderHandle {
    /// Queues an exchange; never waits.
    pub fn record(&self, exchange: Box<Exchange>) {
        // counted before it is sent, so the recorder never takes a call not yet counted
        self.priority.queuing();
        match self.sender.try_send(Message::Exchange(exchange)) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.priority.taken(1);
                let dropped = self.stats.dropped.fetch_add(1, Ordering::Relaxed) + 1;
                // log the first and then every power of two, not every call
                if dropped.is_power_of_two() {
                    tracing::warn!(
                        dropped,
                        "gateway capture queue full: calls are proxied but not recorded"
                    );
                }
            }
        }
    }

    pub fn stats(&self) -> &Arc<Stats> {
        &self.stats
    }
}

pub struct Recorder {
    handle: RecorderHandle,
    thread: std::sync::Mutex<Option<JoinHandle<()>>>,
}

/// Settings the recorder thread needs.
pub struct RecorderConfig {
    pub capacity: usize,
    pub infer_sessions: bool,
    /// Where the session-inference table is saved between runs.
    pub sessions_file: Option<std::path::PathBuf>,
    /// At most this many calls per store append.
    pub batch: usize,
    /// How long a batch that is not full may gather before it is stored.
    pub linger: Duration,
    /// A batch that is not full is turned into spans and stored at idle CPU priority,
    /// raised to normal if it takes longer than this (`crate::priority`); `None` keeps the
    /// thread at normal priority.
    pub idle_priority: Option<Duration>,
}

impl RecorderConfig {
    /// The recorder's usual batching: up to 4,096 calls per append, a trickle gathered for
    /// 50 ms (well inside the 1 s in which a call should be queryable).
    pub fn new(capacity: usize, infer_sessions: bool) -> RecorderConfig {
        RecorderConfig {
            capacity,
            infer_sessions,
            sessions_file: None,
            batch: 4096,
            linger: Duration::from_millis(50),
            // a batch of ~400 calls took about 6 ms with its fsync; far longer means it is starved
            idle_priority: Some(Duration::from_millis(100)),
        }
    }
}

/// Sessions remembered for inference, oldest forgotten first.
const SESSION_STATES: usize = 200_000;
/// How often a changed session table is saved while running.
const SAVE_EVERY: Duration = Duration::from_secs(60);

impl Recorder {
    pub fn start(store: Arc<dyn Store>, config: RecorderConfig) -> Recorder {
        let (sender, receiver) = std::sync::mpsc::sync_channel(config.capacity);
        let stats = Arc::new(Stats::default());
        let priority = Arc::new(Priority::new(config.idle_priority, config.capacity));
        let (thread_stats, thread_priority) = (stats.clone(), priority.clone());
        let thread = std::thread::Builder::new()
            .name("gateway-recorder".into())
            .spawn(move || {
                run(receiver, store, thread_stats, &thread_priority, config);
                thread_priority.leave();
            })
            .ok();
        if thread.is_none() {
            tracing::error!("cannot start the gateway recorder thread: calls will not be recorded");
        }
        Recorder {
            handle: RecorderHandle {
                sender,
                stats,
                priority,
            },
            thread: std::sync::Mutex::new(thread),
        }
    }

    pub fn handle(&self) -> &RecorderHandle {
        &self.handle
    }

    /// Records everything queued so far, then stops the thread.
    pub fn stop(&self) {
        let _ = self.handle.sender.send(Message::Stop);
        let thread = self.thread.lock().ok().and_then(|mut t| t.take());
        if let Some(thread) = thread {
            let _ = thread.join();
        }
    }
}

fn run(
    receiver: Receiver<Message>,
    store: Arc<dyn Store>,
    stats: Arc<Stats>,
    priority: &Priority,
    config: RecorderConfig,
) {
    let RecorderConfig {
        infer_sessions: infer,
        sessions_file,
        batch: full,
        linger,
        ..
    } = config;
    let mut sessions = match (&sessions_file, infer) {
        (Some(path), true) => Sessions::load(path, SESSION_STATES),
        _ => Sessions::new(SESSION_STATES),
    };
    let mut saved_at = std::time::Instant::now();
    let mut save = |sessions: &mut Sessions, now: bool| {
        let Some(path) = &sessions_file else { return };
        if sessions.dirty && (now || saved_at.elapsed() >= SAVE_EVERY) {
            saved_at = std::time::Instant::now();
            if let Err(err) = sessions.save(path) {
                tracing::warn!(path = %path.display(), %err, "cannot save the gateway's session table");
            }
        }
    };
    let mut stop = false;
    while !stop {
        let Ok(first) = receiver.recv() else {
            save(&mut sessions, true);
            return;
        };
        let mut batch = Vec::new();
        stop = gather(first, &mut batch) || drain(&receiver, &mut batch, full);
        priority.taken(batch.len());
        // a backlog is stored at once; a trickle is let gather, so that calls share one
        // store append (and fsync) and calls queued meanwhile wake no one, and is stored
        // behind every thread that serves calls (a backlog, and the last batch before
        // stopping, at normal priority)
        if !stop && batch.len() < full {
            priority.background();
            std::thread::sleep(linger);
            let before = batch.len();
            stop = drain(&receiver, &mut batch, full);
            priority.taken(batch.len() - before);
        }
        if stop || batch.len() >= full {
            priority.foreground();
        }
        // each call is turned into its span as the store takes it, so that the call's data
        // is read into the cache once (the store prepares each span as it comes)
        let count = batch.len() as u64;
        let started = Instant::now();
        let mut spans = batch.into_iter().map(|mut exchange| {
            priority.check_starved(started);
            decode_response(&mut exchange);
            span_of(exchange, infer.then_some(&mut sessions))
        });
        append(store.as_ref(), &mut spans, count, &stats);
        save(&mut sessions, stop);
    }
}

/// Adds a queued call to the batch; true when the message asks the recorder to stop.
fn gather(message: Message, batch: &mut Vec<Exchange>) -> bool {
    match message {
        Message::Exchange(exchange) => {
            batch.push(*exchange);
            false
        }
        Message::Stop => true,
    }
}

/// Takes what is queued, up to a full batch; true when a stop request was among it.
fn drain(receiver: &Receiver<Message>, batch: &mut Vec<Exchange>, full: usize) -> bool {
    while batch.len() < full {
        let Ok(message) = receiver.try_recv() else {
            break;
        };
        if gather(message, batch) {
            return true;
        }
    }
    false
}

/// Upstream answers compressed with gzip or deflate are recorded decoded (what the client
/// was sent is untouched). Decoding stops at `MAX_DECODED` bytes; other encodings are
/// recorded as they came, and a body that does not decode is kept compressed.
fn decode_response(exchange: &mut Exchange) {
    use std::io::Read;
    const MAX_DECODED: u64 = 64 << 20;
    let Some(captured) = exchange.response.as_mut() else {
        return;
    };
    let compressed = captured.body.clone();
    let mut decoded = Vec::new();
    let read = match exchange.response_encoding.as_deref() {
        Some("gzip" | "x-gzip") => flate2::read::MultiGzDecoder::new(&compressed[..])
            .take(MAX_DECODED)
            .read_to_end(&mut decoded),
        Some("deflate") => flate2::read::ZlibDecoder::new(&compressed[..])
            .take(MAX_DECODED)
            .read_to_end(&mut decoded),
        _ => return,
    };
    // a body cut at the capture limit decodes as far as it goes
    if read.is_ok() || (captured.truncated && !decoded.is_empty()) {
        let length = decoded.len();
        captured.body = bytes::Bytes::from(decoded);
        // chunk boundaries were offsets into the compressed bytes: keep only the last
        // chunk's time, at the end of the decoded body
        if let Some(&(_, last)) = captured.chunk_times.last() {
            captured.chunk_times = vec![(length, last)];
        }
        exchange.response_encoding = None;
    }
}

/// The span for an exchange, with a session inferred and content dropped as asked.
fn span_of(exchange: Exchange, sessions: Option<&mut Sessions>) -> Span {
    let keep_content = exchange.keep_content;
    let caller = exchange.caller.clone();
    let mut span = to_span(exchange);
    if let Some(sessions) = sessions
        && span.kind == SpanKind::Llm
        && span.input.as_array().is_some_and(|m| !m.is_empty())
    {
        let scope = format!(
            "{}\u{1f}{}\u{1f}{}",
            span.project,
            span.user_id.as_deref().unwrap_or(""),
            caller.as_deref().unwrap_or("")
        );
        // the request's parameters are already parsed into the span's attributes
        let previous = at(&span.attributes, "/llmtrace.request/previous_response_id")
            .and_then(Value::as_str)
            .map(str::to_string);
        sessions.apply(&mut span, &scope, previous.as_deref());
    }
    if !keep_content {
        if let Value::Object(attributes) = &mut span.attributes {
            attributes.remove("llmtrace.request");
            attributes.remove("llmtrace.response_body");
            attributes.insert("llmtrace.content".into(), Value::from("metadata-only"));
        }
        span.input = Value::Null;
        span.output = Value::Null;
        span.tools = Value::Null;
        span.input_text.clear();
        span.output_text.clear();
    }
    span
}

/// One append per batch. The store itself waits out backpressure (and then refuses), so a
/// refusal here is final: counted and logged, never retried into a growing backlog.
fn append(store: &dyn Store, spans: &mut dyn Iterator<Item = Span>, count: u64, stats: &Stats) {
    match store.append_iter(spans) {
        Ok(_) => {
            stats.recorded.fetch_add(count, Ordering::Relaxed);
        }
        Err(err) => {
            stats.failed.fetch_add(count, Ordering::Relaxed);
            tracing::warn!(error = %err, spans = count, "gateway could not record calls");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Condvar, Mutex};
    use std::time::Instant;

    use llmtrace_model::{
        AggregateQuery, AggregateRow, Deletion, Page, SessionTrace, SpanQuery, StoreStats,
    };

    use super::*;
    use crate::capture::tests::sample;

    /// A store whose appends wait until the test opens the gate.
    #[derive(Default)]
    struct GatedStore {
        open: Mutex<bool>,
        opened: Condvar,
        spans: Mutex<Vec<Span>>,
    }

    impl Store for GatedStore {
        fn append(&self, spans: Vec<Span>) -> llmtrace_model::Result<()> {
            let mut open = self.open.lock().unwrap();
            while !*open {
                open = self.opened.wait(open).unwrap();
            }
            self.spans.lock().unwrap().extend(spans);
            Ok(())
        }
        fn search(&self, _: &SpanQuery) -> llmtrace_model::Result<Page> {
            unimplemented!()
        }
        fn trace(&self, _: &str, _: &str) -> llmtrace_model::Result<Vec<Span>> {
            unimplemented!()
        }
        fn session(&self, _: &str, _: &str) -> llmtrace_model::Result<Vec<SessionTrace>> {
            unimplemented!()
        }
        fn aggregate(&self, _: &AggregateQuery) -> llmtrace_model::Result<Vec<AggregateRow>> {
            unimplemented!()
        }
        fn delete(&self, _: &Deletion) -> llmtrace_model::Result<u64> {
            unimplemented!()
        }
        fn put_scores(&self, _: Vec<llmtrace_model::Score>) -> llmtrace_model::Result<()> {
            unimplemented!()
        }
        fn scores(
            &self,
            _: &llmtrace_model::ScoreQuery,
        ) -> llmtrace_model::Result<Vec<llmtrace_model::Score>> {
            unimplemented!()
        }
        fn retention_sweep(&self, _: i64) -> llmtrace_model::Result<u64> {
            unimplemented!()
        }
        fn flush(&self) -> llmtrace_model::Result<()> {
            Ok(())
        }
        fn stats(&self) -> llmtrace_model::Result<StoreStats> {
            unimplemented!()
        }
    }

    #[test]
    fn a_responses_call_naming_a_previous_response_continues_its_session() {
        use bytes::Bytes;
        use serde_json::json;

        use crate::api::Api;

        let mut sessions = Sessions::new(10);
        let responses = |trace: &str, request: Value, id: &str| {
            let mut exchange = sample(trace);
            exchange.api = Api::Responses;
            exchange.request = Bytes::from(request.to_string());
            if let Some(response) = exchange.response.as_mut() {
                response.body = Bytes::from(
                    json!({"id": id, "object": "response", "status": "completed", "model": "m",
                        "output": [{"type": "message", "role": "assistant",
                            "content": [{"type": "output_text", "text": "ok"}]}]})
                    .to_string(),
                );
            }
            exchange
        };
        let first = span_of(
            responses("a1", json!({"model": "m", "input": "hi"}), "resp_1"),
            Some(&mut sessions),
        );
        let second = span_of(
            responses(
                "b2",
                json!({"model": "m", "input": "more", "previous_response_id": "resp_1"}),
                "resp_2",
            ),
            Some(&mut sessions),
        );
        assert_eq!(first.session_id.as_deref(), Some("auto-a1"));
        assert_eq!(second.session_id, first.session_id);
    }

    /// Waits until the store holds `count` spans (at most five seconds).
    fn wait_for(store: &GatedStore, count: usize) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while store.spans.lock().unwrap().len() < count {
            assert!(Instant::now() < deadline, "the recorder stored too little");
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn a_trickle_is_stored_at_idle_priority_and_a_backlog_at_normal() {
        use std::os::unix::thread::JoinHandleExt;

        let store = Arc::new(GatedStore::default());
        *store.open.lock().unwrap() = true;
        let config = RecorderConfig {
            batch: 4,
            linger: Duration::from_millis(5),
            ..RecorderConfig::new(64, false)
        };
        let recorder = Recorder::start(store.clone(), config);
        let idle = || {
            let thread = recorder.thread.lock().unwrap();
            llmtrace_sched::is_idle(thread.as_ref().unwrap().as_pthread_t())
        };
        let record = |i: usize| {
            recorder
                .handle()
                .record(Box::new(sample(&format!("{i:032x}"))))
        };

        record(0);
        wait_for(&store, 1);
        if !idle() {
            assert!(
                !llmtrace_sched::may_switch(),
                "a trickle was stored at normal priority"
            );
            eprintln!("skipped: this process may not return a thread from SCHED_IDLE");
            assert!(
                std::env::var("LLMTRACE_TEST_REQUIRE_ALL").as_deref() != Ok("1"),
                "LLMTRACE_TEST_REQUIRE_ALL=1 but this process may not switch policies"
            );
            recorder.stop();
            return;
        }
        // a backlog: a full batch queued while the store holds the previous one
        *store.open.lock().unwrap() = false;
        record(1);
        std::thread::sleep(Duration::from_millis(50));
        for i in 2..6 {
            record(i);
        }
        *store.open.lock().unwrap() = true;
        store.opened.notify_all();
        wait_for(&store, 6);
        assert!(!idle(), "a full batch was stored at idle priority");
        // and the next trickle steps aside again
        record(6);
        wait_for(&store, 7);
        assert!(idle());
        recorder.stop();
    }

    /// With every core kept busy at normal priority, a recorder at idle priority would get
    /// almost no CPU and its queue would overflow; it must be raised before that.
    #[test]
    fn busy_cores_do_not_starve_the_recorder_into_dropping_calls() {
        use std::sync::atomic::AtomicBool;

        let store = Arc::new(GatedStore::default());
        *store.open.lock().unwrap() = true;
        let config = RecorderConfig {
            linger: Duration::from_millis(5),
            ..RecorderConfig::new(200, false)
        };
        let recorder = Recorder::start(store.clone(), config);
        let busy = Arc::new(AtomicBool::new(true));
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        let spinners: Vec<_> = (0..cores + 1)
            .map(|_| {
                let busy = busy.clone();
                let until = Instant::now() + Duration::from_secs(5);
                std::thread::spawn(move || {
                    while busy.load(Ordering::Relaxed) && Instant::now() < until {
                        std::hint::spin_loop();
                    }
                })
            })
            .collect();
        for i in 0..600 {
            recorder
                .handle()
                .record(Box::new(sample(&format!("{i:032x}"))));
            std::thread::sleep(Duration::from_millis(1));
        }
        busy.store(false, Ordering::Relaxed);
        spinners.into_iter().for_each(|s| s.join().unwrap());
        recorder.stop();
        let stats = recorder.handle().stats();
        assert_eq!(
            stats.dropped.load(Ordering::Relaxed),
            0,
            "calls were dropped"
        );
        assert_eq!(store.spans.lock().unwrap().len(), 600);
        // every call counted in was counted out, or the count would drift into raising
        assert_eq!(recorder.handle().priority.waiting(), 0);
    }

    #[test]
    fn a_stuck_store_never_blocks_recording_and_losses_are_counted() {
        let store = Arc::new(GatedStore::default());
        // batches of at most a queue's length: while the first batch gathers, the thread
        // takes calls as fast as they are sent, so with the usual 4,096 the number that gets
        // through would depend on how the two threads interleave
        let config = RecorderConfig {
            batch: 8,
            ..RecorderConfig::new(8, true)
        };
        let recorder = Recorder::start(store.clone(), config);
        let started = Instant::now();
        for i in 0..100 {
            recorder
                .handle()
                .record(Box::new(sample(&format!("{i:032x}"))));
        }
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "recording waited for the store"
        );
        let stats = recorder.handle().stats().clone();
        let dropped = stats.dropped.load(Ordering::Relaxed);
        // at most a full queue plus one batch in the thread's hands got through
        assert!(dropped >= 100 - 2 * 8, "dropped {dropped}");
        *store.open.lock().unwrap() = true;
        store.opened.notify_all();
        recorder.stop();
        let stored = store.spans.lock().unwrap().len() as u64;
        assert_eq!(stored + dropped, 100);
        assert_eq!(stats.recorded.load(Ordering::Relaxed), stored);
    }

    /// A backlog of full batches is stored back to back; only a batch that is not full
    /// lingers. (Lingering before every batch capped recording at one batch per linger,
    /// ~10 k calls/s, and dropped calls under load.)
    #[test]
    fn a_backlog_is_stored_without_lingering_per_batch() {
        let store = Arc::new(GatedStore::default());
        let linger = Duration::from_millis(300);
        let recorder = Recorder::start(
            store.clone(),
            RecorderConfig {
                batch: 16,
                linger,
                ..RecorderConfig::new(1000, false)
            },
        );
        // the first batch lingers, fills up and waits at the closed gate; behind it queue
        // seven full batches and one partial one
        let calls = 16 * 8 + 1;
        for i in 0..calls {
            recorder
                .handle()
                .record(Box::new(sample(&format!("{i:032x}"))));
        }
        std::thread::sleep(linger * 2);
        let opened = Instant::now();
        *store.open.lock().unwrap() = true;
        store.opened.notify_all();
        while store.spans.lock().unwrap().len() < calls && opened.elapsed() < linger * 30 {
            std::thread::sleep(Duration::from_millis(5));
        }
        let took = opened.elapsed();
        assert_eq!(store.spans.lock().unwrap().len(), calls);
        // one linger (the partial batch), not eight
        assert!(took < linger * 4, "the backlog took {took:?}");
        recorder.stop();
        assert_eq!(recorder.handle().stats().dropped.load(Ordering::Relaxed), 0);
    }
}
