//! Deployment: the compose files, the Dockerfile and the NATS permissions.
//!
//! There is no Docker engine in CI, so the compose files and the Dockerfile
//! are checked by reading them: what `docker compose up -d` needs to give a
//! working system is asserted field by field. The permissions in
//! `deploy/nats/nats.conf` are checked for real: a nats-server runs with that
//! very file, the services connect with their own users, and the `publisher`
//! and `reader` users are refused what they must not do. Those servers run
//! the shipped configuration, so they are started here, not by a `TestApp`.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
    time::Duration,
};

use async_nats::jetstream;
use upr_nats::contract::{self, services};
use upr_tests::fixtures::{KZ48_DATE, kz48_schedule_text};
use upr_tests::{NatsCluster, NatsServer, ServiceProcess, eventually};
use yaml_rust2::{Yaml, YamlLoader, yaml::Hash};

// ---- helpers -------------------------------------------------------------------

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn read(path: &str) -> String {
    std::fs::read_to_string(root().join(path)).unwrap_or_else(|e| panic!("read {path}: {e}"))
}

/// Loads a compose file with YAML merge keys (`<<: *anchor`) applied, as
/// compose does: explicit keys win over merged ones.
fn compose(path: &str) -> Yaml {
    let docs = YamlLoader::load_from_str(&read(path)).unwrap_or_else(|e| panic!("{path}: {e}"));
    merge_keys(docs.into_iter().next().expect("one YAML document"))
}

fn merge_keys(node: Yaml) -> Yaml {
    match node {
        Yaml::Hash(hash) => {
            let merge_key = Yaml::String("<<".into());
            let mut out = Hash::new();
            for (k, v) in &hash {
                if *k != merge_key {
                    out.insert(k.clone(), merge_keys(v.clone()));
                }
            }
            if let Some(merged) = hash.get(&merge_key) {
                let sources: Vec<Yaml> = match merged {
                    Yaml::Array(items) => items.clone(),
                    other => vec![other.clone()],
                };
                for source in sources {
                    if let Yaml::Hash(source) = merge_keys(source) {
                        for (k, v) in source {
                            out.entry(k).or_insert(v);
                        }
                    }
                }
            }
            Yaml::Hash(out)
        }
        Yaml::Array(items) => Yaml::Array(items.into_iter().map(merge_keys).collect()),
        other => other,
    }
}

/// A list of strings (`command`, health-check `test`).
fn strings(node: &Yaml, what: &str) -> Vec<String> {
    node.as_vec()
        .unwrap_or_else(|| panic!("{what} is not a list: {node:?}"))
        .iter()
        .map(|v| {
            v.as_str()
                .unwrap_or_else(|| panic!("{what}: {v:?} is not a string"))
                .to_string()
        })
        .collect()
}

/// `volumes` as (source, target) pairs, from the short form
/// (`source:target[:ro]`) and the long form (a mapping).
fn mounts(service: &Yaml) -> Vec<(String, String)> {
    service["volumes"]
        .as_vec()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|v| match v.as_str() {
            Some(short) => {
                let mut parts = short.split(':');
                (
                    parts.next().unwrap_or_default().to_string(),
                    parts.next().unwrap_or_default().to_string(),
                )
            }
            None => (
                v["source"].as_str().unwrap_or_default().to_string(),
                v["target"].as_str().unwrap_or_default().to_string(),
            ),
        })
        .collect()
}

/// Whether `service` mounts `source` at `target`, and (long form) refuses to
/// start when the source is missing instead of creating an empty directory.
fn mounts_secret(service: &Yaml, source: &str, target: &str) -> bool {
    service["volumes"].as_vec().is_some_and(|vs| {
        vs.iter().any(|v| {
            v["source"].as_str() == Some(source)
                && v["target"].as_str() == Some(target)
                && v["read_only"].as_bool() == Some(true)
                && v["bind"]["create_host_path"].as_bool() == Some(false)
        })
    })
}

/// `environment` as a mapping (the form the compose files use).
fn env_var(service: &Yaml, name: &str) -> Option<String> {
    let value = &service["environment"][name];
    value
        .as_str()
        .map(str::to_string)
        .or_else(|| value.as_i64().map(|n| n.to_string()))
}

/// The value of `flag` in a command line.
fn flag<'a>(command: &'a [String], flag: &str) -> Option<&'a str> {
    command
        .iter()
        .position(|a| a == flag)
        .and_then(|i| command.get(i + 1))
        .map(String::as_str)
}

/// A nats-server with JetStream, the project's own `nats.conf` and freshly
/// generated keys.
fn secured_server() -> NatsServer {
    NatsServer::start_secured()
}

/// Starts a service with its own user, as compose does.
fn start_service(
    nats: &NatsServer,
    name: &str,
    user: &str,
    extra: &[(&str, &str)],
) -> ServiceProcess {
    let seed = nats.seed_file(user).display().to_string();
    let mut env = vec![("NATS_NKEY", seed.as_str())];
    env.extend_from_slice(extra);
    ServiceProcess::start(name, &nats.url(), &env)
}

/// Records `review_scheduled` for KZ at session 48 as a person with the
/// `publisher` user would (`nats req upr.ingest.review_scheduled '{...}'`)
/// and returns ingest's `{"ok": true, ...}` reply.
async fn publish_review_scheduled(
    publisher: &async_nats::Client,
    scheduled_for: &str,
) -> serde_json::Value {
    let payload = serde_json::json!({
        "country": "KZ", "session": 48, "scheduled_for": scheduled_for, "location": "Geneva"
    });
    let reply = eventually(
        Duration::from_secs(10),
        "ingest to answer the publisher",
        || {
            let publisher = publisher.clone();
            let payload = payload.to_string();
            async move {
                publisher
                    .request("upr.ingest.review_scheduled", payload.into())
                    .await
                    .ok()
            }
        },
    )
    .await;
    let reply: serde_json::Value = serde_json::from_slice(&reply.payload).expect("JSON reply");
    assert_eq!(reply["ok"], true, "ingest refused: {reply}");
    reply
}

/// RFC 3339 UTC, whole seconds, `offset` from now.
fn from_now(offset: Duration) -> String {
    let t = time::OffsetDateTime::now_utc() + offset;
    let t = t.replace_nanosecond(0).expect("zero nanoseconds");
    t.format(&time::format_description::well_known::Rfc3339)
        .expect("format")
}

/// Permission refusals the server logged, e.g.
/// `"$G/user:publisher" - Publish Violation - Subject "upr.events.KZ.48.review_cancelled"`.
fn violations(nats: &NatsServer) -> Vec<String> {
    nats.log()
        .lines()
        .filter(|l| l.contains("Violation"))
        .map(str::to_string)
        .collect()
}

