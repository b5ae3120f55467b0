//! The real `openai` SDK's stored-completions calls (list, retrieve, messages, delete)
//! against the chat calls llmtrace's gateway recorded.

use std::process::Command;

use serde_json::{Value, json};

use crate::gateway::{FakeLlm, gateway_server};
use crate::python::{python, script};

#[test]
fn the_openai_sdk_lists_retrieves_and_deletes_stored_completions() {
    let Some(upstream) = FakeLlm::start() else {
        return;
    };
    let (_temp, server) = gateway_server(&[format!("fake={}/v1", upstream.url)]);
    let output = Command::new(python().unwrap())
        .arg(script("stored_completions.py"))
        .env("LLMTRACE_HTTP", &server.http)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let out: Value = serde_json::from_slice(&output.stdout).unwrap();
    let made: Vec<&str> = out["made"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(made.len(), 4);
    assert!(
        made.iter().all(|id| id.starts_with("chatcmpl-stored")),
        "{made:?}"
    );

    assert_eq!(
        out["billing_ids"],
        json!([made[0], made[1], made[2]]),
        "{out:#}"
    );
    assert_eq!(out["billing_models"][2], "gpt-4.1-2024-07-18");
    assert_eq!(out["desc_page1"], json!([made[3], made[2]]));
    assert_eq!(out["desc_has_more"], true);
    assert_eq!(
        out["desc_all"],
        json!([made[3], made[2], made[1], made[0]]),
        "the SDK pages with after="
    );
    assert_eq!(out["by_model"], json!([made[2]]));

    assert_eq!(out["retrieved"]["id"], made[0]);
    assert_eq!(out["retrieved"]["content"], "Your parcel ships tomorrow.");
    assert_eq!(out["retrieved"]["prompt_tokens"], 21);
    assert_eq!(out["retrieved"]["metadata"]["topic"], "billing");
    assert_eq!(
        out["messages"],
        json!([
            {"id": format!("{}-0", made[0]), "role": "system", "content": "Be brief."},
            {"id": format!("{}-1", made[0]), "role": "user", "content": "Question 0: where is my parcel?"}
        ])
    );

    assert_eq!(out["deleted"], json!({"id": made[1], "deleted": true}));
    assert_eq!(out["after_delete"], json!([made[0], made[2]]));
    assert_eq!(out["retrieve_deleted"], "not found");
    let unknown = server.get("/v1/chat/completions?colour=red");
    assert_eq!(unknown.status, 400);
    assert!(unknown.text().contains("colour"));
}

fn stored_call(server: &crate::support::TestServer, topic: &str, question: &str) {
    let body = json!({"model": "gpt-4o-mini", "store": true, "metadata": {"topic": topic},
                      "messages": [{"role": "user", "content": question}]});
    let reply = server.post(
        "/v1/chat/completions",
        &[("content-type", "application/json")],
        body.to_string().as_bytes(),
    );
    assert_eq!(reply.status, 200, "{}", reply.text());
}

fn listed(server: &crate::support::TestServer, query: &str) -> Vec<Value> {
    server.get(&format!("/v1/chat/completions?{query}")).json()["data"]
        .as_array()
        .unwrap()
        .clone()
}

#[test]
fn import_openai_backfills_from_a_stored_completions_api_resumably() {
    let Some(upstream) = FakeLlm::start() else {
        return;
    };
    // the source: an llmtrace gateway serving the stored-completions routes
    let (_a, source) = gateway_server(&[format!("fake={}/v1", upstream.url)]);
    for (topic, question) in [
        ("billing", "refund please"),
        ("billing", "invoice copy"),
        ("shipping", "where is it"),
    ] {
        stored_call(&source, topic, question);
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while listed(&source, "limit=10").len() < 3 {
        assert!(std::time::Instant::now() < deadline, "calls never recorded");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let target = crate::support::TestServer::start();
    let temp = tempfile::tempdir().unwrap();
    let state = temp.path().join("state.json");
    let run = |extra: &[&str]| {
        let output = Command::new(env!("CARGO_BIN_EXE_llmtrace"))
            .args([
                "import",
                "openai",
                "--base-url",
                &format!("{}/v1", source.http),
                "--server",
                &target.http,
            ])
            .args([
                "--key-env",
                "SOURCE_KEY",
                "--state",
                state.to_str().unwrap(),
            ])
            .args(extra)
            .env("SOURCE_KEY", "sk-test")
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stderr).into_owned()
    };
    let first = run(&["--metadata", "topic=billing"]);
    assert!(first.contains("imported 2 completions"), "{first}");
    let imported = listed(&target, "order=asc");
    assert_eq!(imported.len(), 2);
    assert_eq!(imported[0]["model"], "gpt-4o-mini-2024-07-18");
    assert_eq!(imported[0]["metadata"]["topic"], "billing");
    assert_eq!(
        imported[0]["choices"][0]["message"]["content"],
        "Your parcel ships tomorrow."
    );
    // created times tie within a second: compare as a set
    let mut questions: Vec<String> = imported
        .iter()
        .map(|c| {
            let id = c["id"].as_str().unwrap();
            let messages = target
                .get(&format!("/v1/chat/completions/{id}/messages"))
                .json();
            messages["data"][0]["content"].as_str().unwrap().to_string()
        })
        .collect();
    questions.sort();
    assert_eq!(questions, ["invoice copy", "refund please"]);
    let spans = target.get("/v1/traces?limit=10").json();
    let span = &spans["data"][0];
    assert!(span["total_cost_usd"].as_f64().unwrap() > 0.0, "{span:#}");

    // resumed: nothing new; a wider filter set starts afresh and stores each call once
    let again = run(&["--metadata", "topic=billing"]);
    assert!(
        again.contains("resuming after") && again.contains("imported 0 completions"),
        "{again}"
    );
    run(&[]);
    assert_eq!(listed(&target, "limit=10").len(), 3);
}
