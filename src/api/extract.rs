//! Request extractors for the management API: who is calling, their IP, the
//! JSON body and the page.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};

use axum::body::Bytes;
use axum::extract::{
    ConnectInfo, FromRequest, FromRequestParts, OptionalFromRequestParts, Query, Request,
};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum_extra::extract::CookieJar;
use serde::de::DeserializeOwned;

use super::ApiError;
use crate::auth::{keys, role, session};
use crate::state::SharedState;
use crate::store::{StoreError, User, now, user_status};
use crate::util::client_ip;

/// An authenticated management caller (any role).
#[derive(Debug, Clone)]
pub struct Principal {
    pub user: User,
}

impl Principal {
    /// Whether the caller is root.
    pub fn is_root(&self) -> bool {
        self.user.role >= role::ROOT
    }
}

/// A caller with role admin or above.
#[derive(Debug, Clone)]
pub struct Admin(pub Principal);

/// The root user.
#[derive(Debug, Clone)]
pub struct Root(pub Principal);

/// The credential in `Authorization`, with or without `Bearer `.
fn bearer(parts: &Parts) -> Option<&str> {
    let v = parts
        .headers
        .get(axum::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .trim();
    let v = match v.split_once(' ') {
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("bearer") => rest.trim(),
        Some(_) => return None,
        None => v,
    };
    (!v.is_empty()).then_some(v)
}

impl FromRequestParts<SharedState> for Principal {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &SharedState) -> Result<Self, ApiError> {
        let user = if let Some(token) = bearer(parts) {
            match state
                .store
                .user_by_access_token_hash(&keys::lookup_hash(token))
                .await
            {
                Ok(u) => u,
                Err(StoreError::NotFound) => {
                    return Err(ApiError::Unauthorized("access token is invalid".into()));
                }
                Err(e) => return Err(e.into()),
            }
        } else {
            let jar = CookieJar::from_headers(&parts.headers);
            let Some(s) = jar
                .get(session::COOKIE_NAME)
                .and_then(|c| session::decode(&state.secrets, c.value(), now()))
            else {
                return Err(ApiError::Unauthorized(
                    "not logged in and no access token provided".into(),
                ));
            };
            match state.store.user_by_id(s.user_id).await {
                Ok(u) if u.auth_version == s.auth_version => u,
                Ok(_) | Err(StoreError::NotFound) => {
                    return Err(ApiError::Unauthorized(
                        "session has ended; log in again".into(),
                    ));
                }
                Err(e) => return Err(e.into()),
            }
        };
        // The header must name the credential's owner (new-api's CSRF and
        // confused-deputy guard); a mismatch is an authentication failure.
        let Some(header) = parts.headers.get("New-Api-User") else {
            return Err(ApiError::Unauthorized(
                "New-Api-User header is missing".into(),
            ));
        };
        let named: Option<i64> = header.to_str().ok().and_then(|v| v.trim().parse().ok());
        match named {
            None => {
                return Err(ApiError::Unauthorized(
                    "New-Api-User header is not a user id".into(),
                ));
            }
            Some(id) if id != user.id => {
                return Err(ApiError::Unauthorized(
                    "New-Api-User does not match the logged-in user".into(),
                ));
            }
            Some(_) => {}
        }
        if user.status != user_status::ENABLED {
            return Err(ApiError::Forbidden("user has been disabled".into()));
        }
        Ok(Principal { user })
    }
}

/// `Option<Principal>`: the caller if authenticated, `None` otherwise.
impl OptionalFromRequestParts<SharedState> for Principal {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &SharedState,
    ) -> Result<Option<Self>, ApiError> {
        Ok(
            <Principal as FromRequestParts<SharedState>>::from_request_parts(parts, state)
                .await
                .ok(),
        )
    }
}

impl FromRequestParts<SharedState> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &SharedState) -> Result<Self, ApiError> {
        let p =
            <Principal as FromRequestParts<SharedState>>::from_request_parts(parts, state).await?;
        if p.user.role < role::ADMIN {
            return Err(ApiError::Forbidden(
                "insufficient privilege: administrators only".into(),
            ));
        }
        Ok(Admin(p))
    }
}

