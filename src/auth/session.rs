//! Browser sessions: a signed cookie naming the user, the user's auth version
//! and an expiry. Stateless, so any replica accepts it; bumping the user's
//! `auth_version` (password change, disable, logout-everywhere) revokes every
//! cookie issued before.

use super::Secrets;

/// Name of the session cookie (as new-api).
pub const COOKIE_NAME: &str = "session";
/// Session lifetime in seconds (30 days).
pub const LIFETIME_SECS: i64 = 30 * 24 * 3600;

/// What a valid session cookie says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Session {
    pub user_id: i64,
    pub auth_version: i64,
    pub expires_at: i64,
}

/// Encodes and signs a session.
pub fn encode(secrets: &Secrets, s: &Session) -> String {
    let payload = format!("{}.{}.{}", s.user_id, s.auth_version, s.expires_at);
    let sig = secrets.sign(payload.as_bytes());
    format!("{payload}.{sig}")
}

/// Verifies a cookie value; `None` when forged, malformed or expired.
pub fn decode(secrets: &Secrets, value: &str, now: i64) -> Option<Session> {
    let (payload, sig) = value.rsplit_once('.')?;
    if !secrets.verify(payload.as_bytes(), sig) {
        return None;
    }
    let mut parts = payload.split('.');
    let user_id = parts.next()?.parse().ok()?;
    let auth_version = parts.next()?.parse().ok()?;
    let expires_at = parts.next()?.parse().ok()?;
    if parts.next().is_some() || expires_at <= now {
        return None;
    }
    Some(Session {
        user_id,
        auth_version,
        expires_at,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_forgery_and_expiry() {
        let secrets = Secrets::from_master([3u8; 32], None);
        let s = Session {
            user_id: 5,
            auth_version: 2,
            expires_at: 1000,
        };
        let v = encode(&secrets, &s);
        assert_eq!(decode(&secrets, &v, 999), Some(s));
        assert_eq!(decode(&secrets, &v, 1000), None);
        let forged = v.replacen("5.", "1.", 1);
        assert_eq!(decode(&secrets, &forged, 0), None);
        assert_eq!(decode(&secrets, "garbage", 0), None);
    }
}
