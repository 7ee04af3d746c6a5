//! `upr-keys`: the secrets of one installation, generated on the machine that
//! runs it, so no two installations share a credential and none is ever in
//! the repository.
//!
//! Every NATS user of `deploy/nats/nats.conf` authenticates with an nkey: the
//! client holds a private seed, the server only the public key. The server
//! configuration therefore holds nothing secret about users; the only
//! shared secret is the password the cluster nodes use on their routes.
//!
//! ```text
//! upr-keys init [DIR]               create what is missing in DIR (default: secrets)
//! upr-keys rotate DIR NAME...       replace the key of each user NAME (or `route`)
//! upr-keys routes DIR HOST:PORT...  the cluster nodes' route addresses
//! upr-keys add publisher|reader NAME [--dir DIR]   a new party, its own account
//! upr-keys remove NAME [--dir DIR]  revoke a party
//! upr-keys rotate DIR route-tls     a new route CA and route certificate
//! ```
//!
//! Parties (contract V3.1): each person, organisation or program that
//! records or reads is an account of its own, named by the party's name, so
//! the server tells the services who sent a message (the account name in
//! `Nats-Request-Info`) and no party sees another's traffic. `DIR/parties`
//! lists them (`<kind> <name>` a line); `DIR/parties.conf` is generated from
//! it and included inside `accounts { }` of the server configuration, one
//! self-contained account per party (a file included inside a block cannot
//! see the including file's variables). `init` registers the first
//! `publisher` and `reader`.
//!
//! `DIR/<user>.nk` holds a user's seed, `DIR/route.password` the route
//! password, `DIR/nats-keys.conf` the public half that the server config
//! includes (`UPR_<USER>_NKEY` variables) and `DIR/route.conf` the route
//! password (`UPR_ROUTE_PASSWORD`) and the routes with that password in
//! their URLs (`UPR_ROUTES`) for cluster nodes: a node presents only what
//! its route URLs carry, so the password has to be in them, and the config
//! language cannot splice a variable into a string.
//!
//! `DIR/route-tls/` holds what the routes' TLS needs: `ca.pem`, a CA made for
//! this installation, and `route-cert.pem` / `route-key.pem`, one route
//! certificate for every node (the route hosts and loopback as its names),
//! signed by that CA. The CA's private key exists only while `upr-keys`
//! signs: it is never written, so nothing that reads the secrets (a node, a
//! backup) can mint another route certificate. A new node name or a lost key
//! means a new CA and certificate (`rotate DIR route-tls`, which `routes`
//! does itself), then a restart of every node.
//!
//! Every file is written mode 0600 in a 0700 directory: readable by the
//! owner only (the services refuse a key file others can read).

use std::fmt::Write as _;
use std::{
    fs, io,
    io::Write,
    path::{Path, PathBuf},
    process::ExitCode,
};

use clap::{Parser, Subcommand};
use nkeys::KeyPair;

/// The NATS users of `deploy/nats/nats.conf`, in the order the generated
/// file lists them: the service account's users, and the first party of
/// each kind, whose keys `rotate` also replaces.
const USERS: [&str; 7] = [
    "ingest",
    "projection",
    "notifier",
    "gateway",
    "publisher",
    "reader",
    "admin",
];

/// The users of the service account, whose public keys `nats-keys.conf`
/// names (`UPR_<USER>_NKEY`); parties are in `parties.conf` instead.
const SERVICE_USERS: [&str; 5] = ["ingest", "projection", "notifier", "gateway", "admin"];

/// Names no party may take: the service account's users (their seed files
/// share the directory), the route password, the service account itself.
const RESERVED: [&str; 7] = [
    "ingest",
    "projection",
    "notifier",
    "admin",
    "gateway",
    "route",
    "upr",
];

/// The registry of parties, `<kind> <name>` a line.
const PARTIES: &str = "parties";

/// The accounts of the parties, included inside `accounts { }`.
const PARTIES_CONF: &str = "parties.conf";

/// What a party may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Kind {
    /// Records events (intake).
    Publisher,
    /// Queries, notifications, read models.
    Reader,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Self::Publisher => "publisher",
            Self::Reader => "reader",
        }
    }

    fn parse(text: &str) -> Option<Self> {
        match text {
            "publisher" => Some(Self::Publisher),
            "reader" => Some(Self::Reader),
            _ => None,
        }
    }
}

/// The intake types a publisher may send on, by name (an unknown type is
/// refused by the server, and a subject that is not UTF-8 never reaches ingest).
const INTAKE_TYPES: [&str; 8] = [
    "review_scheduled",
    "review_rescheduled",
    "review_cancelled",
    "review_held",
    "side_event_held",
    "report_published",
    "outcome_adopted",
    "event_retracted",
];

