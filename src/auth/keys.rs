//! Random credentials and their lookup hashes.
//!
//! An API key is `sk-` + 48 alphanumerics from the thread-local CSPRNG (ChaCha,
//! seeded by the OS). The database stores only the SHA-256 of the 48-character
//! body (for lookup) and an AES-256-GCM ciphertext (to show it to its owner).

use rand::Rng;
use rand::distr::Alphanumeric;
use sha2::{Digest, Sha256};

/// Length of an API key body (without `sk-`).
pub const KEY_BODY_LEN: usize = 48;

/// `len` random alphanumeric characters from a CSPRNG.
pub fn random_alnum(len: usize) -> String {
    rand::rng()
        .sample_iter(&Alphanumeric)
        .take(len)
        .map(char::from)
        .collect()
}

/// A new API key body (48 characters, no `sk-`).
pub fn new_key_body() -> String {
    random_alnum(KEY_BODY_LEN)
}

/// A new management access token.
pub fn new_access_token() -> String {
    random_alnum(32)
}

/// Hex SHA-256 of a secret, used as its lookup key.
pub fn lookup_hash(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// Raw SHA-256 of a secret, for in-memory cache keys.
pub fn lookup_hash_bytes(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

/// The masked form new-api shows in lists: first 4, ten `*`, last 4.
pub fn mask(key: &str) -> String {
    let chars: Vec<char> = key.chars().collect();
    let n = chars.len();
    if n == 0 {
        return String::new();
    }
    if n <= 4 {
        return "*".repeat(n);
    }
    if n <= 8 {
        let head: String = chars[..2].iter().collect();
        let tail: String = chars[n - 2..].iter().collect();
        return format!("{head}****{tail}");
    }
    let head: String = chars[..4].iter().collect();
    let tail: String = chars[n - 4..].iter().collect();
    format!("{head}**********{tail}")
}

/// Splits what a client sent as an API key into the key body and an optional
/// pinned channel id (`sk-<body>-<channel id>`). The `sk-` prefix is optional.
pub fn parse_api_key(raw: &str) -> (&str, Option<&str>) {
    let raw = raw.trim();
    let raw = raw.strip_prefix("sk-").unwrap_or(raw);
    match raw.split_once('-') {
        Some((body, channel)) => (body, Some(channel)),
        None => (raw, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_48_alphanumerics_and_distinct() {
        let a = new_key_body();
        let b = new_key_body();
        assert_eq!(a.len(), KEY_BODY_LEN);
        assert!(a.chars().all(|c| c.is_ascii_alphanumeric()));
        assert_ne!(a, b);
    }

    #[test]
    fn mask_matches_new_api() {
        assert_eq!(mask("abcdefghijklmnop"), "abcd**********mnop");
        assert_eq!(mask("abcdef"), "ab****ef");
        assert_eq!(mask("abc"), "***");
        assert_eq!(mask(""), "");
    }

    #[test]
    fn api_key_parsing_strips_prefix_and_channel() {
        assert_eq!(parse_api_key("sk-abc"), ("abc", None));
        assert_eq!(parse_api_key("abc"), ("abc", None));
        assert_eq!(parse_api_key("sk-abc-12"), ("abc", Some("12")));
    }
}
