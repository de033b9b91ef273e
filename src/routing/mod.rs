//! Channel choice (SPEC §5): an immutable snapshot of the enabled channels,
//! indexed by (group, model), swapped whole when any channel changes. Choosing
//! a channel is a map lookup and a weighted draw: no lock, no query.

use std::collections::{BTreeSet, HashSet};
use std::sync::Arc;

use rand::Rng;

use crate::auth::Secrets;
use crate::store::{Channel, channel_status};
use crate::util::FastMap;

/// The provider protocol a channel speaks (new-api's type ids).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ChannelKind {
    /// OpenAI (type 1).
    OpenAi,
    /// Azure OpenAI (type 3).
    Azure,
    /// Any OpenAI-compatible base URL (type 8).
    Custom,
    /// Anthropic (type 14).
    Anthropic,
    /// Google Gemini (type 24).
    Gemini,
}

impl ChannelKind {
    /// The kind for a new-api type id; `None` for types sluice does not speak.
    pub fn from_type(t: i64) -> Option<ChannelKind> {
        Some(match t {
            1 => ChannelKind::OpenAi,
            3 => ChannelKind::Azure,
            8 => ChannelKind::Custom,
            14 => ChannelKind::Anthropic,
            24 => ChannelKind::Gemini,
            _ => return None,
        })
    }

    /// Base URL used when a channel gives none (`None`: one is required).
    pub fn default_base_url(self) -> Option<&'static str> {
        match self {
            ChannelKind::OpenAi => Some("https://api.openai.com"),
            ChannelKind::Anthropic => Some("https://api.anthropic.com"),
            ChannelKind::Gemini => Some("https://generativelanguage.googleapis.com"),
            ChannelKind::Azure | ChannelKind::Custom => None,
        }
    }
}

/// A channel as the relay uses it: parsed and with its keys decrypted.
#[derive(Debug)]
pub struct ChannelRt {
    pub id: i64,
    pub name: String,
    pub kind: ChannelKind,
    /// One or more upstream keys (one per line in the stored key).
    pub keys: Vec<String>,
    /// Without a trailing slash.
    pub base_url: String,
    pub models: Vec<String>,
    /// Requested model → upstream model.
    pub mapping: FastMap<String, String>,
    pub groups: Vec<String>,
    pub priority: i64,
    pub weight: u64,
    pub status: i64,
    /// Per-type settings (Azure api-version, …) as stored.
    pub other: String,
    pub auto_ban: bool,
    pub test_model: String,
    /// Upstream addresses parsed once (hot path): OpenAI-style
    /// `{base}/v1/chat/completions`, `/completions`, `/embeddings`, and
    /// Anthropic `{base}/v1/messages`. `None` when the base URL is unusable.
    pub urls: Option<Box<ChannelUrls>>,
    /// `Bearer <key>` header values, one per key.
    pub bearers: Vec<axum::http::HeaderValue>,
}

/// A channel's fixed upstream addresses, parsed once.
#[derive(Debug)]
pub struct ChannelUrls {
    pub chat: axum::http::Uri,
    pub completions: axum::http::Uri,
    pub embeddings: axum::http::Uri,
    pub messages: axum::http::Uri,
}

impl ChannelUrls {
    fn new(base: &str) -> Option<ChannelUrls> {
        let at = |path: &str| {
            let base = base.trim_end_matches('/');
            let full = if base.ends_with("/v1") {
                format!("{base}{path}")
            } else {
                format!("{base}/v1{path}")
            };
            full.parse::<axum::http::Uri>().ok()
        };
        Some(ChannelUrls {
            chat: at("/chat/completions")?,
            completions: at("/completions")?,
            embeddings: at("/embeddings")?,
            messages: at("/messages")?,
        })
    }
}

