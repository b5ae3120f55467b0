//! The web UI: every page over HTTP (content, escaping, headers), then driven in headless
//! Chromium through chromedriver (filters, drawer, keyboard, sessions, waterfall, live
//! tail, themes), with screenshots saved under `target/ui-screenshots/`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use llmtrace_model::{Span, SpanKind, SpanSource, SpanStatus};
use serde_json::{Value, json};

use crate::support::{TestServer, skip};

const HOSTILE_SCRIPT: &str = "<script>window.pwned = 'script'</script>";
const HOSTILE_HANDLER: &str = "<img src=x onerror=\"window.pwned='img'\">";
const HOSTILE_MARKDOWN: &str = "[click me](javascript:window.pwned='md') **bold** <b>html</b>";
const HOSTILE_SESSION: &str = "s\"><script>window.pwned='session'</script>";

pub fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as i64
}

fn text_message(role: &str, text: &str) -> Value {
    json!({"role": role, "content": [{"type": "text", "text": text}]})
}

fn call(trace: u64, span: u64, start: i64, input: Vec<Value>, output: &str) -> Span {
    let input_text = input
        .iter()
        .flat_map(|m| m["content"].as_array().cloned().unwrap_or_default())
        .filter_map(|p| p["text"].as_str().map(str::to_string))
        .collect::<Vec<_>>()
        .join("\n");
    Span {
        project: "default".into(),
        trace_id: format!("{trace:032x}"),
        span_id: format!("{span:016x}"),
        name: "chat gpt-4o-mini".into(),
        kind: SpanKind::Llm,
        source: SpanSource::Import,
        start_time: start,
        end_time: start + 850_000_000,
        duration_ms: 850.0,
        time_to_first_token_ms: Some(120.0),
        provider: Some("openai".into()),
        request_model: Some("gpt-4o-mini".into()),
        model: Some("gpt-4o-mini-2024-07-18".into()),
        operation: Some("chat".into()),
        input_tokens: Some(100),
        output_tokens: Some(20),
        total_tokens: Some(120),
        input_cost_usd: Some(0.000015),
        output_cost_usd: Some(0.000012),
        total_cost_usd: Some(0.000027),
        input: Value::Array(input),
        output: json!([text_message("assistant", output)]),
        input_text,
        output_text: output.into(),
        ..Span::default()
    }
}