/// The service account's read-only JetStream API a reader imports, under the
/// JetStream domain `upr` (`$JS.upr.API...`).
const READER_JS: [&str; 9] = [
    "STREAM.INFO.KV_upr_reviews",
    "DIRECT.GET.KV_upr_reviews.>",
    "STREAM.INFO.KV_upr_sessions",
    "DIRECT.GET.KV_upr_sessions.>",
    "STREAM.INFO.KV_upr_countries",
    "DIRECT.GET.KV_upr_countries.>",
    "STREAM.INFO.UPR_NOTIFICATIONS",
    "DIRECT.GET.UPR_NOTIFICATIONS",
    "DIRECT.GET.UPR_NOTIFICATIONS.>",
];

/// The file of the route password; `route` is also the name `rotate` takes.
const ROUTE: &str = "route";

/// The route addresses until `upr-keys routes` says otherwise: the nodes of
/// compose.cluster.yaml.
const DEFAULT_ROUTE_HOSTS: [&str; 3] = ["nats:6222", "nats-2:6222", "nats-3:6222"];

/// The file listing the route addresses, one `HOST:PORT` a line.
const ROUTE_HOSTS: &str = "route.hosts";

/// The directory of the route TLS files, and the name `rotate` takes.
const ROUTE_TLS: &str = "route-tls";

/// How long a route certificate is valid: re-issued (`rotate DIR
/// route-tls`) well before then.
const ROUTE_CERT_DAYS: i64 = 3650;

/// The file the server configuration includes.
const CONF: &str = "nats-keys.conf";

/// The file a cluster node's configuration includes as well
/// (`deploy/nats/cluster.conf`); apart, because the server refuses a
/// variable that nothing in its configuration uses.
const ROUTE_CONF: &str = "route.conf";

/// `--help` beyond the commands: what the files are and what to do after a
/// rotation, so an operator needs no other page to use them.
const AFTER_HELP: &str = "Files in DIR:
  <user>.nk        the user's nkey seed: a client connects with it (NATS_NKEY=<file>,
                   or `nats --nkey <file>`). Keep it secret.
  route.password   the password cluster nodes use on their routes.
  nats-keys.conf   the public keys, included by deploy/nats/nats.conf.
  route.hosts      the cluster nodes' route addresses.
  route.conf       the route password and routes, included by deploy/nats/cluster.conf.
  route-tls/       ca.pem, route-cert.pem, route-key.pem: TLS on the cluster routes
                   (the CA's key is not kept; `rotate DIR route-tls` makes new ones).

Every file is mode 0600 in a 0700 directory; the services refuse a key file that
others can read.

After `rotate`, reload the server configuration (`nats-server --signal reload`, or
`docker compose kill -s HUP nats`) and restart whatever connects with the old key.";

/// The secrets of one UPR Tracker installation: the NATS users' nkeys and
/// the cluster route password, generated on this machine.
#[derive(Debug, Parser)]
#[command(name = "upr-keys", version, after_help = AFTER_HELP)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create the keys that are missing in DIR; existing keys are kept.
    Init {
        /// Where the keys go.
        #[arg(default_value = "secrets")]
        dir: PathBuf,
    },
    /// Replace the named keys.
    Rotate {
        /// A directory `init` made.
        dir: PathBuf,
        /// ingest, projection, notifier, gateway, publisher, reader, admin, route
        /// for the cluster routes' password, or route-tls for a new route CA
        /// and route certificate.
        #[arg(required = true, value_name = "NAME")]
        names: Vec<String>,
    },
    /// Set the route address of every cluster node.
    ///
    /// Until then the routes are the nodes of compose.cluster.yaml:
    /// nats:6222 nats-2:6222 nats-3:6222. The route certificate names the
    /// hosts, so it is issued again (with a new CA): restart every node.
    Routes {
        /// A directory `init` made.
        dir: PathBuf,
        /// Every node's route address.
        #[arg(required = true, value_name = "HOST:PORT")]
        hosts: Vec<String>,
    },
    /// Register a new party: NAME.nk and its own account in parties.conf.
    ///
    /// Reload the server twice afterwards (`docker compose kill -s HUP nats`,
    /// twice): nats-server 2.15 gives an account added by a reload its
    /// imports only on the next reload.
    Add {
        /// publisher (records events) or reader (queries and notifications).
        kind: Kind,
        /// `[a-z][a-z0-9-]{0,31}`, not taken by another party or user.
        name: String,
        /// A directory `init` made.
        #[arg(long, default_value = "secrets")]
        dir: PathBuf,
    },
    /// Revoke a party: after a reload its connections are closed and its key refused.
    Remove {
        /// A party `add` (or `init`) registered.
        name: String,
        /// A directory `init` made.
        #[arg(long, default_value = "secrets")]
        dir: PathBuf,
    },
}

