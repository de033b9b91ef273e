//! The front service every request passes: it gives the request its id,
//! sends the relay's hot doors ([`HotDoor`]) straight to their handler and
//! everything else through axum's router, and puts the id on the response.
//!
//! Why not axum's router for every call: for a relayed call, matching the
//! route, the router's boxed service and future, its `OriginalUri` /
//! `MatchedPath` / body-limit extensions and tower-http's two request-id
//! layers cost ~6 % of the call's instructions (docs/performance.md, item
//! 21); here a hot call costs one boxed future and the id, and who sent it
//! reaches the handler as a [`Origin`] rather than through the request's
//! extension map (routed requests still get `ConnectInfo` and `RequestId`
//! extensions, which axum handlers read).

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, HttpBody};
use axum::extract::ConnectInfo;
use axum::http::{HeaderName, Request};
use axum::response::Response;
use tower::ServiceExt;
use tower_http::timeout::DeadlineBody;

use super::serving::App;
use super::{REQUEST_ID_HEADER, RequestIds};
use crate::relay::{HotDoor, Origin};
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
    /// Time a client has to send a request's body.
    body_deadline: Duration,
}

impl<R> Front<R> {
    pub(super) fn new(state: SharedState, router: R, body_deadline: Duration) -> Front<R> {
        Front(Arc::new(Inner {
            state,
            router,
            ids: RequestIds::new(),
            header: HeaderName::from_static(REQUEST_ID_HEADER),
            body_deadline,
        }))
    }
}

impl<R: Routes> Front<R> {
    /// Serves `req` from `peer` (see the module doc).
    fn call<B>(&self, req: Request<B>, peer: SocketAddr) -> ResponseFuture
    where
        B: HttpBody<Data = bytes::Bytes> + Send + 'static,
        B::Error: Into<axum::BoxError>,
    {
        let inner = self.0.clone();
        let mut req = req.map(|b| Body::new(DeadlineBody::new(inner.body_deadline, b)));
        // Request ids are ours (they key the ledger): a client's own is
        // dropped, not adopted.
        req.headers_mut().remove(&inner.header);
        let id = inner.ids.next();
        let door = HotDoor::of(req.method(), req.uri().path());
        Box::pin(async move {
            let mut resp = match door {
                // Who sent it and its id go to the handler directly: the
                // request's extension map and its boxes are not needed.
                Some(door) => {
                    let request_id = id
                        .as_ref()
                        .and_then(|i| i.header_value().to_str().ok())
                        .unwrap_or_default()
                        .to_string();
                    let origin = Origin {
                        peer: peer.ip(),
                        request_id,
                    };
                    door.serve(inner.state.clone(), req, origin).await
                }
                // Routed handlers read them from the extensions.
                None => {
                    req.extensions_mut().insert(ConnectInfo(peer));
                    if let Some(id) = &id {
                        req.extensions_mut().insert(id.clone());
                    }
                    match inner.router.clone().oneshot(req).await {
                        Ok(r) => r,
                        Err(never) => match never {},
                    }
                }
            };
            if let Some(id) = id {
                resp.headers_mut()
                    .insert(inner.header.clone(), id.into_header_value());
            }
            Ok(resp)
        })
    }
}

/// What the front sends every request that is not for a hot door to:
/// axum's router.
pub(super) trait Routes:
    tower::Service<Request<Body>, Response = Response, Error = Infallible, Future: Send>
    + Clone
    + Send
    + Sync
    + 'static
{
}

impl<T> Routes for T where
    T: tower::Service<Request<Body>, Response = Response, Error = Infallible, Future: Send>
        + Clone
        + Send
        + Sync
        + 'static
{
}

/// What the front's answer to one request is.
type ResponseFuture = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

impl<R: Routes> App for Front<R> {
    type Future = ResponseFuture;

