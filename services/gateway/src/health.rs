//! `upr-gateway healthcheck`: `GET /healthz` on the gateway this
//! environment configures (`UPR_HTTP_ADDR`), exit 0 on 200.
//!
//! An HTTP probe rather than a NATS micro-service PING (what the other
//! binaries do): what a supervisor must know is whether people get answers
//! on the HTTP port, and `/healthz` already says whether NATS and the
//! projection answer behind it.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    process::ExitCode,
    time::Duration,
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};
use upr_nats::{config::process_env, contract::services};

/// How long the probe waits for the whole answer.
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// The subcommand as a whole program: prints one line, exits 0 when healthy.
pub fn main_healthcheck() -> ExitCode {
    let name = services::GATEWAY;
    let addr = match crate::http_addr(&process_env) {
        Ok(a) => probe_addr(a),
        Err(e) => {
            eprintln!("{name} healthcheck: {e}");
            return ExitCode::FAILURE;
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("{name}: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(async { tokio::time::timeout(PROBE_TIMEOUT, probe(addr)).await }) {
        Ok(Ok(200)) => {
            println!("{name}: healthy");
            ExitCode::SUCCESS
        }
        Ok(Ok(status)) => {
            eprintln!("{name}: unhealthy: GET http://{addr}/healthz answered {status}");
            ExitCode::FAILURE
        }
        Ok(Err(e)) => {
            eprintln!("{name}: unhealthy: GET http://{addr}/healthz: {e}");
            ExitCode::FAILURE
        }
        Err(_) => {
            eprintln!(
                "{name}: unhealthy: no answer from http://{addr}/healthz within {} s",
                PROBE_TIMEOUT.as_secs()
            );
            ExitCode::FAILURE
        }
    }
}

/// Where to reach a server listening on `addr`: the loopback address of the
/// same family when it listens on every address (`0.0.0.0` in a container).
pub fn probe_addr(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => {
            SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), addr.port())
        }
        IpAddr::V6(ip) if ip.is_unspecified() => {
            SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), addr.port())
        }
        _ => addr,
    }
}

/// The status code of `GET /healthz` at `addr`.
async fn probe(addr: SocketAddr) -> std::io::Result<u16> {
    let mut stream = TcpStream::connect(addr).await?;
    stream
        .write_all(
            format!("GET /healthz HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await?;
    let mut head = Vec::new();
    let mut buf = [0u8; 512];
    while !head.windows(2).any(|w| w == b"\r\n") {
        let n = stream.read(&mut buf).await?;
        if n == 0 || head.len() > 4096 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let line = String::from_utf8_lossy(&head);
    line.split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("not an HTTP answer: {line:?}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_server_on_every_address_is_probed_on_loopback() {
        let probe = |a: &str| probe_addr(a.parse().unwrap()).to_string();
        assert_eq!(probe("0.0.0.0:8080"), "127.0.0.1:8080");
        assert_eq!(probe("[::]:8080"), "[::1]:8080");
        assert_eq!(probe("127.0.0.1:9000"), "127.0.0.1:9000");
    }
}
