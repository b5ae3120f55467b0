//! Scores over HTTP: stored, replaced, listed, refused when malformed, shown in the UI's
//! drawer with the span they score, escaped.

use serde_json::{Value, json};

use crate::support::TestServer;
use crate::ui::{corpus, import, now_ns};

fn post(server: &TestServer, body: &Value) -> (u16, Value) {
    let reply = server.post(
        "/api/v1/scores",
        &[("content-type", "application/json")],
        body.to_string().as_bytes(),
    );
    (reply.status, reply.json())
}

#[test]
fn scores_are_stored_listed_replaced_and_shown() {
    let server = TestServer::start();
    import(&server, &corpus(now_ns()));
    let trace = format!("{:032x}", 0xa9e47);
    let tool = format!("{:016x}", 3);
    let (status, stored) = post(
        &server,
        &json!([
            {"trace_id": trace, "name": "resolved", "label": "yes", "source": "human",
             "comment": "<script>window.pwned = 'score'</script>"},
            {"trace_id": trace, "span_id": tool, "name": "correct-tool", "value": 1}
        ]),
    );
    assert_eq!(status, 200, "{stored}");
    assert_eq!(stored["stored"], 2);
    // the same trace, span, name and source again replaces the score
    let (status, _) = post(
        &server,
        &json!({"trace_id": trace, "span_id": tool, "name": "correct-tool", "value": 0}),
    );
    assert_eq!(status, 200);
    let listed = server
        .get(&format!("/api/v1/scores?trace_id={trace}"))
        .json();
    let scores = listed["data"].as_array().unwrap();
    assert_eq!(scores.len(), 2, "{listed:#}");
    let tool_score = scores.iter().find(|s| s["name"] == "correct-tool").unwrap();
    assert_eq!(tool_score["value"], 0.0);
    assert_eq!(tool_score["source"], "api");
    let by_name = server.get("/api/v1/scores?name=resolved").json();
    assert_eq!(by_name["data"].as_array().unwrap().len(), 1);

    // malformed scores are refused whole, the problem named
    for (body, needle) in [
        (
            json!({"trace_id": trace, "value": 1}),
            "missing field `name`",
        ),
        (
            json!({"trace_id": "xyz", "name": "n", "value": 1}),
            "32-character hex",
        ),
        (json!({"trace_id": trace, "name": "n"}), "value, a label"),
        (
            json!({"trace_id": trace, "name": "n", "value": 1, "colour": "red"}),
            "unknown field",
        ),
        (
            json!([{"trace_id": trace, "name": "ok", "value": 1}, {"trace_id": trace}]),
            "score 1",
        ),
        (json!("just a string"), "score object"),
    ] {
        let (status, reply) = post(&server, &body);
        assert_eq!(status, 400, "{body}");
        let message = reply["error"]["message"].as_str().unwrap();
        assert!(message.contains(needle), "{body}: {message}");
    }
    assert_eq!(
        server.get("/api/v1/scores?name=ok").json()["data"],
        json!([])
    );
    assert_eq!(server.get("/api/v1/scores?colour=red").status, 400);

    // the drawer shows a span's own scores and its trace's, as text
    let tool_drawer = server.get(&format!("/ui/span/{trace}/{tool}")).text();
    assert!(tool_drawer.contains("correct-tool") && tool_drawer.contains("resolved"));
    assert!(
        tool_drawer.contains("&lt;script&gt;window.pwned"),
        "{tool_drawer}"
    );
    assert!(!tool_drawer.contains("<script"));
    let root_drawer = server.get(&format!("/ui/span/{trace}/{:016x}", 1)).text();
    assert!(root_drawer.contains("resolved") && !root_drawer.contains("correct-tool"));
}
