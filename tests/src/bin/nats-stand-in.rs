//! A stand-in for the NATS CLI (`nats`), for the documentation tests only.
//!
//! The documentation shows `nats ...` commands; the CLI is not installed
//! where the tests run, so `tests/tests/e2e/readme.rs` puts this binary on
//! `PATH` under the name `nats` and runs each documented command with bash,
//! exactly as written. It understands the subset of the CLI the pages use,
//! with the CLI's flags and the same NATS requests the CLI makes (so a
//! missing permission fails here as it would there), and prints the
//! message bodies the pages show (`nats req` prints only the reply body, as
//! with `--raw`). Anything else it refuses with exit status 2, so a page
//! cannot show a command nobody ran.
//!
//! `DOCS_NATS_URL`, when set, replaces the documented address
//! `nats://127.0.0.1:4222` (the test's server runs on a free port).

use std::{
    collections::BTreeMap,
    io::Write,
    path::{Path, PathBuf},
    process::ExitCode,
    time::Duration,
};

use async_nats::{HeaderMap, jetstream};
use futures::StreamExt;
use serde_json::{Value, json};

const DOCUMENTED_URL: &str = "nats://127.0.0.1:4222";

/// The connection settings: a saved context, overridden by flags.
#[derive(Debug, Default, Clone, serde::Serialize, serde::Deserialize)]
struct Context {
    #[serde(default)]
    url: String,
    #[serde(default)]
    nkey: String,
    #[serde(default)]
    jetstream_domain: String,
}

fn contexts_dir() -> PathBuf {
    let home = std::env::var_os("HOME").expect("HOME");
    Path::new(&home).join(".config/nats/context")
}

fn fail(message: impl std::fmt::Display) -> ExitCode {
    eprintln!("nats: error: {message}");
    ExitCode::from(1)
}

fn usage(message: impl std::fmt::Display) -> ExitCode {
    eprintln!("nats (documentation stand-in): {message}");
    ExitCode::from(2)
}

/// Arguments with the flags taken out: `flags["--count"]`, positional words.
struct Args {
    words: Vec<String>,
    flags: BTreeMap<String, String>,
}

/// Flags that take a value; every other flag is a switch.
const VALUED: &[&str] = &[
    "--context",
    "--server",
    "-s",
    "--nkey",
    "--js-domain",
    "--count",
    "--subject",
    "--last-for",
    "--timeout",
];
const SWITCHES: &[&str] = &["--raw", "--json", "-f", "--force", "--no-progress"];

fn parse(raw: Vec<String>) -> Result<Args, String> {
    let mut words = Vec::new();
    let mut flags = BTreeMap::new();
    let mut it = raw.into_iter();
    while let Some(arg) = it.next() {
        if let Some((flag, value)) = arg.split_once('=').filter(|(f, _)| f.starts_with("--")) {
            if !VALUED.contains(&flag) {
                return Err(format!("unknown flag {flag}"));
            }
            flags.insert(flag.to_string(), value.to_string());
        } else if VALUED.contains(&arg.as_str()) {
            let value = it.next().ok_or(format!("{arg} needs a value"))?;
            flags.insert(arg, value);
        } else if SWITCHES.contains(&arg.as_str()) {
            flags.insert(arg, String::new());
        } else if arg.starts_with('-') && arg.len() > 1 {
            return Err(format!("unknown flag {arg}"));
        } else {
            words.push(arg);
        }
    }
    Ok(Args { words, flags })
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let args = match parse(std::env::args().skip(1).collect()) {
        Ok(a) => a,
        Err(e) => return usage(e),
    };
    let words: Vec<&str> = args.words.iter().map(String::as_str).collect();
    if let ["context", "save", name] = words.as_slice() {
        return save_context(name, &args);
    }
    let ctx = match context_of(&args) {
        Ok(c) => c,
        Err(e) => return fail(e),
    };
    let client = match connect(&ctx).await {
        Ok(c) => c,
        Err(e) => return fail(e),
    };
    let js = if ctx.jetstream_domain.is_empty() {
        jetstream::new(client.clone())
    } else {
        jetstream::with_domain(client.clone(), &ctx.jetstream_domain)
    };
    let result = match words.as_slice() {
        ["req", subject, payload] => request(&client, subject, payload).await,
        ["pub", subject, payload] => publish(&client, subject, payload).await,
        ["sub", subject] => subscribe(&client, subject, &args).await,
        ["kv", "get", bucket, key] => kv_get(&js, bucket, key, &args).await,
        ["micro", "ls"] => micro_ls(&client).await,
        ["micro", "info", name] => micro(&client, "INFO", name).await,
        ["micro", "stats", name] => micro(&client, "STATS", name).await,
        ["stream", "info", name] => stream_info(&js, name).await,
        ["stream", "view", name] => stream_view(&js, name, &args).await,
        ["stream", "get", name] => stream_get(&js, name, &args).await,
        ["stream", "backup", name, dir] => backup(&client, &js, name, Path::new(dir)).await,
        ["stream", "restore", dir] => restore(&client, &js, Path::new(dir)).await,
        ["consumer", "info", stream, name] => consumer_info(&js, stream, name).await,
        ["consumer", "next", stream, name] => consumer_next(&js, stream, name, &args).await,
        other => {
            return usage(format!(
                "the stand-in does not know `nats {}`",
                other.join(" ")
            ));
        }
    };
    let _ = client.flush().await;
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(e),
    }
}

