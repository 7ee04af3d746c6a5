//! The documentation works as written. Every fenced `sh` block of README.md
//! and of each docs/*.md page is run, command by command, with bash, in a
//! working directory laid out like a checkout after `scripts/run` (the
//! installation's keys in `secrets/`, `examples/`), against a nats-server
//! running the shipped `deploy/nats/nats.conf` and the three services, each
//! with its own user. A command runs as the user its `--context` or
//! `--nkey` names, so a permission the page takes for granted is checked.
//!
//! - `nats` is `tests/src/bin/nats-stand-in.rs` (the NATS CLI is not
//!   installed here): the same requests the CLI makes, for the subset of
//!   its commands the pages use; it refuses any other. `curl` is the real
//!   one, pointed at the test server's monitoring port. The `upr-*`
//!   binaries are the built ones.
//! - A command must exit 0, unless a comment right under it says
//!   `exit code N`. Comment lines right under a command (no blank line in
//!   between) are its expected output: every `"key": value` pair they show
//!   (a string value holding `…` is not compared) must be in what the
//!   command printed.
//! - `nats ... sub ...` runs in the background until the end of the page;
//!   the pairs shown under it must have arrived by then.
//! - `<!-- docs-test: ... -->` lines between blocks set the scene the text
//!   describes: `stop <binary>`, `start <binary> [VAR=value ...]`,
//!   `empty server` (every service stopped, the server restarted with an
//!   empty store), `start services`, `chat stand-in` (a receiver standing
//!   in for a chat tool's incoming webhook, where the pages say
//!   `127.0.0.1:9000`; a relative `UPR_WEBHOOKS` given to `start` is taken
//!   from the checkout) and `chat receives <kind>` (it got one such
//!   notification within 30 s).
//! - A block is skipped only when the line before it is
//!   `<!-- not run: <why> -->`; the skipped blocks are listed.
//! - A block in another language must not hold a command (`nats ...`,
//!   `upr-...`), so no command escapes this test by its fence.
//!
//! The configuration table in docs/operations.md is checked against
//! `config::SETTINGS`, the table `--help` prints.
//!
//! The server runs the shipped configuration with the installation's keys,
//! so it is started here rather than by a `TestApp`.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use upr_nats::contract::services;
use upr_tests::{NatsServer, ServiceProcess, bin_path, free_port};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// README.md and every docs/*.md page.
fn pages() -> Vec<PathBuf> {
    let mut pages = vec![root().join("README.md")];
    let mut docs: Vec<PathBuf> = std::fs::read_dir(root().join("docs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    docs.sort();
    pages.extend(docs);
    pages
}

#[derive(Debug)]
struct Cmd {
    line: usize,
    text: String,
    /// The comment lines right under it.
    expected: Vec<String>,
}

#[derive(Debug)]
enum Item {
    Block(Vec<Cmd>),
    Skipped { line: usize, why: String },
    Hook { line: usize, what: String },
}

const SHELL: &[&str] = &["sh", "bash", "shell", "console"];

/// The project's binaries, as a command line starts with them.
const BINARIES: &[&str] = &[
    "upr-ingest",
    "upr-projection",
    "upr-notifier",
    "upr-gateway",
    "upr-keys",
    "upr-bench",
];

fn parse_page(path: &Path) -> Vec<Item> {
    let text = std::fs::read_to_string(path).unwrap();
    let name = path.file_name().unwrap().to_string_lossy().to_string();
    let lines: Vec<&str> = text.lines().collect();
    let mut items = Vec::new();
    let mut skip: Option<String> = None;
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i].trim();
        if let Some(rest) = line.strip_prefix("<!-- not run:") {
            let why = rest.trim_end_matches("-->").trim().to_string();
            assert!(!why.is_empty(), "{name}:{}: a skip must say why", i + 1);
            skip = Some(why);
        } else if let Some(rest) = line.strip_prefix("<!-- docs-test:") {
            items.push(Item::Hook {
                line: i + 1,
                what: rest.trim_end_matches("-->").trim().to_string(),
            });
        } else if let Some(lang) = line.strip_prefix("```") {
            let lang = lang.trim().to_string();
            let start = i + 1;
            let mut body = Vec::new();
            i += 1;
            while i < lines.len() && !lines[i].trim_start().starts_with("```") {
                body.push((i + 1, lines[i]));
                i += 1;
            }
            if SHELL.contains(&lang.as_str()) {
                match skip.take() {
                    Some(why) => items.push(Item::Skipped { line: start, why }),
                    None => {
                        let cmds = commands(&body);
                        assert!(
                            !cmds.is_empty(),
                            "{name}:{start}: an sh block without a command"
                        );
                        items.push(Item::Block(cmds));
                    }
                }
            } else {
                assert!(
                    skip.is_none(),
                    "{name}:{start}: `not run` stands before a block that is not sh"
                );
                for (n, l) in &body {
                    let first = l.split_whitespace().next().unwrap_or_default();
                    let command = l.split_whitespace().count() > 1
                        && (first == "nats" || BINARIES.contains(&first));
                    assert!(
                        !command,
                        "{name}:{n}: a command in a ```{lang} block; put it in an sh block so it runs"
                    );
                }
            }
        } else if !line.is_empty() && skip.is_some() && !line.starts_with("<!--") {
            panic!(
                "{name}:{}: `not run` must stand right before the block it skips",
                i + 1
            );
        }
        i += 1;
    }
    assert!(
        skip.is_none(),
        "{name}: a `not run` marker with no block after it"
    );
    items
}