    fn serve(&self, req: Request<hyper::body::Incoming>, peer: SocketAddr) -> ResponseFuture {
        self.call(req, peer)
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

    fn request(method: &str, path: &str, headers: &[(&str, &str)]) -> Request<Body> {
        let mut req = Request::builder().method(method).uri(path);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        req.body(Body::from("{}")).unwrap()
    }

    async fn read(resp: Response) -> (StatusCode, Option<String>, serde_json::Value) {
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

    const PEER: &str = "127.0.0.1:40000";

    async fn call<R: Routes>(
        front: &Front<R>,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> (StatusCode, Option<String>, serde_json::Value) {
        let resp = front
            .call(request(method, path, headers), PEER.parse().unwrap())
            .await
            .unwrap();
        read(resp).await
    }

    async fn route(
        router: Router,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> (StatusCode, Option<String>, serde_json::Value) {
        let mut req = request(method, path, headers);
        req.extensions_mut()
            .insert(ConnectInfo::<SocketAddr>(PEER.parse().unwrap()));
        read(router.oneshot(req).await.unwrap()).await
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
        let front = Front::new(state.clone(), router(), Duration::from_secs(5));
        let bad_key = [
            ("authorization", "Bearer sk-nosuchkey"),
            ("x-request-id", "forged"),
        ];
        for (door, path) in HotDoor::ALL {
            assert_eq!(HotDoor::of(&axum::http::Method::POST, path), Some(door));
            assert_eq!(HotDoor::of(&axum::http::Method::GET, path), None);
            let (s_front, id, b_front) = call(&front, "POST", path, &bad_key).await;
            let (s_router, _, b_router) = route(router(), "POST", path, &bad_key).await;
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
            let (s, id, _) = call(&front, "GET", path, &[]).await;
            assert_eq!(s, StatusCode::METHOD_NOT_ALLOWED, "{path}");
            assert!(id.is_some(), "{path}");
        }
        // The Gemini door: a path parameter, percent-decoded as axum's
        // `Path` does; whatever the front does not take, the router answers.
        let post = axum::http::Method::POST;
        for (path, status) in [
            (
                "/v1beta/models/gemini-pro:generateContent",
                StatusCode::UNAUTHORIZED,
            ),
            (
                "/v1/models/gemini-pro:generateContent",
                StatusCode::UNAUTHORIZED,
            ),
            (
                "/v1beta/models/gemini-pro:streamGenerateContent?alt=sse",
                StatusCode::UNAUTHORIZED,
            ),
            (
                "/v1beta/models/gemini-pro:streamGenerateContent",
                StatusCode::UNAUTHORIZED,
            ),
            (
                "/v1beta/models/gemini%2Dpro:countTokens",
                StatusCode::UNAUTHORIZED,
            ),
            ("/v1beta/models/gemini-pro:nope", StatusCode::NOT_FOUND),
            ("/v1beta/models/no-method", StatusCode::BAD_REQUEST),
        ] {
            let bare = path.split('?').next().unwrap();
            assert_eq!(HotDoor::of(&post, bare), Some(HotDoor::Gemini), "{path}");
            let (s_front, id, b_front) = call(&front, "POST", path, &bad_key).await;
            let (s_router, _, b_router) = route(router(), "POST", path, &bad_key).await;
            assert_eq!(s_front, status, "{path}: {b_front}");
            let quoted = format!(" (request id: {})", id.unwrap());
            let b_front = b_front.to_string();
            assert!(b_front.contains(&quoted), "{path}: {b_front}");
            assert_eq!(s_router, s_front, "{path}");
            assert_eq!(b_front.replace(&quoted, ""), b_router.to_string(), "{path}");
        }
        for path in [
            "/v1beta/models/",
            "/v1beta/models/a/b:generateContent",
            "/v1beta/models/%FF:generateContent",
            "/v1beta/modelsx:generateContent",
        ] {
            assert_eq!(HotDoor::of(&post, path), None, "{path}");
            let (s_front, _, _) = call(&front, "POST", path, &bad_key).await;
            let (s_router, _, _) = route(router(), "POST", path, &bad_key).await;
            assert_eq!(s_front, s_router, "{path}");
        }
        let gemini = "/v1beta/models/gemini-pro:generateContent";
        assert_eq!(HotDoor::of(&axum::http::Method::GET, gemini), None);
        let (s, _, _) = call(&front, "GET", gemini, &[]).await;
        assert_eq!(s, StatusCode::METHOD_NOT_ALLOWED);
        // Ids differ call to call, on both branches.
        let (_, a, _) = call(&front, "POST", "/v1/chat/completions", &[]).await;
        let (_, b, _) = call(&front, "POST", "/v1/chat/completions", &[]).await;
        let (_, c, _) = call(&front, "GET", "/v1/models", &[]).await;
        assert!(a.is_some() && b.is_some() && c.is_some());
        assert!(a != b && b != c && a != c);
    }
}