// ---- compose.yaml ----------------------------------------------------------------

#[test]
fn compose_runs_nats_with_jetstream_a_volume_the_config_and_a_health_check() {
    let doc = compose("compose.yaml");
    let nats = &doc["services"]["nats"];
    let image = nats["image"].as_str().expect("nats image");
    let tag = image
        .strip_prefix("nats:")
        .expect("the official nats image");
    let (version, variant) = tag.split_once('-').expect("a <version>-alpine tag");
    assert_eq!(
        variant, "alpine",
        "alpine: the plain image has no shell or wget for the health check"
    );
    let mut parts = version
        .split('.')
        .map(|p| p.parse::<u32>().expect("numeric version"));
    let (major, minor) = (parts.next().unwrap(), parts.next().unwrap_or(0));
    assert!(
        (major, minor) >= (2, 12),
        "nats {version}: message schedules need 2.12 or newer"
    );
    // What users deploy is the server every test and benchmark runs.
    let lib = read("scripts/lib.sh");
    let tested = lib
        .lines()
        .find_map(|l| l.strip_prefix("NATS_SERVER_VERSION="))
        .expect("scripts/lib.sh pins the tested nats-server");
    assert_eq!(
        version, tested,
        "compose.yaml runs the nats-server the tests run"
    );
    let cluster = compose("compose.cluster.yaml");
    for (name, node) in cluster["services"].as_hash().unwrap() {
        if let Some(image) = node["image"].as_str().filter(|i| i.starts_with("nats:")) {
            assert_eq!(
                image,
                format!("nats:{tested}-alpine"),
                "{name:?} in compose.cluster.yaml"
            );
        }
    }

    let command = strings(&nats["command"], "nats command");
    assert!(
        command.iter().any(|a| a == "-js" || a == "--jetstream"),
        "JetStream on: {command:?}"
    );
    assert_eq!(
        flag(&command, "-m"),
        Some("8222"),
        "monitoring port for the health check"
    );
    let conf = flag(&command, "-c").expect("the config file is used");
    let store = flag(&command, "-sd").expect("JetStream store dir");

    let volumes = mounts(nats);
    let named: Vec<&str> = doc["volumes"]
        .as_hash()
        .expect("top-level volumes")
        .keys()
        .filter_map(Yaml::as_str)
        .collect();
    assert!(
        volumes
            .iter()
            .any(|(source, target)| named.contains(&source.as_str()) && target == store),
        "a named volume on {store}: {volumes:?}"
    );
    assert!(
        volumes
            .iter()
            .any(|(source, target)| source == "./deploy/nats/nats.conf" && target == conf),
        "deploy/nats/nats.conf mounted at {conf}: {volumes:?}"
    );
    // nats.conf includes "secrets/nats-keys.conf", relative to itself.
    let keys = Path::new(conf).with_file_name("secrets/nats-keys.conf");
    assert!(
        mounts_secret(nats, "./secrets/nats-keys.conf", keys.to_str().unwrap()),
        "the public keys mounted beside the config, read-only, never created empty: {volumes:?}"
    );
    assert!(
        nats["environment"].is_badvalue(),
        "the server gets no credentials from the environment"
    );

    assert_eq!(
        strings(&nats["entrypoint"], "nats entrypoint"),
        [
            "/bin/sh",
            "/etc/nats/store-check.sh",
            "single",
            store,
            "--",
            "nats-server"
        ],
        "a cluster node's store is refused before the server starts"
    );
    let check = strings(&nats["healthcheck"]["test"], "nats healthcheck").join(" ");
    assert!(
        check.contains("wget") && check.contains("/healthz?js-enabled-only=true"),
        "{check}"
    );
}

#[test]
fn compose_keys_service_generates_the_installations_keys_on_demand() {
    let doc = compose("compose.yaml");
    let keys = &doc["services"]["keys"];
    assert_eq!(
        strings(&keys["command"], "keys command"),
        ["upr-keys", "init", "/project/secrets"]
    );
    assert!(
        mounts(keys).contains(&("./".to_string(), "/project".to_string())),
        "the project directory is mounted where the keys are written"
    );
    assert_eq!(
        strings(&keys["profiles"], "keys profiles"),
        ["setup"],
        "`up` does not run it"
    );
}

#[test]
fn compose_builds_the_image_once_and_starts_each_service_after_nats_is_healthy() {
    let doc = compose("compose.yaml");
    // One service builds the image, so compose builds and exports it once;
    // every service of ours runs that image and never pulls it (there is no
    // `upr-tracker` in any registry).
    let builders: Vec<&str> = doc["services"]
        .as_hash()
        .expect("services")
        .iter()
        .filter(|(_, s)| !s["build"].is_badvalue())
        .filter_map(|(name, _)| name.as_str())
        .collect();
    assert_eq!(builders, ["ingest"], "only ingest has `build:`");
    let ingest = &doc["services"]["ingest"];
    assert_eq!(ingest["build"]["dockerfile"].as_str(), Some("Dockerfile"));
    assert_eq!(ingest["build"]["context"].as_str(), Some("."));
    let image = ingest["image"].as_str().expect("the built image is named");
    let (name, tag) = image.split_once(':').expect("an image tag");
    assert!(
        !name.contains('/') && !name.contains('$') && tag != "latest",
        "a local image name with a fixed tag: {image}"
    );
    for service in ["keys", "ingest", "projection", "notifier", "gateway"] {
        let s = &doc["services"][service];
        assert_eq!(s["image"].as_str(), Some(image), "{service} runs {image}");
        assert_eq!(
            s["pull_policy"].as_str(),
            Some("never"),
            "{service}: compose never tries to pull {image}"
        );
    }
    for file in ["compose.cluster.yaml", "compose.tls.yaml"] {
        let overrides = compose(file);
        for (name, s) in overrides["services"].as_hash().expect("services") {
            assert!(s["build"].is_badvalue(), "{file}: {name:?} builds nothing");
            assert!(
                s["image"].as_str().is_none_or(|i| i.starts_with("nats:")),
                "{file}: {name:?} keeps the services' image"
            );
        }
    }

    for (service, binary, user) in [
        ("ingest", services::INGEST, "ingest"),
        ("projection", services::PROJECTION, "projection"),
        ("notifier", services::NOTIFIER, "notifier"),
        ("gateway", services::GATEWAY, "gateway"),
    ] {
        let s = &doc["services"][service];
        assert!(!s.is_badvalue(), "service {service} exists");
        assert_eq!(
            s["depends_on"]["nats"]["condition"].as_str(),
            Some("service_healthy"),
            "{service} waits for a healthy nats"
        );
        assert!(
            matches!(
                s["restart"].as_str(),
                Some("unless-stopped" | "always" | "on-failure")
            ),
            "{service} restart policy"
        );
        assert_eq!(
            strings(&s["command"], "command"),
            [binary],
            "{service} runs {binary}"
        );
        assert_eq!(
            strings(&s["healthcheck"]["test"], "healthcheck"),
            ["CMD", binary, "healthcheck"],
            "{service} health check"
        );
        let key = env_var(s, "NATS_NKEY").expect("NATS_NKEY");
        assert!(
            mounts_secret(s, &format!("./secrets/{user}.nk"), &key),
            "{service} gets its own key ({user}.nk) at {key}, and only that: {:?}",
            mounts(s)
        );
        // The gateway also reads its webhook subscriptions and their
        // secrets from the checkout's webhooks/ directory, read-only, and
        // refuses to start without it rather than creating it.
        let extra = if service == "gateway" {
            assert!(
                mounts_secret(s, "./webhooks", "/etc/upr/webhooks"),
                "the gateway mounts ./webhooks read-only: {:?}",
                mounts(s)
            );
            assert!(
                root().join("webhooks/.gitignore").exists(),
                "webhooks/ is in the checkout"
            );
            1
        } else {
            0
        };
        assert_eq!(mounts(s).len(), 1 + extra, "{service} mounts nothing else");
        assert!(
            env_var(s, "NATS_PASSWORD").is_none() && env_var(s, "NATS_USER").is_none(),
            "{service} has no password"
        );
        assert!(
            env_var(s, "NATS_URL").is_some_and(|u| u.contains("nats:4222")),
            "{service} NATS_URL"
        );
    }
}