type Outcome = Result<(), Box<dyn std::error::Error + Send + Sync>>;

fn save_context(name: &str, args: &Args) -> ExitCode {
    let ctx = Context {
        url: args.flags.get("--server").cloned().unwrap_or_default(),
        nkey: args.flags.get("--nkey").cloned().unwrap_or_default(),
        jetstream_domain: args.flags.get("--js-domain").cloned().unwrap_or_default(),
    };
    if !ctx.nkey.is_empty() && !Path::new(&ctx.nkey).is_absolute() {
        return usage("--nkey in a saved context should be an absolute path");
    }
    let dir = contexts_dir();
    std::fs::create_dir_all(&dir).expect("contexts directory");
    std::fs::write(
        dir.join(format!("{name}.json")),
        serde_json::to_vec_pretty(&ctx).expect("json"),
    )
    .expect("write context");
    println!("NATS Configuration Context \"{name}\"");
    ExitCode::SUCCESS
}

fn context_of(args: &Args) -> Result<Context, String> {
    let mut ctx = match args.flags.get("--context") {
        Some(name) => {
            let path = contexts_dir().join(format!("{name}.json"));
            let text = std::fs::read_to_string(&path)
                .map_err(|e| format!("unknown context {name:?}: {e}"))?;
            serde_json::from_str(&text).map_err(|e| e.to_string())?
        }
        None => Context::default(),
    };
    if let Some(s) = args.flags.get("--server").or(args.flags.get("-s")) {
        ctx.url.clone_from(s);
    }
    if let Some(k) = args.flags.get("--nkey") {
        ctx.nkey.clone_from(k);
    }
    if let Some(d) = args.flags.get("--js-domain") {
        ctx.jetstream_domain.clone_from(d);
    }
    if ctx.url.is_empty() {
        ctx.url = DOCUMENTED_URL.into();
    }
    Ok(ctx)
}

async fn connect(ctx: &Context) -> Result<async_nats::Client, String> {
    let url = match std::env::var("DOCS_NATS_URL") {
        Ok(real) => ctx
            .url
            .replace(DOCUMENTED_URL, &real)
            .replace("nats://localhost:4222", &real),
        Err(_) => ctx.url.clone(),
    };
    let mut options = async_nats::ConnectOptions::new()
        .retry_on_initial_connect()
        .max_reconnects(Some(1))
        .connection_timeout(Duration::from_secs(3));
    if !ctx.nkey.is_empty() {
        let seed = std::fs::read_to_string(&ctx.nkey)
            .map_err(|e| format!("reading the nkey {}: {e}", ctx.nkey))?;
        options = async_nats::ConnectOptions::with_nkey(seed.trim().to_string())
            .max_reconnects(Some(1))
            .connection_timeout(Duration::from_secs(3));
    }
    tokio::time::timeout(Duration::from_secs(5), options.connect(url))
        .await
        .map_err(|_| "connection timed out".to_string())?
        .map_err(|e| e.to_string())
}

fn body(payload: &str) -> bytes::Bytes {
    bytes::Bytes::from(payload.to_string())
}

async fn request(client: &async_nats::Client, subject: &str, payload: &str) -> Outcome {
    let reply = tokio::time::timeout(
        Duration::from_secs(10),
        client.request(subject.to_string(), body(payload)),
    )
    .await
    .map_err(|_| "nats: timeout")??;
    let mut out = std::io::stdout();
    out.write_all(&reply.payload)?;
    if !reply.payload.ends_with(b"\n") {
        out.write_all(b"\n")?;
    }
    Ok(())
}

async fn publish(client: &async_nats::Client, subject: &str, payload: &str) -> Outcome {
    client.publish(subject.to_string(), body(payload)).await?;
    client.flush().await?;
    eprintln!("Published {} bytes to \"{subject}\"", payload.len());
    Ok(())
}

