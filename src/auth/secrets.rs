//! The server's secret key: encrypts API keys and channel keys at rest and
//! signs session cookies.
//!
//! Source, in order: `SLUICE_SECRET_KEY` (64 hex characters are used as the
//! key; any other string is hashed to 32 bytes), else `secret.key` in the data
//! directory, created on first start with mode 600. Every replica must share
//! the same key (set the variable when running more than one).

use std::path::Path;

use aes_gcm::aead::{Aead, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::{Digest, Sha256};

use super::AuthError;

type HmacSha256 = Hmac<Sha256>;

/// Encryption and signing keys derived from the server secret.
#[derive(Clone)]
pub struct Secrets {
    cipher: Aes256Gcm,
    session_key: [u8; 32],
}

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secrets(..)")
    }
}

fn key_from_string(s: &str) -> [u8; 32] {
    let s = s.trim();
    if s.len() == 64
        && let Ok(bytes) = hex::decode(s)
        && let Ok(arr) = <[u8; 32]>::try_from(bytes.as_slice())
    {
        return arr;
    }
    Sha256::digest(s.as_bytes()).into()
}

impl Secrets {
    /// Builds the secrets from a 32-byte master key and an optional separate
    /// session secret.
    pub fn from_master(master: [u8; 32], session_secret: Option<&str>) -> Secrets {
        let session_key = match session_secret {
            Some(s) if !s.trim().is_empty() => key_from_string(s),
            // Domain-separated so the cookie key never equals the cipher key.
            _ => Sha256::new()
                .chain_update(b"sluice-session-v1")
                .chain_update(master)
                .finalize()
                .into(),
        };
        Secrets {
            cipher: Aes256Gcm::new((&master).into()),
            session_key,
        }
    }

    /// Loads the key from the variable or the key file (creating it).
    pub fn load(
        secret_key: Option<&str>,
        session_secret: Option<&str>,
        data_dir: &Path,
    ) -> Result<Secrets, AuthError> {
        let master = match secret_key {
            Some(s) if !s.trim().is_empty() => key_from_string(s),
            _ => load_or_create_key_file(&data_dir.join("secret.key"))?,
        };
        Ok(Secrets::from_master(master, session_secret))
    }

    /// Encrypts a secret: base64 of a fresh 96-bit nonce followed by the
    /// ciphertext and tag.
    pub fn encrypt(&self, plain: &str) -> String {
        let mut nonce = [0u8; 12];
        rand::rng().fill_bytes(&mut nonce);
        // AES-GCM encryption of an in-memory buffer cannot fail for inputs
        // shorter than 64 GiB; an empty string is the safe fallback.
        let ct = self
            .cipher
            .encrypt(&Nonce::from(nonce), plain.as_bytes())
            .unwrap_or_default();
        let mut out = Vec::with_capacity(12 + ct.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ct);
        B64.encode(out)
    }

    /// Decrypts what [`Secrets::encrypt`] produced.
    pub fn decrypt(&self, stored: &str) -> Result<String, AuthError> {
        let raw = B64.decode(stored).map_err(|_| AuthError::Decrypt)?;
        if raw.len() < 12 + 16 {
            return Err(AuthError::Decrypt);
        }
        let (nonce, ct) = raw.split_at(12);
        let nonce = <[u8; 12]>::try_from(nonce).map_err(|_| AuthError::Decrypt)?;
        let plain = self
            .cipher
            .decrypt(&Nonce::from(nonce), ct)
            .map_err(|_| AuthError::Decrypt)?;
        String::from_utf8(plain).map_err(|_| AuthError::Decrypt)
    }

    /// HMAC-SHA256 of `data` under the session key, hex encoded.
    pub fn sign(&self, data: &[u8]) -> String {
        let mut mac = self.mac();
        mac.update(data);
        hex::encode(mac.finalize().into_bytes())
    }

    /// Checks a signature from [`Secrets::sign`] in constant time.
    pub fn verify(&self, data: &[u8], sig_hex: &str) -> bool {
        let Ok(sig) = hex::decode(sig_hex) else {
            return false;
        };
        let mut mac = self.mac();
        mac.update(data);
        mac.verify_slice(&sig).is_ok()
    }

    fn mac(&self) -> HmacSha256 {
        // HMAC accepts keys of any length, so this cannot fail.
        <HmacSha256 as Mac>::new_from_slice(&self.session_key)
            .unwrap_or_else(|_| <HmacSha256 as Mac>::new(&Default::default()))
    }
}

fn load_or_create_key_file(path: &Path) -> Result<[u8; 32], AuthError> {
    match std::fs::read_to_string(path) {
        Ok(s) => {
            let bytes = hex::decode(s.trim())
                .map_err(|_| AuthError::SecretKey(format!("{} is not hex", path.display())))?;
            <[u8; 32]>::try_from(bytes.as_slice())
                .map_err(|_| AuthError::SecretKey(format!("{} must hold 32 bytes", path.display())))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)
                    .map_err(|e| AuthError::SecretKey(format!("{}: {e}", dir.display())))?;
            }
            let mut key = [0u8; 32];
            rand::rng().fill_bytes(&mut key);
            write_private(path, &hex::encode(key))
                .map_err(|e| AuthError::SecretKey(format!("{}: {e}", path.display())))?;
            tracing::info!(path = %path.display(), "created a new secret key file");
            Ok(key)
        }
        Err(e) => Err(AuthError::SecretKey(format!("{}: {e}", path.display()))),
    }
}

/// Creates a file readable only by its owner (mode 600 on Unix).
fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path)?;
    f.write_all(contents.as_bytes())?;
    f.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encrypt_roundtrip_and_tamper_detection() {
        let s = Secrets::from_master([7u8; 32], None);
        let c1 = s.encrypt("hello");
        let c2 = s.encrypt("hello");
        assert_ne!(c1, c2, "fresh nonce each time");
        assert_eq!(s.decrypt(&c1).unwrap(), "hello");
        let other = Secrets::from_master([8u8; 32], None);
        assert!(other.decrypt(&c1).is_err());
        assert!(s.decrypt("AAAA").is_err());
    }

    #[test]
    fn signatures_verify_only_unchanged() {
        let s = Secrets::from_master([1u8; 32], Some("session"));
        let sig = s.sign(b"data");
        assert!(s.verify(b"data", &sig));
        assert!(!s.verify(b"datb", &sig));
        assert!(!s.verify(b"data", "zz"));
    }

    #[test]
    fn key_file_is_created_private_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let a = Secrets::load(None, None, dir.path()).unwrap();
        let c = a.encrypt("x");
        let b = Secrets::load(None, None, dir.path()).unwrap();
        assert_eq!(b.decrypt(&c).unwrap(), "x");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join("secret.key"))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }
}