/// A cluster node runs the store check in cluster mode and mounts the keys
/// conf, the route file and the route TLS files.
fn assert_cluster_node_secrets_and_store_check(node: &str, s: &Yaml) {
    let volumes = mounts(s);
    // A single server's store is refused before the server starts.
    assert_eq!(
        strings(&s["entrypoint"], "entrypoint"),
        [
            "/bin/sh",
            "/etc/nats/store-check.sh",
            "cluster",
            "/data",
            "--",
            "nats-server"
        ],
        "{node}"
    );
    for file in [
        "nats-keys.conf",
        "route.conf",
        "route-tls/ca.pem",
        "route-tls/route-cert.pem",
        "route-tls/route-key.pem",
    ] {
        assert!(
            mounts_secret(
                s,
                &format!("./secrets/{file}"),
                &format!("/etc/nats/secrets/{file}")
            ),
            "{node} mounts secrets/{file}: {volumes:?}"
        );
    }
}

#[test]
fn compose_publishes_the_gateway_on_the_hosts_loopback_only() {
    let doc = compose("compose.yaml");
    let gateway = &doc["services"]["gateway"];
    assert_eq!(
        env_var(gateway, "UPR_HTTP_ADDR").as_deref(),
        Some("0.0.0.0:8080"),
        "every address inside the container, so the published port reaches it"
    );
    assert_eq!(
        strings(&gateway["ports"], "ports"),
        ["127.0.0.1:${UPR_HTTP_PORT:-8080}:8080"],
        "published on the host's loopback only"
    );
}

#[test]
fn cluster_profile_runs_three_routed_nodes_and_three_replicas() {
    let doc = compose("compose.cluster.yaml");
    let nodes = ["nats", "nats-2", "nats-3"];
    let mut cluster_names = Vec::new();
    for node in nodes {
        let s = &doc["services"][node];
        let command = strings(&s["command"], &format!("{node} command"));
        assert!(
            command.iter().any(|a| a == "-js"),
            "{node} JetStream: {command:?}"
        );
        assert_eq!(
            flag(&command, "-c"),
            Some("/etc/nats/cluster.conf"),
            "{node} uses the cluster configuration (users and authenticated routes)"
        );
        assert!(
            flag(&command, "--routes").is_none() && flag(&command, "--cluster").is_none(),
            "{node}: routes come from cluster.conf, with their password: {command:?}"
        );
        let volumes = mounts(s);
        for (source, target) in [
            ("./deploy/nats/cluster.conf", "/etc/nats/cluster.conf"),
            ("./deploy/nats/nats.conf", "/etc/nats/nats.conf"),
        ] {
            assert!(
                volumes.contains(&(source.to_string(), target.to_string())),
                "{node} mounts {source}: {volumes:?}"
            );
        }
        assert_cluster_node_secrets_and_store_check(node, s);
        // The routes, with the route password, come from upr-keys; by
        // default they are exactly these nodes.
        assert!(
            read("deploy/nats/cluster.conf").contains("routes: $UPR_ROUTES"),
            "cluster.conf takes its routes from secrets/route.conf"
        );
        let dir = upr_tests::secured_config_dir();
        let routes = std::fs::read_to_string(dir.path().join("secrets/route.conf")).unwrap();
        let password = std::fs::read_to_string(dir.path().join("secrets/route.password")).unwrap();
        for other in nodes {
            let route = format!("nats-route://route:{}@{other}:6222", password.trim());
            assert!(
                routes.contains(&route),
                "{node} routes to {other}: {routes}"
            );
        }
        cluster_names.push("upr".to_string());
        assert!(
            flag(&command, "--server_name").is_some(),
            "{node} has a stable server name"
        );
        let check = strings(&s["healthcheck"]["test"], "healthcheck").join(" ");
        assert!(
            check.contains("/healthz?js-enabled-only=true"),
            "{node}: {check}"
        );
        assert!(
            mounts(s).iter().any(|(_, target)| target == "/data"),
            "{node} own store volume"
        );
    }
    cluster_names.dedup();
    assert_eq!(cluster_names.len(), 1, "one cluster name");
    for service in ["ingest", "projection", "notifier", "gateway"] {
        let s = &doc["services"][service];
        assert_eq!(
            env_var(s, "UPR_REPLICAS").as_deref(),
            Some("3"),
            "{service} replicas"
        );
        let url = env_var(s, "NATS_URL").expect("NATS_URL");
        for node in nodes {
            assert!(
                url.contains(&format!("nats://{node}:4222")),
                "{service} can fail over to {node}: {url}"
            );
            assert_eq!(
                s["depends_on"][node]["condition"].as_str(),
                Some("service_healthy"),
                "{service} waits for {node}"
            );
        }
    }
}

/// (source, target) of each mount.
type Mounts = BTreeSet<(String, String)>;

/// What the checks below read of one service after the overrides.
#[derive(Default)]
struct Merged {
    mounts: Mounts,
    ports: Vec<String>,
    user: Option<String>,
}

