//! Part 4 (reminder timing) and the notifier's memory for part 5.
//!
//! The notifier runs with one short lead (`UPR_REMINDER_LEADS=1h`). First a
//! background of reviews far in the future is scheduled (their reminders
//! stay pending, so the notifier holds 100,000 scheduled reviews in the full
//! run); then, per repetition, reviews are scheduled so that exactly one
//! reminder each falls due, spread evenly over a window (60 s in the full
//! run). Each reminder is received on `upr.notify.reminder.>` and its
//! lateness measured twice: `sent_at - due_at` (the notifier's own clock) and
//! receive time minus `due_at` (what a subscriber sees).
//!
//! The scheduling events are written straight to `UPR_EVENTS` as valid
//! envelopes, so the figure is the notifier's and not ingest's.

use std::{collections::HashSet, time::Duration};

use async_nats::jetstream::{self, message::PublishMessage};
use futures::StreamExt;
use serde_json::Value;
use tokio::time::Instant;
use upr_domain::{ReviewKey, Timestamp};
use upr_nats::contract;
use upr_tests::ServiceProcess;

use crate::fixture::Fixture;

use crate::{
    Sizes,
    part::{Part, say},
    stats::{Goal, Percentiles},
    system::MemWatch,
    workload::{Event, Generator, Keys},
};

/// The one reminder lead the benchmark configures.
const LEAD: &str = "1h";

/// Wall clock now.
fn wall() -> Timestamp {
    upr_nats::clock::now()
}

/// The `review_scheduled` event for `key` at `scheduled_for`.
fn scheduling(generator: &mut Generator, key: ReviewKey, scheduled_for: Timestamp) -> Event {
    generator
        .review(key, Some(scheduled_for))
        .events
        .into_iter()
        .next()
        .expect("every plan starts with review_scheduled")
}

/// Acks outstanding while writing (below the client's in-flight limit, whose
/// permits are only released as acks are awaited).
const WRITE_WINDOW: usize = 2048;

/// Writes the events straight to the stream, pipelined.
async fn write(js: &jetstream::Context, events: Vec<Event>) -> Result<(), String> {
    let recorded_at = crate::now();
    let mut acks = std::collections::VecDeque::with_capacity(WRITE_WINDOW);
    for event in events {
        let message = PublishMessage::build()
            .payload(event.envelope(recorded_at))
            .message_id(event.id.to_string());
        acks.push_back(
            js.send_publish(event.event_subject(), message)
                .await
                .map_err(|e| format!("publish: {e}"))?,
        );
        if acks.len() >= WRITE_WINDOW
            && let Some(a) = acks.pop_front()
        {
            a.await.map_err(|e| format!("ack: {e}"))?;
        }
    }
    for a in acks {
        a.await.map_err(|e| format!("ack: {e}"))?;
    }
    Ok(())
}

