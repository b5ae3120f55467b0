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
