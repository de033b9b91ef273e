//! Runtime options: new-api's key/value settings (`GET/PUT /api/option/`).
//!
//! The database holds each option as a string; [`Options`] is the parsed,
//! immutable snapshot the server reads. A change builds a new snapshot and swaps
//! it in whole, so a request never sees half an update. Every rule about what an
//! option may hold is in [`validate`].

use std::collections::{BTreeMap, HashMap};

use serde_json::Value;

use crate::util::FastMap;

/// Quota units per US dollar (SPEC §6).
pub const DEFAULT_QUOTA_PER_UNIT: f64 = 500_000.0;
/// Tokens a user may hold when `MaxUserTokens` is unset.
pub const DEFAULT_MAX_USER_TOKENS: i64 = 1000;

/// Option keys with a meaning to sluice. Anything else a dashboard stores is
/// kept and returned verbatim, never refused.
pub mod keys {
    pub const MODEL_RATIO: &str = "ModelRatio";
    pub const COMPLETION_RATIO: &str = "CompletionRatio";
    pub const GROUP_RATIO: &str = "GroupRatio";
    pub const MODEL_PRICE: &str = "ModelPrice";
    pub const CACHE_RATIO: &str = "CacheRatio";
    pub const USER_USABLE_GROUPS: &str = "UserUsableGroups";
    pub const QUOTA_PER_UNIT: &str = "QuotaPerUnit";
    pub const RETRY_TIMES: &str = "RetryTimes";
    pub const AUTO_DISABLE_CHANNEL: &str = "AutomaticDisableChannelEnabled";
    pub const AUTO_ENABLE_CHANNEL: &str = "AutomaticEnableChannelEnabled";
    pub const REGISTER_ENABLED: &str = "RegisterEnabled";
    pub const PASSWORD_LOGIN_ENABLED: &str = "PasswordLoginEnabled";
    pub const PASSWORD_REGISTER_ENABLED: &str = "PasswordRegisterEnabled";
    pub const SELF_USE_MODE_ENABLED: &str = "SelfUseModeEnabled";
    pub const SYSTEM_NAME: &str = "SystemName";
    pub const MAX_USER_TOKENS: &str = "MaxUserTokens";
    pub const QUOTA_FOR_NEW_USER: &str = "QuotaForNewUser";
    pub const PRE_CONSUMED_QUOTA: &str = "PreConsumedQuota";
    pub const DEFAULT_OUTPUT_ALLOWANCE: &str = "DefaultOutputAllowance";
    pub const RATE_LIMIT_ENABLED: &str = "ModelRequestRateLimitEnabled";
    pub const RATE_LIMIT_MINUTES: &str = "ModelRequestRateLimitDurationMinutes";
    pub const RATE_LIMIT_COUNT: &str = "ModelRequestRateLimitCount";
    pub const RATE_LIMIT_SUCCESS_COUNT: &str = "ModelRequestRateLimitSuccessCount";
    pub const RATE_LIMIT_GROUP: &str = "ModelRequestRateLimitGroup";
    /// sluice's own: tokens per user per rate-limit window.
    pub const TOKEN_RATE_LIMIT_COUNT: &str = "ModelTokenRateLimitCount";
}

/// How an option's string value is checked.
#[derive(Clone, Copy)]
enum Kind {
    /// JSON object of non-negative numbers.
    NumberMap,
    /// JSON object of strings.
    StringMap,
    Bool,
    /// Integer in the inclusive range.
    Int(i64, i64),
    /// Positive finite number.
    PositiveFloat,
    /// JSON object: group → [requests, successful requests].
    RateLimitGroups,
    Text,
}

