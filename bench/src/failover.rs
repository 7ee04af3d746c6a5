//! Part 5: how long the work of a killed active replica takes to move.
//!
//! Projection: two instances, one holding the lease. The active one is
//! killed (SIGKILL), an event is stored at once, and the time until a
//! `upr.query.status` asking for that event (`min_seq`) is answered is the
//! figure: lease expiry, the standby taking it, opening and repositioning
//! the consumer, folding the event. Notifier: two replicas, one pinned as
//! the planner; the pinned one is killed, a review is scheduled at once,
//! and the time until its reminders are pending is the figure: the server
//! moving the pin, the standby's next pull, planning. Each repetition
//! restarts the killed process as the new standby.

use std::time::{Duration, Instant};

use async_nats::{Client, jetstream};
use serde_json::{Value, json};
use upr_domain::{Timestamp, parse_intake};
use upr_nats::{
    contract::{self, notifier as names, services},
    setup::ensure_own_stream,
};
use upr_tests::{NatsServer, ServiceProcess};
use uuid::Uuid;

use crate::{Sizes, ingest::SERVICE_ENV, part::Part, part::say, stats::Goal};

/// Longest a takeover may take before the run counts as failed.
const PATIENCE: Duration = Duration::from_secs(30);

/// Stores a valid `ty` event as ingest would; returns its stream sequence.
async fn store(js: &jetstream::Context, ty: &str, payload: Value) -> Result<u64, String> {
    let command = parse_intake(ty, payload.to_string().as_bytes())
        .map_err(|e| format!("{ty}: {}", e.message))?;
    let key = command.review_key();
    let event = command.into_envelope(Uuid::now_v7(), crate::now(), None);
    let subject = contract::subjects::event(key.country, key.session, event.event_type());
    let ack = js
        .publish(subject, event.to_json().into())
        .await
        .map_err(|e| e.to_string())?
        .await
        .map_err(|e| e.to_string())?;
    Ok(ack.sequence)
}

/// A review scheduled a year ahead (its reminders far in the future).
fn scheduling(session: u64) -> Value {
    let date = Timestamp::from_unix_millis(crate::now().unix_millis() + 365 * 86_400_000)
        .expect("a date in range");
    json!({"country": "KZ", "session": session, "scheduled_for": date.to_string()})
}

async fn ask(client: &Client, subject: &str, body: Value) -> Option<Value> {
    let request = client.request(subject.to_owned(), body.to_string().into());
    let reply = tokio::time::timeout(Duration::from_millis(500), request)
        .await
        .ok()?
        .ok()?;
    serde_json::from_slice(&reply.payload).ok()
}

