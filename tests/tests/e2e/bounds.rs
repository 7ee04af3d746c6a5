//! Nothing a client or an operator sends can stall a service, exhaust it or
//! knock it off NATS: bad configuration, oversized or hostile input.

use std::time::Duration;

use upr_shared::contract::services;
use upr_tests::{NatsServer, ServiceProcess};

/// Every variable a service reads, with values that must stop start-up with
/// a message naming the variable (exit 1), never a panic or a silent default.
#[tokio::test]
async fn every_bad_setting_stops_start_up_naming_its_variable() {
    let nats = NatsServer::start();
    let common = [
        ("NATS_URL", "nats://127.0.0.1:4222,nats://[::1"),
        ("NATS_NKEY", "/no/such/seed.nk"),
        ("NATS_CREDS", "/no/such.creds"),
        ("NATS_TLS_CA", "/no/such/ca.pem"),
        ("RUST_LOG", "info,[=é"),
        ("UPR_LOG_FORMAT", "yaml"),
        ("UPR_REPLICAS", "3é"),
        ("UPR_REPLICAS", "0"),
    ];
    let own: [(&str, &[(&str, &str)]); 3] = [
        (
            services::INGEST,
            &[
                ("UPR_DEDUP_WINDOW", "1é"),
                ("UPR_DEDUP_WINDOW", "0s"),
                ("UPR_INGEST_WORKERS", "-1"),
                ("UPR_INGEST_CACHE", "10000000000000000000000"),
            ],
        ),
        (
            services::PROJECTION,
            &[
                ("UPR_PROJECTION_BATCH", "1e4"),
                ("UPR_PROJECTION_CACHE_MB", "é"),
            ],
        ),
        (
            services::NOTIFIER,
            &[
                ("UPR_REMINDER_LEADS", "30d,7é"),
                ("UPR_READER_CONSUMERS", "a.b"),
            ],
        ),
    ];
    let mut processes = Vec::new();
    for (binary, specific) in own {
        for (var, bad) in common.iter().chain(specific.iter()) {
            let mut env = vec![(*var, *bad)];
            if *var == "NATS_URL" {
                env.clear();
            }
            let mut p = ServiceProcess::start(binary, &nats.url(), &env);
            if *var == "NATS_URL" {
                // The harness sets NATS_URL itself; start again with the bad one.
                p.terminate(Duration::from_secs(5));
                p = ServiceProcess::start(binary, bad, &[]);
            }
            processes.push((binary, *var, *bad, p));
        }
    }
    for (binary, var, bad, mut p) in processes {
        let status = p.wait_exit(Duration::from_secs(15));
        let logs = p.logs();
        assert_eq!(
            status.code(),
            Some(1),
            "{binary} with {var}={bad:?}: exit {status:?}\n{logs}"
        );
        assert!(
            logs.contains(&format!("{var}: ")),
            "{binary} with {var}={bad:?} names the variable:\n{logs}"
        );
        assert!(
            !logs.contains("panicked"),
            "{binary} with {var}={bad:?} panicked:\n{logs}"
        );
    }
}
