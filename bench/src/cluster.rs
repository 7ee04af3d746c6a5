//! Part 6: ingest on a 3-node cluster, every stream replicated on all three
//! (R3, as `compose.cluster.yaml` runs it), against the raw publisher on the
//! same cluster, with 1 and 2 ingest replicas. A replicated append waits for
//! a quorum of nodes, so both sides pay it; the ratio shows what ingest adds.
//!
//! Then, on a fresh cluster with one ingest replica and the notifier (its
//! streams and bucket R3 too), one ingest pass measures the planner's lag
//! behind ingest on the cluster, as part 9 does on one node (no goal: a
//! reference for batching the planner's replicated writes). It comes last
//! so the notifier's work does not weigh on the ratios above.

use upr_nats::contract;
use upr_tests::{NatsCluster, ServiceProcess};

use crate::{
    Sizes,
    drive::Mode,
    ingest::{SERVICE_ENV, pass},
    part::{Part, say},
    planner,
    stats::Goal,
    workload::Keys,
};

/// Part 6.
pub async fn run(part: Part, sizes: Sizes) {
    if sizes.cluster_replicas.is_empty() {
        return;
    }
    let cluster = NatsCluster::start(3).await;
    let urls = cluster.urls();
    // The benchmark's own client talks to one node, as a user's would.
    let url = cluster.node(0).url();
    let Ok(client) = crate::drive::connect(&url).await else {
        return part.error("cannot connect to the benchmark's cluster");
    };
    let js = async_nats::jetstream::new(client.clone());
    let mut pids: Vec<(String, u32)> = vec![("upr-bench".into(), std::process::id())];
    for i in 0..3 {
        if let Some(p) = crate::system::nats_pid(cluster.node(i).port()) {
            pids.push((format!("nats-server#{}", i + 1), p));
        }
    }
    let env: Vec<(&str, &str)> = SERVICE_ENV
        .iter()
        .copied()
        .chain([(contract::env::UPR_REPLICAS, "3")])
        .collect();
    let mut services: Vec<ServiceProcess> = Vec::new();
    let mut keys = Keys::default();
    part.detail("nodes", 3.into());
    for &replicas in &sizes.cluster_replicas {
        while services.len() < replicas {
            let s = ServiceProcess::start("upr-ingest", &urls, &env);
            s.wait_healthy().await;
            if let Some(p) = s.pid() {
                pids.push((format!("upr-ingest#{}", services.len() + 1), p));
            }
            services.push(s);
        }
        for rep in 0..sizes.reps {
            let seed = 3000 + rep as u64;
            let raw = pass(&part, &url, &js, &mut keys, seed, &sizes, Mode::Raw, &pids).await;
            let ing = pass(
                &part,
                &url,
                &js,
                &mut keys,
                seed,
                &sizes,
                Mode::Ingest,
                &pids,
            )
            .await;
            let (Ok(raw), Ok(ing)) = (raw, ing) else {
                return;
            };
            say(format!(
                "cluster x{replicas} rep {}: raw {:.0} events/s, ingest {:.0} events/s",
                rep + 1,
                raw.rate(),
                ing.rate()
            ));
            part.record(
                &format!("cluster.raw.{replicas}"),
                &format!("Raw publisher, 3 nodes R3, beside {replicas} replica(s)"),
                "events/s",
                None,
                raw.rate(),
            );
            part.record(
                &format!("cluster.ingest.{replicas}"),
                &format!("Ingest, 3 nodes R3, {replicas} replica(s)"),
                "events/s",
                None,
                ing.rate(),
            );
            let goal = (replicas == 1).then_some(Goal::AtLeast(0.6));
            part.record(
                &format!("cluster.ratio.{replicas}"),
                &format!("Ingest / raw, 3 nodes R3, {replicas} replica(s)"),
                "",
                goal,
                ing.rate() / raw.rate(),
            );
        }
    }
    drop(services);
    drop(cluster);
    planner_lag(&part, &sizes, &env).await;
}

/// The planner's lag behind one ingest pass on a fresh cluster, with one
/// ingest replica and the notifier: a cluster of its own because the
/// notifier plans the whole log from its start (the log cannot be
/// purged), and the passes above left it a backlog.
async fn planner_lag(part: &Part, sizes: &Sizes, env: &[(&str, &str)]) {
    let cluster = NatsCluster::start(3).await;
    let urls = cluster.urls();
    let url = cluster.node(0).url();
    let Ok(client) = crate::drive::connect(&url).await else {
        return part.error("cannot connect to the planner's cluster");
    };
    let js = async_nats::jetstream::new(client.clone());
    let ingest = ServiceProcess::start(contract::services::INGEST, &urls, env);
    ingest.wait_healthy().await;
    let notifier = ServiceProcess::start(contract::services::NOTIFIER, &urls, env);
    notifier.wait_healthy().await;
    say(format!(
        "cluster: upr-ingest pid {:?}, upr-notifier pid {:?}",
        ingest.pid(),
        notifier.pid()
    ));
    let mut keys = Keys::default();
    match planner::lag_pass(
        &client,
        &js,
        &url,
        &mut keys,
        3100,
        sizes,
        sizes.ingest_events,
    )
    .await
    {
        Ok(lag) if !lag.samples.is_empty() => planner::record(
            part,
            0,
            &lag,
            "cluster.planner",
            ", 3 nodes R3, 1 ingest replica",
            None,
        ),
        Ok(lag) => part.error(format!(
            "cluster: no schedule seen for any of {} scheduling events",
            lag.scheduling_events
        )),
        Err(e) => part.error(format!("cluster planner lag: {e}")),
    }
    drop((notifier, ingest));
    drop(cluster);
}
