//! `upr-ingest import FILE [--dry-run]`: sends a file of intake messages
//! through `upr.ingest.<type>` as requests, as a person would one by one
//! with `nats req`, and sums up what happened.
//!
//! A file is CSV with a header row and a `type` column, or JSON Lines with a
//! `type` field (chosen by the first non-blank character: `{` for JSON
//! Lines). A row without an `event_id` gets one derived from its content
//! (UUID v5 of its type and fields), so importing the same file again stores
//! nothing new: every row comes back a duplicate. Rows are sent in file
//! order, one at a time, because order matters within a review (a review
//! must be scheduled before it can be held).
//!
//! Reading and converting rows is pure and unit-tested here; sending needs a
//! server and is tested end to end.

use std::{collections::BTreeMap, fmt, path::Path, time::Duration};

use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{Map, Value};
use upr_domain::{ErrorCode, parse_intake};
use upr_nats::{
    config::{CommonConfig, process_env},
    service::BoxError,
};
use uuid::Uuid;

/// Namespace of the derived event ids (a fixed, random UUID): the same row
/// always gets the same id, and no other system's v5 ids collide with ours.
pub const ID_NAMESPACE: Uuid = Uuid::from_u128(0x5c1e_0a8e_7b3d_4f0e_9a61_2d4b_8c7f_1e93);

/// How long one request may wait for its answer: ingest answers within
/// about 3 s even when JetStream does not (`unavailable`).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(4);

/// Attempts per row when ingest does not answer (same `event_id` each time,
/// so a retry never stores twice). After that the import stops: the next
/// rows would only wait as long, and may depend on this one.
const ATTEMPTS: u32 = 2;

/// One row of the file, ready to send.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// Line number in the file (1-based; for CSV, where the record starts).
    pub line: u64,
    /// The intake type, the last token of the subject.
    pub ty: String,
    /// The intake payload, `event_id` included.
    pub payload: Map<String, Value>,
}

/// A row that could not even be read (not JSON, no type, a short CSV record).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unreadable {
    /// Line number in the file.
    pub line: u64,
    /// Why.
    pub message: String,
}

/// What happened to one row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Stored at this sequence.
    Accepted(u64),
    /// Already stored (the same `event_id`) at this sequence.
    Duplicate(u64),
    /// Valid, not sent (`--dry-run`).
    Valid,
    /// Ingest did not answer (no responders, no permission, timeouts):
    /// the import stops here.
    NoAnswer(String),
    /// Refused: the error code, message and field, as ingest answered.
    Refused {
        /// The error code, e.g. `conflict`.
        code: String,
        /// The human sentence.
        message: String,
    },
}

/// Reads a file's text into rows, in file order.
pub fn read(text: &str) -> Vec<Result<Row, Unreadable>> {
    let first = text.trim_start().chars().next();
    let rows = if first == Some('{') {
        read_json_lines(text)
    } else {
        read_csv(text)
    };
    rows.into_iter().map(|r| r.map(with_event_id)).collect()
}

fn read_json_lines(text: &str) -> Vec<Result<Row, Unreadable>> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            let line = i as u64 + 1;
            let bad = |message: String| Unreadable { line, message };
            let value: Value =
                serde_json::from_str(l).map_err(|e| bad(format!("not a JSON object: {e}")))?;
            let Value::Object(mut payload) = value else {
                return Err(bad("not a JSON object".into()));
            };
            let Some(Value::String(ty)) = payload.remove("type") else {
                return Err(bad("no \"type\" field naming the event type".into()));
            };
            Ok(Row { line, ty, payload })
        })
        .collect()
}

fn read_csv(text: &str) -> Vec<Result<Row, Unreadable>> {
    let mut reader = csv::ReaderBuilder::new()
        .trim(csv::Trim::All)
        .from_reader(text.as_bytes());
    let headers = match reader.headers() {
        Ok(h) => h.clone(),
        Err(e) => {
            return vec![Err(Unreadable {
                line: 1,
                message: format!("cannot read the header row: {e}"),
            })];
        }
    };
    let Some(type_at) = headers.iter().position(|h| h == "type") else {
        return vec![Err(Unreadable {
            line: 1,
            message: "the header row has no \"type\" column".into(),
        })];
    };
    reader
        .records()
        .map(|record| {
            let record = record.map_err(|e| Unreadable {
                line: e.position().map_or(0, csv::Position::line),
                message: format!("cannot read the row: {e}"),
            })?;
            let line = record.position().map_or(0, csv::Position::line);
            let ty = record.get(type_at).unwrap_or_default().to_owned();
            let payload = headers
                .iter()
                .zip(record.iter())
                .filter(|(h, cell)| *h != "type" && !cell.is_empty())
                .map(|(h, cell)| (h.to_owned(), cell_value(h, cell)))
                .collect();
            Ok(Row { line, ty, payload })
        })
        .collect()
}

