//! `/api/user/…`: registration, login, the caller's own account, top-up by
//! redemption code, and (admin) user management (SPEC §4).
//!
//! Role rule: an actor may only act on users of a lower role; only root
//! changes administrators. [`outranks`] is that rule, in one place.

use std::collections::BTreeMap;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::HeaderValue;
use axum::http::header::SET_COOKIE;
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::token::parse_id;
use super::{
    Admin, ApiError, ApiResult, ClientIp, JsonBody, OnUnique, PageQuery, Principal, audit, ok,
    ok_empty, page,
};
use crate::auth::{keys, password, role, session};
use crate::state::SharedState;
use crate::store::{NewLog, NewUser, RedeemError, User, UserPatch, log_type, now, user_status};

/// Routes of this resource.
pub fn router() -> Router<SharedState> {
    Router::new()
        .route("/api/user/register", post(register))
        .route("/api/user/login", post(login))
        .route("/api/user/logout", get(logout).post(logout))
        .route("/api/user/self", get(get_self).put(update_self))
        .route("/api/user/token", get(new_access_token))
        .route("/api/user/models", get(models))
        .route("/api/user/self/groups", get(self_groups))
        .route("/api/user/groups", get(public_groups))
        .route("/api/user/topup", post(topup))
        .route("/api/user/", get(list).post(create).put(update))
        .route("/api/user", get(list).post(create).put(update))
        .route("/api/user/search", get(search))
        .route("/api/user/manage", post(manage))
        .route("/api/user/{id}", get(get_one).delete(delete_one))
}

/// Longest username, in characters (as new-api).
pub const MAX_USERNAME_CHARS: usize = 20;
/// Password length bounds, in characters.
pub const PASSWORD_CHARS: std::ops::RangeInclusive<usize> = 8..=128;
/// Longest display name, in characters.
pub const MAX_DISPLAY_NAME_CHARS: usize = 20;

/// A user as the API shows it. Never carries the password hash or the access
/// token.
#[derive(Debug, Serialize)]
pub struct UserView {
    pub id: i64,
    pub username: String,
    pub display_name: String,
    pub role: i64,
    pub status: i64,
    pub email: String,
    pub group: String,
    pub quota: i64,
    pub used_quota: i64,
    pub request_count: i64,
    pub created_time: i64,
}

impl From<&User> for UserView {
    fn from(u: &User) -> Self {
        UserView {
            id: u.id,
            username: u.username.clone(),
            display_name: u.display_name.clone(),
            role: u.role,
            status: u.status,
            email: u.email.clone(),
            group: u.group.clone(),
            quota: u.quota,
            used_quota: u.used_quota,
            request_count: u.request_count,
            created_time: u.created_time,
        }
    }
}

/// Whether `actor` may act on `target`: a strictly higher role.
pub fn outranks(actor: &User, target: &User) -> bool {
    actor.role > target.role
}

fn check_username(s: &str) -> ApiResult<String> {
    let s = s.trim();
    let n = s.chars().count();
    if n == 0 || n > MAX_USERNAME_CHARS {
        return Err(ApiError::refused(format!(
            "username must be 1 to {MAX_USERNAME_CHARS} characters"
        )));
    }
    if s.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(ApiError::refused("username must not contain spaces"));
    }
    Ok(s.to_string())
}

fn check_password(s: &str) -> ApiResult<()> {
    let n = s.chars().count();
    if !PASSWORD_CHARS.contains(&n) {
        return Err(ApiError::refused(format!(
            "password must be {} to {} characters",
            PASSWORD_CHARS.start(),
            PASSWORD_CHARS.end()
        )));
    }
    Ok(())
}

fn check_display_name(s: &str) -> ApiResult<String> {
    let s = s.trim();
    if s.chars().count() > MAX_DISPLAY_NAME_CHARS {
        return Err(ApiError::refused(format!(
            "display_name must be at most {MAX_DISPLAY_NAME_CHARS} characters"
        )));
    }
    Ok(s.to_string())
}