fn kind_of(key: &str) -> Option<Kind> {
    use keys::*;
    Some(match key {
        MODEL_RATIO | COMPLETION_RATIO | GROUP_RATIO | MODEL_PRICE | CACHE_RATIO => Kind::NumberMap,
        USER_USABLE_GROUPS => Kind::StringMap,
        AUTO_DISABLE_CHANNEL
        | AUTO_ENABLE_CHANNEL
        | REGISTER_ENABLED
        | PASSWORD_LOGIN_ENABLED
        | PASSWORD_REGISTER_ENABLED
        | SELF_USE_MODE_ENABLED
        | RATE_LIMIT_ENABLED => Kind::Bool,
        RATE_LIMIT_MINUTES => Kind::Int(1, 1440),
        RATE_LIMIT_COUNT | RATE_LIMIT_SUCCESS_COUNT => Kind::Int(0, 100_000_000),
        TOKEN_RATE_LIMIT_COUNT => Kind::Int(0, 1_000_000_000_000),
        RATE_LIMIT_GROUP => Kind::RateLimitGroups,
        RETRY_TIMES => Kind::Int(0, 10),
        MAX_USER_TOKENS => Kind::Int(1, 1_000_000),
        QUOTA_FOR_NEW_USER | PRE_CONSUMED_QUOTA => Kind::Int(0, i64::MAX / 4),
        DEFAULT_OUTPUT_ALLOWANCE => Kind::Int(0, 10_000_000),
        QUOTA_PER_UNIT => Kind::PositiveFloat,
        SYSTEM_NAME => Kind::Text,
        _ => return None,
    })
}

/// Checks one option value. The message names the key and what is wrong; a
/// refused value changes nothing.
pub fn validate(key: &str, value: &str) -> Result<(), String> {
    if key.trim().is_empty() {
        return Err("option key must not be empty".into());
    }
    if key.len() > 128 {
        return Err("option key must be at most 128 characters".into());
    }
    let Some(kind) = kind_of(key) else {
        return Ok(());
    };
    match kind {
        Kind::NumberMap => {
            let map: serde_json::Map<String, Value> = serde_json::from_str(value)
                .map_err(|e| format!("{key} must be a JSON object: {e}"))?;
            for (name, v) in &map {
                let n = v
                    .as_f64()
                    .ok_or_else(|| format!("{key}: value for '{name}' must be a number"))?;
                if !n.is_finite() || n < 0.0 {
                    return Err(format!(
                        "{key}: value for '{name}' must be a non-negative number"
                    ));
                }
            }
            if key == keys::GROUP_RATIO && map.is_empty() {
                return Err("GroupRatio must name at least one group".into());
            }
        }
        Kind::StringMap => {
            let map: serde_json::Map<String, Value> = serde_json::from_str(value)
                .map_err(|e| format!("{key} must be a JSON object: {e}"))?;
            for (name, v) in &map {
                if name.trim().is_empty() {
                    return Err(format!("{key}: group names must not be empty"));
                }
                if !v.is_string() {
                    return Err(format!("{key}: description of '{name}' must be a string"));
                }
            }
        }
        Kind::Bool => {
            if value != "true" && value != "false" {
                return Err(format!("{key} must be \"true\" or \"false\""));
            }
        }
        Kind::Int(lo, hi) => {
            let n: i64 = value
                .trim()
                .parse()
                .map_err(|_| format!("{key} must be an integer"))?;
            if n < lo || n > hi {
                return Err(format!("{key} must be between {lo} and {hi}"));
            }
        }
        Kind::PositiveFloat => {
            let n: f64 = value
                .trim()
                .parse()
                .map_err(|_| format!("{key} must be a number"))?;
            if !n.is_finite() || n <= 0.0 {
                return Err(format!("{key} must be a positive number"));
            }
        }
        Kind::RateLimitGroups => {
            parse_rate_groups(value).map_err(|e| format!("{key}: {e}"))?;
        }
        Kind::Text => {
            if value.chars().count() > 256 {
                return Err(format!("{key} must be at most 256 characters"));
            }
        }
    }
    Ok(())
}

