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

/// `text` with every one of `secrets` (8 characters or more) and every
/// `sk-…` key-shaped word masked, for messages that leave the process.
pub fn redact(text: &str, secrets: &[String]) -> String {
    let mut out = text.to_string();
    for s in secrets.iter().filter(|s| s.len() >= 8) {
        if out.contains(s.as_str()) {
            out = out.replace(s.as_str(), &mask(s));
        }
    }
    // Key-shaped words: `sk-` followed by 16 or more key characters.
    let is_key_char = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '_';
    let mut masked = String::with_capacity(out.len());
    let mut rest = out.as_str();
    while let Some(i) = rest.find("sk-") {
        let boundary = rest[..i]
            .chars()
            .next_back()
            .is_none_or(|c| !is_key_char(c));
        let word_len = rest[i..]
            .find(|c: char| !is_key_char(c))
            .unwrap_or(rest.len() - i);
        masked.push_str(&rest[..i]);
        let word = &rest[i..i + word_len];
        if boundary && word_len >= 3 + 16 {
            masked.push_str(&mask(word));
        } else {
            masked.push_str(word);
        }
        rest = &rest[i + word_len.max(3)..];
    }
    masked.push_str(rest);
    masked
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redaction_masks_known_secrets_and_key_shaped_words() {
        let ch = vec!["channel-secret-123".to_string(), "short".to_string()];
        let r = redact(
            "Incorrect API key provided: channel-secret-123. Also sk-abcdefghijklmnopqrstu and sk-x; short stays; task-sk-notakey1234567890",
            &ch,
        );
        assert!(!r.contains("channel-secret-123"), "{r}");
        assert!(!r.contains("sk-abcdefghijklmnopqrstu"), "{r}");
        assert!(r.contains("sk-x;"), "{r}");
        assert!(r.contains("short stays"), "{r}");
        assert!(r.contains("task-sk-notakey1234567890"), "{r}");
        assert_eq!(redact("no secrets here", &ch), "no secrets here");
    }

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