/// A CSV cell as the JSON value its column takes: whole numbers for the
/// number fields; for list and object fields, JSON written in the cell, or
/// `|`-separated items (`AR|JP|SN` for a troika, speakers' names); text
/// otherwise. Anything that does not fit is passed on as text, so intake
/// refuses it naming the field.
fn cell_value(column: &str, cell: &str) -> Value {
    match column {
        "session" | "participating_states" | "recommendations_received" | "hrc_session" => cell
            .parse::<i64>()
            .map_or_else(|_| Value::from(cell), Value::from),
        "speakers" | "topics" | "troika" | "recommendations" => {
            if cell.starts_with('[') || cell.starts_with('{') {
                return serde_json::from_str(cell).unwrap_or_else(|_| Value::from(cell));
            }
            let items = cell.split('|').map(str::trim).filter(|s| !s.is_empty());
            match column {
                "speakers" => items
                    .map(|name| serde_json::json!({ "name": name }))
                    .collect(),
                "recommendations" => Value::from(cell),
                _ => items.map(Value::from).collect(),
            }
        }
        _ => Value::from(cell),
    }
}

/// Gives a row without an `event_id` the one derived from its content.
fn with_event_id(mut row: Row) -> Row {
    if !row.payload.contains_key("event_id") {
        row.payload
            .insert("event_id".into(), Value::from(derived_id(&row).to_string()));
    }
    row
}

/// UUID v5 of the type and the fields, keys sorted: the same content gives
/// the same id, whatever the file's column or key order.
///
/// # Panics
/// Never: JSON values serialize.
pub fn derived_id(row: &Row) -> Uuid {
    let sorted: BTreeMap<&String, &Value> = row.payload.iter().collect();
    let canonical = serde_json::to_string(&sorted).expect("JSON values serialize");
    Uuid::new_v5(&ID_NAMESPACE, format!("{}\n{canonical}", row.ty).as_bytes())
}

/// Checks a row as ingest would before the lifecycle (`--dry-run`).
///
/// # Panics
/// Never: JSON values serialize.
pub fn validate(row: &Row) -> Outcome {
    let bytes = serde_json::to_vec(&row.payload).expect("JSON values serialize");
    match parse_intake(&row.ty, &bytes) {
        Ok(_) => Outcome::Valid,
        Err(e) => Outcome::Refused {
            code: e.code.to_string(),
            message: e.message,
        },
    }
}

