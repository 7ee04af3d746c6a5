//! [`NatsCluster`]: three `nats-server` nodes routed together from the
//! shipped `deploy/nats/cluster.conf`, for replicated streams and failover.

use std::fmt::Write as _;
use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use tempfile::TempDir;

use crate::{NatsServer, bin_path, eventually, free_port, secured_config_dir_with_parties};

/// Writes `name` into `dir` (which holds a
/// [`secured_config_dir`](crate::secured_config_dir)): the shipped
/// `deploy/nats/cluster.conf` with its listen address set to
/// `127.0.0.1:<listen_port>`. The routes are the installation's (`upr-keys
/// routes`), unless `forged` gives a password and route addresses of its
/// own, for a node that is not one of the installation's.
///
/// The listen address is in the file, not on the command line: the
/// server's `--cluster` flag without credentials in its URL clears the
/// cluster's authorization, and any node could join. The route TLS files
/// are the installation's (`dir/secrets/route-tls`).
pub fn cluster_config(
    dir: &Path,
    name: &str,
    listen_port: u16,
    forged: Option<(&str, &[String])>,
) -> PathBuf {
    cluster_config_with(dir, name, listen_port, forged, RouteTls::Installation)
}

/// What a node's routes use for TLS in [`cluster_config_with`].
#[derive(Debug, Clone, Copy)]
pub enum RouteTls<'a> {
    /// The installation's route CA and certificate, as shipped.
    Installation,
    /// No `tls` block: plain-text routes.
    Plain,
    /// The `route-tls` directory of another installation (another CA).
    From(&'a Path),
}

/// [`cluster_config`] with the route TLS chosen by `tls`.
pub fn cluster_config_with(
    dir: &Path,
    name: &str,
    listen_port: u16,
    forged: Option<(&str, &[String])>,
    tls: RouteTls<'_>,
) -> PathBuf {
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/nats/cluster.conf");
    let text = std::fs::read_to_string(&shipped).expect("read deploy/nats/cluster.conf");
    let tls_dir = match tls {
        RouteTls::From(other) => other.to_path_buf(),
        RouteTls::Installation | RouteTls::Plain => dir.join("secrets/route-tls"),
    };
    let mut out = String::new();
    let mut in_tls = false;
    for line in text.lines() {
        let trimmed = line.trim();
        if matches!(tls, RouteTls::Plain) && (in_tls || trimmed == "tls {") {
            in_tls = trimmed != "}";
            continue;
        }
        if trimmed.contains("/etc/nats/secrets/route-tls") {
            out += &line.replace(
                "/etc/nats/secrets/route-tls",
                tls_dir.to_str().expect("a UTF-8 path"),
            );
            out.push('\n');
            continue;
        }
        if trimmed.starts_with("listen:") {
            let _ = writeln!(out, "  listen: 127.0.0.1:{listen_port}");
            continue;
        }
        if let Some((password, hosts)) = forged {
            if trimmed.contains("secrets/route.conf") {
                // Not the installation's; the server refuses a variable
                // that nothing uses.
                continue;
            }
            if trimmed.starts_with("password:") {
                let _ = writeln!(out, "    password: \"{password}\"");
                continue;
            }
            if trimmed.starts_with("routes:") {
                let routes: Vec<String> = hosts
                    .iter()
                    .map(|h| format!("\"nats-route://route:{password}@{h}\""))
                    .collect();
                let _ = writeln!(out, "  routes: [{}]", routes.join(", "));
                continue;
            }
        }
        out += line;
        out.push('\n');
    }
    assert!(
        out.contains("listen: 127"),
        "cluster.conf has a listen address"
    );
    let path = dir.join(name);
    std::fs::write(&path, out).expect("write cluster config");
    path
}

/// Several `nats-server -js` processes on 127.0.0.1 joined by routes into
/// one cluster named `upr`, each with its own store, for tests of replicated
/// streams and node failures.
pub struct NatsCluster {
    nodes: Vec<NatsServer>,
    /// The shipped configuration and its keys, for a cluster started with
    /// [`NatsCluster::start_secured`].
    secured: Option<TempDir>,
    /// `HOST:PORT` of every node's route port.
    routes: Vec<String>,
}