async fn subscribe(client: &async_nats::Client, subject: &str, args: &Args) -> Outcome {
    let count: usize = match args.flags.get("--count") {
        Some(n) => n.parse()?,
        None => usize::MAX,
    };
    let mut sub = client.subscribe(subject.to_string()).await?;
    client.flush().await?;
    // The test reads this line to know the subscription is in place.
    eprintln!("Subscribing on {subject}");
    let mut n = 0;
    while n < count {
        let Some(message) = sub.next().await else {
            break;
        };
        n += 1;
        let mut out = std::io::stdout();
        writeln!(out, "[#{n}] Received on \"{}\"", message.subject)?;
        out.write_all(&message.payload)?;
        out.write_all(b"\n\n")?;
        out.flush()?;
    }
    Ok(())
}

async fn kv_get(js: &jetstream::Context, bucket: &str, key: &str, args: &Args) -> Outcome {
    let store = js.get_key_value(bucket).await?;
    let entry = store
        .entry(key)
        .await?
        .ok_or_else(|| format!("nats: key not found: {key}"))?;
    let mut out = std::io::stdout();
    if !args.flags.contains_key("--raw") {
        writeln!(out, "{bucket} > {key} revision: {}\n", entry.revision)?;
    }
    out.write_all(&entry.value)?;
    out.write_all(b"\n")?;
    Ok(())
}

/// Every answer to a `$SRV` request within half a second.
async fn gather(client: &async_nats::Client, subject: String) -> Result<Vec<Value>, String> {
    let inbox = client.new_inbox();
    let mut sub = client
        .subscribe(inbox.clone())
        .await
        .map_err(|e| e.to_string())?;
    client
        .publish_with_reply(subject, inbox, bytes::Bytes::new())
        .await
        .map_err(|e| e.to_string())?;
    let mut answers = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_millis(500);
    while let Ok(Some(m)) = tokio::time::timeout_at(deadline, sub.next()).await {
        if m.status.is_some() {
            continue;
        }
        answers.push(serde_json::from_slice(&m.payload).map_err(|e| e.to_string())?);
    }
    answers.sort_by_key(|a: &Value| a["id"].as_str().map(str::to_string));
    Ok(answers)
}

async fn micro_ls(client: &async_nats::Client) -> Outcome {
    let mut all = gather(client, "$SRV.INFO".into()).await?;
    all.sort_by_key(|a| a["name"].as_str().map(str::to_string));
    if all.is_empty() {
        return Err("no services found".into());
    }
    for s in all {
        println!(
            "{}  {}  {}  {}",
            s["name"].as_str().unwrap_or(""),
            s["version"].as_str().unwrap_or(""),
            s["id"].as_str().unwrap_or(""),
            s["description"].as_str().unwrap_or("")
        );
    }
    Ok(())
}

async fn micro(client: &async_nats::Client, verb: &str, name: &str) -> Outcome {
    let all = gather(client, format!("$SRV.{verb}.{name}")).await?;
    if all.is_empty() {
        return Err(format!("no {name} instances found").into());
    }
    println!("{}", serde_json::to_string(&all)?);
    Ok(())
}

async fn stream_info(js: &jetstream::Context, name: &str) -> Outcome {
    let info: Value = js
        .request(format!("STREAM.INFO.{name}"), &json!({}))
        .await?;
    if let Some(e) = info.get("error") {
        return Err(format!("{e}").into());
    }
    println!("{}", serde_json::to_string(&info)?);
    Ok(())
}

fn print_message(seq: u64, subject: &str, headers: Option<&HeaderMap>, payload: &[u8]) -> Outcome {
    let mut out = std::io::stdout();
    writeln!(out, "[{seq}] Subject: {subject}")?;
    if let Some(h) = headers {
        for (k, vs) in h.iter() {
            for v in vs {
                writeln!(out, "  {k}: {v}")?;
            }
        }
    }
    out.write_all(payload)?;
    out.write_all(b"\n")?;
    Ok(())
}

async fn stream_view(js: &jetstream::Context, name: &str, args: &Args) -> Outcome {
    let stream = js.get_stream(name).await?;
    let mut config = jetstream::consumer::pull::OrderedConfig::default();
    if let Some(s) = args.flags.get("--subject") {
        config.filter_subject = s.clone();
    }
    let consumer = stream.create_consumer(config).await?;
    let mut pending = consumer.cached_info().num_pending;
    let mut messages = consumer.messages().await?;
    while pending > 0 {
        let m = tokio::time::timeout(Duration::from_secs(5), messages.next())
            .await
            .map_err(|_| "nats: timeout")?
            .ok_or("end of messages")??;
        let info = m.info()?;
        print_message(
            info.stream_sequence,
            &m.subject,
            m.headers.as_ref(),
            &m.payload,
        )?;
        pending = info.pending;
    }
    Ok(())
}

