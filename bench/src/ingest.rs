//! Part 1 (ingest against a raw JetStream publisher) and the replica half of
//! part 6 (ingest throughput with 1, 2 and 4 replicas).
//!
//! Both sides send the same workload shape (same seed, fresh reviews, same
//! payload sizes) with the same number of reviews in flight. The raw side
//! publishes the envelope ingest would store, with `Nats-Msg-Id` and the
//! expected-last-subject-sequence headers scoped to the review, and waits
//! for the ack; the ingest side sends the intake JSON as a request and waits
//! for the reply. Raw and ingest runs alternate, so machine noise hits both.

use upr_nats::contract;
use upr_tests::ServiceProcess;

use crate::fixture::Fixture;

use crate::{
    Sizes,
    drive::{self, Mode, Outcome},
    part::{Part, say},
    stats::Goal,
    system::{CpuMeter, MemWatch},
    workload::{Generator, Keys, count},
};

/// Environment of every service process the benchmark starts.
pub const SERVICE_ENV: &[(&str, &str)] = &[(upr_nats::contract::env::RUST_LOG, "warn")];

/// Messages in `UPR_EVENTS`.
pub async fn stream_messages(js: &async_nats::jetstream::Context) -> Result<u64, String> {
    let mut stream = js
        .get_stream(contract::EVENTS_STREAM)
        .await
        .map_err(|e| format!("get stream: {e}"))?;
    let info = stream
        .info()
        .await
        .map_err(|e| format!("stream info: {e}"))?;
    Ok(info.state.messages)
}

/// One raw pass then one ingest pass with the same seed, so the two sides
/// of a ratio always see the same workload.
async fn raw_then_ingest(
    part: &Part,
    url: &str,
    js: &async_nats::jetstream::Context,
    keys: &mut Keys,
    seed: u64,
    sizes: &Sizes,
    pids: &[(String, u32)],
) -> Result<(Outcome, Outcome), String> {
    let raw = pass(part, url, js, keys, seed, sizes, Mode::Raw, pids).await?;
    let ing = pass(part, url, js, keys, seed, sizes, Mode::Ingest, pids).await?;
    Ok((raw, ing))
}

/// Runs one raw or ingest pass of `events` events and checks every one was stored.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn pass(
    part: &Part,
    url: &str,
    js: &async_nats::jetstream::Context,
    keys: &mut Keys,
    seed: u64,
    sizes: &Sizes,
    mode: Mode,
    pids: &[(String, u32)],
) -> Result<Outcome, String> {
    let plans = Generator::new(seed).plans(keys, sizes.ingest_events);
    let total = count(&plans);
    let prepared = drive::prepare(&plans, crate::now());
    let before = stream_messages(js).await?;
    let cpu = CpuMeter::start(pids.to_vec());
    let outcome = drive::drive(url, prepared, sizes.connections, sizes.in_flight, mode).await?;
    let used = cpu.stop();
    let after = stream_messages(js).await?;
    // CPU per event of each process, and how busy the machine was: the
    // evidence for what limits a run on 2 cores.
    let per_event: serde_json::Map<String, serde_json::Value> = used
        .iter()
        .map(|(name, secs)| {
            (
                name.clone(),
                crate::stats::round(secs / outcome.stored.max(1) as f64 * 1e6).into(),
            )
        })
        .collect();
    let busy: f64 = used.iter().map(|(_, s)| s).sum::<f64>() / outcome.elapsed.as_secs_f64();
    part.push_detail(
        "cpu",
        serde_json::json!({
            "mode": format!("{mode:?}"),
            "events": outcome.stored,
            "events_per_s": crate::stats::round(outcome.rate()),
            "cpu_us_per_event": per_event,
            "cores_busy": crate::stats::round(busy),
        }),
    );
    // Failures are recorded (the run fails) but the figures go on, so one
    // broken configuration does not hide the others.
    if outcome.failed > 0 || outcome.stored != total {
        part.error(format!(
            "{mode:?} with {} ingest replica(s) (run of {total} events): {} stored, {} refused or failed, {} not sent after a failure; first errors: {:?}",
            pids.iter().filter(|(n, _)| n.starts_with("upr-ingest")).count(),
            outcome.stored,
            outcome.failed,
            outcome.skipped,
            outcome.errors
        ));
    }
    if after - before != outcome.stored as u64 {
        let msg = format!(
            "{mode:?}: the stream grew by {} but {} events were acknowledged",
            after - before,
            outcome.stored
        );
        part.error(&msg);
        return Err(msg);
    }
    Ok(outcome)
}

