//! A Server-Sent Events client for the gateway's `/events` tests, on a plain
//! socket like [`crate::http`], so the tests see the exact lines the
//! gateway writes: the answer's head, then the chunked body decoded as it
//! arrives and cut into events at each blank line.

use std::fmt::Write as _;
use std::{net::SocketAddr, time::Duration};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

use crate::http::HttpResponse;

/// One event as the client saw it (comments, such as keep-alives, are not
/// events).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    /// The `event:` field.
    pub event: String,
    /// The `id:` field.
    pub id: String,
    /// The `data:` lines, joined with `\n`.
    pub data: String,
    /// How many `data:` lines there were (the gateway writes one).
    pub data_lines: usize,
}

impl SseEvent {
    /// `id` as a stream sequence.
    pub fn seq(&self) -> u64 {
        self.id
            .parse()
            .unwrap_or_else(|_| panic!("id {:?} is not a sequence", self.id))
    }

    /// `data` as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.data).unwrap_or_else(|e| panic!("data not JSON ({e}): {self:?}"))
    }
}

/// Status and headers of an answer whose head is `head` (without its
/// closing blank line).
fn parse_head(head: &[u8]) -> Option<HttpResponse> {
    let head = std::str::from_utf8(head).ok()?;
    let mut lines = head.split("\r\n");
    let status = lines.next()?.split_whitespace().nth(1)?.parse().ok()?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Some(HttpResponse {
        status,
        headers,
        body: Vec::new(),
    })
}

/// An open event stream.
pub struct SseClient {
    socket: TcpStream,
    /// Bytes read and not yet de-chunked.
    raw: Vec<u8>,
    /// De-chunked body not yet cut into events.
    body: String,
    ended: bool,
    /// The answer's head (status and headers; no body).
    pub head: HttpResponse,
}

impl SseClient {
    /// `GET path` on `addr` with `headers`.
    ///
    /// # Errors
    /// The whole answer when its status is not 200.
    ///
    /// # Panics
    /// When the gateway does not answer within 10 s.
    pub async fn connect(
        addr: SocketAddr,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Result<Self, HttpResponse> {
        let mut request =
            format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n");
        for (k, v) in headers {
            let _ = write!(request, "{k}: {v}\r\n");
        }
        request.push_str("\r\n");
        let mut socket = TcpStream::connect(addr).await.expect("connect");
        socket.write_all(request.as_bytes()).await.expect("send");
        let mut raw = Vec::new();
        let head_end = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                if let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
                    return end;
                }
                let mut buf = [0u8; 4096];
                let n = socket.read(&mut buf).await.expect("read");
                assert!(n > 0, "connection closed before the answer's head");
                raw.extend_from_slice(&buf[..n]);
            }
        })
        .await
        .expect("the answer's head within 10 s");
        let head = parse_head(&raw[..head_end]).expect("an HTTP head");
        if head.status != 200 {
            let _ =
                tokio::time::timeout(Duration::from_secs(10), socket.read_to_end(&mut raw)).await;
            return Err(crate::http::parse(&raw).unwrap_or(head));
        }
        raw.drain(..head_end + 4);
        Ok(Self {
            socket,
            raw,
            body: String::new(),
            ended: false,
            head,
        })
    }

    /// The next event, waiting at most `timeout`; `None` when none came in
    /// time or the stream ended.
    pub async fn next(&mut self, timeout: Duration) -> Option<SseEvent> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(event) = self.take_event() {
                return Some(event);
            }
            if self.ended {
                return None;
            }
            let mut buf = [0u8; 8192];
            let read = tokio::time::timeout_at(deadline, self.socket.read(&mut buf)).await;
            match read {
                Err(_) => return None,
                Ok(Ok(0) | Err(_)) => self.ended = true,
                Ok(Ok(n)) => {
                    self.raw.extend_from_slice(&buf[..n]);
                    self.dechunk();
                }
            }
        }
    }

    /// Whether the gateway ended the stream (the last chunk, or the
    /// connection closed), waiting at most `timeout` and skipping events.
    pub async fn ends_within(&mut self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        while !self.ended {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                return false;
            }
            let _ = self.next(left).await;
        }
        true
    }

    /// Every event that arrives within `window` (the stream stays open).
    pub async fn drain(&mut self, window: Duration) -> Vec<SseEvent> {
        let deadline = tokio::time::Instant::now() + window;
        let mut out = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next(left).await {
                Some(e) => out.push(e),
                None => return out,
            }
        }
    }

    /// Moves whole chunks from `raw` to `body`.
    fn dechunk(&mut self) {
        loop {
            let Some(line_end) = self.raw.windows(2).position(|w| w == b"\r\n") else {
                return;
            };
            let size_text = String::from_utf8_lossy(&self.raw[..line_end]).into_owned();
            let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
                .unwrap_or_else(|_| panic!("not a chunk size: {size_text:?}"));
            if size == 0 {
                self.ended = true;
                return;
            }
            let start = line_end + 2;
            if self.raw.len() < start + size + 2 {
                return;
            }
            self.body
                .push_str(std::str::from_utf8(&self.raw[start..start + size]).expect("UTF-8 body"));
            self.raw.drain(..start + size + 2);
        }
    }

    /// Cuts the first complete event out of `body`, skipping comments.
    fn take_event(&mut self) -> Option<SseEvent> {
        loop {
            let end = self.body.find("\n\n")?;
            let block: String = self.body.drain(..end + 2).collect();
            let mut event = SseEvent {
                event: String::new(),
                id: String::new(),
                data: String::new(),
                data_lines: 0,
            };
            for line in block.lines() {
                let (field, value) = line.split_once(':').unwrap_or((line, ""));
                let value = value.strip_prefix(' ').unwrap_or(value);
                match field {
                    "event" => value.clone_into(&mut event.event),
                    "id" => value.clone_into(&mut event.id),
                    "data" => {
                        if event.data_lines > 0 {
                            event.data.push('\n');
                        }
                        event.data.push_str(value);
                        event.data_lines += 1;
                    }
                    _ => {}
                }
            }
            if event.data_lines > 0 {
                return Some(event);
            }
        }
    }
}