async fn hash_password(p: &str) -> ApiResult<String> {
    password::hash(p)
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))
}

#[derive(Deserialize)]
struct Credentials {
    username: Option<String>,
    password: Option<String>,
    display_name: Option<String>,
}

async fn register(
    State(state): State<SharedState>,
    ClientIp(ip): ClientIp,
    JsonBody(b): JsonBody<Credentials>,
) -> ApiResult {
    super::throttle(&state, "login", &ip.to_string(), super::LOGINS_PER_MINUTE).await?;
    let opts = state.options();
    if !opts.register_enabled {
        return Err(ApiError::refused(
            "new user registration has been disabled by the administrator",
        ));
    }
    if !opts.password_register_enabled {
        return Err(ApiError::refused(
            "password registration has been disabled by the administrator",
        ));
    }
    let username = check_username(b.username.as_deref().unwrap_or(""))?;
    let pw = b.password.unwrap_or_default();
    check_password(&pw)?;
    let display = match b.display_name {
        Some(d) if !d.trim().is_empty() => check_display_name(&d)?,
        _ => username.clone(),
    };
    let hash = hash_password(&pw).await?;
    let quota = opts.quota_for_new_user;
    drop(opts);
    let id = state
        .store
        .create_user(&NewUser {
            username: username.clone(),
            password_hash: hash,
            display_name: display,
            role: role::COMMON,
            group: "default".into(),
            quota,
            access_token_hash: None,
        })
        .await
        .on_unique("username is already taken")?;
    if quota > 0 {
        state
            .store
            .insert_log(&NewLog {
                created_at: now(),
                log_type: log_type::SYSTEM,
                content: format!("new user registration grant: {quota} quota"),
                user_id: id,
                username,
                ip: ip.to_string(),
                other: "{}".into(),
                ..Default::default()
            })
            .await?;
    }
    ok_empty()
}

fn session_cookie(value: &str, max_age: i64) -> ApiResult<HeaderValue> {
    // HttpOnly keeps scripts away from it; SameSite=Strict keeps other sites
    // from riding it (with New-Api-User this is the CSRF defence).
    HeaderValue::from_str(&format!(
        "{}={value}; Path=/; Max-Age={max_age}; HttpOnly; SameSite=Strict",
        session::COOKIE_NAME
    ))
    .map_err(|e| ApiError::Internal(e.to_string()))
}

async fn login(
    State(state): State<SharedState>,
    ClientIp(ip): ClientIp,
    JsonBody(b): JsonBody<Credentials>,
) -> ApiResult {
    super::throttle(&state, "login", &ip.to_string(), super::LOGINS_PER_MINUTE).await?;
    if !state.options().password_login_enabled {
        return Err(ApiError::refused(
            "password login has been disabled by the administrator",
        ));
    }
    let username = b.username.unwrap_or_default();
    let pw = b.password.unwrap_or_default();
    if username.trim().is_empty() || pw.is_empty() {
        return Err(ApiError::refused("username and password are required"));
    }
    let bad = || ApiError::refused("username or password is incorrect, or the user is disabled");
    let user = match state.store.user_by_username(username.trim()).await {
        Ok(u) => u,
        Err(crate::store::StoreError::NotFound) => {
            // Spend the same time as a real check so timing does not reveal
            // which usernames exist.
            let _ = password::verify(&pw, DUMMY_HASH).await;
            return Err(bad());
        }
        Err(e) => return Err(e.into()),
    };
    if !password::verify(&pw, &user.password_hash).await || user.status != user_status::ENABLED {
        return Err(bad());
    }
    let s = session::Session {
        user_id: user.id,
        auth_version: user.auth_version,
        expires_at: now() + session::LIFETIME_SECS,
    };
    let cookie = session_cookie(&session::encode(&state.secrets, &s), session::LIFETIME_SECS)?;
    let mut resp = ok(json!({
        "id": user.id,
        "username": user.username,
        "display_name": user.display_name,
        "role": user.role,
        "status": user.status,
        "group": user.group,
    }))?;
    resp.headers_mut().insert(SET_COOKIE, cookie);
    Ok(resp)
}

