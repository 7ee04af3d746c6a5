//! The chaos: one process at a time, nats-server included, is killed with
//! SIGKILL at a seeded moment, kept down a seeded while, restarted on the
//! same port and store, and waited for until it answers again. Outages are
//! written down because the reminder checks must know when the notifier or
//! nats-server was away.

use std::{
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use rand::{RngExt, rngs::StdRng};
use upr_nats::contract::{self, services};
use upr_tests::{NatsCluster, NatsServer, ServiceProcess};

use crate::{EDITOR, LEADS, Layout, PARTIES, now_ms};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Target {
    Ingest(usize),
    Projection(usize),
    Notifier(usize),
    /// A nats-server node (the only one, or one of the cluster).
    Nats(usize),
}

impl Target {
    pub(crate) fn label(&self) -> &'static str {
        match self {
            Target::Ingest(_) => "ingest",
            Target::Projection(_) => "projection",
            Target::Notifier(_) => "notifier",
            Target::Nats(_) => "nats-server",
        }
    }
}

/// One nats-server, or a cluster of them.
pub(crate) enum Nats {
    Single(NatsServer),
    Cluster(NatsCluster),
}

impl Nats {
    /// The nkey seed file of `user` (a service, `admin` or a party).
    pub(crate) fn seed_file(&self, user: &str) -> PathBuf {
        match self {
            Nats::Single(n) => n.seed_file(user),
            Nats::Cluster(c) => c.seed_file(user),
        }
    }

    /// What `NATS_URL` takes: every node, comma-separated.
    pub(crate) fn url(&self) -> String {
        match self {
            Nats::Single(n) => n.url(),
            Nats::Cluster(c) => c.urls(),
        }
    }

    /// Every node's address, for a client that fails over between them.
    pub(crate) fn addrs(&self) -> Vec<async_nats::ServerAddr> {
        self.url()
            .split(',')
            .map(|u| u.parse().expect("server url"))
            .collect()
    }

    fn node(&mut self, i: usize) -> &mut NatsServer {
        match self {
            Nats::Single(n) => n,
            Nats::Cluster(c) => c.node_mut(i),
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
    pub(crate) layout: Layout,
    pub(crate) nats: Nats,
    pub(crate) ingest: Vec<ServiceProcess>,
    pub(crate) projection: Vec<ServiceProcess>,
    pub(crate) notifier: Vec<ServiceProcess>,
}

impl System {
    /// nats-server (one, or a cluster with every stream and bucket in
    /// `layout.nodes` replicas) with the shipped configuration and the
    /// run's [`PARTIES`] registered, then the services in `layout`'s
    /// numbers, each as its own user (ingest with [`EDITOR`] in
    /// `UPR_EDITORS`, the notifiers with the run's short reminder leads),
    /// all answering.
    pub(crate) async fn start(layout: Layout) -> Self {
        let parties: Vec<(&str, &str)> = PARTIES
            .iter()
            .filter(|name| **name != "publisher")
            .map(|name| ("publisher", *name))
            .collect();
        let nats = if layout.nodes == 1 {
            Nats::Single(NatsServer::start_secured_with_parties(&parties))
        } else {
            Nats::Cluster(NatsCluster::start_secured_with_parties(layout.nodes, &parties).await)
        };
        let url = nats.url();
        let replicas = layout.nodes.to_string();
        let start = |name: &str, user: &str, extra: &[(&str, &str)]| {
            let seed = nats.seed_file(user).display().to_string();
            let mut env = vec![
                (contract::env::UPR_REPLICAS, replicas.as_str()),
                (contract::env::NATS_NKEY, seed.as_str()),
            ];
            env.extend_from_slice(extra);
            ServiceProcess::start(name, &url, &env)
        };
        let ingest: Vec<_> = (0..layout.ingest)
            .map(|_| {
                start(
                    services::INGEST,
                    "ingest",
                    &[(contract::env::UPR_EDITORS, EDITOR)],
                )
            })
            .collect();
        // One at a time: the first takes the lease, the others stand by.
        let mut projection = Vec::new();
        for _ in 0..layout.projections {
            let p = start(services::PROJECTION, "projection", &[]);
            p.wait_healthy().await;
            projection.push(p);
        }
        let notifier: Vec<_> = (0..layout.notifiers)
            .map(|_| {
                start(
                    services::NOTIFIER,
                    "notifier",
                    &[(contract::env::UPR_REMINDER_LEADS, LEADS)],
                )
            })
            .collect();
        let system = System {
            layout,
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
            .chain(self.projection.iter())
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
            .chain(
                self.projection
                    .iter()
                    .enumerate()
                    .map(|(i, p)| (format!("projection-{i}"), p)),
            )
            .chain(
                self.notifier
                    .iter()
                    .enumerate()
                    .map(|(i, p)| (format!("notifier-{i}"), p)),
            );
        for (name, p) in named {
            let _ = std::fs::write(dir.join(format!("{name}.log")), strip_ansi(&p.logs()));
        }
        for i in 0..self.layout.nodes {
            if let Nats::Cluster(c) = &self.nats {
                let _ = std::fs::copy(
                    c.node(i).store_dir().join("nats-server.log"),
                    dir.join(format!("nats-server-{i}.log")),
                );
            } else if let Nats::Single(n) = &self.nats {
                let _ = std::fs::copy(
                    n.store_dir().join("nats-server.log"),
                    dir.join("nats-server.log"),
                );
            }
        }
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

fn chaos(mut system: System, mut rng: StdRng, stop: &AtomicBool) -> (System, Vec<Outage>) {
    let mut outages = Vec::new();
    let nap = |ms: u64, stop: &AtomicBool| {
        let until = Instant::now() + Duration::from_millis(ms);
        while Instant::now() < until && !stop.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    loop {
        nap(rng.random_range(1000..=3000), stop);
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let layout = system.layout;
        // On a cluster, every kind of failure happens at least once, first:
        // a node, the active projection (the first one started), a
        // notifier and an ingest replica; then seeded choices.
        let must = [
            Target::Nats(rng.random_range(0..layout.nodes)),
            Target::Projection(0),
            Target::Notifier(0),
            Target::Ingest(0),
        ];
        let target = if layout.nodes > 1 && outages.len() < must.len() {
            must[outages.len()]
        } else {
            match rng.random_range(0..100) {
                0..30 => Target::Ingest(rng.random_range(0..layout.ingest)),
                30..50 => Target::Projection(rng.random_range(0..layout.projections)),
                50..75 => Target::Notifier(rng.random_range(0..layout.notifiers)),
                _ => Target::Nats(rng.random_range(0..layout.nodes)),
            }
        };
        let downtime = rng.random_range(0..=1500);
        let down_ms = now_ms();
        match target {
            Target::Nats(i) => {
                system.nats.node(i).kill();
                std::thread::sleep(Duration::from_millis(downtime));
                system.nats.node(i).restart();
            }
            _ => {
                let p = match target {
                    Target::Ingest(i) => &mut system.ingest[i],
                    Target::Projection(i) => &mut system.projection[i],
                    Target::Notifier(i) => &mut system.notifier[i],
                    Target::Nats(_) => unreachable!(),
                };
                p.kill9();
                std::thread::sleep(Duration::from_millis(downtime));
                p.restart();
            }
        }
        match target {
            Target::Nats(_) => system.wait_all_healthy(Duration::from_secs(60)),
            Target::Ingest(i) => wait_healthy(&system.ingest[i], Duration::from_secs(60)),
            Target::Projection(i) => wait_healthy(&system.projection[i], Duration::from_secs(60)),
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
            move || chaos(system, rng, &stop)
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