/// Why a command failed; printed as `upr-keys: <Display>`.
#[derive(Debug, thiserror::Error)]
enum KeysError {
    /// The secrets directory cannot be created.
    #[error("cannot create {}: {source}", .path.display())]
    CreateDir { path: PathBuf, source: io::Error },
    /// A file cannot be read, written or given its mode.
    #[error("{}: {source}", .path.display())]
    File { path: PathBuf, source: io::Error },
    /// A `<user>.nk` file holds no user seed.
    #[error("{}: not a user nkey seed: {source}", .path.display())]
    NotASeed {
        path: PathBuf,
        source: nkeys::error::Error,
    },
    /// A fresh key pair cannot be encoded.
    #[error("cannot encode a new seed: {0}")]
    NewSeed(#[source] nkeys::error::Error),
    /// A route certificate cannot be made.
    #[error("cannot make the route certificate: {0}")]
    Tls(#[source] rcgen::Error),
    /// `rotate` was given a name that is no user, not `route` and not
    /// `route-tls`.
    #[error("unknown name {name:?}: expected one of {}, {ROUTE}, {ROUTE_TLS}", USERS.join(", "))]
    UnknownName { name: String },
    /// `routes` was given something that is not `HOST:PORT`.
    #[error("{host:?} is not HOST:PORT")]
    NotHostPort { host: String },
    /// `add` was given a name that cannot be a party's.
    #[error("party name {name:?}: {why}")]
    BadPartyName { name: String, why: String },
    /// `add` was given a name already taken.
    #[error("{name:?} is already {what}")]
    Taken { name: String, what: String },
    /// `remove` was given a name that is no party.
    #[error("{name:?} is no party (see {PARTIES} in the secrets directory)")]
    NoParty { name: String },
    /// The registry holds a line that is no `<kind> <name>`.
    #[error("{}: line {line}: expected `publisher NAME` or `reader NAME`", .path.display())]
    BadRegistry { path: PathBuf, line: usize },
    /// `rotate` or `routes` on a directory `init` did not make.
    #[error("{} has no {CONF}; run `upr-keys init {}` first", .dir.display(), .dir.display())]
    NotInitialised { dir: PathBuf },
}

/// `map_err` for an I/O error on `path`.
fn file_error(path: &Path) -> impl FnOnce(io::Error) -> KeysError + '_ {
    move |source| KeysError::File {
        path: path.to_owned(),
        source,
    }
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

fn main() -> ExitCode {
    let result = match Cli::parse().command {
        Command::Init { dir } => init(&dir),
        Command::Rotate { dir, names } => rotate(&dir, &strs(&names)),
        Command::Routes { dir, hosts } => routes(&dir, &strs(&hosts)),
        Command::Add { kind, name, dir } => add(&dir, kind, &name),
        Command::Remove { name, dir } => remove(&dir, &name),
    };
    match result {
        Ok(report) => {
            print!("{report}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("upr-keys: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Creates the directory and every key that is missing; existing keys are
/// kept, so running it again (every `scripts/run`) changes nothing.
fn init(dir: &Path) -> Result<String, KeysError> {
    create_dir(dir)?;
    let mut report = String::new();
    for user in USERS {
        let path = seed_path(dir, user);
        if path.exists() {
            read_seed(&path)?;
            let _ = writeln!(report, "kept    {}", path.display());
        } else {
            write_secret(&path, &new_seed()?)?;
            let _ = writeln!(report, "created {}", path.display());
        }
    }
    let route = dir.join(format!("{ROUTE}.password"));
    if route.exists() {
        let _ = writeln!(report, "kept    {}", route.display());
    } else {
        write_secret(&route, &new_password())?;
        let _ = writeln!(report, "created {}", route.display());
    }
    let hosts = dir.join(ROUTE_HOSTS);
    if !hosts.exists() {
        write_secret(&hosts, &DEFAULT_ROUTE_HOSTS.join("\n"))?;
    }
    // The first party of each kind, once: a party removed later stays removed.
    if !dir.join(PARTIES).exists() {
        write_parties(
            dir,
            &[
                (Kind::Publisher, "publisher".to_owned()),
                (Kind::Reader, "reader".to_owned()),
            ],
        )?;
    }
    let tls = dir.join(ROUTE_TLS);
    if tls.join(ROUTE_CERT).exists() {
        let _ = writeln!(report, "kept    {}", tls.display());
    } else {
        issue_route_tls(dir)?;
        let _ = writeln!(
            report,
            "created {} (route CA and certificate)",
            tls.display()
        );
    }
    // Files an older version left readable by others become private.
    for path in secret_files(dir)? {
        if mode_of(&path)? & 0o077 != 0 {
            set_mode(&path, 0o600)?;
            let _ = writeln!(report, "made private {}", path.display());
        }
    }
    write_conf(dir)?;
    let _ = writeln!(
        report,
        "wrote   {}, {} and {}",
        dir.join(CONF).display(),
        dir.join(PARTIES_CONF).display(),
        dir.join(ROUTE_CONF).display()
    );
    Ok(report)
}

/// Registers a party with a new key and rewrites `parties.conf`.
fn add(dir: &Path, kind: Kind, name: &str) -> Result<String, KeysError> {
    upr_domain::PartyName::parse(name).map_err(|e| KeysError::BadPartyName {
        name: name.to_owned(),
        why: e.to_string(),
    })?;
    initialised(dir)?;
    if RESERVED.contains(&name) {
        return Err(KeysError::Taken {
            name: name.to_owned(),
            what: "a name of the service account".into(),
        });
    }
    let mut parties = read_parties(dir)?;
    if let Some((k, _)) = parties.iter().find(|(_, n)| n == name) {
        return Err(KeysError::Taken {
            name: name.to_owned(),
            what: format!("a {} party", k.as_str()),
        });
    }
    let seed = seed_path(dir, name);
    write_secret(&seed, &new_seed()?)?;
    parties.push((kind, name.to_owned()));
    write_parties(dir, &parties)?;
    write_conf(dir)?;
    Ok(format!(
        "created {}\nwrote   {}\nnow reload the server configuration twice \
         (nats-server --signal reload, or docker compose kill -s HUP nats, twice)\n",
        seed.display(),
        dir.join(PARTIES_CONF).display()
    ))
}

/// Unregisters a party, deletes its key and rewrites `parties.conf`.
fn remove(dir: &Path, name: &str) -> Result<String, KeysError> {
    initialised(dir)?;
    let mut parties = read_parties(dir)?;
    let before = parties.len();
    parties.retain(|(_, n)| n != name);
    if parties.len() == before {
        return Err(KeysError::NoParty {
            name: name.to_owned(),
        });
    }
    write_parties(dir, &parties)?;
    write_conf(dir)?;
    let seed = seed_path(dir, name);
    // The first parties' seeds are also `init`'s and `rotate`'s; they are
    // no longer in the configuration, which is what revokes them.
    if !USERS.contains(&name) {
        fs::remove_file(&seed).map_err(file_error(&seed))?;
    }
    Ok(format!(
        "removed {name}\nwrote   {}\nnow reload the server configuration: its connections are closed and its key refused\n",
        dir.join(PARTIES_CONF).display()
    ))
}

fn read_parties(dir: &Path) -> Result<Vec<(Kind, String)>, KeysError> {
    let path = dir.join(PARTIES);
    let text = match fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(file_error(&path)(e)),
    };
    let mut parties = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let bad = || KeysError::BadRegistry {
            path: path.clone(),
            line: n + 1,
        };
        let (kind, name) = line.split_once(' ').ok_or_else(bad)?;
        let kind = Kind::parse(kind).ok_or_else(bad)?;
        upr_domain::PartyName::parse(name).map_err(|_| bad())?;
        parties.push((kind, name.to_owned()));
    }
    Ok(parties)
}

fn write_parties(dir: &Path, parties: &[(Kind, String)]) -> Result<(), KeysError> {
    let mut text =
        String::from("# Parties: `<kind> <name>` a line; upr-keys add / remove change it.\n");
    for (kind, name) in parties {
        let _ = writeln!(text, "{} {name}", kind.as_str());
    }
    write_secret(&dir.join(PARTIES), text.trim_end())
}

/// One party's account, self-contained (no variables: the file is included
/// inside `accounts { }`, where the including file's variables are not seen).
fn party_account(kind: Kind, name: &str, key: &str) -> String {
    let quoted = |items: &mut dyn Iterator<Item = String>| {
        items
            .map(|s| format!("\"{s}\""))
            .collect::<Vec<_>>()
            .join(", ")
    };
    match kind {
        Kind::Publisher => {
            let publish = quoted(&mut INTAKE_TYPES.iter().map(|t| format!("upr.ingest.{t}")));
            format!(
                "\"{name}\" = {{\n\
                 \x20 limits = {{ max_payload: 131072, max_connections: 256, max_subscriptions: 10000 }}\n\
                 \x20 users = [ {{ nkey: \"{key}\", permissions: {{ publish: {{ allow: [{publish}] }}, subscribe: {{ allow: [\"_INBOX.>\"] }} }} }} ]\n\
                 \x20 imports = [ {{ service: {{ account: UPR, subject: \"upr.ingest.>\" }} }} ]\n\
                 }}\n"
            )
        }
        Kind::Reader => {
            let consumer = |api: &str| format!("CONSUMER.{api}.UPR_NOTIFICATIONS.{name}");
            let js: Vec<String> = READER_JS
                .iter()
                .map(|s| (*s).to_owned())
                .chain([consumer("INFO"), consumer("MSG.NEXT")])
                .collect();
            let ack = format!("$JS.ACK.UPR_NOTIFICATIONS.{name}.>");
            let publish = quoted(
                &mut ["upr.query.>", "upr.notifier.status", "$SRV.>"]
                    .iter()
                    .map(|s| (*s).to_owned())
                    .chain(js.iter().map(|s| format!("$JS.upr.API.{s}")))
                    .chain([ack.clone()]),
            );
            let mut imports: Vec<String> = ["upr.query.>", "upr.notifier.status", "$SRV.>"]
                .iter()
                .map(|s| format!("{{ service: {{ account: UPR, subject: \"{s}\" }} }}"))
                .collect();
            imports.push("{ stream: { account: UPR, subject: \"upr.notify.>\" } }".into());
            imports.extend(js.iter().map(|s| {
                format!("{{ service: {{ account: UPR, subject: \"$JS.API.{s}\" }}, to: \"$JS.upr.API.{s}\" }}")
            }));
            imports.push(format!(
                "{{ service: {{ account: UPR, subject: \"{ack}\" }} }}"
            ));
            format!(
                "\"{name}\" = {{\n\
                 \x20 limits = {{ max_payload: 8192, max_connections: 256, max_subscriptions: 10000 }}\n\
                 \x20 users = [ {{ nkey: \"{key}\", permissions: {{ publish: {{ allow: [{publish}] }}, subscribe: {{ allow: [\"upr.notify.>\", \"_INBOX.>\"] }} }} }} ]\n\
                 \x20 imports = [\n    {}\n  ]\n\
                 }}\n",
                imports.join("\n    ")
            )
        }
    }
}

/// Writes `parties.conf` from the registry and the parties' seeds.
fn write_parties_conf(dir: &Path) -> Result<(), KeysError> {
    let mut conf = String::from(
        "# Generated by upr-keys from `parties` and the seeds beside it; do not edit.\n\
         # Included inside `accounts { }` of deploy/nats/nats.conf: one account per party.\n",
    );
    for (kind, name) in read_parties(dir)? {
        let key = read_seed(&seed_path(dir, &name))?.public_key();
        conf.push_str(&party_account(kind, &name, &key));
    }
    write_public(&dir.join(PARTIES_CONF), conf.trim_end())
}

/// Replaces the named keys and rewrites the public file.
fn rotate(dir: &Path, names: &[&str]) -> Result<String, KeysError> {
    initialised(dir)?;
    let mut report = String::new();
    for name in names {
        let path = if *name == ROUTE_TLS {
            issue_route_tls(dir)?;
            dir.join(ROUTE_TLS)
        } else if *name == ROUTE {
            let path = dir.join(format!("{ROUTE}.password"));
            write_secret(&path, &new_password())?;
            path
        } else if USERS.contains(name) {
            let path = seed_path(dir, name);
            write_secret(&path, &new_seed()?)?;
            path
        } else {
            return Err(KeysError::UnknownName {
                name: (*name).to_owned(),
            });
        };
        let _ = writeln!(report, "replaced {}", path.display());
    }
    write_conf(dir)?;
    let _ = writeln!(
        report,
        "wrote    {}\nnow reload the server configuration and restart the clients of the replaced keys",
        dir.join(CONF).display()
    );
    Ok(report)
}

/// Sets the cluster nodes' route addresses and rewrites the route file.
fn routes(dir: &Path, hosts: &[&str]) -> Result<String, KeysError> {
    for host in hosts {
        let valid = host.rsplit_once(':').is_some_and(|(name, port)| {
            !name.is_empty()
                && port.parse::<u16>().is_ok()
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-.".contains(&b))
        });
        if !valid {
            return Err(KeysError::NotHostPort {
                host: (*host).to_owned(),
            });
        }
    }
    initialised(dir)?;
    write_secret(&dir.join(ROUTE_HOSTS), &hosts.join("\n"))?;
    write_conf(dir)?;
    issue_route_tls(dir)?;
    Ok(format!(
        "wrote    {} and a new {}\nnow restart every node\n",
        dir.join(ROUTE_CONF).display(),
        dir.join(ROUTE_TLS).display()
    ))
}

/// `rotate` and `routes` change an installation `init` made.
fn initialised(dir: &Path) -> Result<(), KeysError> {
    if dir.join(CONF).exists() {
        return Ok(());
    }
    Err(KeysError::NotInitialised {
        dir: dir.to_owned(),
    })
}

fn seed_path(dir: &Path, user: &str) -> PathBuf {
    dir.join(format!("{user}.nk"))
}

/// The directory is private to its owner, and so is every file in it (mode
/// 0600): a container reads its mounted file as the files' owner (compose
/// runs the services as `UPR_UID:UPR_GID`; the NATS server runs as root).
fn create_dir(dir: &Path) -> Result<(), KeysError> {
    fs::create_dir_all(dir).map_err(|source| KeysError::CreateDir {
        path: dir.to_owned(),
        source,
    })?;
    set_mode(dir, 0o700)
}

fn write_secret(path: &Path, text: &str) -> Result<(), KeysError> {
    let tmp = path.with_extension("tmp");
    let mut options = fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    // Private from the first byte, not after a chmod.
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(&tmp).map_err(file_error(&tmp))?;
    // A leftover file keeps its mode through open: set it.
    set_mode(&tmp, 0o600)?;
    writeln!(file, "{text}")
        .and_then(|()| file.sync_all())
        .map_err(file_error(&tmp))?;
    fs::rename(&tmp, path).map_err(file_error(path))
}

/// The two files the NATS server includes (public keys and the parties'
/// accounts), rewritten in place rather than renamed over: compose mounts
/// each file on its own, and a single-file bind mount keeps showing the old
/// file after a rename, so a reload would not see an added or removed
/// party. Private (0600) like the rest; the server reads them once per
/// reload, which the operator starts after this command has finished.
fn write_public(path: &Path, text: &str) -> Result<(), KeysError> {
    let mut options = fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path).map_err(file_error(path))?;
    set_mode(path, 0o600)?;
    writeln!(file, "{text}")
        .and_then(|()| file.sync_all())
        .map_err(file_error(path))
}

#[cfg(unix)]
fn set_mode(path: &Path, mode: u32) -> Result<(), KeysError> {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).map_err(file_error(path))
}

#[cfg(not(unix))]
fn set_mode(_path: &Path, _mode: u32) -> Result<(), KeysError> {
    Ok(())
}

#[cfg(unix)]
fn mode_of(path: &Path) -> Result<u32, KeysError> {
    use std::os::unix::fs::PermissionsExt;
    Ok(fs::metadata(path)
        .map_err(file_error(path))?
        .permissions()
        .mode()
        & 0o777)
}

#[cfg(not(unix))]
fn mode_of(_path: &Path) -> Result<u32, KeysError> {
    Ok(0o600)
}

/// Every file in `dir` and `dir/route-tls`.
fn secret_files(dir: &Path) -> Result<Vec<PathBuf>, KeysError> {
    let mut files = Vec::new();
    for d in [dir.to_path_buf(), dir.join(ROUTE_TLS)] {
        if !d.is_dir() {
            continue;
        }
        for entry in fs::read_dir(&d).map_err(file_error(&d))? {
            let path = entry.map_err(file_error(&d))?.path();
            if path.is_file() {
                files.push(path);
            }
        }
    }
    Ok(files)
}

/// The route certificate's file in `route-tls/`.
const ROUTE_CERT: &str = "route-cert.pem";

/// Makes a new CA and, signed by it, one route certificate and key for
/// every node, named for the route hosts, `localhost` and `127.0.0.1`
/// (server and client use: a route is both). The CA's key is dropped here.
fn issue_route_tls(dir: &Path) -> Result<(), KeysError> {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
        KeyPair, KeyUsagePurpose,
    };
    let hosts_file = dir.join(ROUTE_HOSTS);
    let hosts = fs::read_to_string(&hosts_file).map_err(file_error(&hosts_file))?;
    let mut names: Vec<String> = vec!["localhost".into(), "127.0.0.1".into()];
    for host in hosts.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let name = host.rsplit_once(':').map_or(host, |(name, _)| name);
        if !names.iter().any(|n| n == name) {
            names.push(name.to_owned());
        }
    }
    let now = time::OffsetDateTime::now_utc();
    let not_before = now - time::Duration::days(1);
    let not_after = now + time::Duration::days(ROUTE_CERT_DAYS);