/// Commands of one block: `\` continues a line; comment lines right under a
/// command are its expected output.
fn commands(body: &[(usize, &str)]) -> Vec<Cmd> {
    let mut cmds: Vec<Cmd> = Vec::new();
    let mut continuing = false;
    let mut open = false;
    for (n, line) in body {
        if continuing {
            let cmd = cmds.last_mut().unwrap();
            cmd.text.push('\n');
            cmd.text.push_str(line);
            continuing = line.trim_end().ends_with('\\');
            continue;
        }
        let t = line.trim();
        if t.is_empty() {
            open = false;
        } else if let Some(comment) = t.strip_prefix('#') {
            if open {
                cmds.last_mut()
                    .unwrap()
                    .expected
                    .push(comment.trim().to_string());
            }
        } else {
            cmds.push(Cmd {
                line: *n,
                text: line.to_string(),
                expected: Vec::new(),
            });
            continuing = t.ends_with('\\');
            open = true;
        }
    }
    cmds
}

/// The `"key": value` pairs of a text, values as written (strings quoted,
/// spaces dropped); a string holding `…` or `...` is left out.
fn pairs(text: &str) -> BTreeSet<(String, String)> {
    let b = text.as_bytes();
    let mut out = BTreeSet::new();
    let string_end = |from: usize| -> Option<usize> {
        let mut j = from + 1;
        while j < b.len() {
            match b[j] {
                b'\\' => j += 2,
                b'"' => return Some(j),
                _ => j += 1,
            }
        }
        None
    };
    let mut i = 0;
    while i < b.len() {
        if b[i] != b'"' {
            i += 1;
            continue;
        }
        let Some(kend) = string_end(i) else { break };
        let key = &text[i + 1..kend];
        let mut j = kend + 1;
        while j < b.len() && b[j] == b' ' {
            j += 1;
        }
        if j >= b.len() || b[j] != b':' || key.is_empty() || key.contains(' ') {
            i = kend + 1;
            continue;
        }
        j += 1;
        while j < b.len() && b[j] == b' ' {
            j += 1;
        }
        if j < b.len() && b[j] == b'"' {
            if let Some(vend) = string_end(j) {
                let value = &text[j..=vend];
                if !value.contains('…') && !value.contains("...") {
                    out.insert((key.to_string(), value.to_string()));
                }
                i = vend + 1;
                continue;
            }
        } else {
            let end = text[j..]
                .find(|c: char| [',', '}', ']', ' ', '\n'].contains(&c))
                .map_or(b.len(), |e| j + e);
            let value = &text[j..end];
            let scalar = value == "true"
                || value == "false"
                || value == "null"
                || (!value.is_empty() && value.parse::<f64>().is_ok());
            if scalar {
                out.insert((key.to_string(), value.to_string()));
            }
        }
        i = kend + 1;
    }
    out
}

