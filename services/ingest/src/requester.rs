//! Who sent an intake message, as the server authenticated it (contract
//! V3.1): never a value of the payload.
//!
//! A party is a NATS account of its own (`upr-keys add`), and intake reaches
//! ingest through the service account's import, on which the server adds
//! `Nats-Request-Info` with the sender's account (`acc`) to every request
//! and publish, replacing any copy the client sent. Inside the service
//! account there is no import and a client-set header passes untouched, so
//! the header is believed only when the server requires authentication (a
//! server without users authenticates no one: `null`), when it is a single
//! value, and when `acc` is a party name; the service account itself
//! (`UPR`) is not one.

use async_nats::HeaderMap;
use upr_domain::PartyName;
use upr_nats::{contract::ingest, service::requester_account};

/// The party an intake message came from, when `trusted` (the server
/// requires authentication) and the server's requester information names
/// one; else `None`.
pub fn from_request_info(headers: Option<&HeaderMap>, trusted: bool) -> Option<PartyName> {
    if !trusted {
        return None;
    }
    PartyName::parse(&requester_account(headers)?).ok()
}

/// The party a command handed over by another replica came from: that
/// replica's [`from_request_info`], in [`ingest::RECORDED_BY`].
pub fn from_hand_over(headers: Option<&HeaderMap>) -> Option<PartyName> {
    let value = headers?.get(ingest::RECORDED_BY)?;
    PartyName::parse(value.as_str()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, *v);
        }
        h
    }

    const INFO: &str = r#"{"acc":"ngo-a","rtt":"1ms"}"#;

    #[test]
    fn the_account_the_server_names_is_the_party() {
        let h = headers(&[(ingest::REQUEST_INFO, INFO)]);
        assert_eq!(
            from_request_info(Some(&h), true).map(|p| p.to_string()),
            Some("ngo-a".into())
        );
    }

    #[test]
    fn without_authentication_nobody_is_named_whatever_the_header_says() {
        let h = headers(&[(ingest::REQUEST_INFO, INFO)]);
        assert_eq!(from_request_info(Some(&h), false), None);
        assert_eq!(from_request_info(None, true), None);
    }

    #[test]
    fn two_copies_another_spelling_or_a_non_party_account_name_nobody() {
        let two = headers(&[(ingest::REQUEST_INFO, INFO), (ingest::REQUEST_INFO, INFO)]);
        assert_eq!(from_request_info(Some(&two), true), None);
        let lower = headers(&[("nats-request-info", INFO)]);
        assert_eq!(from_request_info(Some(&lower), true), None);
        for bad in [
            r#"{"acc":"UPR"}"#,
            r#"{"acc":"$G"}"#,
            "not json",
            r#"{"acc":7}"#,
            "{}",
        ] {
            let h = headers(&[(ingest::REQUEST_INFO, bad)]);
            assert_eq!(from_request_info(Some(&h), true), None, "{bad}");
        }
    }

    #[test]
    fn a_hand_over_carries_the_name_or_nobody() {
        let h = headers(&[(ingest::RECORDED_BY, "ngo-a")]);
        assert_eq!(from_hand_over(Some(&h)).unwrap().as_str(), "ngo-a");
        let h = headers(&[(ingest::RECORDED_BY, "")]);
        assert_eq!(from_hand_over(Some(&h)), None);
        assert_eq!(from_hand_over(None), None);
    }
}
