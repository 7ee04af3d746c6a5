//! Every binary starts, answers a micro-service PING and its own
//! `healthcheck`, and stops with exit code 0 on SIGTERM.

use std::time::Duration;

use upr_nats::contract::{self, services};
use upr_tests::{NatsServer, ServiceProcess, TestApp};

#[tokio::test]
async fn each_service_answers_ping_and_healthcheck_and_exits_0_on_sigterm() {
    let mut app = TestApp::builder().all().start().await;
    let client = app.client().clone();
    for name in [services::INGEST, services::PROJECTION, services::NOTIFIER] {
        let reply = client
            .request(format!("$SRV.PING.{name}"), "".into())
            .await
            .unwrap_or_else(|e| panic!("{name} did not answer PING: {e}"));
        let pong: serde_json::Value = serde_json::from_slice(&reply.payload).unwrap();
        assert_eq!(pong["name"], name);
        assert_eq!(pong["type"], "io.nats.micro.v1.ping_response");
    }
    for name in [services::INGEST, services::PROJECTION, services::NOTIFIER] {
        let p = app.service_mut(name);
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
    let mut app = TestApp::builder().ingest().start().await;
    app.ingest_mut().kill9();
    assert!(!app.ingest().healthcheck().success());
}

#[tokio::test]
async fn a_service_started_before_nats_connects_once_nats_is_up() {
    // Not a TestApp: the service starts while the server is down.
    let mut nats = NatsServer::start();
    nats.stop();
    let ingest = ServiceProcess::start(services::INGEST, &nats.url(), &[]);
    tokio::time::sleep(Duration::from_millis(500)).await;
    nats.restart();
    ingest.wait_healthy().await;
}

#[tokio::test]
async fn only_ingest_sets_the_event_logs_dedup_window() {
    // Ingest first, the others once it is up, as in a deployment.
    let app = TestApp::builder()
        .service(services::INGEST, &[("UPR_DEDUP_WINDOW", "2h")])
        .start()
        .await;
    for name in [services::PROJECTION, services::NOTIFIER] {
        let _p = app.spawn(name, &[]).await;
    }
    let info = app
        .js()
        .get_stream(contract::EVENTS_STREAM)
        .await
        .unwrap()
        .get_info()
        .await
        .unwrap();
    assert_eq!(info.config.duplicate_window, Duration::from_secs(7200));
}

#[tokio::test]
async fn every_binary_answers_help_and_version_and_refuses_a_bad_argument_without_starting() {
    // Each binary with its commands and a variable only it reads, with its default.
    let binaries: [(&str, &[&str], &str); 4] = [
        (
            services::INGEST,
            &["import", "healthcheck"],
            "UPR_DEDUP_WINDOW  [default: 1h]",
        ),
        (
            services::PROJECTION,
            &["rebuild", "healthcheck"],
            "UPR_PROJECTION_BATCH  [default: 10000]",
        ),
        (
            services::NOTIFIER,
            &["healthcheck"],
            "UPR_READER_CONSUMERS  [default: reader]",
        ),
        (
            services::GATEWAY,
            &["healthcheck"],
            "UPR_HTTP_ADDR  [default: 127.0.0.1:8080]",
        ),
    ];
    for (name, commands, own_setting) in binaries {
        let run = |args: &[&str]| {
            let mut child = std::process::Command::new(upr_tests::bin_path(name))
                .args(args)
                // Nothing listens here: a binary that started would retry
                // until killed below, and fail the exit-code checks.
                .env("NATS_URL", "nats://127.0.0.1:9")
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .expect("the binary runs");
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while child.try_wait().expect("wait").is_none() {
                if std::time::Instant::now() > deadline {
                    let _ = child.kill();
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            child.wait_with_output().expect("output")
        };
        let help = run(&["--help"]);
        let text = String::from_utf8_lossy(&help.stdout);
        assert_eq!(help.status.code(), Some(0), "{name} --help: {text}");
        assert!(text.contains(&format!("Usage: {name}")), "{name}: {text}");
        for command in commands {
            assert!(
                text.contains(&format!("\n  {command} ")),
                "{name} {command}: {text}"
            );
        }
        assert!(
            text.contains("NATS_URL  [default: nats://127.0.0.1:4222]"),
            "{name}: {text}"
        );
        assert!(text.contains(own_setting), "{name}: {text}");

        let version = run(&["--version"]);
        assert_eq!(version.status.code(), Some(0), "{name} --version");
        assert_eq!(
            String::from_utf8_lossy(&version.stdout).trim(),
            format!("{name} {}", env!("CARGO_PKG_VERSION")),
        );

        for bad in [&["--hlep"][..], &["import-all"], &["healthcheck", "now"]] {
            let typo = run(bad);
            let err = String::from_utf8_lossy(&typo.stderr);
            assert_eq!(typo.status.code(), Some(2), "{name} {bad:?}: {err}");
            assert!(err.starts_with("error: "), "{name} {bad:?}: {err}");
            assert!(err.contains(bad[bad.len() - 1]), "{name} {bad:?}: {err}");
            assert!(typo.stdout.is_empty(), "{name} {bad:?} started");
        }
    }
}

#[test]
fn upr_keys_answers_help_and_version_and_refuses_a_bad_argument() {
    let dir = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        std::process::Command::new(upr_tests::bin_path("upr-keys"))
            .args(args)
            // A command that ran would write its keys here, not in the tree.
            .current_dir(dir.path())
            .output()
            .expect("upr-keys runs")
    };
    let help = run(&["--help"]);
    let text = String::from_utf8_lossy(&help.stdout);
    assert_eq!(help.status.code(), Some(0), "{text}");
    for command in ["init", "rotate", "routes"] {
        assert!(
            text.contains(&format!("\n  {command} ")),
            "{command}: {text}"
        );
    }
    let version = run(&["--version"]);
    assert_eq!(
        String::from_utf8_lossy(&version.stdout).trim(),
        format!("upr-keys {}", env!("CARGO_PKG_VERSION")),
    );
    for bad in [
        &["--hlep"][..],
        &[],
        &["rotate", "secrets"],
        &["init", "a", "b"],
    ] {
        let out = run(bad);
        assert_eq!(out.status.code(), Some(2), "{bad:?}");
        assert!(out.stdout.is_empty(), "{bad:?} ran");
    }
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        0,
        "a refused command wrote something"
    );
}

/// Tests run in parallel and choose free ports before the server binds them:
/// a port another process took meanwhile is chosen again rather than failing
/// the test that happened to start then.
#[tokio::test]
async fn a_port_taken_before_the_server_binds_it_is_chosen_again() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = taken.local_addr().expect("addr").port();
    let nats = NatsServer::start_with(None, vec!["-m".into(), port.to_string()]);
    let monitor = nats.monitor_port().expect("a monitoring port");
    assert_ne!(monitor, port, "the taken port was kept");
    let client = nats.client().await;
    client.flush().await.expect("the server answers");
}

#[tokio::test]
async fn every_service_stops_on_sigterm_within_its_grace_period_while_nats_answers_nothing() {
    // What compose grants (stop_grace_period: 30s) with a margin: a service
    // whose consumer reads, acks and drain all hang must still exit, not
    // wait for SIGKILL (the redteam saw a projection killed, exit 137).
    const WITHIN: Duration = Duration::from_secs(25);
    let mut app = TestApp::builder().all().start().await;
    app.nats().freeze();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut stopped = Vec::new();
    for name in [services::INGEST, services::PROJECTION, services::NOTIFIER] {
        let started = std::time::Instant::now();
        let p = app.service_mut(name);
        let status = p.terminate(WITHIN);
        stopped.push((name, started.elapsed(), status, p.logs()));
    }
    app.nats().thaw();
    for (name, took, status, logs) in stopped {
        assert!(
            took < WITHIN && status.code().is_some(),
            "{name} took {took:?} ({status:?}) to stop on SIGTERM while NATS hung:\n{logs}"
        );
    }
}
