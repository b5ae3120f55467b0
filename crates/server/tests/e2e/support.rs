//! `TestServer`: starts the real binary on port 0 with a temp data dir and stops it on drop.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

pub struct TestServer {
    pub child: Option<Child>,
    pub http: String,
    pub otlp_http: String,
    pub otlp_grpc: String,
    _temp: Option<tempfile::TempDir>,
}

pub struct Reply {
    pub status: u16,
    pub content_type: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }
}

/// The OTel exporter's protobuf capture: an agent span with a chat and a tool child.
pub fn exporter_fixture_pb() -> Vec<u8> {
    std::fs::read(shared_fixtures().join("a_otlp_exporters/raw/001_a1_otlp_http_protobuf.pb"))
        .unwrap()
}

pub fn shared_fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/fixtures")
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(60)))
        .build()
        .into()
}

fn reply(mut response: ureq::http::Response<ureq::Body>) -> Reply {
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let headers = response
        .headers()
        .iter()
        .map(|(name, value)| {
            (
                name.to_string(),
                value.to_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    let body = response
        .body_mut()
        .with_config()
        .limit(256 << 20)
        .read_to_vec()
        .unwrap();
    Reply {
        status,
        content_type,
        headers,
        body,
    }
}

impl TestServer {
    pub fn start() -> TestServer {
        let temp = tempfile::tempdir().unwrap();
        let data_dir = temp.path().join("data");
        let mut server = TestServer::start_in(&data_dir, &[]);
        server._temp = Some(temp);
        server
    }

    /// Starts the binary on an existing data dir with extra flags.
    pub fn start_in(data_dir: &Path, extra: &[&str]) -> TestServer {
        TestServer::start_with_env(data_dir, extra, &[])
    }

    /// As `start_in`, with extra environment variables for the server.
    pub fn start_with_env(data_dir: &Path, extra: &[&str], env: &[(&str, &str)]) -> TestServer {
        let mut child = Command::new(env!("CARGO_BIN_EXE_llmtrace"))
            .envs(env.iter().copied())
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--otlp-http-listen",
                "127.0.0.1:0",
            ])
            .args(["--otlp-grpc-listen", "127.0.0.1:0", "--data-dir"])
            .arg(data_dir)
            .args(extra)
            .env("LLMTRACE_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("llmtrace binary starts");
        let stdout = child.stdout.take().unwrap();
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).unwrap();
        let find = |name: &str| {
            line.split_whitespace()
                .find_map(|part| part.strip_prefix(&format!("{name}=")))
                .unwrap_or_else(|| panic!("no {name} in {line:?}"))
                .to_string()
        };
        let server = TestServer {
            http: format!("http://{}", find("http")),
            otlp_http: format!("http://{}", find("otlp_http")),
            otlp_grpc: format!("http://{}", find("otlp_grpc")),
            child: Some(child),
            _temp: None,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while server.get("/health").status != 200 {
            assert!(Instant::now() < deadline, "server never became healthy");
            std::thread::sleep(Duration::from_millis(20));
        }
        server
    }

    pub fn get(&self, path_and_query: &str) -> Reply {
        reply(
            agent()
                .get(&format!("{}{}", self.http, path_and_query))
                .call()
                .unwrap(),
        )
    }

    pub fn post(&self, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Reply {
        self.post_to(&self.http, path, headers, body)
    }

    /// POSTs an OTLP protobuf export to `/v1/traces` on the main port; returns the status.
    pub fn post_traces_pb(&self, body: &[u8]) -> u16 {
        self.post(
            "/v1/traces",
            &[("content-type", "application/x-protobuf")],
            body,
        )
        .status
    }

    pub fn post_to(&self, base: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Reply {
        let mut request = agent().post(&format!("{base}{path}"));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        reply(request.send(body).unwrap())
    }

    /// Sends a request over a raw socket, writing the body on another thread, so a server
    /// that answers before reading everything (413) is observed rather than a broken pipe.
    pub fn raw_post(&self, path: &str, content_type: &str, body: Vec<u8>) -> (u16, String) {
        let address = self.http.trim_start_matches("http://");
        let mut stream = TcpStream::connect(address).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(60)))
            .unwrap();
        let head = format!(
            "POST {path} HTTP/1.1\r\nhost: {address}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
            body.len()
        );
        let mut writer = stream.try_clone().unwrap();
        let sender = std::thread::spawn(move || {
            let _ = writer.write_all(head.as_bytes());
            let _ = writer.write_all(&body);
        });
        let mut answer = Vec::new();
        let _ = stream.read_to_end(&mut answer);
        let _ = sender.join();
        let text = String::from_utf8_lossy(&answer).into_owned();
        let status = text
            .split_whitespace()
            .nth(1)
            .and_then(|code| code.parse().ok())
            .unwrap_or(0);
        (status, text)
    }

    /// Every span of the default project, newest first, following cursors.
    pub fn all_spans(&self, extra_query: &str) -> Vec<Value> {
        let mut out = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let mut path = format!("/api/v1/spans?limit=500{extra_query}");
            if let Some(cursor) = &cursor {
                path.push_str(&format!("&cursor={cursor}"));
            }
            let reply = self.get(&path);
            assert_eq!(reply.status, 200, "{}", reply.text());
            let body = reply.json();
            out.extend(body["data"].as_array().unwrap().iter().cloned());
            match body["next_cursor"].as_str() {
                Some(next) => cursor = Some(next.to_string()),
                None => return out,
            }
        }
    }

    /// Sends SIGTERM and waits; returns the exit code.
    pub fn terminate(&mut self) -> Option<i32> {
        let mut child = self.child.take()?;
        send_signal(child.id(), "TERM");
        let status = child.wait().unwrap();
        status.code()
    }

    /// SIGKILL: no flush, no goodbye.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }
}

/// std can only SIGKILL a child; the `kill` command sends other signals without `unsafe`.
fn send_signal(pid: u32, signal: &str) {
    let status = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status()
        .unwrap();
    assert!(status.success());
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Whether tests that need something outside Rust must fail instead of skipping.
/// Runs the `llmtrace` binary with `args`, as a user would from a shell.
pub fn cli(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_llmtrace"))
        .args(args)
        .output()
        .unwrap()
}

/// `cli`, which must succeed: its standard output.
pub fn cli_ok(args: &[&str]) -> String {
    let output = cli(args);
    assert!(
        output.status.success(),
        "llmtrace {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

pub fn require_all() -> bool {
    std::env::var("LLMTRACE_TEST_REQUIRE_ALL").is_ok_and(|v| v == "1")
}

/// Prints why a test is skipped; under LLMTRACE_TEST_REQUIRE_ALL=1 that is a failure.
pub fn skip(reason: &str) {
    assert!(!require_all(), "LLMTRACE_TEST_REQUIRE_ALL=1 but: {reason}");
    eprintln!("SKIPPED: {reason}");
}