/// `overlay`'s services merged onto `base`'s as compose does for the keys
/// checked here: `volumes` by target (the overlay's wins), `ports` appended,
/// `user` replaced; services only in the overlay are added.
fn merged(base: &Yaml, overlay: Option<&Yaml>) -> BTreeMap<String, Merged> {
    let services = |doc: &Yaml| -> Vec<(String, Yaml)> {
        doc["services"]
            .as_hash()
            .map(|h| {
                h.iter()
                    .map(|(k, v)| (k.as_str().unwrap().to_string(), v.clone()))
                    .collect()
            })
            .unwrap_or_default()
    };
    let ports = |s: &Yaml| -> Vec<String> {
        s["ports"]
            .as_vec()
            .map(|p| p.iter().map(|v| v.as_str().unwrap().to_string()).collect())
            .unwrap_or_default()
    };
    let mut out: BTreeMap<String, Merged> = BTreeMap::new();
    for doc in std::iter::once(base).chain(overlay) {
        for (name, service) in services(doc) {
            let entry = out.entry(name).or_default();
            for (source, target) in mounts(&service) {
                entry.mounts.retain(|(_, t)| *t != target);
                entry.mounts.insert((source, target));
            }
            entry.ports.extend(ports(&service));
            if let Some(user) = service["user"].as_str() {
                entry.user = Some(user.to_string());
            }
        }
    }
    out
}

fn mount_set(pairs: &[(&str, &str)]) -> Mounts {
    pairs
        .iter()
        .map(|(s, t)| ((*s).to_string(), (*t).to_string()))
        .collect()
}

/// What a NATS container of `layout` (single, cluster, tls) mounts: its
/// store, its configuration, the store check and the files of ./secrets the
/// server reads; never a seed or a CA key.
fn nats_mounts(data: &str, layout: &str) -> Mounts {
    let mut m = mount_set(&[
        (data, "/data"),
        ("./deploy/nats/nats.conf", "/etc/nats/nats.conf"),
        ("./deploy/nats/store-check.sh", "/etc/nats/store-check.sh"),
    ]);
    let mut secrets = vec!["nats-keys.conf", "parties.conf"];
    match layout {
        "cluster" => {
            m.extend(mount_set(&[(
                "./deploy/nats/cluster.conf",
                "/etc/nats/cluster.conf",
            )]));
            secrets.extend([
                "route.conf",
                "route-tls/ca.pem",
                "route-tls/route-cert.pem",
                "route-tls/route-key.pem",
            ]);
        }
        "tls" => {
            m.extend(mount_set(&[(
                "./deploy/nats/tls.conf",
                "/etc/nats/tls.conf",
            )]));
            secrets.extend(["tls/server-cert.pem", "tls/server-key.pem"]);
        }
        _ => {}
    }
    for file in secrets {
        m.insert((
            format!("./secrets/{file}"),
            format!("/etc/nats/secrets/{file}"),
        ));
    }
    m
}

/// A compose file combination, and what its NATS nodes mount.
type Case = (&'static str, Option<Yaml>, Vec<(&'static str, Mounts)>);

fn nats_cases() -> [Case; 3] {
    [
        (
            "compose.yaml",
            None,
            vec![("nats", nats_mounts("nats-data", "single"))],
        ),
        (
            "compose.yaml + compose.cluster.yaml",
            Some(compose("compose.cluster.yaml")),
            vec![
                ("nats", nats_mounts("nats-data", "cluster")),
                ("nats-2", nats_mounts("nats-data-2", "cluster")),
                ("nats-3", nats_mounts("nats-data-3", "cluster")),
            ],
        ),
        (
            "compose.yaml + compose.tls.yaml",
            Some(compose("compose.tls.yaml")),
            vec![("nats", nats_mounts("nats-data", "tls"))],
        ),
    ]
}

/// Every NATS node mounts exactly what the server reads; `keys` the
/// project; every other service exactly its own key (`./secrets/<service>.nk`,
/// a service added later included), under TLS the CA certificate, and the
/// gateway its webhook subscriptions (`./webhooks`).
#[test]
fn each_container_mounts_exactly_what_it_needs_and_no_other_users_key() {
    let base = compose("compose.yaml");
    for (files, overlay, nodes) in nats_cases() {
        let got = merged(&base, overlay.as_ref());
        let tls = files.contains("tls");
        let mut node_names: Vec<&str> = got
            .keys()
            .map(String::as_str)
            .filter(|n| n.starts_with("nats"))
            .collect();
        node_names.sort_unstable();
        assert_eq!(
            node_names,
            nodes.iter().map(|(n, _)| *n).collect::<Vec<_>>(),
            "{files}: the NATS nodes"
        );
        for (service, got) in &got {
            let want = if let Some((_, m)) = nodes.iter().find(|(n, _)| n == service) {
                m.clone()
            } else if service == "keys" {
                mount_set(&[("./", "/project")])
            } else {
                let mut m = mount_set(&[(&format!("./secrets/{service}.nk"), "/etc/upr/nats.nk")]);
                if tls {
                    m.extend(mount_set(&[("./secrets/tls/ca.pem", "/etc/upr/ca.pem")]));
                }
                if service == "gateway" {
                    // The webhook subscriptions and their secrets, nothing else.
                    m.extend(mount_set(&[("./webhooks", "/etc/upr/webhooks")]));
                }
                m
            };
            assert_eq!(got.mounts, want, "{files}: what {service} mounts");
            if service.starts_with("nats") {
                // The server's container never holds a user's seed nor a CA key.
                for (source, _) in &got.mounts {
                    let seed = Path::new(source)
                        .extension()
                        .is_some_and(|e| e.eq_ignore_ascii_case("nk"));
                    assert!(
                        !seed && !source.contains("ca-key"),
                        "{files}: {service} mounts {source}"
                    );
                }
            } else if service != "keys" {
                assert_eq!(
                    got.user.as_deref(),
                    Some("${UPR_UID:-10001}:${UPR_GID:-10001}"),
                    "{files}: {service} runs as the owner of ./secrets (its key is 0600)"
                );
            }
        }
        for service in ["keys", "ingest", "projection", "notifier"] {
            assert!(got.contains_key(service), "{files}: {service}");
        }
    }
    // The build context holds no keys, and no run state.
    let ignore = read(".dockerignore");
    for entry in ["secrets/", ".run/"] {
        assert!(
            ignore.lines().any(|l| l.trim() == entry),
            ".dockerignore excludes {entry}"
        );
    }
}

