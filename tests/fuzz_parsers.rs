//! Bounded fuzzing (proptest, fixed case counts so CI time is bounded) of
//! every parser that reads what a client or an admin sends, beyond the relay
//! bodies `fuzz_relay` covers: token fields (model list, IP allow list),
//! option values, API keys, session cookies, client-IP headers, stored
//! secrets. None may panic; each keeps its stated property.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::IpAddr;

use axum::http::{HeaderMap, HeaderValue};
use proptest::prelude::*;
use proptest::test_runner::Config;
use sluice::auth::Secrets;
use sluice::auth::limits::{ip_allowed, parse_allow_ips, parse_model_limits};
use sluice::auth::{keys, session};
use sluice::config::options::{Options, validate};

fn cfg() -> Config {
    Config {
        cases: 512,
        failure_persistence: None,
        ..Config::default()
    }
}

/// Text with the characters the parsers split and trim on.
fn texty() -> impl Strategy<Value = String> {
    prop_oneof![any::<String>(), "[ \\[\\],\"a-z0-9./:\\-\n\t{}\\\\]{0,64}",]
}

fn secrets() -> Secrets {
    Secrets::from_master([7u8; 32], None)
}

proptest! {
    #![proptest_config(cfg())]

    #[test]
    fn model_limits_accepts_or_names_the_problem(s in texty()) {
        match parse_model_limits(&s) {
            Ok(models) => {
                for m in &models {
                    prop_assert!(!m.trim().is_empty());
                    prop_assert_eq!(m.trim(), m.as_str());
                }
            }
            Err(e) => prop_assert!(!e.is_empty()),
        }
    }

    #[test]
    fn model_limits_reads_back_what_it_was_given(models in prop::collection::vec("[a-z0-9.\\-]{1,12}", 0..6)) {
        let json = serde_json::to_string(&models).unwrap();
        prop_assert_eq!(parse_model_limits(&json).unwrap(), models.clone());
        let csv = models.join(",");
        prop_assert_eq!(parse_model_limits(&csv).unwrap(), models);
    }

    #[test]
    fn allow_ips_never_admit_what_they_do_not_list(s in texty(), ip in any::<[u8; 4]>()) {
        if let Ok(nets) = parse_allow_ips(&s) {
            let ip = IpAddr::from(ip);
            if nets.is_empty() {
                prop_assert!(ip_allowed(&nets, ip), "an empty list allows everyone");
            } else if ip_allowed(&nets, ip) {
                prop_assert!(nets.iter().any(|n| n.contains(&ip)));
            }
        }
    }

    #[test]
    fn option_values_are_checked_without_panicking(
        key in prop::sample::select(vec![
            "ModelRatio", "CompletionRatio", "GroupRatio", "ModelPrice", "CacheRatio",
            "UserUsableGroups", "QuotaPerUnit", "RetryTimes", "RegisterEnabled",
            "MaxUserTokens", "DefaultOutputAllowance", "ModelRequestRateLimitGroup",
            "ModelRequestRateLimitDurationMinutes", "ModelTokenRateLimitCount", "SystemName",
            "Anything",
        ]),
        value in texty(),
    ) {
        let ok = validate(key, &value).is_ok();
        // Whatever was accepted is what the server then runs on.
        let stored = [(key.to_string(), value.clone())].into_iter().collect();
        let o = Options::from_stored(stored);
        if ok {
            prop_assert_eq!(o.raw.get(key), Some(&value));
        }
        prop_assert!(o.quota_per_unit > 0.0);
        prop_assert!(o.user_rate.minutes >= 1);
    }

    #[test]
    fn api_keys_split_into_a_body_and_a_pin(raw in texty()) {
        let (body, pin) = keys::parse_api_key(&raw);
        prop_assert!(!body.contains('-'));
        prop_assert!(raw.contains(body));
        if let Some(p) = pin {
            prop_assert!(raw.contains(p));
        }
    }

    #[test]
    fn session_cookies_are_only_what_was_signed(value in texty(), now in any::<i64>()) {
        let s = secrets();
        prop_assert!(session::decode(&s, &value, now).is_none());
    }

    #[test]
    fn signed_sessions_round_trip_and_resist_tampering(
        user_id in 1i64..1_000_000, v in 0i64..100, exp in 1i64..i64::MAX / 2, flip in any::<usize>(),
    ) {
        let s = secrets();
        let sess = session::Session { user_id, auth_version: v, expires_at: exp };
        let cookie = session::encode(&s, &sess);
        prop_assert_eq!(session::decode(&s, &cookie, exp - 1), Some(sess));
        prop_assert_eq!(session::decode(&s, &cookie, exp), None);
        let mut bytes = cookie.clone().into_bytes();
        let i = flip % bytes.len();
        bytes[i] = if bytes[i] == b'0' { b'1' } else { b'0' };
        let tampered = String::from_utf8(bytes).unwrap();
        if tampered != cookie {
            prop_assert_eq!(session::decode(&s, &tampered, 0), None);
        }
    }

    #[test]
    fn stored_secrets_decrypt_only_what_was_encrypted(junk in texty(), plain in any::<String>()) {
        let s = secrets();
        // Authenticated encryption: nothing forged decrypts.
        prop_assert!(s.decrypt(&junk).is_err());
        prop_assert_eq!(s.decrypt(&s.encrypt(&plain)).unwrap(), plain);
    }

    #[test]
    fn client_ip_is_the_peer_unless_a_trusted_proxy_says_otherwise(
        xff in texty(), real in texty(), peer in any::<[u8; 4]>(),
    ) {
        let mut h = HeaderMap::new();
        if let Ok(v) = HeaderValue::from_str(&xff) {
            h.insert("x-forwarded-for", v);
        }
        if let Ok(v) = HeaderValue::from_str(&real) {
            h.insert("x-real-ip", v);
        }
        let peer = IpAddr::from(peer);
        // Nobody trusted: the headers are ignored.
        prop_assert_eq!(sluice::util::client_ip(peer, &h, &[]), sluice::util::canonical(peer));
        // The peer trusted: whatever is returned is the peer or parsed from
        // the headers.
        let trusted = [ipnet::IpNet::from(peer)];
        let got = sluice::util::client_ip(peer, &h, &trusted);
        prop_assert!(
            got == sluice::util::canonical(peer) || xff.contains(&got.to_string()) || real.contains(&got.to_string()),
            "{} from {:?} / {:?}", got, xff, real
        );
    }
}
