//! The pure parts of a delivery: the Standard Webhooks 1.0 signature and
//! the pause between attempts. No I/O, so both are tested on their own.

use std::time::Duration;

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Prefix of a Standard Webhooks secret: `whsec_` then the key in base64.
pub const SECRET_PREFIX: &str = "whsec_";

/// The pause before the first retry; each further one doubles it.
pub const FIRST_RETRY: Duration = Duration::from_secs(1);

/// The key inside a secret file's text: `whsec_<base64>`, surrounding
/// white space (the trailing newline an editor adds) ignored.
///
/// # Errors
/// What is wrong with the text, for a start-up message (never the key).
pub fn parse_secret(text: &str) -> Result<Vec<u8>, String> {
    let text = text.trim();
    let Some(encoded) = text.strip_prefix(SECRET_PREFIX) else {
        return Err(format!(
            "must hold {SECRET_PREFIX} followed by the key in base64"
        ));
    };
    let key = data_encoding::BASE64
        .decode(encoded.as_bytes())
        .map_err(|e| format!("the key after {SECRET_PREFIX} is not base64: {e}"))?;
    // The specification's bounds: shorter keys are guessable, and
    // receivers' libraries may refuse longer ones.
    if !(24..=64).contains(&key.len()) {
        return Err(format!(
            "the key must be 24 to 64 bytes (Standard Webhooks), got {}",
            key.len()
        ));
    }
    Ok(key)
}

/// The `webhook-signature` header: `v1,` and the base64 HMAC-SHA256 of
/// `<id>.<timestamp>.<body>` keyed with `key`.
///
/// # Panics
/// Never: HMAC takes a key of any length.
pub fn signature(key: &[u8], id: &str, timestamp: u64, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes a key of any length");
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!(
        "v1,{}",
        data_encoding::BASE64.encode(&mac.finalize().into_bytes())
    )
}

/// The pause after `failures` failed attempts at one notification: 1 s,
/// 2 s, 4 s, ... up to `max`, so a receiver that is down briefly gets the
/// notification soon after it is back, and one that is down for days is
/// asked once per `max`.
pub fn backoff(failures: u32, max: Duration) -> Duration {
    let exponent = failures.saturating_sub(1).min(30);
    FIRST_RETRY.saturating_mul(1 << exponent).min(max)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example of the Standard Webhooks specification and its
    /// libraries' tests.
    #[test]
    fn signs_as_the_specification_example() {
        let key = parse_secret("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\n").unwrap();
        assert_eq!(
            signature(
                &key,
                "msg_p5jXN8AQM9LWM0D4loKWxJek",
                1_614_265_330,
                br#"{"test": 2432232314}"#
            ),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }

    #[test]
    fn a_secret_needs_its_prefix_base64_and_a_sane_length() {
        assert!(parse_secret("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").is_err());
        assert!(parse_secret("whsec_not*base64").is_err());
        assert!(
            parse_secret("whsec_c2hvcnQ=")
                .unwrap_err()
                .contains("24 to 64")
        );
        assert_eq!(
            parse_secret("  whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\r\n")
                .unwrap()
                .len(),
            24
        );
    }

    #[test]
    fn backoff_doubles_from_one_second_up_to_the_cap() {
        let max = Duration::from_secs(60);
        let pauses: Vec<u64> = (1..=9).map(|n| backoff(n, max).as_secs()).collect();
        assert_eq!(pauses, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
        assert_eq!(backoff(u32::MAX, max), max);
        assert_eq!(backoff(5, Duration::from_secs(2)), Duration::from_secs(2));
    }
}