#[test]
fn every_port_is_on_loopback_monitoring_only_on_one_node_and_each_cluster_node_reachable() {
    let base = compose("compose.yaml");
    for (files, overlay) in [
        ("compose.yaml", None),
        (
            "compose.yaml + compose.cluster.yaml",
            Some(compose("compose.cluster.yaml")),
        ),
        (
            "compose.yaml + compose.tls.yaml",
            Some(compose("compose.tls.yaml")),
        ),
    ] {
        let got = merged(&base, overlay.as_ref());
        let mut client_ports = BTreeSet::new();
        for (service, Merged { ports, .. }) in &got {
            for port in ports {
                // 127.0.0.1:<host>:<container>; <host> may be ${VAR:-port}.
                let (host, container) = port
                    .strip_prefix("127.0.0.1:")
                    .and_then(|rest| rest.rsplit_once(':'))
                    .unwrap_or_else(|| {
                        panic!("{files}: {service} publishes {port} beyond loopback")
                    });
                let parts = ["127.0.0.1", host, container];
                match parts[2] {
                    "4222" => assert!(
                        client_ports.insert(parts[1].to_string()),
                        "{files}: {port} twice"
                    ),
                    // Monitoring is plain HTTP without authentication.
                    "8222" => assert_eq!(
                        (service.as_str(), parts[1]),
                        ("nats", "${NATS_MONITOR_PORT:-8222}"),
                        "{files}: monitoring published only by nats, on loopback"
                    ),
                    // Anything else (an HTTP port) is on loopback too.
                    _ => {}
                }
            }
        }
        let nodes = got.keys().filter(|s| s.starts_with("nats")).count();
        assert_eq!(
            client_ports.len(),
            nodes,
            "{files}: every node's client port is published once: {client_ports:?}"
        );
    }
}

// ---- .env.example -------------------------------------------------------------------

/// The `VAR=value` lines of an env file, commented out (`# VAR=value`, a
/// default shown) or not.
fn env_file_entries(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|line| {
            let line = line.trim().trim_start_matches('#').trim();
            let (var, value) = line.split_once('=')?;
            let is_var = !var.is_empty()
                && var
                    .chars()
                    .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_');
            is_var.then(|| (var.to_string(), value.to_string()))
        })
        .collect()
}

/// The variables a compose file interpolates (`${VAR:-default}`), with
/// their defaults.
fn interpolated(text: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for part in text.split("${").skip(1) {
        let inner = part.split('}').next().expect("a closing brace");
        let (var, default) = inner.split_once(":-").unwrap_or((inner, ""));
        if let Some(other) = out.insert(var.to_string(), default.to_string()) {
            assert_eq!(other, default, "{var} has two defaults in the compose file");
        }
    }
    out
}

/// The rows of docs/operations.md's configuration table as (variable,
/// `Read by` cell, `Default` cell); a row of two variables (`A` / `B`, with
/// defaults `x` / `y`) gives one row each.
fn configuration_rows() -> Vec<(String, String, String)> {
    let text = read("docs/operations.md");
    let section = text
        .split("\n## Configuration\n")
        .nth(1)
        .and_then(|rest| rest.split("\n## ").next())
        .expect("docs/operations.md has a Configuration section");
    let mut rows = Vec::new();
    for line in section.lines().filter(|l| l.starts_with("| `")) {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        let vars: Vec<&str> = cells[1].split(" / ").collect();
        let defaults: Vec<&str> = cells[3].split(" / ").collect();
        for (i, var) in vars.iter().enumerate() {
            let default = if vars.len() == defaults.len() {
                defaults[i]
            } else {
                cells[3]
            };
            rows.push((
                var.trim_matches('`').to_string(),
                cells[2].to_string(),
                default.to_string(),
            ));
        }
    }
    rows
}

/// The value a `Default` cell gives for compose: `(compose: `x`)` when it
/// has one, else its first `code`.
fn compose_default(cell: &str) -> Option<&str> {
    let from = cell.split("(compose: ").nth(1).unwrap_or(cell);
    from.split('`').nth(1)
}

#[test]
fn env_example_lists_what_compose_passes_with_the_documented_defaults() {
    let example = env_file_entries(&read(".env.example"));
    let reads = interpolated(&read("compose.yaml"));
    let doc = compose("compose.yaml");
    let rows = configuration_rows();

    // Every variable compose.yaml reads is in .env.example, with its default.
    for (var, default) in &reads {
        let (_, shown) = example
            .iter()
            .find(|(v, _)| v == var)
            .unwrap_or_else(|| panic!(".env.example lacks {var}, which compose.yaml reads"));
        assert_eq!(
            shown, default,
            "{var}: .env.example and compose.yaml's default"
        );
    }

    let mut passed = BTreeSet::new();
    for (var, value) in &example {
        if var.starts_with("COMPOSE_") {
            // Compose's own settings; the files it names exist.
            if var == "COMPOSE_FILE" {
                for file in value.split(':') {
                    assert!(root().join(file).exists(), "COMPOSE_FILE names {file}");
                }
            }
            continue;
        }
        assert!(
            reads.contains_key(var),
            ".env.example lists {var}, which compose.yaml does not read"
        );
        let (_, read_by, default) = rows
            .iter()
            .find(|(v, _, _)| v == var)
            .unwrap_or_else(|| panic!("docs/operations.md has no row for {var}"));
        assert_eq!(
            compose_default(default),
            Some(value.as_str()),
            "{var}: .env.example shows {value:?}, docs/operations.md says {default:?}"
        );
        let Some(setting) = upr_nats::config::SETTINGS
            .iter()
            .find(|s| s.var == var.as_str())
        else {
            assert!(
                read_by.contains("compose"),
                "{var} is read by no binary, and the table does not say compose reads it"
            );
            continue;
        };
        // Passed on, as `${VAR:-default}`, to exactly the services that read it.
        for (service, binary) in [
            ("ingest", services::INGEST),
            ("projection", services::PROJECTION),
            ("notifier", services::NOTIFIER),
            ("gateway", services::GATEWAY),
        ] {
            let given = env_var(&doc["services"][service], var);
            if setting.used_by.contains(&binary) {
                assert_eq!(
                    given,
                    Some(format!("${{{var}:-{value}}}")),
                    "compose.yaml passes {var} on to {service}, which reads it"
                );
            } else {
                assert_eq!(given, None, "{service} does not read {var}");
            }
        }
        passed.insert(var.as_str());
    }

    // The variables docs/operations.md says compose.yaml passes on.
    let text = read("docs/operations.md");
    let paragraph = text
        .split("\n\n")
        .find(|p| p.starts_with("With compose, put settings in `.env`"))
        .expect("docs/operations.md says what compose passes on");
    let said: BTreeSet<&str> = paragraph
        .split('`')
        .skip(1)
        .step_by(2)
        .filter(|w| {
            w.contains('_')
                && w.chars()
                    .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
        })
        .collect();
    assert_eq!(
        said, passed,
        "docs/operations.md (Configuration) names the variables .env.example lists and compose.yaml passes on"
    );
}