    let ca_key = KeyPair::generate().map_err(KeysError::Tls)?;
    let mut ca = CertificateParams::new(Vec::<String>::new()).map_err(KeysError::Tls)?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    ca.distinguished_name
        .push(DnType::CommonName, "UPR Tracker route CA");
    ca.not_before = not_before;
    ca.not_after = not_after;
    let ca_cert = ca.self_signed(&ca_key).map_err(KeysError::Tls)?;
    let issuer = Issuer::new(ca, ca_key);

    let key = KeyPair::generate().map_err(KeysError::Tls)?;
    let mut route = CertificateParams::new(names).map_err(KeysError::Tls)?;
    route
        .distinguished_name
        .push(DnType::CommonName, "UPR Tracker route");
    route.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    route.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    route.not_before = not_before;
    route.not_after = not_after;
    let cert = route.signed_by(&key, &issuer).map_err(KeysError::Tls)?;

    let tls = dir.join(ROUTE_TLS);
    create_dir(&tls)?;
    write_secret(&tls.join("route-key.pem"), key.serialize_pem().trim_end())?;
    write_secret(&tls.join(ROUTE_CERT), cert.pem().trim_end())?;
    write_secret(&tls.join("ca.pem"), ca_cert.pem().trim_end())
}

fn new_seed() -> Result<String, KeysError> {
    KeyPair::new_user().seed().map_err(KeysError::NewSeed)
}