/// `{"group": [requests, successful requests], …}` with counts from 0 (no
/// limit) to 100 000 000.
fn parse_rate_groups(value: &str) -> Result<HashMap<String, (i64, i64)>, String> {
    let map: BTreeMap<String, Value> =
        serde_json::from_str(value).map_err(|e| format!("must be a JSON object: {e}"))?;
    let mut out = HashMap::new();
    for (g, v) in map {
        let pair = v
            .as_array()
            .filter(|a| a.len() == 2)
            .and_then(|a| Some((a[0].as_i64()?, a[1].as_i64()?)))
            .filter(|(a, b)| (0..=100_000_000).contains(a) && (0..=100_000_000).contains(b))
            .ok_or_else(|| {
                format!("'{g}' must map to [requests, successful requests], each 0 to 100000000")
            })?;
        out.insert(g, pair);
    }
    Ok(out)
}

/// The per-user rate limit (new-api's `ModelRequestRateLimit*`).
#[derive(Debug, Clone, Default)]
pub struct UserRateLimit {
    pub enabled: bool,
    /// Window length.
    pub minutes: i64,
    /// Requests per window, failed ones included (0: none).
    pub total: i64,
    /// Successful requests per window (0: none).
    pub success: i64,
    /// Tokens per window (0: none).
    pub tokens: i64,
    /// Per-group (requests, successes), overriding the two above.
    pub groups: HashMap<String, (i64, i64)>,
}

/// The shipped default ratios (one data file, SPEC §6).
const DEFAULT_RATIOS: &str = include_str!("../billing/default_ratios.json");

#[derive(serde::Deserialize, Default)]
struct DefaultRatios {
    #[serde(default)]
    model_ratio: HashMap<String, f64>,
    #[serde(default)]
    completion_ratio: HashMap<String, f64>,
    #[serde(default)]
    model_price: HashMap<String, f64>,
    #[serde(default)]
    cache_ratio: HashMap<String, f64>,
}

/// Default string values for the options sluice understands.
fn defaults() -> BTreeMap<String, String> {
    let ratios: DefaultRatios = serde_json::from_str(DEFAULT_RATIOS).unwrap_or_default();
    let to_json = |m: &HashMap<String, f64>| {
        let sorted: BTreeMap<_, _> = m.iter().collect();
        serde_json::to_string(&sorted).unwrap_or_else(|_| "{}".into())
    };
    let mut d = BTreeMap::new();
    let mut put = |k: &str, v: String| {
        d.insert(k.to_string(), v);
    };
    put(keys::MODEL_RATIO, to_json(&ratios.model_ratio));
    put(keys::COMPLETION_RATIO, to_json(&ratios.completion_ratio));
    put(keys::MODEL_PRICE, to_json(&ratios.model_price));
    put(keys::CACHE_RATIO, to_json(&ratios.cache_ratio));
    put(
        keys::GROUP_RATIO,
        r#"{"default":1,"vip":1,"svip":1}"#.to_string(),
    );
    put(
        keys::USER_USABLE_GROUPS,
        r#"{"default":"Default group","vip":"VIP group"}"#.to_string(),
    );
    put(keys::QUOTA_PER_UNIT, "500000".into());
    put(keys::RETRY_TIMES, "0".into());
    put(keys::AUTO_DISABLE_CHANNEL, "false".into());
    put(keys::AUTO_ENABLE_CHANNEL, "false".into());
    put(keys::REGISTER_ENABLED, "true".into());
    put(keys::PASSWORD_LOGIN_ENABLED, "true".into());
    put(keys::PASSWORD_REGISTER_ENABLED, "true".into());
    put(keys::SELF_USE_MODE_ENABLED, "false".into());
    put(keys::SYSTEM_NAME, "sluice".into());
    put(keys::MAX_USER_TOKENS, DEFAULT_MAX_USER_TOKENS.to_string());
    put(keys::QUOTA_FOR_NEW_USER, "0".into());
    put(keys::PRE_CONSUMED_QUOTA, "500".into());
    put(keys::DEFAULT_OUTPUT_ALLOWANCE, "4096".into());
    // new-api's defaults: off; when on, 1000 successes a minute.
    put(keys::RATE_LIMIT_ENABLED, "false".into());
    put(keys::RATE_LIMIT_MINUTES, "1".into());
    put(keys::RATE_LIMIT_COUNT, "0".into());
    put(keys::RATE_LIMIT_SUCCESS_COUNT, "1000".into());
    put(keys::RATE_LIMIT_GROUP, "{}".into());
    put(keys::TOKEN_RATE_LIMIT_COUNT, "0".into());
    d
}