impl FromRequestParts<SharedState> for Root {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &SharedState) -> Result<Self, ApiError> {
        let p =
            <Principal as FromRequestParts<SharedState>>::from_request_parts(parts, state).await?;
        if p.user.role < role::ROOT {
            return Err(ApiError::Forbidden(
                "insufficient privilege: root only".into(),
            ));
        }
        Ok(Root(p))
    }
}

/// The client's IP: the socket peer, or the forwarded address when the peer
/// is a trusted proxy.
#[derive(Debug, Clone, Copy)]
pub struct ClientIp(pub IpAddr);

impl FromRequestParts<SharedState> for ClientIp {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &SharedState) -> Result<Self, ApiError> {
        let peer = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0.ip())
            .unwrap_or(IpAddr::from([127, 0, 0, 1]));
        Ok(ClientIp(client_ip(
            peer,
            &parts.headers,
            &state.config.trusted_proxies,
        )))
    }
}

/// A JSON body. Malformed JSON and wrong types answer 400 naming the field;
/// an oversized body 413. Unknown fields are ignored.
pub struct JsonBody<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let bytes = Bytes::from_request(req, state).await.map_err(|e| {
            if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::TooLarge("request body is too large".into())
            } else if crate::util::is_body_timeout(&e) {
                ApiError::Timeout("the request body was not received in time".into())
            } else {
                ApiError::BadRequest(format!("could not read the request body: {e}"))
            }
        })?;
        parse_json(&bytes).map(JsonBody)
    }
}

/// Parses JSON with the path of the offending field in the error.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if path.is_empty() || path == "." {
            ApiError::BadRequest(format!("invalid JSON body: {inner}"))
        } else {
            ApiError::BadRequest(format!("invalid value for field '{path}': {inner}"))
        }
    })
}

/// Pagination as new-api reads it: `p` (1-based; 0 or less means 1) and
/// `page_size`, or its aliases `ps` and `size` (default 10, at most 100).
#[derive(Debug, Clone)]
pub struct PageQuery {
    pub page: i64,
    pub page_size: i64,
    /// Every query parameter, for handlers' own filters.
    pub params: HashMap<String, String>,
}

/// Default page size.
pub const DEFAULT_PAGE_SIZE: i64 = 10;
/// Largest page size.
pub const MAX_PAGE_SIZE: i64 = 100;

impl PageQuery {
    /// Row offset of the page.
    pub fn offset(&self) -> i64 {
        (self.page - 1).saturating_mul(self.page_size)
    }

    /// A query parameter, trimmed, if present and non-empty.
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params
            .get(name)
            .map(|s| s.trim())
            .filter(|s| !s.is_empty())
    }

    /// An integer query parameter; absent or unparsable is `None`.
    pub fn int(&self, name: &str) -> Option<i64> {
        self.param(name).and_then(|s| s.parse().ok())
    }

    fn from_params(params: HashMap<String, String>) -> PageQuery {
        let int = |k: &str| params.get(k).and_then(|v| v.trim().parse::<i64>().ok());
        let page = int("p").filter(|p| *p >= 1).unwrap_or(1).min(1_000_000_000);
        let size = ["page_size", "ps", "size"]
            .iter()
            .find_map(|k| int(k).filter(|n| *n >= 1))
            .unwrap_or(DEFAULT_PAGE_SIZE)
            .min(MAX_PAGE_SIZE);
        PageQuery {
            page,
            page_size: size,
            params,
        }
    }
}

impl<S: Send + Sync> FromRequestParts<S> for PageQuery {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let Query(params) = Query::<HashMap<String, String>>::from_request_parts(parts, state)
            .await
            .map_err(|e| ApiError::BadRequest(format!("invalid query string: {e}")))?;
        Ok(PageQuery::from_params(params))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(pairs: &[(&str, &str)]) -> PageQuery {
        PageQuery::from_params(
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }

    #[test]
    fn paging_defaults_aliases_and_bounds() {
        let d = q(&[]);
        assert_eq!((d.page, d.page_size, d.offset()), (1, 10, 0));
        assert_eq!(q(&[("p", "0")]).page, 1);
        assert_eq!(q(&[("p", "3"), ("size", "5")]).offset(), 10);
        assert_eq!(q(&[("ps", "7")]).page_size, 7);
        assert_eq!(q(&[("page_size", "500")]).page_size, 100);
        assert_eq!(q(&[("page_size", "-4")]).page_size, 10);
        assert_eq!(q(&[("page_size", "2"), ("size", "9")]).page_size, 2);
    }
}
