//! Part 9 (and a row of part 6): how far the notifier's planner runs behind
//! ingest under the ingest benchmark's load.
//!
//! Ingest and the notifier (its default leads, 30d, 7d, 1d) run on the
//! part's server; the workload of part 1 is sent through ingest with the
//! same reviews in flight and connections. For each `review_scheduled` or
//! `review_rescheduled` event whose reminders lie ahead, the lag is the
//! time from the event's append (its `UPR_EVENTS` timestamp) to the first
//! of its reminder schedules reaching the server (`upr.notifier.timer.at.*`,
//! matched by review and date).
//!
//! Why the schedules are timed by a subscriber rather than read back from
//! `UPR_NOTIFIER_TIMERS`: the review's next event (held, cancelled)
//! usually purges them before the run ends. A plain subscription to their
//! subjects sees every one as the server receives it for storing, on the
//! same clock as the stream's timestamps (one machine).

use std::{collections::HashMap, time::Duration};

use async_nats::jetstream::{
    self,
    consumer::{DeliverPolicy, pull},
};
use futures::StreamExt;
use time::OffsetDateTime;
use tokio::time::Instant;
use upr_domain::{EventData, Reminder};
use upr_nats::contract::{self, services};
use upr_tests::ServiceProcess;

use crate::{
    Sizes,
    drive::{self, Mode},
    fixture::Fixture,
    ingest::SERVICE_ENV,
    part::{Part, say},
    reminders::wait_planned,
    stats::{Goal, Percentiles},
    workload::{Generator, Keys},
};

/// The subjects the planner's schedules are published on.
const SCHEDULES: &str = "upr.notifier.timer.at.>";

/// A review and date: what matches a schedule to its event.
fn dated(
    country: impl std::fmt::Display,
    session: impl std::fmt::Display,
    date: impl std::fmt::Display,
) -> String {
    format!("{country}.{session}.{date}")
}

/// What one pass measured.
pub struct Lag {
    /// Per scheduling event with reminders ahead: ms from its append to
    /// its first schedule.
    pub samples: Vec<f64>,
    /// Scheduling events in the pass (some have every reminder behind them
    /// and get no schedule).
    pub scheduling_events: usize,
    /// Events stored per second through ingest during the pass.
    pub ingest_rate: f64,
    /// From the first event sent to the planner having acknowledged the last.
    pub planned_in: Duration,
}

/// The first time each (review, date) was seen on [`SCHEDULES`], until
/// `stop` resolves.
async fn watch_schedules(
    mut sub: async_nats::Subscriber,
    stop: tokio::sync::oneshot::Receiver<()>,
) -> HashMap<String, OffsetDateTime> {
    let mut seen = HashMap::new();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            m = sub.next() => {
                let Some(m) = m else { break };
                let at = OffsetDateTime::now_utc();
                if let Ok(r) = serde_json::from_slice::<Reminder>(&m.payload) {
                    seen.entry(dated(r.country, r.session, r.scheduled_for)).or_insert(at);
                }
            }
            _ = &mut stop => break,
        }
    }
    let _ = sub.unsubscribe().await;
    seen
}

/// (review and date) → append time of every scheduling event of
/// `UPR_EVENTS` from `first` to `last`.
async fn scheduling_events(
    js: &jetstream::Context,
    first: u64,
    last: u64,
) -> Result<HashMap<String, OffsetDateTime>, String> {
    let stream = js
        .get_stream(contract::EVENTS_STREAM)
        .await
        .map_err(|e| format!("event log: {e}"))?;
    let consumer = stream
        .create_consumer(pull::OrderedConfig {
            deliver_policy: DeliverPolicy::ByStartSequence {
                start_sequence: first,
            },
            ..Default::default()
        })
        .await
        .map_err(|e| format!("reading the event log: {e}"))?;
    let mut messages = consumer
        .messages()
        .await
        .map_err(|e| format!("reading the event log: {e}"))?;
    let mut out = HashMap::new();
    while let Some(m) = messages.next().await {
        let m = m.map_err(|e| format!("reading the event log: {e}"))?;
        let info = m.info().map_err(|e| format!("event metadata: {e}"))?;
        let (seq, at) = (info.stream_sequence, info.published);
        if let Ok(e) = contract::subjects::decode_stored(&m.subject, &m.payload) {
            let date = match &e.data {
                EventData::ReviewScheduled(d) => Some(d.scheduled_for),
                EventData::ReviewRescheduled(d) => Some(d.scheduled_for),
                _ => None,
            };
            if let Some(date) = date {
                out.insert(dated(e.country, e.session, date), at);
            }
        }
        if seq >= last {
            break;
        }
    }
    Ok(out)
}

/// The event log's last sequence.
async fn last_sequence(js: &jetstream::Context) -> Result<u64, String> {
    let mut stream = js
        .get_stream(contract::EVENTS_STREAM)
        .await
        .map_err(|e| format!("event log: {e}"))?;
    Ok(stream
        .info()
        .await
        .map_err(|e| format!("event log: {e}"))?
        .state
        .last_sequence)
}

