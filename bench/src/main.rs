//! `upr-bench`: measures the UPR Tracker services against raw JetStream on
//! one machine, with its own nats-server (free loopback port, fresh store)
//! and its own service processes.
//!
//! Parts: 1 ingest against a raw publisher; 2 projection rebuild against a
//! raw pull consumer; 3 end-to-end latency at a steady rate; 4 reminder
//! timing; 5 failover; 6 ingest on a 3-node cluster; 7 reads through the
//! HTTP gateway against a direct KV get; 8 the gateway's live notifications
//! (event streams, webhooks); 9 the notifier planner's lag behind ingest.
//! Peak memory and the scaling curves are taken within those parts. Writes
//! `latest.json`, `README.md` and `chart.svg` to `--out` (default
//! `docs/benchmarks`; `--quick` writes to a temporary directory unless
//! `--out` is given).
//!
//! Exit status: 0 when every part ran and checked out (all events stored,
//! all reminders received, ...), 1 when a part failed, 2 on bad arguments.
//! Goals are reported, never enforced: a missed goal does not fail the run.

mod cluster;
mod drive;
mod failover;
mod fixture;
mod gateway;
mod ingest;
mod latency;
mod live;
mod part;
mod planner;
mod projection;
mod reminders;
mod report;
mod stats;
mod system;
mod workload;

use std::{path::PathBuf, process::ExitCode, time::Duration};

use clap::{Parser, builder::PossibleValuesParser};
use serde_json::json;
use upr_domain::Timestamp;
use upr_nats::config;

use crate::{
    part::{Part, say},
    report::{PartReport, Report},
};

/// How big each part is.
#[derive(Debug, Clone)]
pub struct Sizes {
    /// Repetitions of each figure.
    pub reps: usize,
    /// Events per ingest/raw run.
    pub ingest_events: usize,
    /// Reviews in flight during throughput runs (both sides).
    pub in_flight: usize,
    /// Client connections during throughput runs (both sides).
    pub connections: usize,
    /// Ingest replicas for the scaling curve (empty: skipped).
    pub replicas: Vec<usize>,
    /// Ingest replicas measured on the 3-node cluster (empty: skipped).
    pub cluster_replicas: Vec<usize>,
    /// Stream length of part 2.
    pub projection_events: u64,
    /// Stream lengths measured (the length curve); the figures against the
    /// raw consumer are taken at `projection_events`.
    pub stream_lengths: Vec<u64>,
    /// Longest a rebuild may take.
    pub rebuild_timeout: Duration,
    /// Events per second in part 3.
    pub latency_rate: u32,
    /// A second, higher rate for the ingest reply's percentiles (`None`: skipped).
    pub latency_high_rate: Option<u32>,
    /// Events per latency run.
    pub latency_events: usize,
    /// Reminders per run in part 4.
    pub reminders: usize,
    /// Window their due times are spread over.
    pub reminder_spread: Duration,
    /// Reviews scheduled far ahead before part 4's runs.
    pub background_reviews: usize,
    /// Longest the notifier may take to plan the background.
    pub plan_timeout: Duration,
    /// Requests per second of part 7's steady runs (each path).
    pub gateway_rate: u32,
    /// How long each of those runs lasts.
    pub gateway_run: Duration,
    /// Clients of part 7's closed-loop runs (gateway and KV get alike).
    pub gateway_clients: usize,
    /// How long each closed-loop run lasts.
    pub gateway_closed_run: Duration,
    /// Reviews stored before part 7 reads them.
    pub gateway_reviews: usize,
    /// Event streams held open in part 8.
    pub sse_clients: usize,
    /// Notifications per fan-out run in part 8.
    pub sse_notices: usize,
    /// Notifications per webhook run in part 8.
    pub webhook_notices: usize,
}

