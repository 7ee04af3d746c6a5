//! The README's walkthrough works as written: every `nats req` / `nats pub`
//! line between its walkthrough markers is sent, in order, exactly as the
//! NATS CLI would send it, as the user its `--context` names, to the services
//! running with the shipped `deploy/nats/nats.conf`, and every query line
//! answers `ok`. Its configuration table says what `--help` says.

use std::time::Duration;

use serde_json::Value;
use upr_shared::contract::services;
use upr_tests::{NatsServer, ServiceProcess, eventually};

/// One `nats [--context X] req|pub SUBJECT 'PAYLOAD'` line of the README.
#[derive(Debug)]
struct CliLine {
    /// The `--context` it names (`upr-pub`, `upr-read`).
    context: Option<String>,
    request: bool,
    subject: String,
    payload: String,
}

/// The CLI lines between `<!-- {marker}:start` and `<!-- {marker}:end -->`.
fn cli_lines(readme: &str, marker: &str) -> Vec<CliLine> {
    let start = readme
        .find(&format!("<!-- {marker}:start"))
        .unwrap_or_else(|| panic!("README has no {marker}:start marker"));
    let end = readme[start..]
        .find(&format!("<!-- {marker}:end -->"))
        .unwrap_or_else(|| panic!("README has no {marker}:end marker"));
    readme[start..start + end]
        .lines()
        .filter(|l| l.starts_with("nats "))
        .map(parse_cli_line)
        .collect()
}

fn parse_cli_line(line: &str) -> CliLine {
    let mut words = line.split_whitespace().skip(1);
    let mut verb = words.next().expect("verb");
    let mut context = None;
    if verb == "--context" {
        context = words.next().map(str::to_string);
        verb = words.next().expect("verb after --context");
    }
    let subject = words.next().expect("subject").to_string();
    let quoted = line
        .split_once('\'')
        .map(|(_, rest)| rest)
        .expect("a quoted payload");
    let payload = quoted
        .strip_suffix('\'')
        .expect("payload ends the line")
        .to_string();
    CliLine {
        context,
        request: match verb {
            "req" => true,
            "pub" => false,
            other => panic!("unexpected nats verb {other} in {line}"),
        },
        subject,
        payload,
    }
}