fn expected_exit(cmd: &Cmd) -> i32 {
    cmd.expected
        .iter()
        .find_map(|e| {
            e.split_once("exit code ")
                .and_then(|(_, n)| n.split(|c: char| !c.is_ascii_digit()).next())
                .and_then(|n| n.parse().ok())
        })
        .unwrap_or(0)
}

fn missing(expected: &[String], actual: &str) -> Vec<(String, String)> {
    let want = pairs(&expected.join("\n"));
    let got = pairs(actual);
    want.difference(&got).cloned().collect()
}

/// One page's world: server, services, working directory, tools on PATH.
struct World {
    page: String,
    /// The gateway's port, where the pages say 8080.
    http: u16,
    nats: NatsServer,
    services: Vec<(&'static str, ServiceProcess)>,
    work: tempfile::TempDir,
    home: tempfile::TempDir,
    bin: tempfile::TempDir,
    background: Vec<(Cmd, Child, PathBuf)>,
    /// The chat tool's stand-in, once a page asks for it.
    chat: Option<ChatStandIn>,
}

/// Stands in for a chat tool's incoming webhook (with the adapter of
/// docs/webhooks.md in front of it): an HTTP receiver on a free loopback
/// port, where the pages say `127.0.0.1:9000`, that takes every POST (204)
/// and keeps its body.
struct ChatStandIn {
    port: u16,
    bodies: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl ChatStandIn {
    /// Listens on a thread of its own: the page's commands block the test's
    /// runtime while they run.
    fn start() -> Self {
        use std::io::{BufRead, BufReader, Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let bodies = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let kept = bodies.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut length = 0usize;
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                        break;
                    }
                    if let Some((k, v)) = line.split_once(':')
                        && k.eq_ignore_ascii_case("content-length")
                    {
                        length = v.trim().parse().unwrap_or(0);
                    }
                }
                let mut body = vec![0u8; length];
                if reader.read_exact(&mut body).is_ok() {
                    kept.lock()
                        .unwrap()
                        .push(String::from_utf8_lossy(&body).into_owned());
                }
                let _ = stream.write_all(b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n");
            }
        });
        Self { port, bodies }
    }
}

const SERVICES: [(&str, &str); 4] = [
    (services::INGEST, "ingest"),
    (services::PROJECTION, "projection"),
    (services::NOTIFIER, "notifier"),
    (services::GATEWAY, "gateway"),
];

impl World {
    async fn new(page: &str) -> Self {
        let nats =
            NatsServer::start_secured_with(vec!["-m".into(), free_port().to_string()], |_| {
                String::new()
            });
        let monitor = nats.monitor_port().expect("started with -m");
        // The gateway's port: the pages say 127.0.0.1:8080.
        let http = free_port();
        let work = tempfile::tempdir().unwrap();
        let home = tempfile::tempdir().unwrap();
        let bin = tempfile::tempdir().unwrap();
        // The checkout a person runs the commands in.
        std::fs::create_dir(work.path().join("secrets")).unwrap();
        let secrets = nats.seed_file("admin");
        for entry in std::fs::read_dir(secrets.parent().unwrap()).unwrap() {
            let p = entry.unwrap().path();
            if p.is_dir() {
                // route-tls/: the cluster's, no command here uses it.
                continue;
            }
            std::fs::copy(&p, work.path().join("secrets").join(p.file_name().unwrap())).unwrap();
        }
        std::fs::create_dir(work.path().join("examples")).unwrap();
        for entry in std::fs::read_dir(root().join("examples")).unwrap() {
            let p = entry.unwrap().path();
            std::fs::copy(
                &p,
                work.path().join("examples").join(p.file_name().unwrap()),
            )
            .unwrap();
        }
        std::os::unix::fs::symlink(bin_path("nats-stand-in"), bin.path().join("nats")).unwrap();
        let curl = String::from_utf8(
            Command::new("bash")
                .args(["-c", "command -v curl"])
                .output()
                .unwrap()
                .stdout,
        )
        .unwrap();
        let curl = curl.trim();
        assert!(
            !curl.is_empty(),
            "curl is needed for the monitoring examples"
        );
        std::fs::write(
            bin.path().join("curl"),
            format!(
                "#!/usr/bin/env bash\nargs=()\nfor a in \"$@\"; do a=\"${{a//127.0.0.1:8222/127.0.0.1:{monitor}}}\"; args+=(\"${{a//127.0.0.1:8080/127.0.0.1:{http}}}\"); done\nexec {curl} \"${{args[@]}}\"\n"
            ),
        )
        .unwrap();
        let mut perm = std::fs::metadata(bin.path().join("curl"))
            .unwrap()
            .permissions();
        std::os::unix::fs::PermissionsExt::set_mode(&mut perm, 0o755);
        std::fs::set_permissions(bin.path().join("curl"), perm).unwrap();
        let mut world = Self {
            page: page.to_string(),
            http,
            nats,
            services: Vec::new(),
            work,
            home,
            bin,
            background: Vec::new(),
            chat: None,
        };
        world.start_all().await;
        world
    }

