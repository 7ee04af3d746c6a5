//! The fault test itself: the system under a seeded workload and seeded
//! kills, then every check of [`crate::oracle`] against what JetStream holds,
//! and the figures of the run (which `scripts/fault-long` greps).

use std::{
    collections::BTreeMap,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use rand::{RngExt, SeedableRng, rngs::StdRng, seq::SliceRandom};
use upr_domain::{Country, Envelope, EventData, MEMBER_STATES, ReviewKey, Session};
use upr_nats::contract;
use upr_tests::NatsServer;

use crate::{
    EDITOR, Layout, PARTIES,
    chaos::{ChaosGuard, System},
    client::{Driver, Party, get},
    now_ms,
    observe::{applied_by, read_bucket, read_stream, sample_notifier_floor, wait_caught_up},
    oracle::{
        Report, Timeline, check_bucket, check_change_notices, check_log, check_notifications,
        check_parties, check_required, expected_buckets, expected_reminders,
    },
    workload::{bulk_client, near_review},
};

/// Concurrent clients driving the long-lived reviews.
const BULK_CLIENTS: usize = 32;

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().map(|v| {
        v.trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name} must be an unsigned integer, got {v:?}"))
    })
}

/// Every member state at each of `sessions`, in a seeded order.
fn shuffled_keys(sessions: std::ops::RangeInclusive<u64>, rng: &mut StdRng) -> Vec<ReviewKey> {
    let mut keys: Vec<ReviewKey> = Vec::new();
    for session in sessions {
        for (code, _) in &MEMBER_STATES {
            keys.push(ReviewKey {
                country: Country::parse(code).expect("listed code"),
                session: Session::new(session).expect("a valid session"),
            });
        }
    }
    keys.shuffle(rng);
    keys
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_events_read_models_and_reminders_survive_sigkill_of_every_process() {
    let target = env_u64("UPR_FAULT_EVENTS").unwrap_or(10_000);
    fault_run(Layout::SINGLE, target).await;
}

/// The same on a 3-node cluster (every stream and bucket R3) with two
/// replicas of every service: nodes are killed one at a time, as are the
/// active projection and its standby, the notifier replicas and ingest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_three_node_cluster_nothing_acknowledged_is_lost_when_nodes_and_replicas_die() {
    let target = env_u64("UPR_FAULT_CLUSTER_EVENTS").unwrap_or(3_000);
    fault_run(Layout::CLUSTER, target).await;
}

