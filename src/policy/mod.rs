//! Decisions. The policy language lands here; until it does, the gate runs the interim rules of
//! [`Interim`]: every action on an intercepted host is allowed (after the catalog has refused
//! what is malformed or ambiguous), and `net.connect` only to the hosts in `proxy.tunnel_allow`.

use serde::Serialize;

use crate::actions::Action;
use crate::actions::host::Authority;
use crate::config::TunnelRule;

/// What the gate does with an action.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Effect {
    Allow,
    Block,
}

/// A decision together with the rules that caused it and their reasons.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Decision {
    pub effect: Effect,
    /// The action the decision is about (its name).
    pub action: String,
    /// Ids of the rules that fired for the winning effect.
    pub rules: Vec<String>,
    /// Human-readable reasons, one per fired rule (or the default's).
    pub reason: String,
}

impl Decision {
    fn new(effect: Effect, action: &Action, rule: &str, reason: String) -> Decision {
        Decision {
            effect,
            action: action.name.clone(),
            rules: vec![rule.to_string()],
            reason,
        }
    }
}

/// The rules in force until policy files are loaded: built from the config only.
#[derive(Debug, Clone, Default)]
pub struct Interim {
    pub tunnel_allow: Vec<TunnelRule>,
}

impl Interim {
    /// Decides an action. Pure: no I/O, no clock.
    pub fn decide(&self, action: &Action) -> Decision {
        match action.name.as_str() {
            "net.connect" => self.decide_connect(action),
            _ => Decision::new(
                Effect::Allow,
                action,
                "config:intercepted-host",
                "requests on intercepted hosts are allowed until a policy is loaded".into(),
            ),
        }
    }

    /// Decides every action of one request: the strictest decision wins (the first block, in
    /// request order); a request with no action is blocked.
    pub fn decide_all(&self, actions: &[Action]) -> Decision {
        let mut decisions = actions.iter().map(|a| self.decide(a));
        let Some(first) = decisions.next() else {
            return Decision {
                effect: Effect::Block,
                action: String::new(),
                rules: vec!["builtin:no-action".into()],
                reason: "the request carries no action".into(),
            };
        };
        if first.effect == Effect::Block {
            return first;
        }
        decisions
            .find(|d| d.effect == Effect::Block)
            .unwrap_or(first)
    }

    fn decide_connect(&self, action: &Action) -> Decision {
        let host = action.params.get("host").and_then(|v| v.as_str());
        let port = action
            .params
            .get("port")
            .and_then(|v| v.as_u64())
            .and_then(|p| u16::try_from(p).ok());
        let target = match (host, port) {
            (Some(host), Some(port)) => Authority {
                host: host.to_string(),
                port,
            },
            _ => {
                return Decision::new(
                    Effect::Block,
                    action,
                    "config:default",
                    "net.connect without a host and port".into(),
                );
            }
        };
        if self.tunnel_allow.iter().any(|r| r.allows(&target)) {
            Decision::new(
                Effect::Allow,
                action,
                "config:tunnel_allow",
                format!("{target} is in proxy.tunnel_allow"),
            )
        } else {
            Decision::new(
                Effect::Block,
                action,
                "config:tunnel_allow",
                format!(
                    "connections to {target} are not allowed: the host is not intercepted and not in proxy.tunnel_allow"
                ),
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tunnels_default_deny() {
        let p = Interim {
            tunnel_allow: vec![TunnelRule {
                host: "pypi.org".into(),
                port: Some(443),
            }],
        };
        let ok = Action::net_connect(&Authority::parse("pypi.org:443", None).unwrap());
        assert_eq!(p.decide(&ok).effect, Effect::Allow);
        let no = Action::net_connect(&Authority::parse("evil.example:443", None).unwrap());
        let d = p.decide(&no);
        assert_eq!(d.effect, Effect::Block);
        assert!(d.reason.contains("evil.example:443"));
        assert_eq!(
            p.decide_all(&[ok.clone(), no.clone(), ok]).action,
            "net.connect"
        );
        assert_eq!(p.decide_all(&[]).effect, Effect::Block);
    }
}
