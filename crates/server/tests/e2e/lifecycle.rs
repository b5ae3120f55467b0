//! Process lifecycle: SIGTERM flushes and exits 0; SIGKILL loses nothing acknowledged.

use crate::support::{TestServer, exporter_fixture_pb};

#[test]
fn sigterm_flushes_to_segments_and_exits_zero() {
    let temp = tempfile::tempdir().unwrap();
    let data_dir = temp.path().join("data");
    let mut server = TestServer::start_in(&data_dir, &["--durability", "fsync"]);
    assert_eq!(server.post_traces_pb(&exporter_fixture_pb()), 200);
    assert_eq!(server.terminate(), Some(0));
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(data_dir.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(
        manifest["segments"].as_array().unwrap().len(),
        1,
        "the memtable was flushed on shutdown"
    );
    let server = TestServer::start_in(&data_dir, &[]);
    assert_eq!(server.all_spans("").len(), 3);
}

#[test]
fn sigkill_after_acknowledgement_loses_nothing() {
    let temp = tempfile::tempdir().unwrap();
    let data_dir = temp.path().join("data");
    let mut server = TestServer::start_in(&data_dir, &["--durability", "fsync"]);
    assert_eq!(server.post_traces_pb(&exporter_fixture_pb()), 200);
    server.kill9();
    let server = TestServer::start_in(&data_dir, &[]);
    let spans = server.all_spans("");
    assert_eq!(spans.len(), 3);
    assert!(
        spans
            .iter()
            .any(|s| s["name"] == "chat gpt-4o-mini" && s["input_tokens"].is_i64())
    );
}