/// The parsed options every request reads. Immutable: a change builds a new one.
#[derive(Debug, Clone)]
pub struct Options {
    /// Every option as stored (defaults filled in), for `GET /api/option/`.
    pub raw: BTreeMap<String, String>,
    pub model_ratio: FastMap<String, f64>,
    pub completion_ratio: FastMap<String, f64>,
    pub group_ratio: FastMap<String, f64>,
    pub model_price: FastMap<String, f64>,
    /// Price of cached prompt tokens relative to uncached ones, per model.
    pub cache_ratio: FastMap<String, f64>,
    /// Group → description, for groups any user may put on a token.
    pub user_usable_groups: BTreeMap<String, String>,
    pub quota_per_unit: f64,
    pub retry_times: u32,
    pub auto_disable_channel: bool,
    pub auto_enable_channel: bool,
    pub register_enabled: bool,
    /// Registration with a username and password (new-api's
    /// `PasswordRegisterEnabled`; sluice has no other way to register).
    pub password_register_enabled: bool,
    pub password_login_enabled: bool,
    pub self_use_mode: bool,
    pub system_name: String,
    pub max_user_tokens: i64,
    pub quota_for_new_user: i64,
    /// Output tokens reserved for a call that gives no `max_tokens`.
    pub default_output_allowance: i64,
    /// Per-user rate limits.
    pub user_rate: UserRateLimit,
}

impl Default for Options {
    fn default() -> Self {
        Options::from_stored(BTreeMap::new())
    }
}

impl Options {
    /// Builds a snapshot from stored values, filling defaults. A stored value
    /// that no longer validates (written by another version) falls back to the
    /// default rather than stopping the server.
    pub fn from_stored(stored: BTreeMap<String, String>) -> Options {
        let mut raw = defaults();
        for (k, v) in stored {
            if validate(&k, &v).is_ok() {
                raw.insert(k, v);
            } else {
                tracing::warn!(option = %k, "stored option value is invalid; using the default");
            }
        }
        let num_map = |k: &str| -> FastMap<String, f64> {
            raw.get(k)
                .and_then(|v| serde_json::from_str(v).ok())
                .unwrap_or_default()
        };
        let get_bool = |k: &str| raw.get(k).map(|v| v == "true").unwrap_or(false);
        let get_i64 = |k: &str, d: i64| raw.get(k).and_then(|v| v.trim().parse().ok()).unwrap_or(d);
        Options {
            model_ratio: num_map(keys::MODEL_RATIO),
            completion_ratio: num_map(keys::COMPLETION_RATIO),
            group_ratio: num_map(keys::GROUP_RATIO),
            model_price: num_map(keys::MODEL_PRICE),
            cache_ratio: num_map(keys::CACHE_RATIO),
            user_usable_groups: raw
                .get(keys::USER_USABLE_GROUPS)
                .and_then(|v| serde_json::from_str(v).ok())
                .unwrap_or_default(),
            quota_per_unit: raw
                .get(keys::QUOTA_PER_UNIT)
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(DEFAULT_QUOTA_PER_UNIT),
            retry_times: get_i64(keys::RETRY_TIMES, 0).clamp(0, 10) as u32,
            auto_disable_channel: get_bool(keys::AUTO_DISABLE_CHANNEL),
            auto_enable_channel: get_bool(keys::AUTO_ENABLE_CHANNEL),
            register_enabled: get_bool(keys::REGISTER_ENABLED),
            password_register_enabled: get_bool(keys::PASSWORD_REGISTER_ENABLED),
            password_login_enabled: get_bool(keys::PASSWORD_LOGIN_ENABLED),
            self_use_mode: get_bool(keys::SELF_USE_MODE_ENABLED),
            system_name: raw.get(keys::SYSTEM_NAME).cloned().unwrap_or_default(),
            max_user_tokens: get_i64(keys::MAX_USER_TOKENS, DEFAULT_MAX_USER_TOKENS),
            quota_for_new_user: get_i64(keys::QUOTA_FOR_NEW_USER, 0),
            default_output_allowance: get_i64(keys::DEFAULT_OUTPUT_ALLOWANCE, 4096),
            user_rate: UserRateLimit {
                enabled: get_bool(keys::RATE_LIMIT_ENABLED),
                minutes: get_i64(keys::RATE_LIMIT_MINUTES, 1),
                total: get_i64(keys::RATE_LIMIT_COUNT, 0),
                success: get_i64(keys::RATE_LIMIT_SUCCESS_COUNT, 1000),
                tokens: get_i64(keys::TOKEN_RATE_LIMIT_COUNT, 0),
                groups: raw
                    .get(keys::RATE_LIMIT_GROUP)
                    .and_then(|v| parse_rate_groups(v).ok())
                    .unwrap_or_default(),
            },
            raw,
        }
    }