/// A valid argon2 hash of a random string, verified against when the username
/// does not exist.
const DUMMY_HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$c2x1aWNlLWR1bW15LXNhbHQ$0UuEp6SQFnLr5K4dHbNBspA2gM1eXVr0s8Qy1Gk3QQk";

/// Logging out clears the cookie and ends every session of the user:
/// sessions are stateless signed cookies, so the auth version is what revokes.
async fn logout(
    State(state): State<SharedState>,
    headers: axum::http::HeaderMap,
    p: Option<Principal>,
) -> ApiResult {
    if let Some(p) = p {
        state.store.bump_auth_version(p.user.id).await?;
    } else if let Some(s) = axum_extra::extract::CookieJar::from_headers(&headers)
        .get(session::COOKIE_NAME)
        .and_then(|c| session::decode(&state.secrets, c.value(), now()))
    {
        // A browser logging out without New-Api-User (new-api's logout needs
        // none) still ends its session; a cookie of an older auth version is
        // already dead, so only a current one bumps the version.
        if let Ok(u) = state.store.user_by_id(s.user_id).await
            && u.auth_version == s.auth_version
        {
            state.store.bump_auth_version(u.id).await?;
        }
    }
    let mut resp = ok_empty()?;
    resp.headers_mut()
        .insert(SET_COOKIE, session_cookie("", 0)?);
    Ok(resp)
}

async fn get_self(p: Principal) -> ApiResult {
    ok(UserView::from(&p.user))
}

#[derive(Deserialize)]
struct SelfUpdate {
    username: Option<String>,
    display_name: Option<String>,
    password: Option<String>,
    original_password: Option<String>,
}

async fn update_self(
    State(state): State<SharedState>,
    p: Principal,
    JsonBody(b): JsonBody<SelfUpdate>,
) -> ApiResult {
    let mut patch = UserPatch::default();
    if let Some(u) = b.username.as_deref().filter(|u| !u.trim().is_empty()) {
        patch.username = Some(check_username(u)?);
    }
    if let Some(d) = &b.display_name {
        patch.display_name = Some(check_display_name(d)?);
    }
    if let Some(pw) = b.password.as_deref().filter(|p| !p.is_empty()) {
        check_password(pw)?;
        let orig = b.original_password.unwrap_or_default();
        if !password::verify(&orig, &p.user.password_hash).await {
            return Err(ApiError::refused("original_password is incorrect"));
        }
        patch.password_hash = Some(hash_password(pw).await?);
    }
    state
        .store
        .update_user(p.user.id, &patch)
        .await
        .on_unique("username is already taken")?;
    ok_empty()
}

async fn new_access_token(State(state): State<SharedState>, p: Principal) -> ApiResult {
    let token = keys::new_access_token();
    state
        .store
        .set_access_token_hash(p.user.id, &keys::lookup_hash(&token))
        .await?;
    let mut resp = ok(token)?;
    resp.headers_mut().insert(
        axum::http::header::CACHE_CONTROL,
        HeaderValue::from_static("no-store"),
    );
    Ok(resp)
}

/// Models the caller's groups can reach through enabled channels.
async fn models(State(state): State<SharedState>, p: Principal) -> ApiResult {
    let groups = usable_groups(&state, &p.user);
    ok(crate::api::misc::models_for_groups(&state, groups.keys()))
}

#[derive(Serialize)]
struct GroupInfo {
    ratio: f64,
    desc: String,
}