#[test]
fn nats_conf_reads_exactly_the_keys_upr_keys_writes() {
    let conf = read("deploy/nats/nats.conf");
    let mut referenced: Vec<&str> = conf
        .split('$')
        .skip(1)
        .map(|s| {
            s.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .next()
                .unwrap()
        })
        .filter(|v| v.starts_with("UPR_"))
        .collect();
    referenced.sort_unstable();
    referenced.dedup();
    let dir = upr_tests::secured_config_dir();
    let generated = std::fs::read_to_string(dir.path().join("secrets/nats-keys.conf")).unwrap();
    let mut defined: Vec<&str> = generated
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split(':').next())
        .collect();
    defined.sort_unstable();
    assert_eq!(referenced, defined, "the keys nats.conf reads");
    assert!(
        referenced.iter().all(|v| v.ends_with("_NKEY")),
        "nats.conf holds public keys only: {referenced:?}"
    );
    let env = read(".env.example");
    assert!(
        !env.to_uppercase().contains("PASSWORD="),
        ".env.example holds no password"
    );
}

// ---- Dockerfile ---------------------------------------------------------------------

/// The workspace members as cargo reads them from the root Cargo.toml.
fn workspace_members() -> Vec<String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = std::process::Command::new(cargo)
        .args([
            "metadata",
            "--no-deps",
            "--format-version",
            "1",
            "--offline",
            "--manifest-path",
        ])
        .arg(root().join("Cargo.toml"))
        .output()
        .expect("run cargo metadata");
    assert!(
        out.status.success(),
        "cargo metadata: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).expect("metadata JSON");
    let workspace_root = PathBuf::from(meta["workspace_root"].as_str().expect("workspace_root"));
    let ids: Vec<&serde_json::Value> = meta["workspace_members"]
        .as_array()
        .expect("members")
        .iter()
        .collect();
    meta["packages"]
        .as_array()
        .expect("packages")
        .iter()
        .filter(|p| ids.contains(&&p["id"]))
        .map(|p| {
            let manifest = PathBuf::from(p["manifest_path"].as_str().expect("manifest_path"));
            manifest
                .strip_prefix(&workspace_root)
                .expect("member inside the workspace")
                .display()
                .to_string()
        })
        .collect()
}

#[test]
#[expect(
    clippy::too_many_lines,
    reason = "one checklist over the Dockerfile, line by line"
)]
fn dockerfile_caches_dependencies_builds_locked_and_runs_as_non_root() {
    let dockerfile = read("Dockerfile");
    // Instructions with their continuation lines joined.
    let joined = dockerfile.replace("\\\n", " ");
    let instructions: Vec<&str> = joined
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    let stages: Vec<usize> = instructions
        .iter()
        .enumerate()
        .filter(|(_, l)| l.starts_with("FROM "))
        .map(|(i, _)| i)
        .collect();
    assert!(stages.len() >= 2, "multi-stage build");
    let runtime = &instructions[*stages.last().unwrap()..];

    // Base images pinned to exact versions: Rust x.y.z, Debian 12.n (the
    // runtime has the glibc of the bookworm builder). ARGs before the first
    // FROM are resolved to their defaults.
    let args: Vec<(&str, &str)> = instructions[..stages[0]]
        .iter()
        .filter_map(|l| l.strip_prefix("ARG "))
        .filter_map(|a| a.split_once('='))
        .collect();
    let images: Vec<String> = stages
        .iter()
        .map(|&i| {
            let mut image = instructions[i]
                .split_whitespace()
                .nth(1)
                .expect("FROM <image>")
                .to_string();
            for (name, value) in &args {
                image = image.replace(&format!("${{{name}}}"), value);
            }
            image
        })
        .collect();
    let version_of = |image: &str, repo: &str| -> Vec<u32> {
        let tag = image
            .strip_prefix(&format!("{repo}:"))
            .unwrap_or_else(|| panic!("{image} is not {repo}"));
        tag.split('-')
            .next()
            .unwrap()
            .split('.')
            .map(|p| {
                p.parse()
                    .unwrap_or_else(|_| panic!("{image}: no version tag"))
            })
            .collect()
    };
    let rust = version_of(&images[0], "rust");
    assert_eq!(
        rust.len(),
        3,
        "builder pinned to a Rust release: {}",
        images[0]
    );
    assert!(images[0].ends_with("-slim-bookworm"), "{}", images[0]);
    let debian = version_of(images.last().unwrap(), "debian");
    assert!(
        debian.len() == 2 && debian[0] == 12 && images.last().unwrap().ends_with("-slim"),
        "runtime pinned to a Debian 12 point release, slim: {}",
        images.last().unwrap()
    );
    assert!(
        !dockerfile.lines().any(|l| l.starts_with("# syntax=")),
        "no frontend image to pull (the built-in Dockerfile frontend suffices)"
    );

    let builds: Vec<&&str> = instructions
        .iter()
        .filter(|l| l.starts_with("RUN ") && l.contains("cargo build"))
        .collect();
    assert!(
        builds.len() >= 2,
        "dependencies built apart from the sources"
    );
    for b in &builds {
        assert!(b.contains("--locked"), "cargo build --locked: {b}");
        assert!(
            b.contains("--profile image") && b.contains("--bins"),
            "the image profile's binaries: {b}"
        );
    }
    assert!(
        joined.contains("target/image/"),
        "the image profile's binaries are the ones copied"
    );
    // The image profile: release code, stripped (about 9 MB a binary, not 60).
    let cargo = read("Cargo.toml");
    let profile = cargo
        .split("\n[profile.image]\n")
        .nth(1)
        .and_then(|rest| rest.split("\n[").next())
        .expect("Cargo.toml has [profile.image]");
    for line in ["inherits = \"release\"", "strip = true"] {
        assert!(
            profile.lines().any(|l| l.trim() == line),
            "[profile.image] has {line}"
        );
    }

    // The runtime image has every binary compose runs, upr-keys included.
    let copied = instructions
        .iter()
        .find(|l| l.starts_with("COPY --from=builder"))
        .expect("binaries copied into the runtime image");
    for binary in [
        services::INGEST,
        services::PROJECTION,
        services::NOTIFIER,
        services::GATEWAY,
        "upr-keys",
    ] {
        assert!(copied.contains(binary), "{binary} in the image: {copied}");
    }

    // Every member's manifest is copied before the first build, so the
    // dependency layer knows the whole workspace.
    let first_build = instructions
        .iter()
        .position(|l| l.starts_with("RUN ") && l.contains("cargo build"))
        .unwrap();
    let copies_before = &instructions[..first_build];
    let copied = |path: &str| {
        copies_before
            .iter()
            .any(|l| l.starts_with("COPY ") && l.split_whitespace().any(|w| w == path))
    };
    assert!(
        copied("Cargo.toml") && copied("Cargo.lock"),
        "root manifest and lock file copied first"
    );
    let members = workspace_members();
    assert!(members.len() >= 5, "members: {members:?}");
    for manifest in &members {
        assert!(
            copied(manifest),
            "the Dockerfile copies {manifest} before building dependencies"
        );
        // ... and the member itself afterwards, so the workspace is complete.
        let dir = manifest.trim_end_matches("/Cargo.toml");
        assert!(
            instructions[first_build..]
                .iter()
                .filter(|l| l.starts_with("COPY ") && !l.starts_with("COPY --from"))
                .filter_map(|l| l.split_whitespace().nth(1))
                .any(|src| dir == src || dir.starts_with(&format!("{src}/"))),
            "the Dockerfile copies the sources of {dir}"
        );
    }

    let user = runtime
        .iter()
        .rev()
        .find_map(|l| l.strip_prefix("USER "))
        .expect("a USER in the runtime stage");
    let user = user.split(':').next().unwrap().trim();
    assert!(
        user != "root" && user != "0",
        "runs as non-root, not {user}"
    );
    for binary in [
        services::INGEST,
        services::PROJECTION,
        services::NOTIFIER,
        services::GATEWAY,
    ] {
        assert!(
            runtime
                .iter()
                .any(|l| l.starts_with("COPY --from=") && l.contains(binary)),
            "the runtime stage contains {binary}"
        );
    }
    let ignore = read(".dockerignore");
    assert!(
        ignore.lines().any(|l| l.trim_end_matches('/') == "target"),
        ".dockerignore keeps target/ out"
    );
}

