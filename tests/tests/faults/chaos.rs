//! The chaos: one process at a time, nats-server included, is killed with
//! SIGKILL at a seeded moment, kept down a seeded while, restarted on the
//! same port and store, and waited for until it answers again. Outages are
//! written down because the reminder checks must know when the notifier or
//! nats-server was away.

use std::{
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use rand::{RngExt, rngs::StdRng};
use upr_shared::contract::{self, services};
use upr_tests::{NatsServer, ServiceProcess};

use crate::{INGEST_REPLICAS, LEADS, NOTIFIER_REPLICAS, now_ms};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Target {
    Ingest(usize),
    Projection,
    Notifier(usize),
    Nats,
}

impl Target {
    pub(crate) fn label(&self) -> &'static str {
        match self {
            Target::Ingest(_) => "ingest",
            Target::Projection => "projection",
            Target::Notifier(_) => "notifier",
            Target::Nats => "nats-server",
        }
    }
}

/// One outage: from the kill until everything answered its healthcheck again.
#[derive(Debug, Clone)]
pub(crate) struct Outage {
    pub(crate) target: Target,
    pub(crate) down_ms: i64,
    pub(crate) up_ms: i64,
}

pub(crate) struct System {
    pub(crate) nats: NatsServer,
    pub(crate) ingest: Vec<ServiceProcess>,
    pub(crate) projection: ServiceProcess,
    pub(crate) notifier: Vec<ServiceProcess>,
}

impl System {
    /// nats-server, the ingest replicas, one projection and the notifier
    /// replicas (with the run's short reminder leads), all answering.
    pub(crate) async fn start() -> Self {
        let nats = NatsServer::start();
        let url = nats.url();
        let start = |name: &str, env: &[(&str, &str)]| ServiceProcess::start(name, &url, env);
        let ingest: Vec<_> = (0..INGEST_REPLICAS)
            .map(|_| start(services::INGEST, &[]))
            .collect();
        let projection = start(services::PROJECTION, &[]);
        let notifier: Vec<_> = (0..NOTIFIER_REPLICAS)
            .map(|_| {
                start(
                    services::NOTIFIER,
                    &[(contract::env::UPR_REMINDER_LEADS, LEADS)],
                )
            })
            .collect();
        let system = System {
            nats,
            ingest,
            projection,
            notifier,
        };
        for p in system.services() {
            p.wait_healthy().await;
        }
        system
    }

    pub(crate) fn services(&self) -> impl Iterator<Item = &ServiceProcess> {
        self.ingest
            .iter()
            .chain([&self.projection])
            .chain(self.notifier.iter())
    }

    /// Blocks until every service answers `healthcheck`, or panics with the
    /// log of the one that does not.
    pub(crate) fn wait_all_healthy(&self, within: Duration) {
        for p in self.services() {
            wait_healthy(p, within);
        }
    }

    /// The notifiers' logs, without colour codes, to quote a reminder's lines.
    pub(crate) fn notifier_logs(&self) -> String {
        self.notifier
            .iter()
            .map(|p| strip_ansi(&p.logs()))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Keeps every log of the run in `dir` for the diagnosis of a failure:
    /// the processes' own directories vanish with them.
    pub(crate) fn keep_logs(&self, outages: &[Outage], dir: &Path) {
        let _ = std::fs::create_dir_all(dir);
        let named = self
            .ingest
            .iter()
            .enumerate()
            .map(|(i, p)| (format!("ingest-{i}"), p))
            .chain([("projection".to_owned(), &self.projection)])
            .chain(
                self.notifier
                    .iter()
                    .enumerate()
                    .map(|(i, p)| (format!("notifier-{i}"), p)),
            );
        for (name, p) in named {
            let _ = std::fs::write(dir.join(format!("{name}.log")), strip_ansi(&p.logs()));
        }
        let _ = std::fs::copy(
            self.nats.store_dir().join("nats-server.log"),
            dir.join("nats-server.log"),
        );
        let outage_lines: Vec<String> = outages
            .iter()
            .map(|o| format!("{:?}\t{}\t{}", o.target, o.down_ms, o.up_ms))
            .collect();
        let _ = std::fs::write(dir.join("outages.tsv"), outage_lines.join("\n"));
    }
}

/// The log text without terminal colour codes.
fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Blocks until `p` answers `healthcheck`, or panics with its log.
fn wait_healthy(p: &ServiceProcess, within: Duration) {
    let deadline = Instant::now() + within;
    while !p.healthcheck().success() {
        assert!(
            Instant::now() < deadline,
            "a service did not recover within {within:?}; its log:\n{}",
            p.logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn chaos(mut system: System, mut rng: StdRng, stop: Arc<AtomicBool>) -> (System, Vec<Outage>) {
    let mut outages = Vec::new();
    let nap = |ms: u64, stop: &AtomicBool| {
        let until = Instant::now() + Duration::from_millis(ms);
        while Instant::now() < until && !stop.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    loop {
        nap(rng.random_range(1000..=3000), &stop);
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let target = match rng.random_range(0..100) {
            0..30 => Target::Ingest(rng.random_range(0..INGEST_REPLICAS)),
            30..50 => Target::Projection,
            50..75 => Target::Notifier(rng.random_range(0..NOTIFIER_REPLICAS)),
            _ => Target::Nats,
        };
        let downtime = rng.random_range(0..=1500);
        let down_ms = now_ms();
        match target {
            Target::Nats => {
                system.nats.kill();
                std::thread::sleep(Duration::from_millis(downtime));
                system.nats.restart();
            }
            _ => {
                let p = match target {
                    Target::Ingest(i) => &mut system.ingest[i],
                    Target::Projection => &mut system.projection,
                    Target::Notifier(i) => &mut system.notifier[i],
                    Target::Nats => unreachable!(),
                };
                p.kill9();
                std::thread::sleep(Duration::from_millis(downtime));
                p.restart();
            }
        }
        match target {
            Target::Nats => system.wait_all_healthy(Duration::from_secs(60)),
            Target::Ingest(i) => wait_healthy(&system.ingest[i], Duration::from_secs(60)),
            Target::Projection => wait_healthy(&system.projection, Duration::from_secs(60)),
            Target::Notifier(i) => wait_healthy(&system.notifier[i], Duration::from_secs(60)),
        }
        outages.push(Outage {
            target,
            down_ms,
            up_ms: now_ms(),
        });
    }
    (system, outages)
}

/// Stops the chaos thread and gets the processes back even when the test
/// panics, so no child outlives the test.
pub(crate) struct ChaosGuard {
    stop: Arc<AtomicBool>,
    handle: Option<std::thread::JoinHandle<(System, Vec<Outage>)>>,
}

impl ChaosGuard {
    /// Starts killing and restarting the processes of `system` on a thread
    /// of its own (the waits for health are blocking).
    pub(crate) fn start(system: System, rng: StdRng) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let handle = std::thread::spawn({
            let stop = stop.clone();
            move || chaos(system, rng, stop)
        });
        Self {
            stop,
            handle: Some(handle),
        }
    }

    /// Stops the chaos; every process is up again when this returns.
    pub(crate) fn finish(mut self) -> (System, Vec<Outage>) {
        self.stop.store(true, Ordering::Relaxed);
        let handle = self.handle.take().expect("joined once");
        match handle.join() {
            Ok(v) => v,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }
}

impl Drop for ChaosGuard {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}