/// The groups a user may put on a token: their own plus the user-selectable
/// ones, each with its ratio.
pub fn usable_groups(state: &SharedState, u: &User) -> BTreeMap<String, String> {
    let opts = state.options();
    let mut groups = opts.user_usable_groups.clone();
    groups
        .entry(u.group.clone())
        .or_insert_with(|| "user group".to_string());
    groups
}

fn with_ratios(
    state: &SharedState,
    groups: BTreeMap<String, String>,
) -> BTreeMap<String, GroupInfo> {
    let opts = state.options();
    groups
        .into_iter()
        .map(|(g, desc)| {
            let ratio = opts.group_ratio_of(&g);
            (g, GroupInfo { ratio, desc })
        })
        .collect()
}

async fn self_groups(State(state): State<SharedState>, p: Principal) -> ApiResult {
    let groups = usable_groups(&state, &p.user);
    ok(with_ratios(&state, groups))
}

async fn public_groups(State(state): State<SharedState>) -> ApiResult {
    let groups = state.options().user_usable_groups.clone();
    ok(with_ratios(&state, groups))
}

#[derive(Deserialize)]
struct Topup {
    key: Option<String>,
}

async fn topup(
    State(state): State<SharedState>,
    p: Principal,
    ClientIp(ip): ClientIp,
    JsonBody(b): JsonBody<Topup>,
) -> ApiResult {
    let code = b.key.unwrap_or_default().trim().to_string();
    if code.is_empty() {
        return Err(ApiError::refused("key: a redemption code is required"));
    }
    let per_unit = state.options().quota_per_unit;
    let user = p.user.clone();
    let res = state
        .store
        .redeem(&code, user.id, |r| NewLog {
            created_at: now(),
            log_type: log_type::TOPUP,
            content: format!(
                "redeemed code id {}: +{} quota (${:.6})",
                r.id,
                r.quota,
                r.quota as f64 / per_unit
            ),
            user_id: user.id,
            username: user.username.clone(),
            ip: ip.to_string(),
            other: json!({"redemption_id": r.id, "topup_quota": r.quota}).to_string(),
            ..Default::default()
        })
        .await;
    match res {
        Ok(q) => {
            crate::api::misc::user_changed(&state, user.id).await;
            ok(q)
        }
        Err(RedeemError::Store(e)) => Err(e.into()),
        Err(e) => Err(ApiError::refused(e.to_string())),
    }
}

// ---- admin ----

/// Root sees every user; an administrator only those they may manage (a
/// lower role), so equal and higher roles stay as invisible to them as a
/// missing id.
fn visible_below(a: &Principal) -> Option<i64> {
    (!a.is_root()).then_some(a.user.role)
}

async fn list(State(state): State<SharedState>, Admin(a): Admin, q: PageQuery) -> ApiResult {
    let (users, total) = state
        .store
        .list_users(None, None, visible_below(&a), q.offset(), q.page_size)
        .await?;
    page(users.iter().map(UserView::from).collect(), total, &q)
}

async fn search(State(state): State<SharedState>, Admin(a): Admin, q: PageQuery) -> ApiResult {
    let (users, total) = state
        .store
        .list_users(
            q.param("keyword"),
            q.param("group"),
            visible_below(&a),
            q.offset(),
            q.page_size,
        )
        .await?;
    page(users.iter().map(UserView::from).collect(), total, &q)
}

/// Loads a user the actor may act on: one of a strictly lower role. A user
/// of an equal or higher role answers exactly as a missing id does (SPEC §2),
/// except the actor's own account, which is refused by name.
async fn target(state: &SharedState, actor: &User, id: i64) -> ApiResult<User> {
    if id == actor.id {
        return Err(ApiError::refused(
            "id: you cannot manage your own account here; use /api/user/self",
        ));
    }
    let u = state.store.user_by_id(id).await?;
    if !outranks(actor, &u) {
        return Err(crate::store::StoreError::NotFound.into());
    }
    Ok(u)
}