/// One pass of `events` events of the ingest workload through ingest at
/// `url`, with the notifier planning; the planner's lag behind it.
pub async fn lag_pass(
    client: &async_nats::Client,
    js: &jetstream::Context,
    url: &str,
    keys: &mut Keys,
    seed: u64,
    sizes: &Sizes,
    events: usize,
) -> Result<Lag, String> {
    let sub = client
        .subscribe(SCHEDULES)
        .await
        .map_err(|e| format!("subscribe {SCHEDULES}: {e}"))?;
    client.flush().await.map_err(|e| format!("flush: {e}"))?;
    // A planner still working through earlier events would put their
    // backlog into every figure.
    wait_planned(js, Duration::from_secs(60))
        .await
        .map_err(|e| format!("before the pass: {e}"))?;
    let (stop, stopped) = tokio::sync::oneshot::channel();
    let watcher = tokio::spawn(watch_schedules(sub, stopped));
    let first = last_sequence(js).await? + 1;
    let plans = Generator::new(seed).plans(keys, events);
    let prepared = drive::prepare(&plans, crate::now());
    let started = Instant::now();
    let outcome = drive::drive(
        url,
        prepared,
        sizes.connections,
        sizes.in_flight,
        Mode::Ingest,
    )
    .await?;
    if outcome.failed > 0 {
        return Err(format!(
            "{} events refused or failed: {:?}",
            outcome.failed, outcome.errors
        ));
    }
    wait_planned(js, sizes.plan_timeout).await?;
    let planned_in = started.elapsed();
    // The last schedules were published before the planner's last ack;
    // give the subscription a moment to hand them over.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let _ = stop.send(());
    let seen = watcher
        .await
        .map_err(|e| format!("schedule watcher: {e}"))?;
    let last = last_sequence(js).await?;
    let appended = scheduling_events(js, first, last).await?;
    let samples = appended
        .iter()
        .filter_map(|(key, at)| seen.get(key).map(|s| (*s - *at).as_seconds_f64() * 1e3))
        .collect();
    Ok(Lag {
        samples,
        scheduling_events: appended.len(),
        ingest_rate: outcome.rate(),
        planned_in,
    })
}

/// Part 9.
pub async fn run(part: Part, sizes: Sizes) {
    let Some(bed) = Fixture::start(&part).await else {
        return;
    };
    let ingest = ServiceProcess::start(services::INGEST, &bed.url, SERVICE_ENV);
    ingest.wait_healthy().await;
    let notifier = ServiceProcess::start(services::NOTIFIER, &bed.url, SERVICE_ENV);
    notifier.wait_healthy().await;
    say(format!(
        "upr-ingest pid {:?}, upr-notifier pid {:?}",
        ingest.pid(),
        notifier.pid()
    ));
    let mut keys = Keys::default();
    part.detail("events_per_run", sizes.ingest_events.into());
    part.detail("reviews_in_flight", sizes.in_flight.into());
    part.detail("connections", sizes.connections.into());
    // Warm-up, not recorded: connections, both services' first events.
    let warm = sizes.ingest_events.min(1000);
    if let Err(e) = lag_pass(&bed.client, &bed.js, &bed.url, &mut keys, 98, &sizes, warm).await {
        return part.error(format!("warm-up: {e}"));
    }
    for r in 0..sizes.reps {
        let seed = 1000 + r as u64;
        let lag = match lag_pass(
            &bed.client,
            &bed.js,
            &bed.url,
            &mut keys,
            seed,
            &sizes,
            sizes.ingest_events,
        )
        .await
        {
            Ok(l) => l,
            Err(e) => return part.error(e),
        };
        if lag.samples.is_empty() {
            return part.error(format!(
                "run {}: no schedule seen for any of {} scheduling events",
                r + 1,
                lag.scheduling_events
            ));
        }
        record(&part, r, &lag, "planner", "", Some(Goal::Below(1000.0)));
    }
    drop((notifier, ingest));
    bed.finish(&part, 9).await;
}

/// Records a pass's figures as `<prefix>.lag_p50` etc., labels ending in
/// `suffix`; `goal` on the p99.
pub fn record(part: &Part, r: usize, lag: &Lag, prefix: &str, suffix: &str, goal: Option<Goal>) {
    let p = Percentiles::of(&lag.samples);
    say(format!(
        "{prefix} rep {}: ingest {:.0} events/s; planner lag p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms over {} scheduling events with reminders ahead (of {}); all planned {:.1} s after the first was sent",
        r + 1,
        lag.ingest_rate,
        p.p50,
        p.p99,
        p.max,
        p.count,
        lag.scheduling_events,
        lag.planned_in.as_secs_f64()
    ));
    part.push_detail(
        &format!("{prefix}_runs"),
        serde_json::json!({
            "ingest_events_per_s": crate::stats::round(lag.ingest_rate),
            "scheduling_events": lag.scheduling_events,
            "with_schedules": p.count,
            "planned_in_s": crate::stats::round(lag.planned_in.as_secs_f64()),
        }),
    );
    let label = |q: &str| format!("Planner lag {q} (event appended → its schedule stored){suffix}");
    part.record(
        &format!("{prefix}.lag_p50"),
        &label("p50"),
        "ms",
        None,
        p.p50,
    );
    part.record(
        &format!("{prefix}.lag_p99"),
        &label("p99"),
        "ms",
        goal,
        p.p99,
    );
    part.record(
        &format!("{prefix}.lag_max"),
        &label("max"),
        "ms",
        None,
        p.max,
    );
}