/// Sends one row and reads ingest's answer; retries (same `event_id`) when
/// ingest does not answer.
///
/// # Panics
/// Never: JSON values serialize.
pub async fn send(client: &async_nats::Client, row: &Row) -> Outcome {
    let subject = upr_nats::contract::subjects::ingest_named(&row.ty);
    let payload = serde_json::to_vec(&row.payload).expect("JSON values serialize");
    let mut last = String::new();
    for attempt in 1..=ATTEMPTS {
        let request = client.request(subject.clone(), payload.clone().into());
        match tokio::time::timeout(REQUEST_TIMEOUT, request).await {
            Ok(Ok(reply)) => return outcome(&reply.payload),
            Ok(Err(e)) => last = e.to_string(),
            Err(_) => last = "no answer within 5 s".into(),
        }
        if attempt < ATTEMPTS {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    Outcome::NoAnswer(last)
}

fn outcome(reply: &[u8]) -> Outcome {
    let Ok(v) = serde_json::from_slice::<Value>(reply) else {
        return Outcome::Refused {
            code: "invalid_reply".into(),
            message: String::from_utf8_lossy(reply).into_owned(),
        };
    };
    let seq = v["seq"].as_u64().unwrap_or(0);
    match (v["ok"].as_bool(), v["duplicate"].as_bool()) {
        (Some(true), Some(true)) => Outcome::Duplicate(seq),
        (Some(true), _) => Outcome::Accepted(seq),
        _ => Outcome::Refused {
            code: v["error"]["code"].as_str().unwrap_or("unknown").to_owned(),
            message: v["error"]["message"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
        },
    }
}

/// What an import did, row by row.
#[derive(Debug, Default)]
pub struct Summary {
    /// Whether rows were only validated (`--dry-run`), not sent.
    pub dry_run: bool,
    /// Rows stored.
    pub accepted: usize,
    /// Rows already stored.
    pub duplicate: usize,
    /// Rows valid but not sent (`--dry-run`).
    pub valid: usize,
    /// Refusals by code.
    pub refused_by_code: BTreeMap<String, usize>,
    /// Every refused row: line, type, code, message.
    pub refused: Vec<(u64, String, String, String)>,
    /// Where the import stopped because ingest did not answer, why, and
    /// how many rows were not sent.
    pub stopped: Option<(u64, String, usize)>,
}

impl Summary {
    /// Counts one row.
    pub fn add(&mut self, line: u64, ty: &str, outcome: Outcome) {
        match outcome {
            Outcome::Accepted(_) => self.accepted += 1,
            Outcome::Duplicate(_) => self.duplicate += 1,
            Outcome::Valid => self.valid += 1,
            Outcome::Refused { code, message } => {
                *self.refused_by_code.entry(code.clone()).or_default() += 1;
                self.refused.push((line, ty.to_owned(), code, message));
            }
            Outcome::NoAnswer(why) => self.stopped = Some((line, why, 1)),
        }
    }

    /// Counts a row that could not be read.
    pub fn unreadable(&mut self, u: Unreadable) {
        self.add(
            u.line,
            "?",
            Outcome::Refused {
                code: ErrorCode::InvalidJson.to_string(),
                message: u.message,
            },
        );
    }

    /// Whether anything was refused or not sent (the exit code is then 1).
    pub fn any_refused(&self) -> bool {
        !self.refused.is_empty() || self.stopped.is_some()
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let refused: usize = self.refused_by_code.values().sum();
        let total = self.accepted + self.duplicate + self.valid + refused;
        write!(f, "{total} rows: ")?;
        if self.dry_run {
            write!(f, "{} valid, ", self.valid)?;
        } else {
            write!(
                f,
                "{} accepted, {} duplicate, ",
                self.accepted, self.duplicate
            )?;
        }
        write!(f, "{refused} refused")?;
        if refused > 0 {
            let by_code: Vec<String> = self
                .refused_by_code
                .iter()
                .map(|(code, n)| format!("{code}: {n}"))
                .collect();
            write!(f, " ({})", by_code.join(", "))?;
        }
        writeln!(f)?;
        for (line, ty, code, message) in &self.refused {
            writeln!(f, "  line {line} ({ty}): {code}: {message}")?;
        }
        if let Some((line, why, not_sent)) = &self.stopped {
            writeln!(
                f,
                "stopped at line {line}: ingest did not answer ({why}); {not_sent} rows not sent. \
                 Import the file again once ingest answers: rows already stored come back as duplicates."
            )?;
        }
        Ok(())
    }
}

/// The file to import cannot be read.
#[derive(Debug, thiserror::Error)]
#[error("cannot read {}: {source}", .path.display())]
pub struct ReadError {
    /// The file.
    pub path: std::path::PathBuf,
    /// Why it cannot be read.
    pub source: std::io::Error,
}

/// Imports the file at `path`: reads every row, then validates (`dry_run`)
/// or sends each in order, with a progress bar on a terminal.
///
/// # Errors
/// When the file cannot be read, or (not `dry_run`) the NATS settings are
/// unusable.
///
/// # Panics
/// Never: the progress bar's template is a valid constant.
pub async fn import(path: &Path, dry_run: bool) -> Result<Summary, BoxError> {
    let text = std::fs::read_to_string(path).map_err(|source| ReadError {
        path: path.to_owned(),
        source,
    })?;
    let rows = read(&text);
    let client = if dry_run {
        None
    } else {
        let config = CommonConfig::from_lookup(&process_env)?;
        Some(upr_nats::setup::connect(&config.nats, IMPORT_CLIENT).await?)
    };
    // Drawn on stderr, and only when it is a terminal.
    let progress = ProgressBar::new(rows.len() as u64).with_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} rows {msg}").expect("a valid template"),
    );
    let mut summary = Summary {
        dry_run,
        ..Summary::default()
    };
    let total = rows.len();
    for (i, row) in rows.into_iter().enumerate() {
        if let Some((_, _, not_sent)) = &mut summary.stopped {
            *not_sent = total - i + 1;
            break;
        }
        match row {
            Err(u) => summary.unreadable(u),
            Ok(row) => {
                let outcome = match &client {
                    None => validate(&row),
                    Some(client) => send(client, &row).await,
                };
                summary.add(row.line, &row.ty, outcome);
            }
        }
        progress.inc(1);
    }
    progress.finish_and_clear();
    if let Some(client) = client {
        client.flush().await.ok();
    }
    Ok(summary)
}

/// The connection name (and inbox prefix) of an import.
pub const IMPORT_CLIENT: &str = "upr-import";

#[cfg(test)]
mod tests {
    use super::*;

    const CSV: &str = "type,country,session,scheduled_for,location,troika,title,held_on,speakers\n\
        review_scheduled,KZ,48,2025-01-23T08:30:00Z,\"Palais des Nations, Room XX\",AR|JP|SN,,,\n\
        side_event_held,KZ,48,,,,\"Civic space, and more\",2025-01-22,A. Speaker|B. Speaker\n";

    #[test]
    fn csv_rows_become_typed_payloads_with_their_line_numbers() {
        let rows: Vec<Row> = read(CSV).into_iter().map(Result::unwrap).collect();
        assert_eq!(rows.len(), 2);
        assert_eq!((rows[0].line, rows[0].ty.as_str()), (2, "review_scheduled"));
        let p = &rows[0].payload;
        assert_eq!(p["session"], 48);
        assert_eq!(p["location"], "Palais des Nations, Room XX");
        assert_eq!(p["troika"], serde_json::json!(["AR", "JP", "SN"]));
        assert!(!p.contains_key("title"), "empty cells are absent");
        assert_eq!(
            rows[1].payload["speakers"],
            serde_json::json!([{"name": "A. Speaker"}, {"name": "B. Speaker"}])
        );
        for row in &rows {
            assert_eq!(validate(row), Outcome::Valid, "{row:?}");
        }
    }

    #[test]
    fn json_lines_and_csv_of_the_same_content_derive_the_same_ids() {
        let jsonl = "\n{\"type\":\"review_scheduled\",\"troika\":[\"AR\",\"JP\",\"SN\"],\"country\":\"KZ\",\"session\":48,\
            \"location\":\"Palais des Nations, Room XX\",\"scheduled_for\":\"2025-01-23T08:30:00Z\"}\n";
        let from_json = read(jsonl).remove(0).unwrap();
        let from_csv = read(CSV).remove(0).unwrap();
        assert_eq!(from_json.line, 2);
        assert_eq!(from_json.payload["event_id"], from_csv.payload["event_id"]);
        // A different row, a different id; an explicit id is kept.
        let other = read(&CSV.replace("2025-01-23T08:30", "2025-01-24T08:30"))
            .remove(0)
            .unwrap();
        assert_ne!(other.payload["event_id"], from_csv.payload["event_id"]);
        let given = read(
            "{\"type\":\"review_held\",\"country\":\"KZ\",\"session\":48,\"event_id\":\"0190f3a2-7b1c-7d4e-9a2b-3c4d5e6f7a8b\"}",
        );
        assert_eq!(
            given[0].as_ref().unwrap().payload["event_id"],
            "0190f3a2-7b1c-7d4e-9a2b-3c4d5e6f7a8b"
        );
    }

    #[test]
    fn unreadable_rows_and_invalid_ones_are_counted_with_their_lines() {
        let rows = read(
            "{\"type\":\"review_held\",\"country\":\"KZ\",\"session\":48}\nnot json\n{\"country\":\"KZ\"}\n",
        );
        let mut summary = Summary {
            dry_run: true,
            ..Summary::default()
        };
        for row in rows {
            match row {
                Ok(row) => summary.add(row.line, &row.ty, validate(&row)),
                Err(u) => summary.unreadable(u),
            }
        }
        assert_eq!(summary.valid, 1);
        let lines: Vec<u64> = summary.refused.iter().map(|r| r.0).collect();
        assert_eq!(lines, [2, 3]);
        assert!(summary.any_refused());
        let text = summary.to_string();
        assert!(
            text.starts_with("3 rows: 1 valid, 2 refused (invalid_json: 2)"),
            "{text}"
        );
        assert!(
            text.contains("line 3 (?): invalid_json: no \"type\" field"),
            "{text}"
        );

        let no_type_column = read("country,session\nKZ,48\n");
        assert_eq!(no_type_column[0].as_ref().unwrap_err().line, 1);
        let bad = read("type,country,session\nreview_held,KZ,forty\n")
            .remove(0)
            .unwrap();
        match validate(&bad) {
            Outcome::Refused { code, message } => {
                assert_eq!(code, "invalid_field");
                assert!(message.contains("session"), "{message}");
            }
            other => panic!("{other:?}"),
        }
    }
}