// ---- permissions, with a real nats-server ------------------------------------------

#[tokio::test]
async fn each_service_works_with_its_own_user() {
    let nats = secured_server();
    let ingest = start_service(&nats, services::INGEST, "ingest", &[]);
    let projection = start_service(&nats, services::PROJECTION, "projection", &[]);
    // A lead of 2 s makes a reminder come due within the test.
    let notifier = start_service(
        &nats,
        services::NOTIFIER,
        "notifier",
        &[("UPR_REMINDER_LEADS", "2s")],
    );
    for p in [&ingest, &projection, &notifier] {
        p.wait_healthy().await;
    }

    let reader = nats.client_as("reader").await;
    let mut reminders = reader
        .subscribe("upr.notify.reminder.KZ")
        .await
        .expect("reader subscribes");
    reader.flush().await.expect("flush");
    let publisher = nats.client_as("publisher").await;
    let accepted = publish_review_scheduled(&publisher, &from_now(Duration::from_secs(5))).await;
    let seq = accepted["seq"].as_u64().expect("seq");

    // Projection: the reader's query sees the write.
    let query = serde_json::json!({"min_seq": seq}).to_string();
    let answer = reader
        .request("upr.query.review.KZ.48", query.into())
        .await
        .expect("projection answers the reader");
    let answer: serde_json::Value = serde_json::from_slice(&answer.payload).unwrap();
    assert_eq!(answer["ok"], true, "{answer}");
    assert_eq!(answer["review"]["status"], "scheduled", "{answer}");
    assert_eq!(answer["review"]["location"], "Geneva", "{answer}");

    // The reader reads the bucket as `nats --js-domain upr kv get upr_reviews
    // KZ.48` does.
    let js = jetstream::with_domain(reader.clone(), "upr");
    let bucket = js
        .get_key_value(contract::REVIEWS_BUCKET)
        .await
        .expect("reader opens upr_reviews");
    let value = bucket
        .get("KZ.48")
        .await
        .expect("reader reads KZ.48")
        .expect("KZ.48 is there");
    let value: serde_json::Value = serde_json::from_slice(&value).unwrap();
    assert_eq!(value["status"], "scheduled");

    // Notifier: the reminder arrives 2 s before the review.
    let reminder = tokio::time::timeout(
        Duration::from_secs(15),
        futures::StreamExt::next(&mut reminders),
    )
    .await
    .unwrap_or_else(|_| panic!("no reminder; notifier log:\n{}", notifier.logs()))
    .expect("subscription open");
    let reminder: serde_json::Value = serde_json::from_slice(&reminder.payload).unwrap();
    assert_eq!(reminder["kind"], "reminder", "{reminder}");
    assert_eq!(reminder["lead"], "2s", "{reminder}");

    // Rescheduling: the notifier drops the old timers (a purge) and tells.
    let mut changes = reader
        .subscribe("upr.notify.rescheduled.KZ")
        .await
        .expect("subscribe");
    reader.flush().await.expect("flush");
    let payload = serde_json::json!({
        "country": "KZ", "session": 48, "scheduled_for": from_now(Duration::from_secs(3600))
    });
    let reply = publisher
        .request("upr.ingest.review_rescheduled", payload.to_string().into())
        .await
        .expect("ingest answers");
    let reply: serde_json::Value = serde_json::from_slice(&reply.payload).unwrap();
    assert_eq!(reply["ok"], true, "{reply}");
    tokio::time::timeout(
        Duration::from_secs(10),
        futures::StreamExt::next(&mut changes),
    )
    .await
    .unwrap_or_else(|_| panic!("no rescheduled notice; notifier log:\n{}", notifier.logs()));

    // `upr-projection rebuild` (deletes and recreates its buckets and consumer).
    let mut projection = projection;
    assert!(projection.terminate(Duration::from_secs(10)).success());
    let mut rebuild = ServiceProcess::start_args(
        services::PROJECTION,
        &nats.url(),
        &[(
            "NATS_NKEY",
            &nats.seed_file("projection").display().to_string(),
        )],
        &["rebuild"],
    );
    let status = rebuild.wait_exit(Duration::from_secs(20));
    assert!(status.success(), "rebuild failed; log:\n{}", rebuild.logs());

    assert_eq!(
        violations(&nats),
        Vec::<String>::new(),
        "no service was refused anything"
    );
}

