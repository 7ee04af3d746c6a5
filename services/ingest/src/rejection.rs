//! Every refusal leaves a trace: a record on `upr.rejected`, kept by
//! `UPR_REJECTED`, whether or not the sender asked for a reply.
//!
//! Records are written by one task with many acknowledgements in flight, so
//! a flood of garbage costs one publish each and never delays valid intake
//! behind rejection acks; its queue is bounded, so a flood slows the intake
//! loop instead of growing memory.

use bytes::Bytes;
use futures::{StreamExt, stream::FuturesUnordered};
use serde::Serialize;
use tokio::sync::mpsc;
use tracing::{debug, warn};
use upr_domain::{RejectError, Timestamp};
use upr_nats::contract::REJECTED_PAYLOAD_BYTES;

use crate::store::EventLog;

/// Records waiting for the writer; beyond this the intake loop waits. A
/// record is at most ~5 KiB (the payload cut at 4 KiB and a capped error),
/// so the queue holds at most ~5 MiB.
pub const QUEUE: usize = 1024;
/// Rejection publishes awaiting their acknowledgement at once.
const IN_FLIGHT: usize = 256;

/// The JSON kept for one refusal:
/// `{"subject","error":{code,message,field},"payload","received_at"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RejectionRecord {
    /// The intake subject the message came on.
    pub subject: String,
    /// Why it was refused.
    pub error: RejectError,
    /// The original payload as text (invalid UTF-8 replaced), cut at 4 KiB.
    pub payload: String,
    /// When ingest received it.
    pub received_at: Timestamp,
}

impl RejectionRecord {
    /// Builds the record of `payload`, refused with `error`.
    pub fn new(subject: &str, error: RejectError, payload: &[u8], received_at: Timestamp) -> Self {
        Self {
            subject: subject.to_owned(),
            error,
            payload: payload_text(payload, REJECTED_PAYLOAD_BYTES),
            received_at,
        }
    }

    /// The stored JSON bytes.
    ///
    /// # Panics
    /// Never: a rejection record holds only strings and a timestamp, which serialize.
    pub fn to_json(&self) -> Bytes {
        Bytes::from(
            serde_json::to_vec(self)
                .expect("a rejection record holds strings and a timestamp only: it serializes"),
        )
    }
}

/// `payload` as lossy UTF-8, cut to at most `max` bytes on a character
/// boundary, so the record stays valid JSON text of bounded size.
pub fn payload_text(payload: &[u8], max: usize) -> String {
    // Decoding more than `max` bytes cannot be needed: each input byte
    // yields at least one output byte.
    let head = &payload[..payload.len().min(max)];
    let mut text = String::from_utf8_lossy(head).into_owned();
    if text.len() > max {
        let mut cut = max;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
    }
    text
}

/// Sends records to the writer task.
pub type RecordSender = mpsc::Sender<RejectionRecord>;

/// Writes records until every sender is dropped, then waits for the
/// outstanding acknowledgements.
pub async fn write_records(log: EventLog, mut records: mpsc::Receiver<RejectionRecord>) {
    let mut acks = FuturesUnordered::new();
    loop {
        tokio::select! {
            Some(()) = acks.next(), if !acks.is_empty() => {}
            record = records.recv(), if acks.len() < IN_FLIGHT => {
                let Some(record) = record else { break };
                let subject = record.subject.clone();
                let code = record.error.code;
                match log.publish_rejection(record.to_json()).await {
                    Ok(ack) => acks.push(async move {
                        match ack.await {
                            Ok(ack) => debug!(%subject, %code, seq = ack.sequence, "rejection recorded"),
                            Err(e) => warn!(%subject, %code, error = %e, "rejection announced on upr.rejected but not confirmed by UPR_REJECTED"),
                        }
                    }),
                    Err(e) => warn!(%subject, %code, error = %e, "rejection could not be recorded"),
                }
            }
        }
    }
    while acks.next().await.is_some() {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use upr_domain::ErrorCode;

    #[test]
    fn payload_is_cut_on_a_character_boundary() {
        assert_eq!(payload_text(b"hello", 4096), "hello");
        let text = "é".repeat(3000); // 6000 bytes
        let cut = payload_text(text.as_bytes(), 4096);
        assert_eq!(cut.len(), 4096);
        assert!(cut.chars().all(|c| c == 'é'));
        let odd = format!("a{}", "é".repeat(3000));
        assert_eq!(payload_text(odd.as_bytes(), 4096).len(), 4095);
    }

    #[test]
    fn invalid_utf8_is_replaced_and_the_result_stays_bounded() {
        assert_eq!(payload_text(b"\xff{}", 4096), "\u{fffd}{}");
        let garbage = vec![0xffu8; 10_000];
        let text = payload_text(&garbage, 4096);
        assert!(text.len() <= 4096 && text.chars().all(|c| c == '\u{fffd}'));
    }

    #[test]
    fn the_record_has_the_contract_shape() {
        let at = Timestamp::parse_rfc3339("2025-01-23T08:30:00.123Z").unwrap();
        let r = RejectionRecord::new(
            "upr.ingest.review_scheduled",
            RejectError::missing("country"),
            b"{}",
            at,
        );
        assert_eq!(r.error.code, ErrorCode::MissingField);
        assert_eq!(
            String::from_utf8(r.to_json().to_vec()).unwrap(),
            r#"{"subject":"upr.ingest.review_scheduled","error":{"code":"missing_field","message":"field \"country\" is required","field":"country"},"payload":"{}","received_at":"2025-01-23T08:30:00.123Z"}"#
        );
    }
}