    async fn start(&mut self, name: &str, extra: &[(String, String)]) {
        let (binary, user) = SERVICES
            .iter()
            .find(|(b, _)| *b == name)
            .unwrap_or_else(|| panic!("{}: no service {name}", self.page));
        assert!(
            !self.services.iter().any(|(b, _)| b == binary),
            "{}: {name} is already running",
            self.page
        );
        let seed = self.nats.seed_file(user).display().to_string();
        let http_addr = format!("127.0.0.1:{}", self.http);
        let mut env: Vec<(&str, &str)> = vec![("NATS_NKEY", &seed)];
        if *binary == services::GATEWAY {
            env.push(("UPR_HTTP_ADDR", &http_addr));
        }
        // A subscriptions file named as the pages name it, from the
        // checkout; its `127.0.0.1:9000` is where the chat stand-in listens.
        let extra: Vec<(String, String)> = extra
            .iter()
            .map(|(k, v)| {
                if k != "UPR_WEBHOOKS" {
                    return (k.clone(), v.clone());
                }
                let file = self.work.path().join(v);
                if let Some(chat) = &self.chat {
                    let text = std::fs::read_to_string(&file).unwrap();
                    let text = text.replace("127.0.0.1:9000", &format!("127.0.0.1:{}", chat.port));
                    std::fs::write(&file, text).unwrap();
                }
                (k.clone(), file.display().to_string())
            })
            .collect();
        env.extend(extra.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        let service = ServiceProcess::start(binary, &self.nats.url(), &env);
        service.wait_healthy().await;
        // A new subscription starts with the notifications sent once its
        // position is set: wait for it, as a person would see it in the log.
        if extra.iter().any(|(k, _)| k == "UPR_WEBHOOKS") {
            let deadline = Instant::now() + Duration::from_secs(20);
            while !service.logs().contains("webhook delivering") {
                assert!(
                    Instant::now() < deadline,
                    "{}: the webhooks did not start: {}",
                    self.page,
                    service.logs()
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        self.services.push((binary, service));
    }

    async fn start_all(&mut self) {
        for (binary, _) in SERVICES {
            self.start(binary, &[]).await;
        }
    }

    fn stop(&mut self, name: &str) {
        let i = self
            .services
            .iter()
            .position(|(b, _)| *b == name)
            .unwrap_or_else(|| panic!("{}: {name} is not running", self.page));
        let (_, mut service) = self.services.remove(i);
        service.terminate(Duration::from_secs(30));
    }

    async fn hook(&mut self, line: usize, what: &str) {
        let words: Vec<&str> = what.split_whitespace().collect();
        match words.as_slice() {
            ["stop", name] => self.stop(name),
            ["chat", "stand-in"] => self.chat = Some(ChatStandIn::start()),
            ["chat", "receives", kind] => {
                let chat = self
                    .chat
                    .as_ref()
                    .unwrap_or_else(|| panic!("{}:{line}: no chat stand-in", self.page));
                let deadline = Instant::now() + Duration::from_secs(30);
                loop {
                    let kinds: Vec<String> = chat
                        .bodies
                        .lock()
                        .unwrap()
                        .iter()
                        .filter_map(|b| serde_json::from_str::<serde_json::Value>(b).ok())
                        .filter_map(|v| v["kind"].as_str().map(str::to_owned))
                        .collect();
                    if kinds.iter().any(|k| k == kind) {
                        break;
                    }
                    assert!(
                        Instant::now() < deadline,
                        "{}:{line}: the chat got no {kind} notification within 30 s, only {kinds:?}",
                        self.page
                    );
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
            ["start", "services"] => self.start_all().await,
            ["start", name, env @ ..] => {
                let env: Vec<(String, String)> = env
                    .iter()
                    .map(|kv| {
                        let (k, v) = kv.split_once('=').expect("VAR=value");
                        (k.to_string(), v.to_string())
                    })
                    .collect();
                self.start(name, &env).await;
            }
            ["empty", "server"] => {
                while let Some((name, _)) = self.services.first() {
                    let name = *name;
                    self.stop(name);
                }
                self.nats.stop();
                std::fs::remove_dir_all(self.nats.store_dir().join("js")).unwrap();
                self.nats.restart();
            }
            _ => panic!("{}:{line}: unknown docs-test step {what:?}", self.page),
        }
    }

    fn command(&self, text: &str) -> Command {
        let path = format!(
            "{}:{}:{}",
            self.bin.path().display(),
            bin_path("upr-ingest").parent().unwrap().display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let mut c = Command::new("bash");
        c.arg("-c")
            .arg(format!("set -eo pipefail\n{text}"))
            .current_dir(self.work.path())
            .env("PATH", path)
            .env("HOME", self.home.path())
            .env("NATS_URL", self.nats.url())
            .env("DOCS_NATS_URL", self.nats.url())
            .env("RUST_LOG", "warn")
            .env_remove("UPR_LOG_FORMAT")
            .stdin(Stdio::null());
        for (k, _) in std::env::vars() {
            if k.starts_with("UPR_") || (k.starts_with("NATS_") && k != "NATS_SERVER_BIN") {
                c.env_remove(&k);
            }
        }
        c.env("NATS_URL", self.nats.url())
            .env("DOCS_NATS_URL", self.nats.url())
            // Where the gateway listens here; the pages say the default,
            // 127.0.0.1:8080 (curl's stand-in rewrites that address).
            .env("UPR_HTTP_ADDR", format!("127.0.0.1:{}", self.http));
        c
    }

    fn run(&mut self, cmd: Cmd) {
        let at = format!("{}:{}: `{}`", self.page, cmd.line, cmd.text.trim());
        let is_sub = cmd
            .text
            .split_whitespace()
            .skip_while(|w| *w != "nats")
            .any(|w| w == "sub");
        if is_sub {
            let out = self.work.path().join(format!("sub-{}.out", cmd.line));
            let err = self.work.path().join(format!("sub-{}.err", cmd.line));
            let child = self
                .command(&cmd.text)
                .stdout(std::fs::File::create(&out).unwrap())
                .stderr(std::fs::File::create(&err).unwrap())
                .spawn()
                .unwrap();
            let deadline = Instant::now() + Duration::from_secs(10);
            while !std::fs::read_to_string(&err)
                .unwrap_or_default()
                .contains("Subscribing on")
            {
                assert!(
                    Instant::now() < deadline,
                    "{at}: did not subscribe: {}",
                    std::fs::read_to_string(&err).unwrap_or_default()
                );
                std::thread::sleep(Duration::from_millis(20));
            }
            self.background.push((cmd, child, out));
            return;
        }
        let mut child = self
            .command(&cmd.text)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        while child.try_wait().unwrap().is_none() {
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("{at}: still running after 60 s");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let output = child.wait_with_output().unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        let code = output.status.code().unwrap_or(-1);
        assert_eq!(
            code,
            expected_exit(&cmd),
            "{at}: exit status\nstdout: {stdout}\nstderr: {stderr}"
        );
        let missing = missing(&cmd.expected, &stdout);
        assert!(
            missing.is_empty(),
            "{at}: the page shows {missing:?}, not in what it printed:\n{stdout}\nstderr: {stderr}"
        );
    }

    /// The background subscriptions received what the page shows.
    fn finish(&mut self) {
        for (cmd, mut child, out) in std::mem::take(&mut self.background) {
            let deadline = Instant::now() + Duration::from_secs(40);
            loop {
                let got = std::fs::read_to_string(&out).unwrap_or_default();
                let missing = missing(&cmd.expected, &got);
                if missing.is_empty() {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "{}:{}: `{}` never showed {missing:?}; it printed:\n{got}",
                    self.page,
                    cmd.line,
                    cmd.text
                );
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        let violations: Vec<String> = self
            .nats
            .log()
            .lines()
            .filter(|l| l.contains("Violation"))
            .map(str::to_string)
            .collect();
        assert!(
            violations.is_empty(),
            "{}: the server refused something: {violations:?}",
            self.page
        );
    }
}

impl Drop for World {
    fn drop(&mut self) {
        for (_, child, _) in &mut self.background {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Runs one page's commands in order on a fresh server; skipped blocks are
/// printed.
async fn run_page(file: &str) {
    let path = root().join(file);
    let items = parse_page(&path);
    let mut world = World::new(file).await;
    for item in items {
        match item {
            Item::Block(cmds) => {
                for cmd in cmds {
                    world.run(cmd);
                }
            }
            Item::Hook { line, what } => world.hook(line, &what).await,
            Item::Skipped { line, why } => eprintln!("{file}:{line}: not run: {why}"),
        }
    }
    world.finish();
}

#[tokio::test]
async fn readme_commands_work_as_written() {
    run_page("README.md").await;
}

#[tokio::test]
async fn readme_intake_page_commands_work_as_written() {
    run_page("docs/intake.md").await;
}

#[tokio::test]
async fn readme_queries_page_commands_work_as_written() {
    run_page("docs/queries.md").await;
}

#[tokio::test]
async fn readme_notifications_page_commands_work_as_written() {
    run_page("docs/notifications.md").await;
}

#[tokio::test]
async fn readme_operations_page_commands_work_as_written() {
    run_page("docs/operations.md").await;
}

/// Pages whose commands have no test of their own above run here, one
/// after another (each on a fresh server).
#[tokio::test]
async fn readme_other_pages_commands_work_as_written() {
    let own = [
        "README.md",
        "intake.md",
        "queries.md",
        "notifications.md",
        "operations.md",
    ];
    for page in pages() {
        let name = page.file_name().unwrap().to_string_lossy().to_string();
        if own.contains(&name.as_str()) {
            continue;
        }
        let runs = parse_page(&page)
            .iter()
            .any(|i| matches!(i, Item::Block(_)));
        if runs {
            run_page(&format!("docs/{name}")).await;
        }
    }
}

/// Lists every block the tests skip, with the reason the page gives; each
/// page parses (a command outside an sh block, a marker in the wrong place
/// fail here first).
#[test]
fn readme_skipped_blocks_are_listed_with_a_reason() {
    let mut skipped = Vec::new();
    let mut run = 0;
    for page in pages() {
        let name = page.strip_prefix(root()).unwrap().display().to_string();
        for item in parse_page(&page) {
            match item {
                Item::Skipped { line, why } => skipped.push(format!("{name}:{line}: {why}")),
                Item::Block(cmds) => run += cmds.len(),
                Item::Hook { .. } => {}
            }
        }
    }
    eprintln!(
        "{run} documented commands run; {} blocks not run:",
        skipped.len()
    );
    for s in &skipped {
        eprintln!("  {s}");
    }
    assert!(run >= 40, "only {run} documented commands found");
}

#[test]
fn readme_expected_output_pairs_are_read_as_written() {
    let p = pairs(
        r#"# {"ok":true,"event_id":"…","seq": 3,"duplicate":false, "field":null, "x":"a b"}"#,
    );
    let want: BTreeSet<(String, String)> = [
        ("ok", "true"),
        ("seq", "3"),
        ("duplicate", "false"),
        ("field", "null"),
        ("x", "\"a b\""),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    assert_eq!(p, want);
    let cmds = commands(&[
        (1, "nats req a '{}'"),
        (2, "# {\"ok\":true}"),
        (3, ""),
        (4, "# a comment"),
        (5, "upr-ingest import \\"),
        (6, "  file.csv"),
        (7, "# exit code 1"),
    ]);
    assert_eq!(cmds.len(), 2);
    assert_eq!(cmds[0].expected, vec!["{\"ok\":true}"]);
    assert_eq!(cmds[1].text, "upr-ingest import \\\n  file.csv");
    assert_eq!(expected_exit(&cmds[1]), 1);
}

/// Every variable the binaries read has a row in docs/operations.md's
/// configuration table, with the binaries that read it and the default
/// they apply; every row names a variable something reads.
#[test]
fn readme_configuration_table_matches_the_settings_the_binaries_read() {
    let text = std::fs::read_to_string(root().join("docs/operations.md")).unwrap();
    let section = text
        .split("\n## Configuration\n")
        .nth(1)
        .and_then(|rest| rest.split("\n## ").next())
        .expect("docs/operations.md has a Configuration section");
    let rows: Vec<Vec<String>> = section
        .lines()
        .filter(|l| l.starts_with("| `"))
        .map(|l| l.split('|').map(|c| c.trim().to_string()).collect())
        .collect();
    for s in upr_nats::config::SETTINGS {
        let row = rows
            .iter()
            .find(|r| r[1] == format!("`{}`", s.var))
            .unwrap_or_else(|| panic!("docs/operations.md has no row for {}", s.var));
        let used_by: BTreeSet<&str> = row[2]
            .split(',')
            .map(|b| b.trim().trim_matches('`'))
            .collect();
        let reads: BTreeSet<&str> = s.used_by.iter().copied().collect();
        assert_eq!(used_by, reads, "{}: `Read by` says {:?}", s.var, row[2]);
        if s.default.is_empty() {
            assert!(
                row[3].starts_with("unset"),
                "{}: no default applies, the table says {:?}",
                s.var,
                row[3]
            );
        } else {
            let default = s.default.replace("<binary>", "upr-ingest");
            let shown = row[3].replace("<binary>", "upr-ingest");
            assert!(
                shown.contains(&format!("`{default}`")) || shown.contains(&default),
                "{}: the table gives the default {:?}; the binaries apply {}",
                s.var,
                row[3],
                s.default
            );
        }
    }
    for row in &rows {
        let var = row[1].trim_matches('`');
        let known = upr_nats::config::SETTINGS.iter().any(|s| s.var == var);
        let deploy = row[2].contains("compose") || row[2].contains("scripts/");
        assert!(
            known || deploy,
            "docs/operations.md lists {var}, which no binary reads"
        );
    }
}

/// GitHub's anchor of a heading: lower case, spaces to `-`, punctuation
/// other than `-` and `_` dropped.
fn anchor(heading: &str) -> String {
    heading
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c.to_ascii_lowercase()),
            _ => None,
        })
        .collect()
}

/// Every relative link of README.md, docs/*.md and CONTRIBUTING.md points
/// at a file that exists and, with `#...`, at a heading of it.
#[test]
fn readme_links_point_at_files_and_headings_that_exist() {
    for page in pages().into_iter().chain([root().join("CONTRIBUTING.md")]) {
        let text = std::fs::read_to_string(&page).unwrap();
        let dir = page.parent().unwrap();
        let mut in_fence = false;
        for (n, line) in text.lines().enumerate() {
            if line.trim_start().starts_with("```") {
                in_fence = !in_fence;
            }
            if in_fence {
                continue;
            }
            for part in line.split("](").skip(1) {
                let Some(target) = part.split(')').next() else {
                    continue;
                };
                if target.starts_with("http") || target.starts_with("mailto:") {
                    continue;
                }
                let (file, heading) = target.split_once('#').unwrap_or((target, ""));
                let path = if file.is_empty() {
                    page.clone()
                } else {
                    dir.join(file)
                };
                let at = format!("{}:{}: {target}", page.display(), n + 1);
                assert!(path.exists(), "{at}: no such file");
                if heading.is_empty() {
                    continue;
                }
                let headings: Vec<String> = std::fs::read_to_string(&path)
                    .unwrap()
                    .lines()
                    .filter_map(|l| l.strip_prefix('#'))
                    .map(|l| anchor(l.trim_start_matches('#').trim()))
                    .collect();
                assert!(
                    headings.contains(&heading.to_string()),
                    "{at}: no such heading"
                );
            }
        }
    }
}