impl Sizes {
    fn full() -> Self {
        Self {
            reps: 3,
            ingest_events: 50_000,
            in_flight: 256,
            connections: 4,
            replicas: vec![1, 2, 3],
            cluster_replicas: vec![1, 2],
            projection_events: 1_000_000,
            // Not 3M: the workload's reviews (every member state at every
            // session, 192,807 keys, about 10 events each) run out near 2M,
            // and more events per review would change the workload's shape.
            stream_lengths: vec![100_000, 300_000, 1_000_000, 3_000_000],
            rebuild_timeout: Duration::from_secs(900),
            latency_rate: 1000,
            latency_high_rate: Some(10_000),
            latency_events: 30_000,
            reminders: 10_000,
            reminder_spread: Duration::from_secs(60),
            background_reviews: 90_000,
            plan_timeout: Duration::from_secs(900),
            gateway_rate: 1000,
            gateway_run: Duration::from_secs(10),
            gateway_clients: 32,
            gateway_closed_run: Duration::from_secs(5),
            // About one review per member state: a cycle's calendar.
            gateway_reviews: 250,
            sse_clients: 1000,
            sse_notices: 50,
            webhook_notices: 100,
        }
    }

    fn quick() -> Self {
        Self {
            reps: 1,
            ingest_events: 2_000,
            in_flight: 128,
            connections: 2,
            replicas: vec![],
            cluster_replicas: vec![1],
            projection_events: 2_000,
            stream_lengths: vec![2_000],
            rebuild_timeout: Duration::from_secs(60),
            latency_rate: 1000,
            latency_high_rate: None,
            latency_events: 2_000,
            reminders: 200,
            reminder_spread: Duration::from_secs(3),
            background_reviews: 0,
            plan_timeout: Duration::from_secs(60),
            gateway_rate: 1000,
            gateway_run: Duration::from_secs(2),
            gateway_clients: 32,
            gateway_closed_run: Duration::from_secs(1),
            gateway_reviews: 50,
            sse_clients: 50,
            sse_notices: 20,
            webhook_notices: 20,
        }
    }

    fn to_json(&self) -> serde_json::Value {
        json!({
            "repetitions": self.reps,
            "ingest_events_per_run": self.ingest_events,
            "reviews_in_flight": self.in_flight,
            "connections": self.connections,
            "ingest_replicas": self.replicas,
            "cluster_ingest_replicas": self.cluster_replicas,
            "projection_events": self.projection_events,
            "stream_lengths": self.stream_lengths,
            "latency_rate_per_s": self.latency_rate,
            "latency_high_rate_per_s": self.latency_high_rate,
            "latency_events_per_run": self.latency_events,
            "reminders_per_run": self.reminders,
            "reminder_spread_s": self.reminder_spread.as_secs_f64(),
            "background_reviews": self.background_reviews,
            "gateway_rate_per_s": self.gateway_rate,
            "gateway_run_s": self.gateway_run.as_secs_f64(),
            "gateway_closed_loop_clients": self.gateway_clients,
            "gateway_closed_loop_run_s": self.gateway_closed_run.as_secs_f64(),
            "gateway_reviews": self.gateway_reviews,
            "sse_clients": self.sse_clients,
            "sse_notices_per_run": self.sse_notices,
            "webhook_notices_per_run": self.webhook_notices,
        })
    }
}

/// Resolves on SIGINT or SIGTERM.
async fn interrupt() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            },
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// The current time as ingest records it (UTC, milliseconds).
pub fn now() -> Timestamp {
    upr_nats::clock::now_millis()
}

/// The parts in the order they run: the projection last, because its
/// length curve writes gigabytes (a 3M-event stream and its read models),
/// and in one run the disk and page-cache work that followed it slowed
/// every later part by about a third (the raw baselines too).
fn run_order() -> impl Iterator<Item = (&'static str, &'static str)> {
    let (projection, rest): (Vec<_>, Vec<_>) = PARTS
        .into_iter()
        .partition(|(name, _)| *name == "projection");
    rest.into_iter().chain(projection)
}