/// Part 1, and part 6's replica curve when `sizes.replicas` is not empty.
pub async fn run(part: Part, sizes: Sizes) {
    let Some(bed) = Fixture::start(&part).await else {
        return;
    };
    let (url, js) = (&bed.url, &bed.js);
    let mut services = vec![ServiceProcess::start("upr-ingest", url, SERVICE_ENV)];
    services[0].wait_healthy().await;
    let pid = services[0].pid();
    let mem = pid.map(MemWatch::start);
    say(format!("upr-ingest pid {pid:?}"));
    let mut pids: Vec<(String, u32)> = vec![("upr-bench".into(), std::process::id())];
    if let Some(p) = bed.nats_pid() {
        pids.push(("nats-server".into(), p));
    }
    if let Some(p) = pid {
        pids.push(("upr-ingest".into(), p));
    }
    let mut keys = Keys::default();
    part.detail("events_per_run", sizes.ingest_events.into());
    part.detail("reviews_in_flight", sizes.in_flight.into());
    part.detail("connections", sizes.connections.into());

    // Warm-up: connections, the stream's first blocks, ingest's workers.
    let warm = Sizes {
        ingest_events: sizes.ingest_events.min(1000),
        ..sizes.clone()
    };
    for mode in [Mode::Raw, Mode::Ingest] {
        if pass(&part, url, js, &mut keys, 99, &warm, mode, &pids)
            .await
            .is_err()
        {
            return;
        }
    }

    for rep in 0..sizes.reps {
        let seed = 1000 + rep as u64;
        let Ok((raw, ing)) = raw_then_ingest(&part, url, js, &mut keys, seed, &sizes, &pids).await
        else {
            return;
        };
        say(format!(
            "ingest rep {}: raw {:.0} events/s, ingest {:.0} events/s ({:.2})",
            rep + 1,
            raw.rate(),
            ing.rate(),
            ing.rate() / raw.rate()
        ));
        part.record(
            "ingest.raw",
            "Raw JetStream publisher",
            "events/s",
            None,
            raw.rate(),
        );
        part.record(
            "ingest.service",
            "Ingest (requests, 1 replica)",
            "events/s",
            None,
            ing.rate(),
        );
        part.record(
            "ingest.ratio",
            "Ingest / raw",
            "",
            Some(Goal::AtLeast(0.6)),
            ing.rate() / raw.rate(),
        );
    }
    if let Some(mem) = mem {
        let mb = mem.stop(pid).await;
        part.record(
            "memory.ingest",
            "upr-ingest peak RSS (part 1)",
            "MB",
            Some(Goal::Below(100.0)),
            mb,
        );
    }

    if replica_curve(&part, &sizes, url, js, &mut keys, &mut services, &mut pids)
        .await
        .is_err()
    {
        return;
    }
    part.detail("reviews_used", keys.used().into());
    drop(services);
    bed.finish(&part, 1).await;
}

/// Part 6's replica curve: more ingest replicas beside the part's first,
/// each count measured against the raw publisher. `Err` when a pass failed
/// (recorded in `part`).
async fn replica_curve(
    part: &Part,
    sizes: &Sizes,
    url: &str,
    js: &async_nats::jetstream::Context,
    keys: &mut Keys,
    services: &mut Vec<ServiceProcess>,
    pids: &mut Vec<(String, u32)>,
) -> Result<(), ()> {
    for &replicas in &sizes.replicas {
        while services.len() < replicas {
            let s = ServiceProcess::start("upr-ingest", url, SERVICE_ENV);
            s.wait_healthy().await;
            if let Some(p) = s.pid() {
                pids.push((format!("upr-ingest#{}", services.len() + 1), p));
            }
            services.push(s);
        }
        for rep in 0..sizes.reps {
            let seed = 2000 + rep as u64;
            let Ok((raw, ing)) = raw_then_ingest(part, url, js, keys, seed, sizes, pids).await
            else {
                return Err(());
            };
            say(format!(
                "ingest x{replicas} rep {}: raw {:.0} events/s, ingest {:.0} events/s",
                rep + 1,
                raw.rate(),
                ing.rate()
            ));
            part.record(
                &format!("scaling.ingest.{replicas}"),
                &format!("Ingest, {replicas} replica(s)"),
                "events/s",
                None,
                ing.rate(),
            );
            part.record(
                &format!("scaling.raw.{replicas}"),
                &format!("Raw publisher beside {replicas} replica(s)"),
                "events/s",
                None,
                raw.rate(),
            );
        }
    }
    Ok(())
}