impl ChannelRt {
    /// Builds the runtime form; `None` when the channel cannot be used (an
    /// unknown type or a key that does not decrypt).
    pub fn from_channel(c: &Channel, secrets: &Secrets) -> Option<ChannelRt> {
        let kind = ChannelKind::from_type(c.channel_type)?;
        let key = match secrets.decrypt(&c.key_cipher) {
            Ok(k) => k,
            Err(e) => {
                tracing::error!(channel = c.id, error = %e, "channel key does not decrypt; channel skipped");
                return None;
            }
        };
        let keys: Vec<String> = key
            .lines()
            .map(str::trim)
            .filter(|k| !k.is_empty())
            .map(String::from)
            .collect();
        let base = if c.base_url.trim().is_empty() {
            kind.default_base_url().unwrap_or_default().to_string()
        } else {
            c.base_url.trim().trim_end_matches('/').to_string()
        };
        let bearers = keys
            .iter()
            .filter_map(|k| axum::http::HeaderValue::from_str(&format!("Bearer {k}")).ok())
            .map(|mut v| {
                v.set_sensitive(true);
                v
            })
            .collect();
        Some(ChannelRt {
            urls: ChannelUrls::new(&base).map(Box::new),
            bearers,
            id: c.id,
            name: c.name.clone(),
            kind,
            keys,
            base_url: base,
            models: split_list(&c.models),
            mapping: parse_mapping(&c.model_mapping).unwrap_or_default(),
            groups: split_list(&c.groups),
            priority: c.priority,
            weight: c.weight.max(0) as u64,
            status: c.status,
            other: c.other.clone(),
            auto_ban: c.auto_ban,
            test_model: c.test_model.clone(),
        })
    }

    /// The upstream model name for a requested one.
    pub fn upstream_model<'a>(&'a self, requested: &'a str) -> &'a str {
        self.mapping
            .get(requested)
            .map(String::as_str)
            .unwrap_or(requested)
    }

    /// One of the channel's keys, at random.
    pub fn pick_key(&self) -> &str {
        self.keys.get(self.pick()).map(String::as_str).unwrap_or("")
    }

    /// The index of one of the channel's keys, at random.
    pub fn pick(&self) -> usize {
        match self.keys.len() {
            0 | 1 => 0,
            n => rand::rng().random_range(0..n),
        }
    }
}

/// Splits a comma (or newline) separated list, trimming and dropping blanks.
pub fn split_list(s: &str) -> Vec<String> {
    s.split([',', '\n'])
        .map(str::trim)
        .filter(|x| !x.is_empty())
        .map(String::from)
        .collect()
}

/// Parses `model_mapping`: empty, or a JSON object of strings.
pub fn parse_mapping(s: &str) -> Result<FastMap<String, String>, String> {
    if s.trim().is_empty() {
        return Ok(FastMap::default());
    }
    serde_json::from_str::<FastMap<String, String>>(s).map_err(|_| {
        "model_mapping must be a JSON object of model name → upstream model name".into()
    })
}

/// Channels of one priority inside a (group, model) entry.
#[derive(Debug, Default)]
struct Tier {
    priority: i64,
    channels: Vec<Arc<ChannelRt>>,
}

/// The routing table: immutable once built.
#[derive(Debug, Default)]
pub struct Snapshot {
    by_id: FastMap<i64, Arc<ChannelRt>>,
    /// group → model → tiers, highest priority first.
    table: FastMap<String, FastMap<String, Vec<Tier>>>,
}

impl Snapshot {
    /// Builds the table from every channel (disabled ones are kept by id, for
    /// pinning and tests, but never routed to).
    pub fn build(channels: &[Channel], secrets: &Secrets) -> Snapshot {
        let mut by_id = FastMap::default();
        let mut table: FastMap<String, FastMap<String, Vec<Tier>>> = FastMap::default();
        for c in channels {
            let Some(rt) = ChannelRt::from_channel(c, secrets) else {
                continue;
            };
            let rt = Arc::new(rt);
            by_id.insert(rt.id, rt.clone());
            if rt.status != channel_status::ENABLED || rt.keys.is_empty() {
                continue;
            }
            for g in &rt.groups {
                let models = table.entry(g.clone()).or_default();
                for m in &rt.models {
                    let tiers = models.entry(m.clone()).or_default();
                    match tiers.iter_mut().find(|t| t.priority == rt.priority) {
                        Some(t) => t.channels.push(rt.clone()),
                        None => tiers.push(Tier {
                            priority: rt.priority,
                            channels: vec![rt.clone()],
                        }),
                    }
                }
            }
        }
        for models in table.values_mut() {
            for tiers in models.values_mut() {
                tiers.sort_by_key(|t| std::cmp::Reverse(t.priority));
            }
        }
        Snapshot { by_id, table }
    }

    /// A channel by id (enabled or not).
    pub fn channel(&self, id: i64) -> Option<&Arc<ChannelRt>> {
        self.by_id.get(&id)
    }

    /// Whether any enabled channel serves (group, model).
    pub fn serves(&self, group: &str, model: &str) -> bool {
        self.table
            .get(group)
            .and_then(|m| m.get(model))
            .is_some_and(|t| !t.is_empty())
    }

