//! [`RawClient`]: the NATS protocol spoken by hand over TCP, for bytes no
//! client library would send.

use std::{path::Path, time::Duration};

/// A NATS connection spoken by hand over TCP, for bytes no client library
/// would send: subjects and reply subjects that are not UTF-8, floods.
pub struct RawClient {
    stream: std::net::TcpStream,
}

impl RawClient {
    /// Connects to `port` on 127.0.0.1, signing the server's nonce with the
    /// nkey seed in `seed_file` when given, and checks the server accepted
    /// the CONNECT (a PING answered by PONG).
    pub fn connect(port: u16, seed_file: Option<&Path>) -> Self {
        use std::io::{BufRead, BufReader, Write};
        let stream = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        let mut reader = BufReader::new(stream.try_clone().expect("clone"));
        let mut info = String::new();
        reader.read_line(&mut info).expect("INFO");
        let info: serde_json::Value =
            serde_json::from_str(info.trim_start_matches("INFO ").trim()).expect("INFO JSON");
        let mut connect = serde_json::json!({"verbose": false, "pedantic": false, "protocol": 1,
                                             "headers": true, "name": "raw"});
        if let Some(seed_file) = seed_file {
            let seed = std::fs::read_to_string(seed_file).expect("seed");
            let pair = nkeys::KeyPair::from_seed(seed.trim()).expect("seed");
            let nonce = info["nonce"].as_str().expect("a nonce to sign");
            let sig = pair.sign(nonce.as_bytes()).expect("sign");
            connect["nkey"] = pair.public_key().into();
            connect["sig"] = data_encoding::BASE64URL_NOPAD.encode(&sig).into();
        }
        let mut raw = Self { stream };
        raw.send(format!("CONNECT {connect}\r\nPING\r\n").as_bytes());
        let mut line = String::new();
        loop {
            line.clear();
            reader.read_line(&mut line).expect("answer to CONNECT");
            if line.starts_with("PONG") {
                break;
            }
            assert!(!line.starts_with("-ERR"), "CONNECT refused: {line}");
        }
        let _ = &mut raw.stream.flush();
        raw
    }

    /// The next protocol line the server sends (`-ERR ...`, `PONG`, `MSG ...`),
    /// or `None` when the connection is closed or nothing came within 5 s.
    pub fn read_line(&mut self) -> Option<String> {
        use std::io::Read;
        let mut line = Vec::new();
        let mut byte = [0u8; 1];
        while line.last() != Some(&b'\n') {
            match self.stream.read(&mut byte) {
                Ok(1) => line.push(byte[0]),
                _ => return None,
            }
        }
        Some(String::from_utf8_lossy(&line).trim_end().to_string())
    }

    /// A second handle on the socket, for a thread that reads (or counts)
    /// what the server sends while this one writes.
    pub fn reader(&self) -> std::net::TcpStream {
        self.stream.try_clone().expect("clone the socket")
    }

    /// Sends raw protocol bytes.
    pub fn send(&mut self, bytes: &[u8]) {
        use std::io::Write;
        self.stream.write_all(bytes).expect("write");
    }

    /// `PUB subject [reply] payload`, with subject and reply as raw bytes.
    pub fn publish(&mut self, subject: &[u8], reply: Option<&[u8]>, payload: &[u8]) {
        let mut line = b"PUB ".to_vec();
        line.extend_from_slice(subject);
        if let Some(reply) = reply {
            line.push(b' ');
            line.extend_from_slice(reply);
        }
        line.extend_from_slice(format!(" {}\r\n", payload.len()).as_bytes());
        line.extend_from_slice(payload);
        line.extend_from_slice(b"\r\n");
        self.send(&line);
    }
}