async fn get_one(
    State(state): State<SharedState>,
    Admin(a): Admin,
    Path(id): Path<String>,
) -> ApiResult {
    let id = parse_id(&id)?;
    let u = if a.is_root() || id == a.user.id {
        state.store.user_by_id(id).await?
    } else {
        target(&state, &a.user, id).await?
    };
    ok(UserView::from(&u))
}

#[derive(Deserialize)]
struct CreateUser {
    username: Option<String>,
    password: Option<String>,
    display_name: Option<String>,
    role: Option<i64>,
    group: Option<String>,
    quota: Option<i64>,
}

async fn create(
    State(state): State<SharedState>,
    Admin(a): Admin,
    ClientIp(ip): ClientIp,
    JsonBody(b): JsonBody<CreateUser>,
) -> ApiResult {
    let username = check_username(b.username.as_deref().unwrap_or(""))?;
    let pw = b.password.unwrap_or_default();
    check_password(&pw)?;
    let role = b.role.unwrap_or(role::COMMON);
    if !role::is_valid(role) {
        return Err(ApiError::refused("role must be 1, 10 or 100"));
    }
    if role >= a.user.role {
        return Err(ApiError::refused(
            "role: cannot create a user with a role equal to or higher than your own",
        ));
    }
    let display = match b.display_name {
        Some(d) if !d.trim().is_empty() => check_display_name(&d)?,
        _ => username.clone(),
    };
    let group = check_group(b.group.as_deref())?.unwrap_or_else(|| "default".into());
    let quota = b.quota.unwrap_or(0);
    if quota < 0 {
        return Err(ApiError::refused("quota must not be negative"));
    }
    let hash = hash_password(&pw).await?;
    let id = state
        .store
        .create_user(&NewUser {
            username: username.clone(),
            password_hash: hash,
            display_name: display,
            role,
            group,
            quota,
            access_token_hash: None,
        })
        .await
        .on_unique("username is already taken")?;
    audit(
        &state,
        &a,
        id,
        "user.create",
        format!("{} created user {username} (id {id})", a.user.username),
        json!({"role": role, "quota": quota}),
        &ip.to_string(),
    )
    .await?;
    ok(json!({"id": id}))
}

fn check_group(g: Option<&str>) -> ApiResult<Option<String>> {
    match g.map(str::trim) {
        None | Some("") => Ok(None),
        Some(g) if g.chars().count() > 64 || g.contains(',') => Err(ApiError::refused(
            "group must be at most 64 characters and contain no commas",
        )),
        Some(g) => Ok(Some(g.to_string())),
    }
}

#[derive(Deserialize)]
struct UpdateUser {
    id: Option<i64>,
    username: Option<String>,
    display_name: Option<String>,
    password: Option<String>,
    group: Option<String>,
    quota: Option<i64>,
    email: Option<String>,
}

async fn update(
    State(state): State<SharedState>,
    Admin(a): Admin,
    ClientIp(ip): ClientIp,
    JsonBody(b): JsonBody<UpdateUser>,
) -> ApiResult {
    let Some(id) = b.id.filter(|i| *i > 0) else {
        return Err(ApiError::refused("id is required"));
    };
    // Root may edit anyone (itself included); admins only lower roles.
    let u = if a.is_root() {
        state.store.user_by_id(id).await?
    } else {
        target(&state, &a.user, id).await?
    };
    let mut patch = UserPatch::default();
    if let Some(n) = b.username.as_deref().filter(|n| !n.trim().is_empty()) {
        patch.username = Some(check_username(n)?);
    }
    if let Some(d) = &b.display_name {
        patch.display_name = Some(check_display_name(d)?);
    }
    if let Some(pw) = b.password.as_deref().filter(|p| !p.is_empty()) {
        check_password(pw)?;
        patch.password_hash = Some(hash_password(pw).await?);
    }
    patch.group = check_group(b.group.as_deref())?;
    if let Some(q) = b.quota {
        if q < 0 {
            return Err(ApiError::refused("quota must not be negative"));
        }
        patch.quota = Some(q);
    }
    if let Some(e) = &b.email {
        if e.chars().count() > 50 {
            return Err(ApiError::refused("email must be at most 50 characters"));
        }
        patch.email = Some(e.trim().to_string());
    }
    state
        .store
        .update_user(id, &patch)
        .await
        .on_unique("username is already taken")?;
    crate::api::misc::user_changed(&state, id).await;
    if u.id != a.user.id {
        let mut detail = json!({});
        if let Some(q) = patch.quota.filter(|q| *q != u.quota) {
            detail = json!({"old_quota": u.quota, "new_quota": q});
        }
        audit(
            &state,
            &a,
            id,
            "user.update",
            format!("{} updated user {} (id {id})", a.user.username, u.username),
            detail,
            &ip.to_string(),
        )
        .await?;
    }
    let updated = state.store.user_by_id(id).await?;
    ok(UserView::from(&updated))
}