/// Polls until `check` holds; the time it took, or `None` after [`PATIENCE`].
async fn until<F, Fut>(mut check: F) -> Option<Duration>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = Instant::now();
    while started.elapsed() < PATIENCE {
        if check().await {
            return Some(started.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    None
}

/// Whether `p` is the projection instance answering queries: the one whose
/// micro-service INFO lists endpoints.
async fn is_active(client: &Client, p: &ServiceProcess) -> bool {
    let Ok(id) = std::fs::read_to_string(p.dir().join("health")) else {
        return false;
    };
    let subject = format!("$SRV.INFO.{}.{}", services::PROJECTION, id.trim());
    ask(client, &subject, json!({}))
        .await
        .and_then(|info| info["endpoints"].as_array().map(|e| !e.is_empty()))
        .unwrap_or(false)
}

/// Part 5.
pub async fn run(part: Part, sizes: Sizes) {
    let server = NatsServer::start();
    let url = server.url();
    let Ok(client) = crate::drive::connect(&url).await else {
        return part.error("cannot connect to the benchmark's nats-server");
    };
    let js = jetstream::new(client.clone());
    if let Err(e) = ensure_own_stream(
        &js,
        contract::events_stream(1, contract::DEFAULT_DEDUP_WINDOW),
    )
    .await
    {
        return part.error(format!("event log: {e}"));
    }
    let scheduled = match projection(&part, &sizes, &url, &client, &js).await {
        Ok(n) => n,
        Err(e) => return part.error(e),
    };
    if let Err(e) = planner(&part, &sizes, &url, &js, scheduled).await {
        part.error(e);
    }
}

async fn projection(
    part: &Part,
    sizes: &Sizes,
    url: &str,
    client: &Client,
    js: &jetstream::Context,
) -> Result<u64, String> {
    let mut instances = Vec::new();
    for _ in 0..2 {
        let p = ServiceProcess::start(services::PROJECTION, url, SERVICE_ENV);
        p.wait_healthy().await;
        instances.push(p);
    }
    let mut session = 1;
    for rep in 0..sizes.reps {
        let seq = store(js, "review_scheduled", scheduling(session)).await?;
        session += 1;
        until(|| async {
            ask(client, "upr.query.status", json!({"min_seq": seq}))
                .await
                .is_some_and(|v| v["ok"] == true)
        })
        .await
        .ok_or("the projection did not apply the warm-up event")?;
        let mut active = None;
        for (i, p) in instances.iter().enumerate() {
            if is_active(client, p).await {
                active = Some(i);
            }
        }
        let active = active.ok_or("no projection instance is active")?;
        instances[active].kill9();
        let seq = store(js, "review_scheduled", scheduling(session)).await?;
        session += 1;
        let took = until(|| async {
            ask(client, "upr.query.status", json!({"min_seq": seq}))
                .await
                .is_some_and(|v| v["ok"] == true)
        })
        .await
        .ok_or("the standby projection did not take over within 30 s")?;
        say(format!(
            "failover rep {}: projection standby applied the next event {:.2} s after the kill",
            rep + 1,
            took.as_secs_f64()
        ));
        part.record(
            "failover.projection",
            "Projection: kill of the active instance to the next event applied",
            "s",
            Some(Goal::Below(5.0)),
            took.as_secs_f64(),
        );
        instances[active].restart();
        instances[active].wait_healthy().await;
    }
    // Reviews scheduled so far (one per session used).
    Ok(session - 1)
}

async fn planner(
    part: &Part,
    sizes: &Sizes,
    url: &str,
    js: &jetstream::Context,
    scheduled: u64,
) -> Result<(), String> {
    // Three leads: three pending timers per review scheduled (a year ahead).
    const LEADS: u64 = 3;
    let env: Vec<(&str, &str)> = SERVICE_ENV
        .iter()
        .copied()
        .chain([(contract::env::UPR_REMINDER_LEADS, "30d,7d,1d")])
        .collect();
    // The timers stream itself, not the notifier's status (refreshed once
    // a second, which would blur the figure).
    let pending = || async {
        let mut stream = js.get_stream(names::TIMERS_STREAM).await.ok()?;
        Some(stream.info().await.ok()?.state.messages)
    };
    let first = ServiceProcess::start(services::NOTIFIER, url, &env);
    first.wait_healthy().await;
    let mut session = 500;
    // Planned by the only replica: it holds the pin.
    store(js, "review_scheduled", scheduling(session)).await?;
    session += 1;
    let mut want = LEADS * (scheduled + 1);
    if until(|| async { pending().await == Some(want) })
        .await
        .is_none()
    {
        return Err(format!(
            "the notifier did not plan the first review (timers pending: {:?}); its log:\n{}",
            pending().await,
            first.logs()
        ));
    }
    let second = ServiceProcess::start(services::NOTIFIER, url, &env);
    second.wait_healthy().await;
    // The pinned replica first, the standby second.
    let mut replicas = [first, second];
    for rep in 0..sizes.reps {
        replicas[0].kill9();
        store(js, "review_scheduled", scheduling(session)).await?;
        session += 1;
        want += LEADS;
        let took = until(|| async { pending().await == Some(want) })
            .await
            .ok_or("the standby notifier did not plan within 30 s")?;
        say(format!(
            "failover rep {}: notifier standby planned the next review {:.2} s after the kill",
            rep + 1,
            took.as_secs_f64()
        ));
        part.record(
            "failover.planner",
            "Notifier planner: kill of the pinned replica to the next review planned",
            "s",
            Some(Goal::Below(5.0)),
            took.as_secs_f64(),
        );
        replicas[0].restart();
        replicas[0].wait_healthy().await;
        replicas.swap(0, 1);
    }
    Ok(())
}
