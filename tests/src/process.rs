//! The project's binaries as child processes: where they were built,
//! [`ServiceProcess`] (one service with its environment and captured output),
//! and [`start_services`] for the three against a secured server.

use std::{
    fs::File,
    io::Read,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    time::{Duration, Instant},
};

use nix::{sys::signal::Signal, unistd::Pid};
use tempfile::TempDir;
use upr_nats::contract::services;

use crate::NatsServer;

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

/// Sends `sig` to a child this harness started, and to nothing else: the
/// `Child` is not waited for yet, so its PID cannot have been reused.
pub(crate) fn signal(child: &Child, sig: Signal) {
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