/// The parts: name (for `--parts` and the JSON) and title (for the table).
pub const PARTS: [(&str, &str); 9] = [
    ("ingest", "1 Ingest"),
    ("projection", "2 Projection"),
    ("latency", "3 Latency"),
    ("reminders", "4 Reminders"),
    ("failover", "5 Failover"),
    ("cluster", "6 Cluster"),
    ("gateway", "7 Gateway reads"),
    ("live", "8 Live notifications"),
    ("planner", "9 Planner lag"),
];

/// Measures the UPR Tracker services against raw JetStream on this machine,
/// with its own nats-server and service processes.
#[derive(Debug, Parser)]
#[command(name = config::BENCH, version, after_help = after_help())]
struct Options {
    /// Small sizes, one repetition, no scaling curve; writes to a temporary
    /// directory unless --out is given.
    #[arg(long)]
    quick: bool,
    /// Where latest.json, README.md and chart.svg go [default: docs/benchmarks].
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// Repetitions of each figure [default: 3, with --quick 1].
    #[arg(long, value_name = "N")]
    reps: Option<usize>,
    /// Run only these parts, comma-separated [default: all].
    #[arg(
        long,
        value_delimiter = ',',
        hide_default_value = true,
        default_values = PARTS.map(|(name, _)| name),
        value_parser = PossibleValuesParser::new(PARTS.map(|(name, _)| name)),
    )]
    parts: Vec<String>,
    /// Override the projection stream length (and drop the length curve).
    #[arg(long, value_name = "N")]
    events: Option<u64>,
    /// A sentence for the Markdown page: how and when the figures were taken.
    #[arg(long)]
    note: Option<String>,
    /// Redraw README.md and chart.svg from DIR/latest.json, run nothing.
    #[arg(long, value_name = "DIR")]
    render: Option<PathBuf>,
}

/// The variables upr-bench reads, and the ones it passes on.
fn after_help() -> String {
    config::settings_help(config::BENCH)
        + "  UPR_*\n          Passed on to the services it starts, e.g. UPR_INGEST_WORKERS=1024\n"
}