/// 244 random bits (two v4 UUIDs, from the OS's generator), as hex: only
/// letters and digits, so the NATS config parser reads it as a string.
fn new_password() -> String {
    format!(
        "r{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    )
}

fn read_seed(path: &Path) -> Result<KeyPair, KeysError> {
    let text = fs::read_to_string(path).map_err(file_error(path))?;
    KeyPair::from_seed(text.trim()).map_err(|source| KeysError::NotASeed {
        path: path.to_owned(),
        source,
    })
}

/// Writes the public keys and the route password as NATS config variables.
fn write_conf(dir: &Path) -> Result<(), KeysError> {
    let mut conf = String::from(
        "# Generated by upr-keys from the files beside it; do not edit.\n\
         # Public keys of the NATS users (the seeds stay with the clients).\n",
    );
    for user in SERVICE_USERS {
        let key = read_seed(&seed_path(dir, user))?.public_key();
        let _ = writeln!(conf, "UPR_{}_NKEY: \"{key}\"", user.to_uppercase());
    }
    write_parties_conf(dir)?;
    let read = |name: String| {
        let path = dir.join(name);
        fs::read_to_string(&path).map_err(file_error(&path))
    };
    let password = read(format!("{ROUTE}.password"))?;
    let password = password.trim();
    let routes: Vec<String> = read(ROUTE_HOSTS.to_string())?
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(|host| format!("\"nats-route://{ROUTE}:{password}@{host}\""))
        .collect();
    write_public(&dir.join(CONF), conf.trim_end())?;
    write_secret(
        &dir.join(ROUTE_CONF),
        &format!(
            "# Generated by upr-keys from route.password and route.hosts; do not edit.\n\
             UPR_ROUTE_PASSWORD: \"{password}\"\n\
             UPR_ROUTES: [{}]",
            routes.join(", ")
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_is_well_formed() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    #[test]
    fn init_creates_every_key_once_and_keeps_them_on_a_second_run() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("secrets");
        init(&dir).unwrap();
        let conf = fs::read_to_string(dir.join(CONF)).unwrap();
        for user in SERVICE_USERS {
            let pair = read_seed(&seed_path(&dir, user)).unwrap();
            let line = format!(
                "UPR_{}_NKEY: \"{}\"",
                user.to_uppercase(),
                pair.public_key()
            );
            assert!(conf.contains(&line), "{line} in\n{conf}");
            assert!(!conf.contains(pair.seed().unwrap().as_str()), "no seed");
        }
        let route = fs::read_to_string(dir.join(ROUTE_CONF)).unwrap();
        let password = fs::read_to_string(dir.join("route.password")).unwrap();
        let password = password.trim();
        assert!(
            route.contains(&format!("UPR_ROUTE_PASSWORD: \"{password}\"")),
            "{route}"
        );
        assert!(
            route.contains(&format!("\"nats-route://route:{password}@nats-2:6222\"")),
            "{route}"
        );
        let report = init(&dir).unwrap();
        assert!(!report.contains("created"), "{report}");
        assert_eq!(fs::read_to_string(dir.join(CONF)).unwrap(), conf);
    }

    #[test]
    fn rotate_replaces_only_the_named_key() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        init(&dir).unwrap();
        let before: Vec<String> = USERS
            .iter()
            .map(|u| fs::read_to_string(seed_path(&dir, u)).unwrap())
            .collect();
        let old_conf = fs::read_to_string(dir.join(PARTIES_CONF)).unwrap();
        rotate(&dir, &["reader"]).unwrap();
        for (user, old) in USERS.iter().zip(&before) {
            let now = fs::read_to_string(seed_path(&dir, user)).unwrap();
            assert_eq!(now != *old, *user == "reader", "{user}");
        }
        assert_ne!(
            fs::read_to_string(dir.join(PARTIES_CONF)).unwrap(),
            old_conf
        );
        assert!(
            rotate(&dir, &["nobody"])
                .unwrap_err()
                .to_string()
                .contains("nobody")
        );
    }

    #[test]
    fn routes_carry_the_route_password_to_the_given_nodes() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        init(&dir).unwrap();
        routes(&dir, &["127.0.0.1:7001", "node-b.example:7002"]).unwrap();
        let route = fs::read_to_string(dir.join(ROUTE_CONF)).unwrap();
        assert!(
            route.contains("@127.0.0.1:7001\", \"nats-route://route:"),
            "{route}"
        );
        assert!(!route.contains("nats-2"), "{route}");
        assert!(
            routes(&dir, &["no-port"])
                .unwrap_err()
                .to_string()
                .contains("no-port")
        );
        // Rotating the password keeps the addresses.
        rotate(&dir, &["route"]).unwrap();
        let rotated = fs::read_to_string(dir.join(ROUTE_CONF)).unwrap();
        assert_ne!(rotated, route);
        assert!(rotated.contains("@node-b.example:7002\""), "{rotated}");
    }

    #[test]
    fn the_secrets_directory_and_every_file_in_it_are_private() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("s");
        init(&dir).unwrap();
        assert_eq!(mode_of(&dir).unwrap(), 0o700);
        assert_eq!(mode_of(&dir.join(ROUTE_TLS)).unwrap(), 0o700);
        let files = secret_files(&dir).unwrap();
        // Seven seeds, route.password, route.hosts, route.conf,
        // nats-keys.conf, the parties' registry and their accounts, three
        // TLS files.
        assert_eq!(files.len(), 16, "{files:?}");
        for path in &files {
            assert_eq!(mode_of(path).unwrap(), 0o600, "{}", path.display());
        }
        // A file an older version wrote 0644 is made private by init.
        set_mode(&seed_path(&dir, "admin"), 0o644).unwrap();
        let report = init(&dir).unwrap();
        assert!(report.contains("made private"), "{report}");
        assert_eq!(mode_of(&seed_path(&dir, "admin")).unwrap(), 0o600);
    }

    #[test]
    fn the_route_ca_key_is_never_written_and_route_tls_is_reissued_on_demand() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        init(&dir).unwrap();
        let tls = dir.join(ROUTE_TLS);
        let mut names: Vec<String> = fs::read_dir(&tls)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, ["ca.pem", "route-cert.pem", "route-key.pem"]);
        for file in secret_files(&dir).unwrap() {
            let text = fs::read_to_string(&file).unwrap();
            let keys = text.matches("PRIVATE KEY-----").count() / 2;
            let expected = usize::from(file.ends_with("route-tls/route-key.pem"));
            assert_eq!(keys, expected, "{}", file.display());
        }
        let ca = fs::read_to_string(tls.join("ca.pem")).unwrap();
        assert!(ca.starts_with("-----BEGIN CERTIFICATE-----"), "{ca}");
        // Kept by init, replaced by rotate and by routes.
        init(&dir).unwrap();
        assert_eq!(fs::read_to_string(tls.join("ca.pem")).unwrap(), ca);
        rotate(&dir, &[ROUTE_TLS]).unwrap();
        let rotated = fs::read_to_string(tls.join("ca.pem")).unwrap();
        assert_ne!(rotated, ca);
        routes(&dir, &["127.0.0.1:7001"]).unwrap();
        assert_ne!(fs::read_to_string(tls.join("ca.pem")).unwrap(), rotated);
    }

    #[test]
    fn parties_are_added_and_removed_each_as_its_own_account() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        init(&dir).unwrap();
        let conf = fs::read_to_string(dir.join(PARTIES_CONF)).unwrap();
        assert!(
            conf.contains("\"publisher\" = {") && conf.contains("\"reader\" = {"),
            "{conf}"
        );
        add(&dir, Kind::Publisher, "ngo-a").unwrap();
        add(&dir, Kind::Reader, "press").unwrap();
        let conf = fs::read_to_string(dir.join(PARTIES_CONF)).unwrap();
        let key = read_seed(&seed_path(&dir, "ngo-a")).unwrap().public_key();
        assert!(
            conf.contains("\"ngo-a\" = {") && conf.contains(&key),
            "{conf}"
        );
        assert!(
            conf.contains("$JS.upr.API.CONSUMER.MSG.NEXT.UPR_NOTIFICATIONS.press"),
            "{conf}"
        );
        assert!(!conf.contains("nkey: $"), "no variables: {conf}");
        // Clashes and bad names are refused, naming the name.
        for (kind, name) in [
            (Kind::Reader, "ngo-a"),
            (Kind::Reader, "admin"),
            (Kind::Publisher, "reader"),
        ] {
            let e = add(&dir, kind, name).unwrap_err().to_string();
            assert!(e.contains(&format!("{name:?}")), "{e}");
        }
        for bad in ["Ngo", "1a", "a_b", "include x"] {
            assert!(add(&dir, Kind::Publisher, bad).is_err(), "{bad}");
        }
        remove(&dir, "ngo-a").unwrap();
        let conf = fs::read_to_string(dir.join(PARTIES_CONF)).unwrap();
        assert!(!conf.contains("ngo-a") && !conf.contains(&key), "{conf}");
        assert!(!seed_path(&dir, "ngo-a").exists());
        assert!(
            remove(&dir, "ngo-a")
                .unwrap_err()
                .to_string()
                .contains("ngo-a")
        );
        // A second init keeps the registry as it is.
        remove(&dir, "reader").unwrap();
        init(&dir).unwrap();
        assert!(
            !fs::read_to_string(dir.join(PARTIES_CONF))
                .unwrap()
                .contains("\"reader\" = {")
        );
    }
}
