//! The corpus of bad intake messages (`tests/corpus/intake/`): each file is a
//! raw payload, and `expected.tsv` names the subject type it is sent on, the
//! error code it must get and the field that error must name (`-` for none).
//!
//! Two tests read the same manifest:
//! - [`the_domain_refuses_every_corpus_message_with_its_code_and_field`]
//!   runs `parse_intake` directly: fast, no server.
//! - [`ingest_refuses_every_corpus_message_announces_it_and_keeps_running`]
//!   sends each file as `nats req upr.ingest.<type>` would, to a running
//!   ingest next to the other two services, and checks the reply, the record
//!   on `upr.rejected`, that nothing reached the event log and that every
//!   service still answers its healthcheck afterwards.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    time::Duration,
};

use async_nats::jetstream;
use futures::StreamExt;
use serde_json::Value;
use upr_domain::parse_intake;
use upr_nats::contract::{self, REJECTED_PAYLOAD_BYTES, subjects};
use upr_tests::{TestApp, eventually};

/// One manifest row.
#[derive(Debug, Clone)]
struct Case {
    file: String,
    event_type: String,
    code: String,
    field: Option<String>,
    payload: Vec<u8>,
}

fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus/intake")
}

/// Reads `expected.tsv` and every file it names; also checks that no `.bin`
/// file is left out of the manifest, so a new case cannot be forgotten.
fn corpus() -> Vec<Case> {
    let dir = corpus_dir();
    let manifest = std::fs::read_to_string(dir.join("expected.tsv")).expect("read expected.tsv");
    let mut cases = Vec::new();
    for (n, line) in manifest.lines().enumerate() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let cols: Vec<&str> = line.split('\t').collect();
        let &[file, event_type, code, field] = cols.as_slice() else {
            panic!(
                "expected.tsv line {}: want 4 tab-separated columns: {line:?}",
                n + 1
            );
        };
        let payload = std::fs::read(dir.join(file)).unwrap_or_else(|e| panic!("read {file}: {e}"));
        cases.push(Case {
            file: file.to_owned(),
            event_type: event_type.to_owned(),
            code: code.to_owned(),
            field: (field != "-").then(|| field.to_owned()),
            payload,
        });
    }
    let mut on_disk: Vec<String> = std::fs::read_dir(&dir)
        .expect("read corpus dir")
        .map(|e| {
            e.expect("dir entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .filter(|f| Path::new(f).extension().is_some_and(|e| e == "bin"))
        .collect();
    on_disk.sort();
    let mut listed: Vec<String> = cases.iter().map(|c| c.file.clone()).collect();
    listed.sort();
    assert_eq!(
        on_disk, listed,
        "every corpus file is listed in expected.tsv exactly once"
    );
    assert!(
        cases.len() >= 50,
        "the corpus has {} cases; keep at least 50",
        cases.len()
    );
    cases
}

#[test]
fn the_domain_refuses_every_corpus_message_with_its_code_and_field() {
    let mut wrong = Vec::new();
    for case in corpus() {
        match parse_intake(&case.event_type, &case.payload) {
            Ok(cmd) => wrong.push(format!("{}: accepted as {:?}", case.file, cmd.event_type())),
            Err(e) => {
                let got = (e.code.as_str(), e.field.as_deref());
                if got != (case.code.as_str(), case.field.as_deref()) {
                    wrong.push(format!(
                        "{}: expected {} {:?}, got {} {:?} ({})",
                        case.file, case.code, case.field, got.0, got.1, e.message
                    ));
                } else if e.message.trim().is_empty() {
                    wrong.push(format!("{}: empty message", case.file));
                }
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "{} corpus cases disagree:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
}

const WAIT: Duration = Duration::from_secs(20);

#[tokio::test]
#[expect(
    clippy::too_many_lines,
    reason = "an end-to-end scenario: its steps, read in order, are the specification"
)]
async fn ingest_refuses_every_corpus_message_announces_it_and_keeps_running() {
    let cases = corpus();
    let app = TestApp::builder().all().start().await;
    let client = app.client().clone();
    let mut rejected = client
        .subscribe(subjects::REJECTED)
        .await
        .expect("subscribe upr.rejected");
    client.flush().await.expect("flush");

    let mut wrong = Vec::new();
    for case in &cases {
        let subject = format!("{}{}", subjects::INGEST_PREFIX, case.event_type);
        let reply = tokio::time::timeout(
            Duration::from_secs(10),
            client.request(subject.clone(), case.payload.clone().into()),
        )
        .await
        .unwrap_or_else(|_| panic!("{}: no reply on {subject} within 10 s", case.file))
        .unwrap_or_else(|e| panic!("{}: request on {subject}: {e}", case.file));
        let reply: Value = serde_json::from_slice(&reply.payload)
            .unwrap_or_else(|e| panic!("{}: reply is not JSON ({e})", case.file));
        let want_field = case.field.as_deref().map_or(Value::Null, Value::from);
        if reply["ok"] != false
            || reply["error"]["code"] != case.code.as_str()
            || reply["error"]["field"] != want_field
        {
            wrong.push(format!(
                "{}: expected {} {:?}, got {reply}",
                case.file, case.code, case.field
            ));
        }
        if reply["error"]["message"].as_str().is_none_or(str::is_empty) {
            wrong.push(format!("{}: reply without a message: {reply}", case.file));
        }
    }
    assert!(
        wrong.is_empty(),
        "{} corpus replies disagree:\n{}",
        wrong.len(),
        wrong.join("\n")
    );

    // Every case appears on upr.rejected with its subject, code, field and
    // payload (as text, lossy for invalid UTF-8, cut at 4 KiB).
    let mut records: HashMap<(String, String), Value> = HashMap::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    while records.len() < cases.len() {
        let msg = tokio::time::timeout_at(deadline, rejected.next())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "only {} of {} rejections seen on upr.rejected",
                    records.len(),
                    cases.len()
                )
            })
            .expect("subscription open");
        let record: Value = serde_json::from_slice(&msg.payload).expect("rejection record is JSON");
        let key = (
            record["subject"].as_str().unwrap_or_default().to_owned(),
            record["payload"].as_str().unwrap_or_default().to_owned(),
        );
        assert!(
            records.insert(key, record).is_none(),
            "one record per refused message"
        );
    }
    for case in &cases {
        let subject = format!("{}{}", subjects::INGEST_PREFIX, case.event_type);
        let text = payload_text(&case.payload);
        let record = records
            .get(&(subject, text))
            .unwrap_or_else(|| panic!("{}: no record on upr.rejected", case.file));
        assert_eq!(
            record["error"]["code"],
            case.code.as_str(),
            "{}: {record}",
            case.file
        );
        let want_field = case.field.as_deref().map_or(Value::Null, Value::from);
        assert_eq!(
            record["error"]["field"], want_field,
            "{}: {record}",
            case.file
        );
        assert!(
            record["received_at"]
                .as_str()
                .is_some_and(|t| t.ends_with('Z')),
            "{record}"
        );
    }

    // ... and is kept by UPR_REJECTED, while nothing reached the event log.
    let js = jetstream::new(client.clone());
    let count = |name: &'static str| {
        let js = js.clone();
        async move {
            js.get_stream(name)
                .await
                .ok()?
                .info()
                .await
                .ok()
                .map(|i| i.state.messages)
        }
    };
    let n = cases.len() as u64;
    eventually(WAIT, "UPR_REJECTED to keep every refusal", || async {
        (count(contract::REJECTED_STREAM).await? == n).then_some(())
    })
    .await;
    assert_eq!(
        count(contract::EVENTS_STREAM).await,
        Some(0),
        "no refused message is stored as an event"
    );

    for p in app.processes() {
        assert!(
            p.healthcheck().success(),
            "a service stopped answering after the corpus; log:\n{}",
            p.logs()
        );
    }
}