#[expect(
    clippy::too_many_lines,
    reason = "the fault run's script (start, load, kill, restart, check), read in order"
)]
async fn fault_run(layout: Layout, target: u64) {
    #[allow(
        clippy::cast_possible_truncation,
        reason = "the low 64 bits of the clock make the seed"
    )]
    let seed = env_u64("UPR_FAULT_SEED").unwrap_or_else(|| {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
    });
    let mut report = Report::default();
    report.line(format!(
        "fault test ({layout:?}): UPR_FAULT_SEED={seed}, {target} events (rerun with the seed to repeat the schedule)"
    ));
    let mut rng = StdRng::seed_from_u64(seed);
    let started = Instant::now();
    let run_start = now_ms();

    let system = System::start(layout).await;
    // One connection per user, each failing over between the nodes and
    // reconnecting for as long as the run lasts.
    let connect = |user: &str| {
        let options = NatsServer::options_from(&system.nats.seed_file(user));
        let addrs = system.nats.addrs();
        let user = user.to_owned();
        async move {
            options
                .retry_on_initial_connect()
                .max_reconnects(None)
                .reconnect_delay_callback(|n| Duration::from_millis((n as u64 * 50).min(500)))
                .connect(addrs.as_slice())
                .await
                .unwrap_or_else(|e| panic!("connect as {user}: {e}"))
        }
    };
    let client = connect("admin").await;
    let mut parties = Vec::new();
    for name in PARTIES {
        parties.push(Party {
            name,
            client: connect(name).await,
            editor: name == EDITOR,
        });
    }
    let driver = Driver::new(client.clone(), parties);

    let guard = ChaosGuard::start(system, rng.fork());
    let stop_sampling = Arc::new(AtomicBool::new(false));
    let sampler = tokio::spawn(sample_notifier_floor(driver.clone(), stop_sampling.clone()));

    // Long-lived reviews: the bulk of the events.
    let keys = shuffled_keys(1..=60, &mut rng);
    let reviews = usize::try_from(target / 7)
        .unwrap_or(usize::MAX)
        .clamp(BULK_CLIENTS, keys.len());
    let mut bulk = Vec::new();
    for w in 0..BULK_CLIENTS {
        let mine: Vec<ReviewKey> = keys[..reviews]
            .iter()
            .skip(w)
            .step_by(BULK_CLIENTS)
            .copied()
            .collect();
        bulk.push(tokio::spawn(bulk_client(
            driver.clone(),
            mine,
            rng.fork(),
            target,
        )));
    }

    // Reviews a few seconds ahead, started every 150-400 ms while the bulk runs.
    let mut near = Vec::new();
    let mut next_near = shuffled_keys(900..=999, &mut rng).into_iter();
    while !bulk.iter().all(tokio::task::JoinHandle::is_finished) {
        let key = next_near.next().expect("enough near-term review keys");
        near.push(tokio::spawn(near_review(driver.clone(), key, rng.fork())));
        tokio::time::sleep(Duration::from_millis(rng.random_range(150..=400))).await;
    }
    for h in bulk.into_iter().chain(near) {
        if let Err(e) = h.await {
            std::panic::resume_unwind(e.into_panic());
        }
    }
    let workload_done = started.elapsed();

    // Stop killing; every process is up again when the chaos thread returns.
    let (system, outages) = guard.finish();
    system.wait_all_healthy(Duration::from_secs(60));

    // Wait until every near-term review date has passed and the notifier and
    // the projection have caught up with the log.
    let events_raw = read_stream(&client, contract::EVENTS_STREAM).await;
    let last_seq = events_raw.last().map_or(0, |m| m.seq);
    let mut envelopes: Vec<(u64, Envelope)> = Vec::new();
    for m in &events_raw {
        match Envelope::from_json(&m.payload) {
            Ok(e) => envelopes.push((m.seq, e)),
            Err(e) => report
                .failures
                .push(format!("seq {} is not a valid envelope: {e}", m.seq)),
        }
    }
    let latest_date = envelopes
        .iter()
        .filter_map(|(_, e)| match &e.data {
            EventData::ReviewScheduled(d) => Some(d.scheduled_for.unix_millis()),
            EventData::ReviewRescheduled(d) => Some(d.scheduled_for.unix_millis()),
            _ => None,
        })
        .filter(|d| *d < now_ms() + 60_000)
        .max()
        .unwrap_or(0);
    while now_ms() < latest_date + 2500 {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    if !wait_caught_up(&client, last_seq, Duration::from_secs(120)).await {
        report
            .failures
            .push("projection or notifier did not catch up within 120 s".into());
    }
    stop_sampling.store(true, Ordering::Relaxed);
    let floor = sampler.await.expect("sampler");
    let run_end = now_ms();

    // 1. The event log: every acknowledged event exactly once, nothing else.
    let ledger = std::mem::take(&mut *driver.ledger.lock().unwrap());
    let lost = check_log(&mut report, &events_raw, &envelopes, &ledger);
    let violations = ledger.violations.len();

    // 2. The read models: every key of the three buckets, byte for byte.
    let mut values_checked = 0;
    let mut reviews = BTreeMap::new();
    for (bucket, expected) in expected_buckets(&envelopes) {
        let actual = read_bucket(&client, bucket).await;
        check_bucket(&mut report, bucket, &expected, &actual);
        values_checked += expected.len();
        if bucket == contract::REVIEWS_BUCKET {
            reviews = actual;
        }
    }

    // 3. Who recorded and who retracted, in the log and the review values.
    let parties = check_parties(&mut report, &envelopes, &ledger, &[EDITOR], &reviews);

    // 4. Notifications: reminders and change notices.
    let notices = read_stream(&client, contract::NOTIFICATIONS_STREAM).await;
    let timeline = Timeline {
        floor: &floor,
        outages: &outages,
        run_start,
        run_end,
        read_at: now_ms(),
    };
    let expected = expected_reminders(&envelopes, &timeline);
    let seen = check_notifications(&mut report, &notices, &expected);
    let required = check_required(
        &mut report,
        &expected,
        &seen.sent,
        &outages,
        &system.notifier_logs(),
    );
    let changes = check_change_notices(&mut report, &envelopes, seen.changes, &seen.retracted_by);

    // The figures of the run.
    let c = &driver.counters;
    let mut kills: BTreeMap<&str, u32> = BTreeMap::new();
    for o in &outages {
        *kills.entry(o.target.label()).or_default() += 1;
    }
    report.line(format!(
        "events: {} stored (last seq {last_seq}), {} commands, {} conflicts on purpose, {} duplicate replies to retries",
        envelopes.len(), get(&c.commands), get(&c.conflicts), get(&c.duplicates)
    ));
    report.line(format!(
        "retries: {} timeouts, {} no responders, {} unavailable, {} other errors",
        get(&c.timeouts),
        get(&c.no_responders),
        get(&c.unavailable),
        get(&c.other_errors)
    ));
    report.line(format!(
        "kills (SIGKILL + restart): {} in all, {kills:?}",
        outages.len()
    ));
    report.line(format!(
        "read models: {values_checked} values compared byte for byte"
    ));
    report.line(format!(
        "parties: recorded {:?}; retractions {} forbidden (refused), {} by their recorder and {} by the editor stored; \
         recorded_by checked on every event and on {} history and side-event entries, retracted_by on {} corrected notices",
        parties.recorded,
        get(&c.forbidden),
        parties.retracted_by_recorder,
        parties.retracted_by_editor,
        parties.entries,
        seen.retracted_by.len(),
    ));
    report.line(format!(
        "reminders: {} planned, {} fell due during the run; {} sent ({} late); {} required, {} of them missing; ambiguous (count, sent): {:?}",
        expected.len(),
        expected.values().filter(|e| e.reminder.due_at.unix_millis() <= run_end).count(),
        seen.sent.len(),
        seen.late,
        required.must,
        required.missing,
        required.ambiguous,
    ));
    report.line(format!(
        "change notices: {} expected, each checked exactly once; \
         {} retractions stored, {} of a lifecycle event",
        changes.expected, changes.corrections, changes.corrected
    ));
    let mut lags: Vec<i64> = envelopes
        .iter()
        .map(|(seq, e)| applied_by(&floor, *seq).saturating_sub(e.recorded_at.unix_millis()))
        .filter(|l| *l < i64::MAX / 2)
        .collect();
    lags.sort_unstable();
    let pct = |p: usize| {
        lags.get(lags.len().saturating_sub(1) * p / 100)
            .copied()
            .unwrap_or(0)
    };
    report.line(format!(
        "notifier planner lag behind ingest (ms, sampled every 200 ms): p50 {} p90 {} p99 {} max {}",
        pct(50), pct(90), pct(99), pct(100)
    ));
    report.line(format!(
        "contract violations seen by the client: {violations}"
    ));
    report.line(format!(
        "losses: {lost} acknowledged events lost; wall time {:.1} s (workload {:.1} s)",
        started.elapsed().as_secs_f64(),
        workload_done.as_secs_f64()
    ));

    if !report.failures.is_empty() {
        let dir =
            std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("upr-fault-{seed}"));
        system.keep_logs(&outages, &dir);
        println!("logs of every process kept in {}", dir.display());
    }
    let n = report.failures.len();
    report.failures.sort_by_key(|f| f.starts_with("contract:"));
    report.failures.truncate(40);
    assert!(
        n == 0,
        "UPR_FAULT_SEED={seed}: {n} failures, the first ones:\n{}",
        report.failures.join("\n")
    );
}