#[tokio::test]
async fn a_publisher_cannot_write_the_event_log_or_delete_a_stream() {
    let nats = secured_server();
    let ingest = start_service(&nats, services::INGEST, "ingest", &[]);
    ingest.wait_healthy().await;
    let publisher = nats.client_as("publisher").await;
    publish_review_scheduled(&publisher, KZ48_DATE).await;

    // Around ingest, straight into the log: refused.
    let js = jetstream::ContextBuilder::new()
        .timeout(Duration::from_secs(1))
        .build(publisher.clone());
    let forged = js
        .publish(
            "upr.events.KZ.48.review_cancelled",
            r#"{"forged":true}"#.into(),
        )
        .await;
    let forged = match forged {
        Ok(ack) => ack.await.map(drop).map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    assert!(forged.is_err(), "a publisher wrote to the event log");

    // Deleting the event log: refused.
    let deleted = tokio::time::timeout(
        Duration::from_secs(1),
        publisher.request("$JS.API.STREAM.DELETE.UPR_EVENTS", "".into()),
    )
    .await;
    assert!(
        !matches!(deleted, Ok(Ok(_))),
        "a publisher got an answer from STREAM.DELETE"
    );

    let admin = nats.client_as("admin").await;
    let mut events = jetstream::new(admin)
        .get_stream(contract::EVENTS_STREAM)
        .await
        .expect("UPR_EVENTS is still there");
    let info = events.info().await.expect("stream info");
    assert_eq!(info.state.messages, 1, "only ingest's event is in the log");

    let refused = violations(&nats).join("\n");
    assert!(
        refused.contains("\"upr.events.KZ.48.review_cancelled\""),
        "{refused}"
    );
    assert!(
        refused.contains("\"$JS.API.STREAM.DELETE.UPR_EVENTS\""),
        "{refused}"
    );
}

#[tokio::test]
async fn a_reader_cannot_publish_intake() {
    let nats = secured_server();
    let ingest = start_service(&nats, services::INGEST, "ingest", &[]);
    ingest.wait_healthy().await;
    let reader = nats.client_as("reader").await;
    let payload = kz48_schedule_text();
    let answer = tokio::time::timeout(
        Duration::from_secs(1),
        reader.request("upr.ingest.review_scheduled", payload.into()),
    )
    .await;
    assert!(!matches!(answer, Ok(Ok(_))), "ingest answered a reader");
    eventually(
        Duration::from_secs(5),
        "the refusal in the server log",
        || async {
            violations(&nats)
                .iter()
                .any(|l| l.contains("\"upr.ingest.review_scheduled\""))
                .then_some(())
        },
    )
    .await;
    let admin = nats.client_as("admin").await;
    let mut events = jetstream::new(admin)
        .get_stream(contract::EVENTS_STREAM)
        .await
        .expect("UPR_EVENTS");
    assert_eq!(
        events.info().await.expect("info").state.messages,
        0,
        "nothing was recorded"
    );
}

#[tokio::test]
async fn a_wrong_password_an_unknown_key_or_no_user_is_refused() {
    let nats = secured_server();
    let refused = async_nats::ConnectOptions::with_user_and_password(
        "ingest".into(),
        "not-the-password".into(),
    )
    .connect(nats.url())
    .await;
    assert!(refused.is_err(), "connected with a wrong password");
    let anonymous = async_nats::connect(nats.url()).await;
    assert!(anonymous.is_err(), "connected without a user");
    // A key of another installation.
    let stranger = nkeys::KeyPair::new_user().seed().unwrap();
    let refused = async_nats::ConnectOptions::with_nkey(stranger)
        .connect(nats.url())
        .await;
    assert!(refused.is_err(), "connected with an unknown key");
}

#[tokio::test]
async fn a_rotated_key_is_refused_after_a_reload_and_the_new_one_works() {
    let nats = secured_server();
    let old = nats.client_as("reader").await;
    old.flush()
        .await
        .expect("the old key works before the rotation");
    let old_seed = std::fs::read_to_string(nats.seed_file("reader")).unwrap();

    let secrets = nats.seed_file("reader").parent().unwrap().to_path_buf();
    let status = std::process::Command::new(upr_tests::bin_path("upr-keys"))
        .arg("rotate")
        .arg(&secrets)
        .arg("reader")
        .stdout(std::process::Stdio::null())
        .status()
        .expect("run upr-keys rotate");
    assert!(status.success());
    nats.reload();

    eventually(
        Duration::from_secs(10),
        "the new key to be accepted",
        || async { nats.options_as("reader").connect(nats.url()).await.ok() },
    )
    .await;
    let again = async_nats::ConnectOptions::with_nkey(old_seed.trim().to_string())
        .connect(nats.url())
        .await;
    assert!(again.is_err(), "the rotated key still connects");
    // The connection made with the old key is closed by the reload.
    eventually(
        Duration::from_secs(10),
        "the old connection to be closed",
        || async {
            (old.connection_state() != async_nats::connection::State::Connected).then_some(())
        },
    )
    .await;
}

// ---- cluster ---------------------------------------------------------------------------

#[tokio::test]
async fn an_r3_event_log_survives_the_loss_of_one_node() {
    let mut cluster = NatsCluster::start(3).await;
    let client = cluster.client().await;
    let js = jetstream::new(client.clone());
    upr_nats::setup::ensure_own_stream(
        &js,
        contract::events_stream(3, contract::DEFAULT_DEDUP_WINDOW),
    )
    .await
    .expect("R3 event log");
    let publish = |i: u32| {
        let js = js.clone();
        async move {
            let ack = js
                .publish(
                    "upr.events.KZ.48.side_event_held",
                    format!("{{\"n\":{i}}}").into(),
                )
                .await
                .ok()?;
            ack.await.ok().map(|a| a.sequence)
        }
    };
    for i in 1..=3 {
        eventually(
            Duration::from_secs(10),
            "a publish to the R3 stream",
            || publish(i),
        )
        .await;
    }

    cluster.kill(0);
    for i in 4..=6 {
        eventually(
            Duration::from_secs(20),
            "a publish with one node down",
            || publish(i),
        )
        .await;
    }
    let stream = eventually(
        Duration::from_secs(20),
        "the stream with one node down",
        || {
            let js = js.clone();
            async move { js.get_stream(contract::EVENTS_STREAM).await.ok() }
        },
    )
    .await;
    for seq in 1..=6u64 {
        let message = eventually(Duration::from_secs(10), "reading the log back", || {
            let stream = stream.clone();
            async move { stream.direct_get(seq).await.ok() }
        })
        .await;
        let body: serde_json::Value = serde_json::from_slice(&message.payload).unwrap();
        assert_eq!(body["n"], seq, "message {seq}");
    }

    // Back with its old store: the node rejoins and serves the stream again.
    cluster.restart(0);
    let node0 = cluster.node(0).client().await;
    let js0 = jetstream::new(node0);
    eventually(
        Duration::from_secs(30),
        "n0 to serve the stream again",
        || {
            let js0 = js0.clone();
            async move {
                let mut stream = js0.get_stream(contract::EVENTS_STREAM).await.ok()?;
                (stream.info().await.ok()?.state.messages == 6).then_some(())
            }
        },
    )
    .await;
}
