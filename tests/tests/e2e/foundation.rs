//! Every binary starts, answers a micro-service PING and its own
//! `healthcheck`, and stops with exit code 0 on SIGTERM.

use std::time::Duration;

use upr_shared::contract::{self, services};
use upr_tests::{NatsServer, ServiceProcess};

#[tokio::test]
async fn each_service_answers_ping_and_healthcheck_and_exits_0_on_sigterm() {
    let nats = NatsServer::start();
    let client = nats.client().await;
    let mut processes: Vec<ServiceProcess> =
        [services::INGEST, services::PROJECTION, services::NOTIFIER]
            .into_iter()
            .map(|name| ServiceProcess::start(name, &nats.url(), &[]))
            .collect();
    for p in &processes {
        p.wait_healthy().await;
    }
    for name in [services::INGEST, services::PROJECTION, services::NOTIFIER] {
        let reply = client
            .request(format!("$SRV.PING.{name}"), "".into())
            .await
            .unwrap_or_else(|e| panic!("{name} did not answer PING: {e}"));
        let pong: serde_json::Value = serde_json::from_slice(&reply.payload).unwrap();
        assert_eq!(pong["name"], name);
        assert_eq!(pong["type"], "io.nats.micro.v1.ping_response");
    }
    for p in &mut processes {
        let status = p.terminate(Duration::from_secs(10));
        assert!(
            status.success(),
            "exit status {status:?}; log:\n{}",
            p.logs()
        );
    }
}

#[tokio::test]
async fn healthcheck_fails_when_the_service_is_down() {
    let nats = NatsServer::start();
    let mut ingest = ServiceProcess::start(services::INGEST, &nats.url(), &[]);
    ingest.wait_healthy().await;
    ingest.kill9();
    assert!(!ingest.healthcheck().success());
}

#[tokio::test]
async fn a_service_started_before_nats_connects_once_nats_is_up() {
    let mut nats = NatsServer::start();
    nats.stop();
    let ingest = ServiceProcess::start(services::INGEST, &nats.url(), &[]);
    tokio::time::sleep(Duration::from_millis(500)).await;
    nats.restart();
    ingest.wait_healthy().await;
}

#[tokio::test]
async fn only_ingest_sets_the_event_logs_dedup_window() {
    let nats = NatsServer::start();
    let js = async_nats::jetstream::new(nats.client().await);
    let ingest =
        ServiceProcess::start(services::INGEST, &nats.url(), &[("UPR_DEDUP_WINDOW", "2h")]);
    ingest.wait_healthy().await;
    for name in [services::PROJECTION, services::NOTIFIER] {
        let p = ServiceProcess::start(name, &nats.url(), &[]);
        p.wait_healthy().await;
    }
    let info = js
        .get_stream(contract::EVENTS_STREAM)
        .await
        .unwrap()
        .get_info()
        .await
        .unwrap();
    assert_eq!(info.config.duplicate_window, Duration::from_secs(7200));
}

#[tokio::test]
async fn every_binary_answers_help_and_refuses_an_unknown_command_without_starting() {
    for name in [services::INGEST, services::PROJECTION, services::NOTIFIER] {
        let run = |args: &[&str]| {
            std::process::Command::new(upr_tests::bin_path(name))
                .args(args)
                // Nothing listens here: a binary that started would not exit.
                .env("NATS_URL", "nats://127.0.0.1:9")
                .output()
                .expect("the binary runs")
        };
        let help = run(&["--help"]);
        let text = String::from_utf8_lossy(&help.stdout);
        assert!(help.status.success(), "{name} --help");
        assert!(
            text.starts_with(&format!("usage: {name} [")),
            "{name}: {text}"
        );
        assert!(text.contains("healthcheck"), "{name}: {text}");
        let typo = run(&["--hlep"]);
        assert_eq!(typo.status.code(), Some(1), "{name} --hlep");
        let err = String::from_utf8_lossy(&typo.stderr);
        assert!(err.contains("unknown command \"--hlep\""), "{name}: {err}");
        assert!(err.contains(&format!("usage: {name}")), "{name}: {err}");
    }
}
