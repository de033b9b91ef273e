//! The front service every request passes: it gives the request its id,
//! sends the relay's hot doors ([`HotDoor`]) straight to their handler and
//! everything else through axum's router, and puts the id on the response.
//!
//! Why not axum's router for every call: for a relayed call, matching the
//! route, the router's boxed service and future, its `OriginalUri` /
//! `MatchedPath` / body-limit extensions and tower-http's two request-id
//! layers cost ~6 % of the call's instructions (docs/performance.md, item
//! 21); here a hot call costs one boxed future and the id.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::body::{Body, HttpBody};
use axum::http::{HeaderName, Request};
use axum::response::Response;
use tower::ServiceExt;

use super::{REQUEST_ID_HEADER, RequestIds};
use crate::relay::HotDoor;
use crate::state::SharedState;

/// See the module doc.
pub(super) struct Front<R>(Arc<Inner<R>>);

impl<R> Clone for Front<R> {
    fn clone(&self) -> Self {
        Front(self.0.clone())
    }
}

struct Inner<R> {
    state: SharedState,
    /// Everything that is not a hot door: axum's router, with its state.
    router: R,
    ids: RequestIds,
    header: HeaderName,
}

impl<R> Front<R> {
    pub(super) fn new(state: SharedState, router: R) -> Front<R> {
        Front(Arc::new(Inner {
            state,
            router,
            ids: RequestIds::new(),
            header: HeaderName::from_static(REQUEST_ID_HEADER),
        }))
    }
}

impl<B, R> tower::Service<Request<B>> for Front<R>
where
    B: HttpBody<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<axum::BoxError>,
    R: tower::Service<Request<Body>, Response = Response, Error = Infallible>
        + Clone
        + Send
        + Sync
        + 'static,
    R::Future: Send,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let inner = self.0.clone();
        let mut req = req.map(Body::new);
        // Request ids are ours (they key the ledger): a client's own is
        // dropped, not adopted. Handlers read the id from the extension.
        req.headers_mut().remove(&inner.header);
        let id = inner.ids.next();
        if let Some(id) = &id {
            req.extensions_mut().insert(id.clone());
        }
        let door = HotDoor::of(req.method(), req.uri().path());
        Box::pin(async move {
            let mut resp = match door {
                Some(door) => door.serve(inner.state.clone(), req).await,
                None => match inner.router.clone().oneshot(req).await {
                    Ok(r) => r,
                    Err(never) => match never {},
                },
            };
            if let Some(id) = id {
                resp.headers_mut()
                    .insert(inner.header.clone(), id.into_header_value());
            }
            Ok(resp)
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use axum::Router;
    use axum::http::StatusCode;
    use http_body_util::BodyExt;

    async fn state() -> (SharedState, crate::server::Writer, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let config = crate::config::Config {
            data_dir: dir.path().to_path_buf(),
            ..Default::default()
        };
        let (state, writer) = crate::server::build_state(config).await.unwrap();
        (state, writer, dir)
    }

    async fn call(
        svc: impl tower::Service<Request<Body>, Response = Response, Error = Infallible>,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> (StatusCode, Option<String>, serde_json::Value) {
        let mut req = Request::builder().method(method).uri(path);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let resp = svc
            .oneshot(req.body(Body::from("{}")).unwrap())
            .await
            .unwrap();
        let status = resp.status();
        let id = resp
            .headers()
            .get(REQUEST_ID_HEADER)
            .map(|v| v.to_str().unwrap().to_string());
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        (
            status,
            id,
            serde_json::from_slice(&body).unwrap_or_default(),
        )
    }

    /// A hot door answers as the router's route for the same path does (the
    /// same handler), with a fresh id of sluice's own; a client's id is not
    /// adopted; other methods on a hot path still get the router's 405.
    #[tokio::test]
    async fn hot_doors_answer_as_their_routes_do() {
        let (state, _writer, _dir) = state().await;
        let router = || {
            Router::new()
                .merge(crate::relay::router())
                .fallback(super::super::no_route)
                .method_not_allowed_fallback(super::super::wrong_method)
                .with_state(state.clone())
        };
        let front = Front::new(state.clone(), router());
        let bad_key = [
            ("authorization", "Bearer sk-nosuchkey"),
            ("x-request-id", "forged"),
        ];
        for (door, path) in HotDoor::ALL {
            assert_eq!(HotDoor::of(&axum::http::Method::POST, path), Some(door));
            assert_eq!(HotDoor::of(&axum::http::Method::GET, path), None);
            let (s_front, id, b_front) = call(front.clone(), "POST", path, &bad_key).await;
            let (s_router, _, b_router) = call(router(), "POST", path, &bad_key).await;
            assert_eq!(s_front, StatusCode::UNAUTHORIZED, "{path}: {b_front}");
            let id = id.unwrap();
            assert_ne!(id, "forged", "{path}");
            assert!(!id.is_empty());
            // The handler saw the same id (its errors quote it); without the
            // front there is none, otherwise the answers are the same.
            let quoted = format!(" (request id: {id})");
            let b_front = b_front.to_string();
            assert!(b_front.contains(&quoted), "{path}: {b_front}");
            assert_eq!(s_router, s_front, "{path}");
            assert_eq!(b_front.replace(&quoted, ""), b_router.to_string(), "{path}");
            let (s, id, _) = call(front.clone(), "GET", path, &[]).await;
            assert_eq!(s, StatusCode::METHOD_NOT_ALLOWED, "{path}");
            assert!(id.is_some(), "{path}");
        }
        // Ids differ call to call, on both branches.
        let (_, a, _) = call(front.clone(), "POST", "/v1/chat/completions", &[]).await;
        let (_, b, _) = call(front.clone(), "POST", "/v1/chat/completions", &[]).await;
        let (_, c, _) = call(front.clone(), "GET", "/v1/models", &[]).await;
        assert!(a.is_some() && b.is_some() && c.is_some());
        assert!(a != b && b != c && a != c);
    }
}