/// The payload text a rejection record carries: lossy UTF-8 of the first
/// 4 KiB, cut back to a character boundary (so a replacement character or
/// multi-byte character is never split).
fn payload_text(payload: &[u8]) -> String {
    let head = &payload[..payload.len().min(REJECTED_PAYLOAD_BYTES)];
    let mut text = String::from_utf8_lossy(head).into_owned();
    if text.len() > REJECTED_PAYLOAD_BYTES {
        let mut cut = REJECTED_PAYLOAD_BYTES;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
    }
    text
}

/// One row of `tests/corpus/query/expected.tsv`: a query subject, its raw
/// payload, and the code and field its refusal must carry.
#[derive(Debug, Clone)]
struct QueryCase {
    file: String,
    subject: String,
    code: String,
    field: Option<String>,
    payload: Vec<u8>,
}

/// Reads the query manifest and every file it names; no `.bin` file may be
/// left out of it.
fn query_corpus() -> Vec<QueryCase> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus/query");
    let manifest = std::fs::read_to_string(dir.join("expected.tsv")).expect("read expected.tsv");
    let cases: Vec<QueryCase> = manifest
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|line| {
            let cols: Vec<&str> = line.split('\t').collect();
            let &[file, subject, code, field] = cols.as_slice() else {
                panic!("query expected.tsv: want 4 columns: {line:?}");
            };
            QueryCase {
                file: file.to_string(),
                subject: subject.to_string(),
                code: code.to_string(),
                field: (field != "-").then(|| field.to_string()),
                payload: std::fs::read(dir.join(file)).unwrap_or_else(|e| panic!("{file}: {e}")),
            }
        })
        .collect();
    let listed: Vec<&str> = cases.iter().map(|c| c.file.as_str()).collect();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().to_string();
        if Path::new(&name).extension().is_some_and(|e| e == "bin") {
            assert!(
                listed.contains(&name.as_str()),
                "{name} is not in expected.tsv"
            );
        }
    }
    assert!(cases.len() >= 15, "the query corpus has its cases");
    cases
}

#[test]
fn the_query_parser_refuses_every_corpus_query_with_its_code_and_field() {
    use upr_projection::query::{Options, Query};
    for case in query_corpus() {
        let e = Query::parse(&case.subject)
            .and_then(|q| Options::parse(&case.payload, q))
            .err()
            .unwrap_or_else(|| panic!("{}: accepted", case.file));
        assert_eq!(
            (e.code.as_str(), e.field.as_deref()),
            (case.code.as_str(), case.field.as_deref()),
            "{}: {}",
            case.file,
            e.message
        );
    }
}

#[tokio::test]
async fn the_projection_answers_every_corpus_query_with_its_code_and_keeps_serving() {
    let app = TestApp::builder().event_log().projection().start().await;
    let client = app.client().clone();
    for case in query_corpus() {
        let reply = client
            .request(case.subject.clone(), case.payload.clone().into())
            .await
            .unwrap_or_else(|e| panic!("{}: {e}", case.file));
        let reply: Value = serde_json::from_slice(&reply.payload).unwrap();
        assert_eq!(reply["ok"], false, "{}: {reply}", case.file);
        assert_eq!(
            reply["error"]["code"],
            case.code.as_str(),
            "{}: {reply}",
            case.file
        );
        assert_eq!(
            reply["error"]["field"].as_str(),
            case.field.as_deref(),
            "{}: {reply}",
            case.file
        );
    }
    let projection = app.projection();
    assert!(projection.healthcheck().success(), "{}", projection.logs());
}