    /// Whether a user in `user_group` may put `group` on a token.
    pub fn group_selectable(&self, user_group: &str, group: &str) -> bool {
        group == user_group || self.user_usable_groups.contains_key(group)
    }

    /// Ratio for a group; groups with no entry cost 1×.
    pub fn group_ratio_of(&self, group: &str) -> f64 {
        self.group_ratio.get(group).copied().unwrap_or(1.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_options_are_validated_whole() {
        assert!(validate("ModelRatio", r#"{"gpt-4o":2.5}"#).is_ok());
        assert!(validate("ModelRatio", r#"{"gpt-4o":"x"}"#).is_err());
        assert!(validate("ModelRatio", r#"{"gpt-4o":-1}"#).is_err());
        assert!(validate("ModelRatio", "[1]").is_err());
        assert!(validate("GroupRatio", "{}").is_err());
        assert!(validate("UserUsableGroups", r#"{"vip":1}"#).is_err());
        assert!(validate("RetryTimes", "11").is_err());
        assert!(validate("RetryTimes", "3").is_ok());
        assert!(validate("RegisterEnabled", "yes").is_err());
        assert!(validate("QuotaPerUnit", "0").is_err());
        assert!(validate("SomethingNew", "anything").is_ok());
        assert!(validate("ModelRequestRateLimitGroup", r#"{"vip":[10,5]}"#).is_ok());
        assert!(validate("ModelRequestRateLimitGroup", r#"{"vip":[10]}"#).is_err());
        assert!(validate("ModelRequestRateLimitGroup", r#"{"vip":[-1,5]}"#).is_err());
        assert!(validate("ModelRequestRateLimitGroup", "[]").is_err());
        assert!(validate("ModelRequestRateLimitDurationMinutes", "0").is_err());
        assert!(validate("ModelRequestRateLimitCount", "-1").is_err());
    }

    #[test]
    fn defaults_fill_and_invalid_stored_values_fall_back() {
        let mut stored = BTreeMap::new();
        stored.insert("RetryTimes".to_string(), "not a number".to_string());
        stored.insert("GroupRatio".to_string(), r#"{"default":2}"#.to_string());
        let o = Options::from_stored(stored);
        assert_eq!(o.retry_times, 0);
        assert_eq!(o.group_ratio_of("default"), 2.0);
        assert_eq!(o.quota_per_unit, DEFAULT_QUOTA_PER_UNIT);
        assert!(o.register_enabled);
        assert!(!o.model_ratio.is_empty());
    }
}