fn main() -> ExitCode {
    let options = Options::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("upr-bench: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(run(options))
}

/// `--render DIR`: rewrites the Markdown page and the chart of a finished run.
fn render(dir: &std::path::Path) -> ExitCode {
    let path = dir.join("latest.json");
    let report = std::fs::read_to_string(&path)
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .and_then(|v| Report::from_json(&v));
    let Some(report) = report else {
        eprintln!("upr-bench: {} is not a benchmark report", path.display());
        return ExitCode::FAILURE;
    };
    let written = std::fs::write(dir.join("README.md"), report.markdown())
        .and_then(|()| std::fs::write(dir.join("chart.svg"), report.svg()));
    if let Err(e) = written {
        eprintln!("upr-bench: cannot write to {}: {e}", dir.display());
        return ExitCode::FAILURE;
    }
    say(format!("redrew {}/README.md and chart.svg", dir.display()));
    ExitCode::SUCCESS
}

#[expect(
    clippy::too_many_lines,
    reason = "the benchmark's whole run: the parts in their order, then the report, one step after another"
)]
async fn run(options: Options) -> ExitCode {
    if let Some(dir) = &options.render {
        return render(dir);
    }
    let mut sizes = if options.quick {
        Sizes::quick()
    } else {
        Sizes::full()
    };
    if let Some(r) = options.reps {
        sizes.reps = r.max(1);
    }
    if let Some(n) = options.events {
        sizes.projection_events = n;
        sizes.stream_lengths = vec![n];
    }
    // --quick writes to a temporary directory so a smoke run leaves the tree clean.
    let temp = tempfile::tempdir();
    let out = match (&options.out, options.quick, &temp) {
        (Some(dir), _, _) => dir.clone(),
        (None, true, Ok(t)) => t.path().to_path_buf(),
        (None, true, Err(e)) => {
            eprintln!("upr-bench: cannot create a temporary directory: {e}");
            return ExitCode::FAILURE;
        }
        (None, false, _) => PathBuf::from("docs/benchmarks"),
    };
    let taken_at = now().to_string();
    let started = std::time::Instant::now();
    let machine = system::machine();
    let nats_version = system::nats_version();
    say(format!(
        "{} run, {} repetition(s), output to {}",
        if options.quick { "quick" } else { "full" },
        sizes.reps,
        out.display()
    ));

    let mut report = Report {
        mode: if options.quick { "quick" } else { "full" },
        taken_at,
        duration_s: 0.0,
        machine,
        nats_version,
        sizes: sizes.to_json(),
        note: options.note.clone(),
        load_at_end: String::new(),
        parts: Vec::new(),
    };
    let mut interrupted = false;
    for (name, title) in run_order() {
        let ran = !interrupted && options.parts.iter().any(|p| p == name);
        let part = Part::default();
        if ran {
            say(format!("part {title}"));
            let (p, s) = (part.clone(), sizes.clone());
            let mut task = tokio::spawn(async move {
                match name {
                    "ingest" => ingest::run(p, s).await,
                    "projection" => projection::run(p, s).await,
                    "latency" => latency::run(p, s).await,
                    "failover" => failover::run(p, s).await,
                    "cluster" => cluster::run(p, s).await,
                    "gateway" => gateway::run(p, s).await,
                    "live" => live::run(p, s).await,
                    "planner" => planner::run(p, s).await,
                    _ => reminders::run(p, s).await,
                }
            });
            let joined = tokio::select! {
                joined = &mut task => joined,
                () = interrupt() => {
                    // Aborting drops the part's server and services, which
                    // kills exactly those child processes.
                    task.abort();
                    let _ = (&mut task).await;
                    interrupted = true;
                    part.error("interrupted");
                    Ok(())
                }
            };
            if let Err(e) = joined {
                let what = e
                    .try_into_panic()
                    .ok()
                    .and_then(|p| {
                        p.downcast_ref::<String>()
                            .cloned()
                            .or_else(|| p.downcast_ref::<&str>().map(ToString::to_string))
                    })
                    .unwrap_or_else(|| "cancelled".into());
                part.error(format!(
                    "part stopped: {}",
                    what.lines().next().unwrap_or_default()
                ));
            }
        }
        report.parts.push(PartReport {
            name,
            title,
            ran,
            state: part.take(),
        });
        // Shown in part order, whatever order they ran in.
        report
            .parts
            .sort_by_key(|p| PARTS.iter().position(|(n, _)| *n == p.name));
        // Written after every part, so an interrupted run keeps what it measured.
        report.duration_s = started.elapsed().as_secs_f64();
        report.load_at_end = system::load_average();
        if let Err(e) = report.write(&out) {
            eprintln!("upr-bench: cannot write {}: {e}", out.display());
            return ExitCode::FAILURE;
        }
    }
    println!("{}", report.table());
    say(format!(
        "wrote {}/latest.json, README.md, chart.svg",
        out.display()
    ));
    if report.parts.iter().all(PartReport::ok) {
        ExitCode::SUCCESS
    } else {
        eprintln!("upr-bench: a part failed (see above)");
        ExitCode::FAILURE
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments() {
        let a = |s: &str| {
            Options::try_parse_from(["upr-bench"].into_iter().chain(s.split_whitespace()))
        };
        let o = a("--quick --out /tmp/x --parts ingest,latency").unwrap();
        assert!(o.quick);
        assert_eq!(o.out, Some(PathBuf::from("/tmp/x")));
        assert_eq!(o.parts, ["ingest", "latency"]);
        assert_eq!(a("").unwrap().parts, PARTS.map(|(name, _)| name));
        assert!(a("--parts nope").is_err());
        assert!(a("--out").is_err());
        assert!(a("--bogus").is_err());
    }

    #[test]
    fn the_command_line_is_well_formed() {
        use clap::CommandFactory;
        Options::command().debug_assert();
    }
}