#[tokio::test]
async fn the_readme_walkthrough_works_as_written() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap();
    let intake = cli_lines(&readme, "walkthrough");
    let queries = cli_lines(&readme, "walkthrough-queries");
    assert!(
        intake.len() >= 5 && queries.len() >= 4,
        "walkthrough lines: {intake:?} {queries:?}"
    );

    let nats = NatsServer::start_secured();
    let key = |user: &str| nats.seed_file(user).display().to_string();
    let ingest = ServiceProcess::start(
        services::INGEST,
        &nats.url(),
        &[("NATS_NKEY", &key("ingest"))],
    );
    let projection = ServiceProcess::start(
        services::PROJECTION,
        &nats.url(),
        &[("NATS_NKEY", &key("projection"))],
    );
    ingest.wait_healthy().await;
    projection.wait_healthy().await;
    // The README's two contexts: `upr-pub` is the publisher, `upr-read` the reader.
    let publisher = nats.client_as("publisher").await;
    let reader = nats.client_as("reader").await;
    let as_user = |line: &CliLine| match line.context.as_deref() {
        Some("upr-pub") => &publisher,
        Some("upr-read") => &reader,
        other => panic!("{line:?}: a context the README defines, not {other:?}"),
    };

    let mut last_seq = 0;
    for line in &intake {
        let client = as_user(line);
        if line.request {
            let reply = client
                .request(line.subject.clone(), line.payload.clone().into())
                .await
                .unwrap_or_else(|e| panic!("{line:?}: {e}"));
            let reply: Value = serde_json::from_slice(&reply.payload).unwrap();
            assert_eq!(reply["ok"], true, "{line:?} answered {reply}");
            last_seq = reply["seq"].as_u64().unwrap();
        } else {
            client
                .publish(line.subject.clone(), line.payload.clone().into())
                .await
                .unwrap();
            client.flush().await.unwrap();
        }
    }
    // The plain publish at the end is stored too.
    let js = async_nats::jetstream::new(nats.client_as("admin").await);
    eventually(
        Duration::from_secs(10),
        "every walkthrough event stored",
        || {
            let js = js.clone();
            let n = intake.len() as u64;
            async move {
                let info = js
                    .get_stream("UPR_EVENTS")
                    .await
                    .ok()?
                    .get_info()
                    .await
                    .ok()?;
                (info.state.messages == n).then_some(())
            }
        },
    )
    .await;

    // Resending the first line is answered as a duplicate, as the README says.
    let first = &intake[0];
    let client = as_user(first);
    let again = client
        .request(first.subject.clone(), first.payload.clone().into())
        .await
        .unwrap();
    let again: Value = serde_json::from_slice(&again.payload).unwrap();
    assert_eq!(
        (again["duplicate"].as_bool(), again["seq"].as_u64()),
        (Some(true), Some(1))
    );

    // The README's example mistake is refused with the field it names.
    let mistake = readme
        .lines()
        .filter(|l| l.contains("2025-02-30"))
        .find_map(|l| {
            l.find("nats --context upr-pub req upr.ingest.review_held '")
                .map(|i| &l[i..])
        })
        .map(|l| l.split_once('`').map_or(l, |(cmd, _)| cmd))
        .map(parse_cli_line)
        .expect("README shows the 2025-02-30 mistake");
    let refused = client
        .request(mistake.subject, mistake.payload.into())
        .await
        .unwrap();
    let refused: Value = serde_json::from_slice(&refused.payload).unwrap();
    assert_eq!(refused["error"]["code"], "invalid_field", "{refused}");
    assert_eq!(refused["error"]["field"], "held_on", "{refused}");

    for line in &queries {
        assert!(line.request, "{line:?}");
        let client = as_user(line);
        let payload = if line.payload.is_empty() {
            format!("{{\"min_seq\":{last_seq}}}")
        } else {
            line.payload.clone()
        };
        let reply = client
            .request(line.subject.clone(), payload.into())
            .await
            .unwrap();
        let reply: Value = serde_json::from_slice(&reply.payload).unwrap();
        assert_eq!(reply["ok"], true, "{line:?} answered {reply}");
    }
    let review = reader
        .request("upr.query.review.KZ.48", "".into())
        .await
        .unwrap();
    let review: Value = serde_json::from_slice(&review.payload).unwrap();
    assert_eq!(review["review"]["status"], "reported");
    assert_eq!(
        review["review"]["side_events"].as_array().map(Vec::len),
        Some(1)
    );
}

#[test]
fn the_configuration_table_gives_the_defaults_the_binaries_apply() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md"))
        .expect("README.md");
    let section = readme
        .split("\n### Configuration\n")
        .nth(1)
        .and_then(|rest| rest.split("\n### ").next())
        .expect("README has a Configuration section");
    let services = [services::INGEST, services::PROJECTION, services::NOTIFIER];
    let settings = upr_shared::config::SETTINGS
        .iter()
        .filter(|s| s.used_by.iter().any(|b| services.contains(b)));
    for s in settings {
        let row = section
            .lines()
            .find(|l| {
                l.starts_with('|')
                    && l.split('|')
                        .nth(1)
                        .is_some_and(|first| first.contains(&format!("`{}`", s.var)))
            })
            .unwrap_or_else(|| panic!("README's configuration table has no row for {}", s.var));
        if !s.default.is_empty() && s.var != upr_shared::contract::env::UPR_HEALTH_FILE {
            let default = row.split('|').nth(3).unwrap_or_default();
            assert!(
                default.contains(s.default),
                "README gives {} the default {default:?}; the binaries apply {}",
                s.var,
                s.default
            );
        }
    }
}