    /// Chooses a channel for (group, model), skipping `tried`: the highest
    /// priority tier with an untried channel, weighted random inside it.
    pub fn pick(&self, group: &str, model: &str, tried: &[i64]) -> Option<Arc<ChannelRt>> {
        self.pick_where(group, model, tried, |_| true)
    }

    /// [`Snapshot::pick`] among the channels `accept` allows (those that can
    /// serve the call's endpoint).
    pub fn pick_where(
        &self,
        group: &str,
        model: &str,
        tried: &[i64],
        accept: impl Fn(&ChannelRt) -> bool,
    ) -> Option<Arc<ChannelRt>> {
        let tiers = self.table.get(group)?.get(model)?;
        let mut rng = rand::rng();
        for tier in tiers {
            let open = || {
                tier.channels
                    .iter()
                    .filter(|c| !tried.contains(&c.id) && accept(c))
            };
            let n = open().count();
            if n == 0 {
                continue;
            }
            let total: u64 = open().map(|c| c.weight).sum();
            if total == 0 {
                return open().nth(rng.random_range(0..n)).cloned();
            }
            let mut x = rng.random_range(0..total);
            for c in open() {
                if x < c.weight {
                    return Some(c.clone());
                }
                x -= c.weight;
            }
        }
        None
    }

    /// Models served to any of `groups`, sorted.
    pub fn models_for<'a>(&self, groups: impl IntoIterator<Item = &'a str>) -> Vec<String> {
        let mut out = BTreeSet::new();
        for g in groups {
            if let Some(models) = self.table.get(g) {
                out.extend(models.keys().cloned());
            }
        }
        out.into_iter().collect()
    }

    /// Every model named by any channel (enabled or not).
    pub fn all_models(&self) -> Vec<String> {
        let set: HashSet<&String> = self.by_id.values().flat_map(|c| c.models.iter()).collect();
        let mut v: Vec<String> = set.into_iter().cloned().collect();
        v.sort();
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chan(id: i64, priority: i64, weight: i64, status: i64, secrets: &Secrets) -> Channel {
        Channel {
            id,
            channel_type: 1,
            name: format!("c{id}"),
            key_cipher: secrets.encrypt("k"),
            base_url: "http://127.0.0.1:1/".into(),
            models: "m1,m2".into(),
            model_mapping: r#"{"m1":"up-m1"}"#.into(),
            groups: "default,vip".into(),
            priority,
            weight,
            status,
            test_model: String::new(),
            response_time: 0,
            test_time: 0,
            used_quota: 0,
            request_count: 0,
            balance: 0.0,
            balance_updated_time: 0,
            created_time: 0,
            other: String::new(),
            tag: String::new(),
            auto_ban: true,
        }
    }

    #[test]
    fn highest_priority_first_then_fallback_and_disabled_never() {
        let s = Secrets::from_master([1; 32], None);
        let snap = Snapshot::build(
            &[
                chan(1, 10, 1, 1, &s),
                chan(2, 5, 1, 1, &s),
                chan(3, 20, 1, 2, &s),
            ],
            &s,
        );
        for _ in 0..50 {
            assert_eq!(snap.pick("default", "m1", &[]).unwrap().id, 1);
        }
        assert_eq!(snap.pick("vip", "m2", &[1]).unwrap().id, 2);
        assert!(snap.pick("default", "m1", &[1, 2]).is_none());
        assert!(snap.pick("other", "m1", &[]).is_none());
        assert!(snap.channel(3).is_some());
        assert_eq!(snap.channel(1).unwrap().upstream_model("m1"), "up-m1");
        assert_eq!(snap.base_url_of(1), "http://127.0.0.1:1");
    }

    #[test]
    fn weights_shape_the_draw() {
        let s = Secrets::from_master([1; 32], None);
        let snap = Snapshot::build(&[chan(1, 0, 1, 1, &s), chan(2, 0, 3, 1, &s)], &s);
        let mut second = 0;
        for _ in 0..4000 {
            if snap.pick("default", "m1", &[]).unwrap().id == 2 {
                second += 1;
            }
        }
        // Expect 3000 ± a generous margin.
        assert!((2700..3300).contains(&second), "{second}");
    }

    impl Snapshot {
        fn base_url_of(&self, id: i64) -> &str {
            &self.by_id[&id].base_url
        }
    }
}