async fn stream_get(js: &jetstream::Context, name: &str, args: &Args) -> Outcome {
    let subject = args
        .flags
        .get("--last-for")
        .ok_or("the stand-in knows `stream get NAME --last-for SUBJECT`")?;
    let stream = js.get_stream(name).await?;
    // As the CLI does: a direct get where the stream allows it.
    let m = stream.direct_get_last_for_subject(subject.clone()).await?;
    print_message(m.sequence, &m.subject, Some(&m.headers), &m.payload)
}

async fn consumer_info(js: &jetstream::Context, stream: &str, name: &str) -> Outcome {
    let info: Value = js
        .request(format!("CONSUMER.INFO.{stream}.{name}"), &json!({}))
        .await?;
    if let Some(e) = info.get("error") {
        return Err(format!("{e}").into());
    }
    println!("{}", serde_json::to_string(&info)?);
    Ok(())
}

async fn consumer_next(js: &jetstream::Context, stream: &str, name: &str, args: &Args) -> Outcome {
    let count: usize = args.flags.get("--count").map_or(Ok(1), |n| n.parse())?;
    let consumer: jetstream::consumer::PullConsumer =
        js.get_consumer_from_stream(name, stream).await?;
    let mut batch = consumer
        .fetch()
        .max_messages(count)
        .expires(Duration::from_secs(1))
        .messages()
        .await?;
    let mut got = 0;
    while let Some(m) = batch.next().await {
        let m = m?;
        let info = m.info()?;
        print_message(info.stream_sequence, &m.subject, None, &m.payload)?;
        m.ack().await?;
        got += 1;
    }
    if got == 0 {
        return Err("nats: timeout: no message waiting".into());
    }
    Ok(())
}

/// `nats stream backup`: the server's snapshot of the stream, in a
/// directory holding `backup.json` (configuration and state) and
/// `stream.tar.s2` (the chunks as the server sends them).
async fn backup(
    client: &async_nats::Client,
    js: &jetstream::Context,
    name: &str,
    dir: &Path,
) -> Outcome {
    let inbox = client.new_inbox();
    let mut chunks = client.subscribe(inbox.clone()).await?;
    let reply: Value = js
        .request(
            format!("STREAM.SNAPSHOT.{name}"),
            &json!({"deliver_subject": inbox, "no_consumers": true, "chunk_size": 128 * 1024}),
        )
        .await?;
    if let Some(e) = reply.get("error") {
        return Err(format!("snapshot refused: {e}").into());
    }
    std::fs::create_dir_all(dir)?;
    let mut data = std::fs::File::create(dir.join("stream.tar.s2"))?;
    let mut bytes = 0;
    loop {
        let chunk = tokio::time::timeout(Duration::from_secs(10), chunks.next())
            .await
            .map_err(|_| "snapshot stalled")?
            .ok_or("snapshot ended early")?;
        if chunk.payload.is_empty() {
            break;
        }
        data.write_all(&chunk.payload)?;
        bytes += chunk.payload.len();
        if let Some(ack) = chunk.reply {
            client.publish(ack, bytes::Bytes::new()).await?;
        }
    }
    data.sync_all()?;
    let meta = json!({"config": reply["config"], "state": reply["state"]});
    std::fs::write(dir.join("backup.json"), serde_json::to_vec_pretty(&meta)?)?;
    println!(
        "Backed up stream {name} ({} messages, {bytes} bytes) to {}",
        reply["state"]["messages"],
        dir.display()
    );
    Ok(())
}

/// `nats stream restore`: the stream as it was backed up, into a server
/// that does not have it.
async fn restore(client: &async_nats::Client, js: &jetstream::Context, dir: &Path) -> Outcome {
    let meta: Value = serde_json::from_slice(&std::fs::read(dir.join("backup.json"))?)?;
    let name = meta["config"]["name"]
        .as_str()
        .ok_or("backup.json names no stream")?
        .to_string();
    let reply: Value = js.request(format!("STREAM.RESTORE.{name}"), &meta).await?;
    if let Some(e) = reply.get("error") {
        return Err(format!("restore refused: {e}").into());
    }
    let deliver = reply["deliver_subject"]
        .as_str()
        .ok_or("no deliver subject")?
        .to_string();
    let data = std::fs::read(dir.join("stream.tar.s2"))?;
    for chunk in data.chunks(128 * 1024) {
        client
            .request(deliver.clone(), bytes::Bytes::copy_from_slice(chunk))
            .await?;
    }
    let done = tokio::time::timeout(
        Duration::from_secs(30),
        client.request(deliver, bytes::Bytes::new()),
    )
    .await
    .map_err(|_| "restore did not finish")??;
    let done: Value = serde_json::from_slice(&done.payload)?;
    if let Some(e) = done.get("error") {
        return Err(format!("restore failed: {e}").into());
    }
    println!(
        "Restored stream {name} ({} messages)",
        done["state"]["messages"]
    );
    Ok(())
}