async fn delete_one(
    State(state): State<SharedState>,
    Admin(a): Admin,
    ClientIp(ip): ClientIp,
    Path(id): Path<String>,
) -> ApiResult {
    let id = parse_id(&id)?;
    let u = target(&state, &a.user, id).await?;
    state.store.delete_user(id).await?;
    crate::api::misc::user_changed(&state, id).await;
    audit(
        &state,
        &a,
        id,
        "user.delete",
        format!("{} deleted user {} (id {id})", a.user.username, u.username),
        json!({}),
        &ip.to_string(),
    )
    .await?;
    ok_empty()
}

#[derive(Deserialize)]
struct Manage {
    id: Option<i64>,
    action: Option<String>,
}

async fn manage(
    State(state): State<SharedState>,
    Admin(a): Admin,
    ClientIp(ip): ClientIp,
    JsonBody(b): JsonBody<Manage>,
) -> ApiResult {
    let Some(id) = b.id.filter(|i| *i > 0) else {
        return Err(ApiError::refused("id is required"));
    };
    let action = b.action.unwrap_or_default();
    let u = target(&state, &a.user, id).await?;
    let mut patch = UserPatch::default();
    match action.as_str() {
        "disable" => patch.status = Some(user_status::DISABLED),
        "enable" => patch.status = Some(user_status::ENABLED),
        "delete" => {}
        "promote" => {
            if !a.is_root() {
                return Err(ApiError::Forbidden(
                    "only root may promote users to administrator".into(),
                ));
            }
            if u.role >= role::ADMIN {
                return Err(ApiError::refused("this user is already an administrator"));
            }
            patch.role = Some(role::ADMIN);
        }
        "demote" => {
            if u.role == role::COMMON {
                return Err(ApiError::refused("this user is already a common user"));
            }
            // Reaching here with an admin target means the actor is root.
            patch.role = Some(role::COMMON);
        }
        other => {
            return Err(ApiError::refused(format!(
                "action must be one of enable, disable, delete, promote, demote (got '{other}')"
            )));
        }
    }
    if action == "delete" {
        state.store.delete_user(id).await?;
    } else {
        state.store.update_user(id, &patch).await?;
    }
    crate::api::misc::user_changed(&state, id).await;
    audit(
        &state,
        &a,
        id,
        &format!("user.{action}"),
        format!(
            "{} {action}d user {} (id {id})",
            a.user.username, u.username
        ),
        json!({}),
        &ip.to_string(),
    )
    .await?;
    if action == "delete" {
        return ok_empty();
    }
    let updated = state.store.user_by_id(id).await?;
    ok(json!({"role": updated.role, "status": updated.status}))
}

#[cfg(test)]
mod tests {
    #[test]
    fn dummy_hash_is_a_valid_phc_string() {
        assert!(argon2::password_hash::PasswordHash::new(super::DUMMY_HASH).is_ok());
    }
}