impl NatsCluster {
    /// Starts `size` nodes (`n0`, `n1`, ...) and waits until JetStream has
    /// elected a meta leader, so streams can be created at once.
    pub async fn start(size: usize) -> Self {
        let client_ports: Vec<u16> = (0..size).map(|_| free_port()).collect();
        let cluster_ports: Vec<u16> = (0..size).map(|_| free_port()).collect();
        let routes = cluster_ports
            .iter()
            .map(|p| format!("nats://127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(",");
        let nodes = (0..size)
            .map(|i| {
                let args = vec![
                    "--server_name".to_string(),
                    format!("n{i}"),
                    "--cluster_name".to_string(),
                    "upr".to_string(),
                    "--cluster".to_string(),
                    format!("nats://127.0.0.1:{}", cluster_ports[i]),
                    "--routes".to_string(),
                    routes.clone(),
                ];
                NatsServer::start_on(client_ports[i], None, args, &[])
            })
            .collect();
        let cluster = Self {
            nodes,
            secured: None,
            routes: Vec::new(),
        };
        cluster.wait_meta_leader().await;
        cluster
    }

    /// Starts `size` nodes with the shipped `deploy/nats/cluster.conf` (its
    /// accounts, users and authenticated routes), the route list and listen
    /// address pointed at loopback ports; all nodes share one set of keys.
    pub async fn start_secured(size: usize) -> Self {
        Self::start_secured_with_parties(size, &[]).await
    }

    /// Like [`NatsCluster::start_secured`], with `parties` (`(kind, name)`)
    /// registered by `upr-keys add` before the first node starts.
    pub async fn start_secured_with_parties(size: usize, parties: &[(&str, &str)]) -> Self {
        let dir = secured_config_dir_with_parties(parties);
        let client_ports: Vec<u16> = (0..size).map(|_| free_port()).collect();
        let cluster_ports: Vec<u16> = (0..size).map(|_| free_port()).collect();
        let routes: Vec<String> = cluster_ports
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect();
        let status = Command::new(bin_path("upr-keys"))
            .arg("routes")
            .arg(dir.path().join("secrets"))
            .args(&routes)
            .stdout(Stdio::null())
            .status()
            .expect("run upr-keys routes");
        assert!(status.success(), "upr-keys routes failed");
        let nodes = (0..size)
            .map(|i| {
                let conf =
                    cluster_config(dir.path(), &format!("n{i}.conf"), cluster_ports[i], None);
                let args = vec!["--server_name".to_string(), format!("n{i}")];
                NatsServer::start_on(client_ports[i], Some(conf), args, &[])
            })
            .collect();
        let cluster = Self {
            nodes,
            secured: Some(dir),
            routes,
        };
        cluster.wait_meta_leader().await;
        cluster
    }

    /// The directory of a [`NatsCluster::start_secured`] cluster's
    /// configuration and keys.
    pub fn secured_dir(&self) -> &Path {
        self.secured
            .as_ref()
            .expect("a cluster started with start_secured")
            .path()
    }

    /// The route URLs of a [`NatsCluster::start_secured`] cluster's nodes.
    pub fn routes(&self) -> &[String] {
        &self.routes
    }

    /// The nkey seed file of `user` of a [`NatsCluster::start_secured`] cluster.
    pub fn seed_file(&self, user: &str) -> PathBuf {
        self.secured_dir()
            .join("secrets")
            .join(format!("{user}.nk"))
    }
    /// Waits until `$JS.API.INFO` answers without an error, which needs an
    /// elected JetStream meta leader.
    pub async fn wait_meta_leader(&self) {
        let client = match &self.secured {
            Some(_) => self.client_as("admin").await,
            None => self.client().await,
        };
        eventually(Duration::from_secs(30), "a JetStream meta leader", || {
            let client = client.clone();
            async move {
                let reply = client.request("$JS.API.INFO", "".into()).await.ok()?;
                let info: serde_json::Value = serde_json::from_slice(&reply.payload).ok()?;
                info.get("error").is_none().then_some(())
            }
        })
        .await;
    }

    /// Client URLs of all nodes, comma-separated (as `NATS_URL` takes them),
    /// including stopped ones.
    pub fn urls(&self) -> String {
        self.nodes
            .iter()
            .map(NatsServer::url)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// A client that may connect to and fail over between all nodes.
    pub async fn client(&self) -> async_nats::Client {
        self.connect(async_nats::ConnectOptions::new()).await
    }

    /// Like [`NatsCluster::client`], authenticated as `user` with its nkey
    /// (clusters started with [`NatsCluster::start_secured`]).
    pub async fn client_as(&self, user: &str) -> async_nats::Client {
        let seed = std::fs::read_to_string(self.seed_file(user)).expect("seed file");
        self.connect(async_nats::ConnectOptions::with_nkey(
            seed.trim().to_string(),
        ))
        .await
    }

    async fn connect(&self, options: async_nats::ConnectOptions) -> async_nats::Client {
        let addrs: Vec<async_nats::ServerAddr> = self
            .nodes
            .iter()
            .map(|n| n.url().parse().expect("server url"))
            .collect();
        options
            .retry_on_initial_connect()
            .connect(addrs.as_slice())
            .await
            .expect("connect to the test cluster")
    }

    /// Node `i`.
    pub fn node(&self, i: usize) -> &NatsServer {
        &self.nodes[i]
    }

    /// Node `i`, to kill or restart it.
    pub fn node_mut(&mut self, i: usize) -> &mut NatsServer {
        &mut self.nodes[i]
    }

    /// SIGKILL node `i`.
    pub fn kill(&mut self, i: usize) {
        self.nodes[i].kill();
    }

    /// Starts node `i` again on the same ports and store.
    pub fn restart(&mut self, i: usize) {
        self.nodes[i].restart();
    }
}
