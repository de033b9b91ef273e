//! The per-key restrictions a token carries: its model whitelist and its IP
//! allow list. Parsed here for both the management API (validation) and the
//! relay (enforcement), so the two can never disagree.

use std::net::IpAddr;

use ipnet::IpNet;

/// Longest accepted `model_limits` string.
pub const MAX_MODEL_LIMITS_LEN: usize = 16 * 1024;
/// Longest accepted `allow_ips` string.
pub const MAX_ALLOW_IPS_LEN: usize = 16 * 1024;

/// Parses `model_limits`: a JSON array of names (`["a","b"]`) or a comma
/// separated list (`a,b`). Empty means no models.
pub fn parse_model_limits(s: &str) -> Result<Vec<String>, String> {
    let t = s.trim();
    if t.is_empty() {
        return Ok(Vec::new());
    }
    if t.len() > MAX_MODEL_LIMITS_LEN {
        return Err(format!(
            "model_limits must be at most {MAX_MODEL_LIMITS_LEN} characters"
        ));
    }
    let names: Vec<String> = if t.starts_with('[') {
        let list: Vec<String> = serde_json::from_str(t).map_err(|_| {
            "model_limits must be a JSON array of model names or a comma-separated list".to_string()
        })?;
        list.into_iter().map(|m| m.trim().to_string()).collect()
    } else {
        t.split(',').map(|m| m.trim().to_string()).collect()
    };
    if names.iter().any(|m| m.is_empty()) {
        return Err("model_limits contains an empty model name".into());
    }
    // A model name never holds JSON punctuation, commas or blanks: such an
    // entry means a malformed list (a JSON object, a half-quoted array, …).
    if let Some(bad) = names.iter().find(|m| {
        m.chars().any(|c| {
            matches!(c, '"' | '\'' | '[' | ']' | '{' | '}' | ',')
                || c.is_whitespace()
                || c.is_control()
        })
    }) {
        return Err(format!(
            "model_limits: '{bad}' is not a model name; give a JSON array of names or a comma-separated list"
        ));
    }
    Ok(names)
}

/// Parses `allow_ips`: IPs or CIDRs separated by newlines or commas. Every
/// entry must be valid; empty means any address.
pub fn parse_allow_ips(s: &str) -> Result<Vec<IpNet>, String> {
    if s.len() > MAX_ALLOW_IPS_LEN {
        return Err(format!(
            "allow_ips must be at most {MAX_ALLOW_IPS_LEN} characters"
        ));
    }
    s.split(['\n', ',', '\r'])
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .map(|e| {
            if let Ok(net) = e.parse::<IpNet>() {
                Ok(net.trunc())
            } else {
                e.parse::<IpAddr>()
                    .map(IpNet::from)
                    .map_err(|_| format!("allow_ips: '{e}' is not an IP address or CIDR"))
            }
        })
        .collect()
}

/// Whether `ip` is allowed by `nets` (empty allows all).
pub fn ip_allowed(nets: &[IpNet], ip: IpAddr) -> bool {
    let ip = crate::util::canonical(ip);
    nets.is_empty() || nets.iter().any(|n| n.contains(&ip))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_limits_in_both_forms() {
        assert_eq!(
            parse_model_limits(r#"["gpt-5.4","claude-sonnet-4-6"]"#).unwrap(),
            vec!["gpt-5.4", "claude-sonnet-4-6"]
        );
        assert_eq!(parse_model_limits("a, b").unwrap(), vec!["a", "b"]);
        assert!(parse_model_limits("").unwrap().is_empty());
        assert!(parse_model_limits("a,,b").is_err());
        assert!(parse_model_limits("[1,2]").is_err());
        assert!(parse_model_limits(r#"["a", ""]"#).is_err());
        assert!(parse_model_limits(r#"{"a":true}"#).is_err());
        assert!(parse_model_limits(r#"["a,b"]"#).is_err());
        assert!(parse_model_limits("a b,c").is_err());
    }

    #[test]
    fn allow_ips_validated_and_matched() {
        let nets = parse_allow_ips("203.0.113.10\n10.0.0.0/8, ::1").unwrap();
        assert_eq!(nets.len(), 3);
        assert!(ip_allowed(&nets, "10.1.2.3".parse().unwrap()));
        assert!(ip_allowed(&nets, "203.0.113.10".parse().unwrap()));
        assert!(ip_allowed(&nets, "::ffff:203.0.113.10".parse().unwrap()));
        assert!(!ip_allowed(&nets, "203.0.113.11".parse().unwrap()));
        assert!(ip_allowed(&[], "1.1.1.1".parse().unwrap()));
        assert!(parse_allow_ips("1.2.3.4\nnope").is_err());
        assert!(parse_allow_ips("1.2.3.4/33").is_err());
        assert!(parse_allow_ips("  \n ").unwrap().is_empty());
    }
}
