//! Credentials: API keys (`sk-…`), management access tokens, passwords and
//! session cookies, and the secrets that protect them at rest.

pub mod keys;
pub mod limits;
pub mod password;
pub mod secrets;
pub mod session;

pub use secrets::Secrets;

/// Roles (SPEC §1).
pub mod role {
    /// A common user.
    pub const COMMON: i64 = 1;
    /// An administrator.
    pub const ADMIN: i64 = 10;
    /// The root user.
    pub const ROOT: i64 = 100;

    /// Whether `r` is one of the three roles.
    pub fn is_valid(r: i64) -> bool {
        matches!(r, COMMON | ADMIN | ROOT)
    }
}

/// Errors from credential handling.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// The secret key file or variable could not be used.
    #[error("secret key: {0}")]
    SecretKey(String),
    /// A ciphertext did not decrypt (wrong key or tampered data).
    #[error("stored secret does not decrypt with this server's key")]
    Decrypt,
    /// Hashing a password failed.
    #[error("password hashing failed")]
    Hash,
}
