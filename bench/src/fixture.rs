//! The set-up every single-server part starts with: a fresh nats-server,
//! its process watched for peak memory, and a client of it; at the end, the
//! server's peak recorded beside the part's own figures.

use async_nats::{Client, jetstream};
use upr_nats::contract;
use upr_tests::NatsServer;

use crate::{
    part::{Part, say},
    system::MemWatch,
};

/// A part's own nats-server and a client of it.
pub struct Fixture {
    /// The server, kept for its life: stopped when the fixture is dropped.
    _server: NatsServer,
    /// Its URL, for the services the part starts.
    pub url: String,
    /// A client of it.
    pub client: Client,
    /// JetStream over [`Fixture::client`].
    pub js: jetstream::Context,
    nats_pid: Option<u32>,
    nats_mem: Option<MemWatch>,
}

impl Fixture {
    /// Starts a server, watches its memory and connects to it; `None`, with
    /// the failure recorded in `part`, when it cannot connect.
    pub async fn start(part: &Part) -> Option<Self> {
        let server = NatsServer::start();
        let url = server.url();
        let nats_pid = crate::system::nats_pid(server.port());
        say(format!("nats-server pid {nats_pid:?} on {url}"));
        let nats_mem = nats_pid.map(MemWatch::start);
        let Ok(client) = crate::drive::connect(&url).await else {
            part.error("cannot connect to the benchmark's nats-server");
            return None;
        };
        let js = jetstream::new(client.clone());
        Some(Self {
            _server: server,
            url,
            client,
            js,
            nats_pid,
            nats_mem,
        })
    }

    /// The server's process id, when found.
    pub fn nats_pid(&self) -> Option<u32> {
        self.nats_pid
    }

    /// [`Fixture::start`], then creates the event log as its owner (ingest)
    /// does, for a part that writes the log itself; `None`, with the failure
    /// recorded in `part`, when it cannot connect or JetStream refuses.
    pub async fn start_owning_event_log(part: &Part) -> Option<Self> {
        let bed = Self::start(part).await?;
        let events = contract::events_stream(1, contract::DEFAULT_DEDUP_WINDOW);
        match upr_nats::setup::ensure_own_stream(&bed.js, events).await {
            Ok(_) => Some(bed),
            Err(e) => {
                part.error(format!("cannot create the event log: {e}"));
                None
            }
        }
    }

    /// Records the server's peak memory as part `n`'s, then stops it.
    pub async fn finish(mut self, part: &Part, n: u8) {
        part.record_nats_peak(n, self.nats_mem.take(), self.nats_pid)
            .await;
    }
}