/// A support session of three turns (each resending the history), an agent run with a
/// tool and a handoff, a failed call, and calls whose content is hostile.
pub fn corpus(now: i64) -> Vec<Span> {
    let minute = 60_000_000_000;
    let mut spans = Vec::new();
    let system = text_message("system", "You are the refund assistant.");
    let mut history = vec![system.clone()];
    for (turn, (question, answer)) in [
        ("I want a refund for order 1042", "Sure, which item?"),
        ("The blue kettle", "Refund for the blue kettle started."),
        ("Thanks!", "You're welcome."),
    ]
    .into_iter()
    .enumerate()
    {
        history.push(text_message("user", question));
        let mut span = call(
            0x5e55 + turn as u64,
            0x100 + turn as u64,
            now - (30 - turn as i64) * minute,
            history.clone(),
            answer,
        );
        span.session_id = Some("support-42".into());
        span.user_id = Some("alice".into());
        span.metadata = BTreeMap::from([("feature".into(), "refunds".into())]);
        spans.push(span);
        history.push(text_message("assistant", answer));
    }
    // the agent run: triage → llm (tool call) → tool → handoff → weather agent → llm
    let trace = 0xa9e47;
    let start = now - 20 * minute;
    let node =
        |id: u64, parent: Option<u64>, name: &str, kind: SpanKind, offset_ms: i64, ms: i64| Span {
            project: "default".into(),
            trace_id: format!("{trace:032x}"),
            span_id: format!("{id:016x}"),
            parent_span_id: parent.map(|p| format!("{p:016x}")),
            name: name.into(),
            kind,
            source: SpanSource::AgentsSdk,
            start_time: start + offset_ms * 1_000_000,
            end_time: start + (offset_ms + ms) * 1_000_000,
            duration_ms: ms as f64,
            session_id: Some("agent-session-7".into()),
            ..Span::default()
        };
    spans.push(node(1, None, "Triage agent", SpanKind::Agent, 0, 3000));
    let mut plan = call(
        trace,
        2,
        start + 10_000_000,
        vec![text_message("user", "Weather in Paris?")],
        "",
    );
    plan.parent_span_id = Some(format!("{:016x}", 1));
    plan.session_id = Some("agent-session-7".into());
    plan.output = json!([{"role": "assistant", "content": [], "tool_calls": [
        {"id": "call_1", "name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}]}]);
    spans.push(plan);
    spans.push(node(3, Some(1), "get_weather", SpanKind::Tool, 900, 400));
    spans.push(node(
        4,
        Some(1),
        "handoff to Weather agent",
        SpanKind::Handoff,
        1400,
        10,
    ));
    spans.push(node(
        5,
        Some(1),
        "Weather agent",
        SpanKind::Agent,
        1500,
        1400,
    ));
    let mut answer = call(
        trace,
        6,
        start + 1_600_000_000,
        vec![text_message("user", "Weather in Paris?")],
        "Sunny, 21 °C.",
    );
    answer.parent_span_id = Some(format!("{:016x}", 5));
    answer.session_id = Some("agent-session-7".into());
    spans.push(answer);
    // a failed call
    let mut failed = call(
        0xe1,
        0xe1,
        now - 10 * minute,
        vec![text_message("user", "hello?")],
        "",
    );
    failed.status = SpanStatus::Error;
    failed.http_status = Some(429);
    failed.status_message = Some("rate limited".into());
    failed.model = Some("gpt-4o".into());
    spans.push(failed);
    // hostile content everywhere a page shows text
    let mut hostile = call(
        0xbad,
        0xbad,
        now - 5 * minute,
        vec![
            text_message("system", HOSTILE_SCRIPT),
            json!({"role": "user", "content": [
                {"type": "text", "text": HOSTILE_HANDLER},
                {"type": "text", "text": HOSTILE_MARKDOWN},
                {"type": "image", "url": "javascript:window.pwned='image'"},
                {"type": "text", "text": "x".repeat(200_000)},
            ]}),
        ],
        "</pre></td></tr></table><script>window.pwned='output'</script>",
    );
    hostile.session_id = Some(HOSTILE_SESSION.into());
    hostile.user_id = Some("<svg onload=\"window.pwned='user'\">".into());
    hostile.model = Some("<iframe src=javascript:window.pwned='model'>".into());
    hostile.name = "<marquee>name</marquee>".into();
    hostile.metadata = BTreeMap::from([(
        "<k onclick=x>".into(),
        "\"><script>window.pwned='meta'</script>".into(),
    )]);
    spans.push(hostile);
    spans
}

pub fn import(server: &TestServer, spans: &[Span]) {
    let body: String = spans
        .iter()
        .map(|span| serde_json::to_string(span).unwrap() + "\n")
        .collect();
    let reply = server.post(
        "/api/v1/import",
        &[("content-type", "application/x-ndjson")],
        body.as_bytes(),
    );
    assert_eq!(reply.status, 200, "{}", reply.text());
}

/// A breakdown with more groups than a page can show lists the biggest, says how many
/// there are, and its numbers are those of the rows (one read serves series and totals).
#[test]
fn dashboard_totals_list_the_biggest_groups() {
    let server = TestServer::start();
    let now = now_ns();
    // 230 users with one call each, and "heavy" with three
    let mut spans: Vec<Span> = (0..233u64)
        .map(|i| {
            let mut span = call(
                0xd0000 + i,
                1,
                now - 600_000_000_000 + i as i64,
                vec![],
                "hi",
            );
            span.user_id = Some(match i {
                0..3 => "heavy".to_string(),
                i => format!("user-{i:03}"),
            });
            span
        })
        .collect();
    spans[0].status = SpanStatus::Error;
    import(&server, &spans);
    let page = server.get("/dashboard?group=user").text();
    let table = page.split("id=\"totals\"").nth(1).expect("a totals table");
    assert!(
        table.contains("The 200 groups with the most calls of 231"),
        "{table}"
    );
    assert_eq!(table.matches("<tr>").count(), 201, "a header and 200 rows");
    // the biggest group comes first, with its own numbers
    let first = table.split("<tbody>").nth(1).unwrap();
    assert!(
        first.starts_with("<tr><td>heavy</td><td class=\"num\">3</td><td class=\"num\">33.3%</td>"),
        "{first}"
    );
}

/// Every page answers with the CSP and with hostile content escaped: our one script tag is
/// the only one, no trace content became an attribute or a link.
#[test]
fn pages_render_and_escape_hostile_content() {
    let server = TestServer::start();
    import(&server, &corpus(now_ns()));
    let hostile_session: String = HOSTILE_SESSION
        .bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' => (b as char).to_string(),
            other => format!("%{other:02X}"),
        })
        .collect();
    let pages = [
        "/traces".to_string(),
        "/traces?q=refund&model=gpt-4o-mini".into(),
        "/ui/charts?q=refund&meta=feature%3Drefunds".into(),
        format!("/traces?open={:032x}:{:016x}", 0xbad, 0xbad),
        format!("/ui/span/{:032x}/{:016x}", 0xbad, 0xbad),
        "/sessions".into(),
        "/sessions/support-42".into(),
        format!("/sessions/{hostile_session}"),
        format!("/runs/{:032x}", 0xa9e47),
        "/dashboard".into(),
        "/dashboard?group=model".into(),
        "/dashboard?group_key=feature&range=7d".into(),
        "/live".into(),
    ];
    for page in &pages {
        let reply = server.get(page);
        assert_eq!(reply.status, 200, "{page}: {}", reply.text());
        let csp = reply.header("content-security-policy").unwrap_or_default();
        assert!(
            csp.contains("script-src 'self'") && !csp.contains("unsafe-inline"),
            "{page}: {csp}"
        );
        assert_eq!(
            reply.header("x-content-type-options"),
            Some("nosniff"),
            "{page}"
        );
        let html = reply.text();
        let fragment = page.starts_with("/ui/");
        assert_eq!(
            html.matches("<script").count(),
            usize::from(!fragment),
            "{page}: script tags"
        );
        for forbidden in [
            "<img",
            "<iframe",
            "<svg onload",
            "<marquee",
            "<b>html",
            "href=\"javascript",
            "onerror=\"",
            "<k onclick",
        ] {
            assert!(!html.contains(forbidden), "{page}: {forbidden} in the page");
        }
    }
    let detail = server
        .get(&format!("/ui/span/{:032x}/{:016x}", 0xbad, 0xbad))
        .text();
    for shown in [
        "&lt;script&gt;window.pwned = 'script'&lt;/script&gt;",
        "&lt;img src=x onerror=",
        "javascript:window.pwned='image'",
        "[click me](javascript:",
    ] {
        assert!(detail.contains(shown), "the detail shows {shown} as text");
    }
    // the three-turn session shows each question once, each with its turn
    let session = server.get("/sessions/support-42").text();
    assert_eq!(
        session.matches("I want a refund for order 1042").count(),
        1,
        "{session}"
    );
    assert_eq!(
        session.matches("class=\"turn\"").count() + session.matches("class=\"turn ").count(),
        3
    );
    assert!(
        session.contains("3 earlier messages not repeated"),
        "turn 2 resends 3 messages"
    );
    // the run is a tree: the weather agent's call sits two levels down
    let run = server.get(&format!("/runs/{:032x}", 0xa9e47)).text();
    assert!(run.contains("name depth-2"), "{run}");
    assert!(run.contains("6 spans"), "{run}");
    // the sessions list names both sessions with their numbers
    let sessions = server.get("/sessions").text();
    assert!(
        sessions.contains("support-42") && sessions.contains("agent-session-7"),
        "{sessions}"
    );
    // the traces page's charts follow its filter: two calls mention the kettle, one failed
    // (summed over the bars: the calls may straddle an hour boundary)
    let charts = server.get("/ui/charts?q=kettle").text();
    assert_eq!(series_total(&charts, "ok"), 2, "{charts}");
    assert_eq!(series_total(&charts, "errors"), 0, "{charts}");
    let charts = server.get("/ui/charts?status=error").text();
    assert_eq!(series_total(&charts, "errors"), 1, "{charts}");
    assert!(
        server
            .get("/ui/charts?q=zzzunmatched")
            .text()
            .contains("No calls in this range")
    );
    // the dashboard without a breakdown charts every call as one series
    let dashboard = server.get("/dashboard").text();
    assert!(dashboard.contains("<rect"), "the dashboard draws bars");
    // a bad filter is a 400 page naming it
    let bad = server.get("/traces?status=weird");
    assert_eq!(bad.status, 400);
    assert!(
        bad.text()
            .contains("status=&quot;weird&quot; is not one of"),
        "{}",
        bad.text()
    );
    assert_eq!(server.get("/ui/span/00/00").status, 404);
    for page in ["/ui/span/00/00", "/runs/00", "/sessions/x", "/traces"] {
        let reply = server.get(&format!("{page}?project=..%2Fetc"));
        assert_eq!(reply.status, 400, "{page}: {}", reply.text());
        assert!(reply.text().contains("not a valid project name"), "{page}");
    }
    assert_eq!(
        server.get("/runs/ffffffffffffffffffffffffffffffff").status,
        404
    );
}

/// A W3C WebDriver session on chromedriver, over plain HTTP.
struct Browser {
    driver: Child,
    base: String,
    session: String,
    agent: ureq::Agent,
    shots: PathBuf,
    _profile: tempfile::TempDir,
}

const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

impl Browser {
    fn start() -> Option<Browser> {
        let (chromium, chromedriver) = ("/usr/bin/chromium", "/usr/bin/chromedriver");
        if !std::path::Path::new(chromium).exists() || !std::path::Path::new(chromedriver).exists()
        {
            skip(
                "no /usr/bin/chromium and /usr/bin/chromedriver (Debian chromium, chromium-driver)",
            );
            return None;
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let driver = Command::new(chromedriver)
            .args([format!("--port={port}"), "--allowed-ips=127.0.0.1".into()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let base = format!("http://127.0.0.1:{port}");
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(60)))
            .build()
            .into();
        let deadline = Instant::now() + Duration::from_secs(20);
        while agent.get(&format!("{base}/status")).call().is_err() {
            assert!(Instant::now() < deadline, "chromedriver did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        let profile = tempfile::tempdir().unwrap();
        let args = [
            "--headless=new".to_string(),
            "--no-sandbox".into(),
            "--disable-gpu".into(),
            "--disable-quic".into(),
            "--no-first-run".into(),
            "--disable-background-networking".into(),
            "--disable-component-update".into(),
            "--disable-sync".into(),
            "--disable-dev-shm-usage".into(),
            "--window-size=1400,1000".into(),
            format!("--user-data-dir={}", profile.path().display()),
        ];
        let created = agent
            .post(&format!("{base}/session"))
            .send_json(json!({"capabilities": {"alwaysMatch": {
                "browserName": "chrome",
                "goog:chromeOptions": {"binary": chromium, "args": args}
            }}}))
            .unwrap()
            .body_mut()
            .read_json::<Value>()
            .unwrap();
        let session = created["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no WebDriver session: {created}"))
            .to_string();
        let shots = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/ui-screenshots");
        std::fs::create_dir_all(&shots).unwrap();
        Some(Browser {
            driver,
            base,
            session,
            agent,
            shots,
            _profile: profile,
        })
    }

    fn command(&self, method: &str, path: &str, body: Value) -> Value {
        let url = format!("{}/session/{}{path}", self.base, self.session);
        let mut response = match method {
            "GET" => self.agent.get(&url).call(),
            _ => self.agent.post(&url).send_json(body),
        }
        .unwrap();
        let status = response.status().as_u16();
        let value: Value = response.body_mut().read_json().unwrap();
        assert_eq!(status, 200, "{method} {path}: {value}");
        value["value"].clone()
    }

    fn open(&self, url: &str) {
        self.command("POST", "/url", json!({"url": url}));
    }

    fn run(&self, script: &str) -> Value {
        self.command(
            "POST",
            "/execute/sync",
            json!({"script": script, "args": []}),
        )
    }

    /// Waits until `script` (a JS expression) is truthy.
    fn wait(&self, what: &str, script: &str) {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let value = self.run(&format!("return !!({script});"));
            if value == json!(true) {
                return;
            }
            if Instant::now() > deadline {
                self.screenshot(&format!("failed-{}", what.replace(' ', "-")));
                panic!("timed out waiting for {what}: {script}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn find(&self, css: &str) -> String {
        let found = self.command(
            "POST",
            "/element",
            json!({"using": "css selector", "value": css}),
        );
        found[ELEMENT]
            .as_str()
            .unwrap_or_else(|| panic!("no element {css}"))
            .to_string()
    }

    fn click(&self, css: &str) {
        let element = self.find(css);
        self.command("POST", &format!("/element/{element}/click"), json!({}));
    }

    fn type_into(&self, css: &str, text: &str) {
        let element = self.find(css);
        self.command("POST", &format!("/element/{element}/clear"), json!({}));
        self.command(
            "POST",
            &format!("/element/{element}/value"),
            json!({"text": text}),
        );
    }

    fn key(&self, key: &str) {
        self.command(
            "POST",
            "/actions",
            json!({"actions": [{"type": "key", "id": "keyboard", "actions": [
            {"type": "keyDown", "value": key}, {"type": "keyUp", "value": key}]}]}),
        );
    }

    fn text(&self, css: &str) -> String {
        let element = self.find(css);
        self.command("GET", &format!("/element/{element}/text"), Value::Null)
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    fn screenshot(&self, name: &str) {
        use base64::Engine;
        let value = self.command("GET", "/screenshot", Value::Null);
        if let Some(png) = value.as_str() {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(png)
                .unwrap();
            std::fs::write(self.shots.join(format!("{name}.png")), bytes).unwrap();
        }
    }

    fn url(&self) -> String {
        self.command("GET", "/url", Value::Null)
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// Nothing hostile ran, and the page holds no element an attacker could have made.
    fn assert_inert(&self, page: &str) {
        let found = self.run(
            "return [String(window.pwned), document.scripts.length,
                Array.from(document.querySelectorAll('*')).filter(e => Array.from(e.attributes).some(a => a.name.startsWith('on'))).length,
                document.querySelectorAll('a[href^=\"javascript\"], iframe, img, marquee, svg[onload]').length];",
        );
        assert_eq!(
            found,
            json!(["undefined", 1, 0, 0]),
            "{page}: pwned, scripts, handlers, hostile elements"
        );
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self
            .agent
            .delete(&format!("{}/session/{}", self.base, self.session))
            .call();
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

#[test]
fn pages_work_in_headless_chromium() {
    let Some(browser) = Browser::start() else {
        return;
    };
    let server = TestServer::start();
    let now = now_ns();
    import(&server, &corpus(now));
    let base = &server.http;

    // traces: the table, then a filter through the form, which lands in the URL
    browser.open(&format!("{base}/traces"));
    browser.wait(
        "the table",
        "document.querySelectorAll('#spans tbody tr').length >= 5",
    );
    browser.assert_inert("/traces");
    browser.screenshot("traces");
    browser.type_into("input[name=q]", "kettle");
    browser.click("form.filters button[type=submit]");
    browser.wait("the filtered table", "location.search.includes('q=kettle') && document.querySelectorAll('#spans tbody tr').length === 2");
    assert!(
        browser.url().contains("q=kettle"),
        "the URL holds the filter"
    );

    // the drawer opens on a click, and keyboard moves it to the next row
    browser.click("#spans tbody tr:first-child td.preview");
    browser.wait(
        "the drawer",
        "!document.getElementById('drawer').hidden && document.querySelector('#drawer .chat')",
    );
    assert!(
        browser.url().contains("open="),
        "the URL names the open span"
    );
    assert!(browser.text("#drawer").contains("The blue kettle"));
    browser.screenshot("traces-drawer");
    browser.click("#detail-input button.copy");
    browser.wait(
        "the copy button",
        "document.querySelector('#detail-input button.copy').textContent === 'Copied'",
    );
    let first = browser.run("return document.querySelector('#drawer .detail').dataset.spanId;");
    browser.key("j");
    browser.wait("the next span in the drawer", &format!("document.querySelector('#drawer .detail') && document.querySelector('#drawer .detail').dataset.spanId !== {first}"));
    browser.key("\u{E00C}"); // Escape
    browser.wait(
        "the drawer to close",
        "document.getElementById('drawer').hidden && !location.search.includes('open=')",
    );

    // a shared link with open= shows the drawer on load; hostile content stays text
    browser.open(&format!("{base}/traces?open={:032x}:{:016x}", 0xbad, 0xbad));
    browser.wait(
        "the hostile span",
        "document.querySelector('#drawer .chat')",
    );
    browser.assert_inert("hostile drawer");
    let drawer = browser.text("#drawer");
    assert!(
        drawer.contains(HOSTILE_SCRIPT) && drawer.contains("onerror"),
        "the payloads read as text"
    );
    browser.screenshot("hostile-drawer");

    // sessions: search by id, the transcript shows each turn once
    browser.open(&format!("{base}/sessions"));
    browser.wait(
        "the sessions",
        "document.querySelectorAll('#spans tbody tr').length >= 2",
    );
    browser.assert_inert("/sessions");
    browser.screenshot("sessions");
    browser.type_into("input[name=id]", "support-42");
    browser.click("form.session-search button");
    browser.wait(
        "the conversation",
        "document.querySelectorAll('.turn').length === 3",
    );
    assert!(browser.url().ends_with("/sessions/support-42"));
    assert!(
        browser
            .text(".transcript")
            .contains("Refund for the blue kettle started.")
    );
    browser.screenshot("session");
    browser.click(".turn:nth-child(2) header");
    browser.wait(
        "the turn's detail",
        "!document.getElementById('drawer').hidden",
    );

    // the agent run's waterfall, and a span of it in the drawer
    browser.open(&format!("{base}/runs/{:032x}", 0xa9e47));
    browser.wait(
        "the waterfall",
        "document.querySelectorAll('table.waterfall tbody tr').length === 6",
    );
    browser.click("table.waterfall tbody tr:nth-child(3) td.bar");
    browser.wait("the tool span", "!document.getElementById('drawer').hidden && document.querySelector('#drawer h2').textContent === 'get_weather'");
    browser.screenshot("agent-run");

    // dashboard, broken down by model, in both themes
    browser.open(&format!("{base}/dashboard?group=model"));
    browser.wait("the charts", "document.querySelectorAll('figure.chart svg rect').length > 0 && document.querySelectorAll('#totals tbody tr').length >= 2");
    browser.assert_inert("/dashboard");
    browser.screenshot("dashboard");
    browser.click("#theme");
    browser.wait(
        "the dark theme",
        "document.documentElement.dataset.theme === 'dark'",
    );
    browser.screenshot("dashboard-dark");

    // live tail: a call stored now appears without reloading
    browser.open(&format!("{base}/live"));
    browser.wait(
        "the live stream",
        "document.getElementById('live-state').dataset.state === 'open'",
    );
    browser.assert_inert("/live");
    let mut fresh = call(
        0xf4e54,
        0xf4e54,
        now_ns(),
        vec![text_message("user", "live tail probe")],
        "arrived",
    );
    fresh.model = Some("gpt-live-probe".into());
    import(&server, &[fresh]);
    browser.wait("the new row", "document.querySelector('#live-rows tr.fresh') && document.querySelector('#live-rows').textContent.includes('gpt-live-probe')");
    browser.screenshot("live");
}

/// The sum of one series' counts over the bars of a calls chart, read from the bars' titles
/// (`<time> · ok: 2`).
fn series_total(html: &str, series: &str) -> u64 {
    let marker = format!(" · {series}: ");
    html.split(&marker)
        .skip(1)
        .map(|rest| {
            let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
            digits
                .parse::<u64>()
                .expect("a count after the series name")
        })
        .sum()
}
