//! Billing (SPEC §6): what a call costs in quota units, and the quota bank
//! that reserves before forwarding and settles after.
//!
//! `quota = ceil((prompt + completion × completion_ratio) × model_ratio × group_ratio)`,
//! where cached prompt tokens count at the model's cache ratio; a model with a
//! fixed price costs `ceil(price × quota_per_unit × group_ratio)` per call.

pub mod bank;
pub mod redis_bank;
pub mod tokens;

use serde::Serialize;

use crate::config::options::Options;

/// Token counts reported for one call (or estimated).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Usage {
    /// All input tokens, cached ones included.
    pub prompt_tokens: i64,
    pub completion_tokens: i64,
    /// Input tokens read from the provider's prompt cache (part of
    /// `prompt_tokens`).
    pub cached_tokens: i64,
}

/// How a model is priced.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(tag = "mode", rename_all = "snake_case")]
pub enum Price {
    /// Per token: ratios applied to the usage.
    Ratio {
        model_ratio: f64,
        completion_ratio: f64,
        cache_ratio: f64,
        group_ratio: f64,
    },
    /// A fixed USD price per call.
    Fixed { model_price: f64, group_ratio: f64 },
    /// Self-use mode and an unpriced model: free.
    Free,
}

/// Why a model cannot be billed.
#[derive(Debug, thiserror::Error)]
#[error(
    "model '{0}' has no ratio or price configured; ask an administrator to set one (or enable self-use mode)"
)]
pub struct Unpriced(pub String);

/// Rounds up, ignoring float noise below 1e-9 (so 20000.000000000004 is 20000).
fn ceil_units(x: f64) -> i64 {
    if !x.is_finite() || x <= 0.0 {
        return 0;
    }
    let floor = x.floor();
    let q = if x - floor < 1e-9 { floor } else { x.ceil() };
    if q >= i64::MAX as f64 {
        i64::MAX
    } else {
        q as i64
    }
}

impl Price {
    /// The price of `model` for `group` under the current options.
    pub fn of(o: &Options, model: &str, group: &str) -> Result<Price, Unpriced> {
        let group_ratio = o.group_ratio_of(group);
        if let Some(p) = o.model_price.get(model) {
            return Ok(Price::Fixed {
                model_price: *p,
                group_ratio,
            });
        }
        if let Some(r) = o.model_ratio.get(model) {
            return Ok(Price::Ratio {
                model_ratio: *r,
                completion_ratio: o.completion_ratio.get(model).copied().unwrap_or(1.0),
                cache_ratio: o.cache_ratio.get(model).copied().unwrap_or(1.0),
                group_ratio,
            });
        }
        if o.self_use_mode {
            return Ok(Price::Free);
        }
        Err(Unpriced(model.to_string()))
    }

    /// Quota units for the given usage.
    pub fn cost(&self, u: &Usage, quota_per_unit: f64) -> i64 {
        match *self {
            Price::Ratio {
                model_ratio,
                completion_ratio,
                cache_ratio,
                group_ratio,
            } => {
                let cached = u.cached_tokens.clamp(0, u.prompt_tokens.max(0));
                let prompt = (u.prompt_tokens.max(0) - cached) as f64 + cached as f64 * cache_ratio;
                let tokens = prompt + u.completion_tokens.max(0) as f64 * completion_ratio;
                ceil_units(tokens * model_ratio * group_ratio)
            }
            Price::Fixed {
                model_price,
                group_ratio,
            } => ceil_units(model_price * quota_per_unit * group_ratio),
            Price::Free => 0,
        }
    }

    /// The reservation for a call: its cost with the prompt upper bound and
    /// the output allowance (`max_tokens`, or the default), ignoring cache
    /// discounts (a reservation must never be below the real cost).
    pub fn reserve(&self, prompt_upper: i64, max_output: i64, quota_per_unit: f64) -> i64 {
        self.cost(
            &Usage {
                prompt_tokens: prompt_upper,
                completion_tokens: max_output,
                cached_tokens: 0,
            },
            quota_per_unit,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ratio(m: f64, c: f64, g: f64) -> Price {
        Price::Ratio {
            model_ratio: m,
            completion_ratio: c,
            cache_ratio: 0.5,
            group_ratio: g,
        }
    }

    #[test]
    fn formula_rounds_up_exactly() {
        let u = Usage {
            prompt_tokens: 10,
            completion_tokens: 20,
            cached_tokens: 0,
        };
        // (10 + 20*4) * 1.25 * 1 = 112.5 → 113
        assert_eq!(ratio(1.25, 4.0, 1.0).cost(&u, 500_000.0), 113);
        // (10 + 20*2) * 1 * 1.5 = 75
        assert_eq!(ratio(1.0, 2.0, 1.5).cost(&u, 500_000.0), 75);
        // Cached tokens at half price: (6 + 4*0.5 + 20*1) * 1 = 28
        let cached = Usage {
            cached_tokens: 4,
            ..u
        };
        assert_eq!(ratio(1.0, 1.0, 1.0).cost(&cached, 500_000.0), 28);
    }

    #[test]
    fn fixed_price_ignores_float_noise() {
        let p = Price::Fixed {
            model_price: 0.04,
            group_ratio: 1.0,
        };
        assert_eq!(p.cost(&Usage::default(), 500_000.0), 20_000);
        let p = Price::Fixed {
            model_price: 0.1,
            group_ratio: 0.3,
        };
        assert_eq!(p.cost(&Usage::default(), 500_000.0), 15_000);
    }

    #[test]
    fn lookup_prefers_price_then_ratio_then_self_use() {
        let mut o = Options::default();
        o.model_price.insert("img".into(), 0.04);
        o.model_ratio.insert("img".into(), 9.0);
        o.model_ratio.insert("chat".into(), 2.0);
        assert!(matches!(
            Price::of(&o, "img", "default"),
            Ok(Price::Fixed { .. })
        ));
        assert!(matches!(
            Price::of(&o, "chat", "default"),
            Ok(Price::Ratio { .. })
        ));
        assert!(Price::of(&o, "nope", "default").is_err());
        o.self_use_mode = true;
        assert_eq!(Price::of(&o, "nope", "default").unwrap(), Price::Free);
    }
}
