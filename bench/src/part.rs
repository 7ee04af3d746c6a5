//! What a part of the benchmark records: figures, details, errors. Shared
//! behind a mutex so what a part measured survives when it fails midway.

use std::sync::{Arc, Mutex};

use serde_json::{Map, Value};

use crate::stats::{Figure, Goal};

/// Everything one part recorded.
#[derive(Debug, Default)]
pub struct PartState {
    /// Figures, in the order first recorded.
    pub figures: Vec<Figure>,
    /// Extra facts for the JSON (sizes, counts, per-run data).
    pub details: Map<String, Value>,
    /// Why the part failed, if it did.
    pub errors: Vec<String>,
}

/// A handle to a part's record.
#[derive(Debug, Clone, Default)]
pub struct Part(Arc<Mutex<PartState>>);

impl Part {
    /// Records nats-server's peak memory during part `n`, for reference
    /// beside the services' figures (no goal: the server is not ours).
    pub async fn record_nats_peak(
        &self,
        n: u8,
        watch: Option<crate::system::MemWatch>,
        pid: Option<u32>,
    ) {
        if let Some(m) = watch {
            let mb = m.stop(pid).await;
            let label = format!("nats-server peak RSS (part {n}, for reference)");
            self.record("memory.nats", &label, "MB", None, mb);
        }
    }

    /// Adds `value` to figure `id`, creating it with `label`, `unit`, `goal`.
    pub fn record(
        &self,
        id: &str,
        label: &str,
        unit: &'static str,
        goal: Option<Goal>,
        value: f64,
    ) {
        let mut s = self.0.lock().expect("part lock");
        if let Some(f) = s.figures.iter_mut().find(|f| f.id == id) {
            f.values.push(value);
            return;
        }
        let mut f = Figure::new(id, label, unit);
        f.goal = goal;
        f.values.push(value);
        s.figures.push(f);
    }

    /// Sets a detail.
    pub fn detail(&self, key: &str, value: Value) {
        self.0
            .lock()
            .expect("part lock")
            .details
            .insert(key.into(), value);
    }

    /// Appends to a detail list.
    pub fn push_detail(&self, key: &str, value: Value) {
        let mut s = self.0.lock().expect("part lock");
        let entry = s
            .details
            .entry(key.to_string())
            .or_insert_with(|| Value::Array(Vec::new()));
        if let Value::Array(a) = entry {
            a.push(value);
        }
    }

    /// Records a failure (the part still goes on where it can).
    pub fn error(&self, message: impl Into<String>) {
        let message = message.into();
        eprintln!("upr-bench: FAILED: {message}");
        self.0.lock().expect("part lock").errors.push(message);
    }

    /// Takes the record out.
    pub fn take(&self) -> PartState {
        std::mem::take(&mut *self.0.lock().expect("part lock"))
    }
}

/// Prints a progress line.
pub fn say(msg: impl AsRef<str>) {
    eprintln!("upr-bench: {}", msg.as_ref());
}
