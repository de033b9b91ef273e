//! `/api/log/…` and `/api/data/…`: the ledger as users and admins read it
//! (SPEC §8). For any filter, the rows' quota sum equals the stat's `quota`:
//! both run the same [`LogFilter`].

use axum::Router;
use axum::extract::State;
use axum::routing::get;
use serde::Serialize;

use super::{Admin, ApiError, ApiResult, PageQuery, Principal, ok, page};
use crate::state::SharedState;
use crate::store::{LogFilter, LogRow, log_type, now};

/// Routes of this resource.
pub fn router() -> Router<SharedState> {
    Router::new()
        .route("/api/log/", get(all).delete(purge))
        .route("/api/log", get(all).delete(purge))
        .route("/api/log/self", get(own))
        .route("/api/log/self/", get(own))
        .route("/api/log/stat", get(all_stat))
        .route("/api/log/self/stat", get(own_stat))
        .route("/api/data/self", get(own_data))
        .route("/api/data/", get(all_data))
        .route("/api/data", get(all_data))
}

/// A log row as the API shows it (new-api names the channel id `channel`).
#[derive(Debug, Serialize)]
pub struct LogView {
    pub id: i64,
    pub created_at: i64,
    #[serde(rename = "type")]
    pub log_type: i64,
    pub content: String,
    pub user_id: i64,
    pub username: String,
    pub token_id: i64,
    pub token_name: String,
    pub model_name: String,
    pub channel: i64,
    pub channel_id: i64,
    pub prompt_tokens: i64,
    pub completion_tokens: i64,
    pub quota: i64,
    pub use_time: i64,
    pub is_stream: bool,
    pub ip: String,
    pub group: String,
    pub request_id: String,
    /// JSON text, as new-api sends it.
    pub other: String,
}

impl From<LogRow> for LogView {
    fn from(r: LogRow) -> Self {
        let l = r.log;
        LogView {
            id: r.id,
            created_at: l.created_at,
            log_type: l.log_type,
            content: l.content,
            user_id: l.user_id,
            username: l.username,
            token_id: l.token_id,
            token_name: l.token_name,
            model_name: l.model_name,
            channel: l.channel_id,
            channel_id: l.channel_id,
            prompt_tokens: l.prompt_tokens,
            completion_tokens: l.completion_tokens,
            quota: l.quota,
            use_time: l.use_time,
            is_stream: l.is_stream,
            ip: l.ip,
            group: l.group,
            request_id: l.request_id,
            other: l.other,
        }
    }
}

/// Filters from the query string (SPEC §8: both views filter by `type`,
/// `start_timestamp`/`end_timestamp`, `model_name`, `token_name`,
/// `username`, `channel`, `group` and `request_id`). `admin` also reads
/// `user_id`; the self view pins `user_id` to the caller, so its other
/// filters only ever narrow the caller's own rows.
fn filter(q: &PageQuery, admin: bool) -> LogFilter {
    let s = |k: &str| q.param(k).map(String::from);
    LogFilter {
        log_type: q.int("type").filter(|t| *t > 0),
        start: q.int("start_timestamp").filter(|t| *t > 0),
        end: q.int("end_timestamp").filter(|t| *t > 0),
        model_name: s("model_name"),
        token_name: s("token_name"),
        group: s("group"),
        request_id: s("request_id"),
        username: s("username"),
        channel_id: q.int("channel").or(q.int("channel_id")).filter(|c| *c > 0),
        user_id: if admin {
            q.int("user_id").filter(|u| *u > 0)
        } else {
            None
        },
        token_id: None,
    }
}

async fn list(state: &SharedState, f: LogFilter, q: &PageQuery) -> ApiResult {
    let (rows, total) = state.store.list_logs(&f, q.offset(), q.page_size).await?;
    page(rows.into_iter().map(LogView::from).collect(), total, q)
}

async fn all(State(state): State<SharedState>, _a: Admin, q: PageQuery) -> ApiResult {
    list(&state, filter(&q, true), &q).await
}

async fn own(State(state): State<SharedState>, p: Principal, q: PageQuery) -> ApiResult {
    let mut f = filter(&q, false);
    f.user_id = Some(p.user.id);
    list(&state, f, &q).await
}

async fn all_stat(State(state): State<SharedState>, _a: Admin, q: PageQuery) -> ApiResult {
    ok(state.store.log_stat(&filter(&q, true), now()).await?)
}

async fn own_stat(State(state): State<SharedState>, p: Principal, q: PageQuery) -> ApiResult {
    let mut f = filter(&q, false);
    f.user_id = Some(p.user.id);
    ok(state.store.log_stat(&f, now()).await?)
}

/// Longest span `/api/data/self` answers for (as new-api: one month).
pub const MAX_DATA_SPAN: i64 = 31 * 86_400;

fn data_filter(q: &PageQuery) -> ApiResult<LogFilter> {
    let end = q
        .int("end_timestamp")
        .filter(|t| *t > 0)
        .unwrap_or_else(now);
    let start = q
        .int("start_timestamp")
        .filter(|t| *t > 0)
        .unwrap_or(end - 7 * 86_400);
    if end < start {
        return Err(ApiError::refused(
            "end_timestamp must not be before start_timestamp",
        ));
    }
    if end - start > MAX_DATA_SPAN {
        return Err(ApiError::refused("the time span must not exceed one month"));
    }
    Ok(LogFilter {
        log_type: Some(log_type::CONSUME),
        start: Some(start),
        end: Some(end),
        ..Default::default()
    })
}

async fn own_data(State(state): State<SharedState>, p: Principal, q: PageQuery) -> ApiResult {
    let mut f = data_filter(&q)?;
    f.user_id = Some(p.user.id);
    ok(state.store.usage_buckets(&f).await?)
}

async fn all_data(State(state): State<SharedState>, _a: Admin, q: PageQuery) -> ApiResult {
    let mut f = data_filter(&q)?;
    f.username = q.param("username").map(String::from);
    ok(state.store.usage_buckets(&f).await?)
}

/// `DELETE /api/log/?target_timestamp=T`: removes rows older than T.
async fn purge(State(state): State<SharedState>, _a: Admin, q: PageQuery) -> ApiResult {
    let Some(t) = q.int("target_timestamp").filter(|t| *t > 0) else {
        return Err(ApiError::refused("target_timestamp is required"));
    };
    ok(state.store.purge_logs(t).await?)
}