/// Waits until the notifier's consumer of `UPR_EVENTS` has acknowledged
/// every event in the stream: all reviews are planned.
pub(crate) async fn wait_planned(
    js: &jetstream::Context,
    timeout: Duration,
) -> Result<Duration, String> {
    let started = Instant::now();
    let mut last = String::from("no answer");
    while started.elapsed() < timeout {
        let state = async {
            let mut stream = js.get_stream(contract::EVENTS_STREAM).await.ok()?;
            let last_seq = stream.info().await.ok()?.state.last_sequence;
            let mut consumer: jetstream::consumer::PullConsumer = stream
                .get_consumer(contract::notifier::EVENTS_CONSUMER)
                .await
                .ok()?;
            let info = consumer.info().await.ok()?;
            Some((last_seq, info.ack_floor.stream_sequence))
        }
        .await;
        if let Some((last_seq, acked)) = state {
            if acked >= last_seq {
                return Ok(started.elapsed());
            }
            last = format!("{acked} of {last_seq} events planned");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Err(format!("notifier not caught up within {timeout:?}: {last}"))
}

/// What the receiver saw.
struct Received {
    seen: usize,
    sent_late: Vec<f64>,
    recv_late: Vec<f64>,
    flagged_late: usize,
    errors: Vec<String>,
}

/// Collects the expected reminders until all came or `deadline`.
async fn receive(
    mut sub: async_nats::Subscriber,
    expected: HashSet<String>,
    deadline: Instant,
) -> Received {
    let mut got = Received {
        seen: 0,
        sent_late: Vec::with_capacity(expected.len()),
        recv_late: Vec::with_capacity(expected.len()),
        flagged_late: 0,
        errors: Vec::new(),
    };
    let mut seen = HashSet::with_capacity(expected.len());
    while seen.len() < expected.len() {
        let Ok(Some(message)) = tokio::time::timeout_at(deadline, sub.next()).await else {
            break;
        };
        let received = wall();
        let Ok(v) = serde_json::from_slice::<Value>(&message.payload) else {
            continue;
        };
        let Some(id) = v["id"].as_str().filter(|id| expected.contains(*id)) else {
            continue;
        };
        if !seen.insert(id.to_string()) {
            got.errors.push(format!("reminder {id} received twice"));
            continue;
        }
        let parse = |f: &str| v[f].as_str().and_then(|s| Timestamp::parse_rfc3339(s).ok());
        let (Some(due), Some(sent)) = (parse("due_at"), parse("sent_at")) else {
            got.errors
                .push(format!("reminder without due_at/sent_at: {v}"));
            continue;
        };
        got.sent_late.push(sent.since(due).as_seconds_f64() * 1e3);
        got.recv_late
            .push(received.since(due).as_seconds_f64() * 1e3);
        if v["late"] == Value::Bool(true) {
            got.flagged_late += 1;
        }
    }
    let _ = sub.unsubscribe().await;
    got.seen = seen.len();
    got
}

/// Part 4.
#[expect(
    clippy::too_many_lines,
    reason = "a benchmark part reads as its script: services, warm-up, the measured runs and the record, in order"
)]
pub async fn run(part: Part, sizes: Sizes) {
    // The benchmark writes the event log as ingest would, so it creates it
    // as its owner does; the notifier waits for it.
    let Some(bed) = Fixture::start_owning_event_log(&part).await else {
        return;
    };
    let (url, client, js) = (&bed.url, &bed.client, &bed.js);
    let env = [
        (contract::env::RUST_LOG, "warn"),
        (contract::env::UPR_REMINDER_LEADS, LEAD),
    ];
    let notifier = ServiceProcess::start("upr-notifier", url, &env);
    notifier.wait_healthy().await;
    let pid = notifier.pid();
    let mem = pid.map(MemWatch::start);
    say(format!("upr-notifier pid {pid:?}"));
    let mut keys = Keys::default();
    let mut generator = Generator::new(4);
    let lead = time::Duration::hours(1);
    part.detail("lead", LEAD.into());
    part.detail("reminders_per_run", sizes.reminders.into());
    part.detail("spread_s", sizes.reminder_spread.as_secs_f64().into());

    // Background: reviews a year out, whose reminders stay pending.
    let mut planned = 0u64;
    let mut plan_rate = None;
    if sizes.background_reviews > 0 {
        let far = wall()
            .checked_add(time::Duration::days(365))
            .expect("in range");
        let events: Vec<Event> = (0..sizes.background_reviews)
            .map(|i| {
                let at = far
                    .checked_add(time::Duration::minutes(
                        i64::try_from(i).expect("a count of reviews"),
                    ))
                    .unwrap_or(far);
                scheduling(&mut generator, keys.next_key(), at)
            })
            .collect();
        say(format!(
            "reminders: scheduling {} background reviews",
            events.len()
        ));
        let started = Instant::now();
        if let Err(e) = write(js, events).await {
            return part.error(format!("background: {e}"));
        }
        planned += sizes.background_reviews as u64;
        match wait_planned(js, sizes.plan_timeout).await {
            Ok(_) => {
                let took = started.elapsed().as_secs_f64();
                let rate = sizes.background_reviews as f64 / took;
                say(format!(
                    "reminders: notifier planned them in {took:.1} s ({rate:.0} reviews/s)"
                ));
                part.record(
                    "reminders.plan_rate",
                    "Notifier planning rate",
                    "reviews/s",
                    Some(Goal::AtLeast(5000.0)),
                    rate,
                );
                plan_rate = Some(rate);
            }
            Err(e) => return part.error(format!("background: {e}")),
        }
    }

    for r in 0..sizes.reps {
        let n = sizes.reminders;
        // Leave time to write and plan them all before the first falls due.
        let margin = match plan_rate {
            Some(rate) => Duration::from_secs_f64(n as f64 / rate * 1.5 + 3.0),
            None => Duration::from_secs(3),
        };
        let Ok(sub) = client
            .subscribe(format!("{}.>", "upr.notify.reminder"))
            .await
        else {
            return part.error("subscribe to reminders");
        };
        let first_due = wall()
            .checked_add(time::Duration::try_from(margin).unwrap_or(time::Duration::SECOND))
            .expect("in range");
        let step = sizes.reminder_spread.as_secs_f64() / n as f64;
        let mut expected = HashSet::with_capacity(n);
        let events: Vec<Event> = (0..n)
            .map(|i| {
                let due = first_due
                    .checked_add(time::Duration::seconds_f64(step * i as f64))
                    .expect("in range");
                let due = due.truncate_to_millis();
                let key = keys.next_key();
                let scheduled_for = due.checked_add(lead).expect("in range");
                expected.insert(format!(
                    "{}.{}.{LEAD}.{scheduled_for}",
                    key.country, key.session
                ));
                scheduling(&mut generator, key, scheduled_for)
            })
            .collect();
        let last_due = first_due
            .checked_add(time::Duration::try_from(sizes.reminder_spread).unwrap_or_default())
            .expect("in range");
        let deadline = Instant::now()
            + Duration::try_from(last_due.since(wall())).unwrap_or_default()
            + Duration::from_secs(30);
        // Receive concurrently from now on, so receive times are true.
        let receiver = tokio::spawn(receive(sub, expected, deadline));
        if let Err(e) = write(js, events).await {
            return part.error(e);
        }
        planned += n as u64;
        // Planning must beat the first due time.
        let until_first = Duration::try_from(first_due.since(wall())).unwrap_or_default();
        match wait_planned(js, until_first).await {
            Ok(d) => part.push_detail("plan_s", d.as_secs_f64().into()),
            Err(e) => part.push_detail(
                "notes",
                format!(
                    "run {}: planning not finished at the first due time: {e}",
                    r + 1
                )
                .into(),
            ),
        }
        let got = match receiver.await {
            Ok(got) => got,
            Err(e) => return part.error(format!("receiver: {e}")),
        };
        for e in &got.errors {
            part.error(e.clone());
        }
        if got.seen < n {
            return part.error(format!(
                "run {}: {} of {n} reminders arrived",
                r + 1,
                got.seen
            ));
        }
        let (sent_late, recv_late, flagged_late) = (got.sent_late, got.recv_late, got.flagged_late);
        let sent = Percentiles::of(&sent_late);
        let recv = Percentiles::of(&recv_late);
        say(format!(
            "reminders rep {}: lateness (receive - due) p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms; (sent_at - due) p99 {:.1} ms; {flagged_late} flagged late",
            r + 1,
            recv.p50,
            recv.p99,
            recv.max,
            sent.p99
        ));
        part.record(
            "reminders.recv_p50",
            "Reminder lateness p50 (receive − due_at)",
            "ms",
            None,
            recv.p50,
        );
        part.record(
            "reminders.recv_p99",
            "Reminder lateness p99 (receive − due_at)",
            "ms",
            Some(Goal::Below(100.0)),
            recv.p99,
        );
        part.record(
            "reminders.recv_max",
            "Reminder lateness max (receive − due_at)",
            "ms",
            None,
            recv.max,
        );
        part.record(
            "reminders.sent_p50",
            "Reminder lateness p50 (sent_at − due_at)",
            "ms",
            None,
            sent.p50,
        );
        part.record(
            "reminders.sent_p99",
            "Reminder lateness p99 (sent_at − due_at)",
            "ms",
            None,
            sent.p99,
        );
        part.record(
            "reminders.sent_max",
            "Reminder lateness max (sent_at − due_at)",
            "ms",
            None,
            sent.max,
        );
        part.push_detail(
            "runs",
            serde_json::json!({"reminders": n, "flagged_late": flagged_late, "margin_s": margin.as_secs_f64()}),
        );
    }
    part.detail("scheduled_reviews_total", planned.into());
    match timing(client).await {
        Ok(steps) => {
            say(format!("reminders: the notifier's steps {steps}"));
            for (step, label) in [
                ("fired_late_ms", "timer fired − timer time"),
                ("delivered_ms", "timer received − fired"),
                ("checked_ms", "sent_at − max(due_at, received)"),
            ] {
                for p in ["p50", "p99", "max"] {
                    if let Some(v) = steps[step][p].as_f64() {
                        part.record(
                            &format!("reminders.step.{step}.{p}"),
                            &format!("Reminder step {p}: {label}"),
                            "ms",
                            None,
                            v,
                        );
                    }
                }
            }
            part.detail("notifier_timing", steps);
        }
        Err(e) => part.push_detail("notes", format!("notifier timing: {e}").into()),
    }
    if let Some(mem) = mem {
        let mb = mem.stop(pid).await;
        part.record(
            "memory.notifier",
            &format!("upr-notifier peak RSS ({planned} scheduled reviews)"),
            "MB",
            Some(Goal::Below(100.0)),
            mb,
        );
    }
    drop(notifier);
    bed.finish(&part, 4).await;
}

/// The notifier's own account of where its last reminders' time went
/// (micro STATS `reminder_timing`: the server's firing delay, the delivery
/// of the fired timer, the checks before publishing): the figures that say
/// which step a slow tail comes from.
async fn timing(client: &async_nats::Client) -> Result<Value, String> {
    let subject = format!("$SRV.STATS.{}", contract::services::NOTIFIER);
    let reply = client
        .request(subject, bytes::Bytes::new())
        .await
        .map_err(|e| format!("STATS: {e}"))?;
    let stats: Value = serde_json::from_slice(&reply.payload).map_err(|e| e.to_string())?;
    stats["endpoints"]
        .as_array()
        .and_then(|endpoints| {
            endpoints
                .iter()
                .find_map(|e| e["data"].get("reminder_timing").cloned())
        })
        .ok_or_else(|| format!("no reminder_timing in {stats}"))
}
