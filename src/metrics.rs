//! The gate's metrics, served at `/metrics` on the dashboard listener (OpenMetrics text, which
//! Prometheus scrapes): requests by decision and action family, latency histograms, held
//! requests, vault errors, rules fired on error, audit write failures, policy reloads.

use std::sync::atomic::AtomicU64;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DecisionLabels {
    decision: String,
    family: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RuleLabels {
    rule: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProviderLabels {
    provider: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: String,
}

/// Every metric the gate keeps.
pub struct Metrics {
    registry: Registry,
    requests: Family<DecisionLabels, Counter>,
    request_seconds: Histogram,
    upstream_seconds: Histogram,
    held: Gauge<i64, std::sync::atomic::AtomicI64>,
    vault_errors: Family<ProviderLabels, Counter>,
    fired_on_error: Family<RuleLabels, Counter>,
    audit_write_errors: Counter<u64, AtomicU64>,
    policy_reloads: Family<ResultLabels, Counter>,
    resident: Gauge<i64, std::sync::atomic::AtomicI64>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

/// The family of an action for the requests counter: `github`, `gmail`, `git`, `http`, `net`.
pub fn family(action: &str) -> &str {
    action.split('.').next().unwrap_or("")
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("agentgate");
        let requests = Family::<DecisionLabels, Counter>::default();
        registry.register(
            "requests",
            "Requests decided, by decision and action family",
            requests.clone(),
        );
        // 50 us to about 26 s.
        let request_seconds = Histogram::new(exponential_buckets(0.000_05, 2.0, 20));
        registry.register(
            "request_seconds",
            "Time from a request's head at the gate to its response head (allowed requests include the upstream)",
            request_seconds.clone(),
        );
        let upstream_seconds = Histogram::new(exponential_buckets(0.000_05, 2.0, 20));
        registry.register(
            "upstream_seconds",
            "Time the upstream took to answer with a response head",
            upstream_seconds.clone(),
        );
        let held = Gauge::<i64, std::sync::atomic::AtomicI64>::default();
        registry.register(
            "held_requests",
            "Requests held for a reviewer now",
            held.clone(),
        );
        let vault_errors = Family::<ProviderLabels, Counter>::default();
        registry.register(
            "vault_errors",
            "Token fetches that failed (the request got 503)",
            vault_errors.clone(),
        );
        let fired_on_error = Family::<RuleLabels, Counter>::default();
        registry.register(
            "rules_fired_on_error",
            "Rules that fired because a condition could not be evaluated",
            fired_on_error.clone(),
        );
        let audit_write_errors = Counter::<u64, AtomicU64>::default();
        registry.register(
            "audit_write_errors",
            "Audit records that could not be written (the request was refused)",
            audit_write_errors.clone(),
        );
        let policy_reloads = Family::<ResultLabels, Counter>::default();
        registry.register(
            "policy_reloads",
            "Policy set loads, by result (loaded or failed)",
            policy_reloads.clone(),
        );
        let resident = Gauge::<i64, std::sync::atomic::AtomicI64>::default();
        registry.register(
            "resident_memory_bytes",
            "Resident memory of the gate's process (VmRSS), read at each scrape",
            resident.clone(),
        );
        Metrics {
            registry,
            resident,
            requests,
            request_seconds,
            upstream_seconds,
            held,
            vault_errors,
            fired_on_error,
            audit_write_errors,
            policy_reloads,
        }
    }

    /// One decided request: its decision, the family of its (first) action, the rules that
    /// fired on an error.
    pub fn decided(&self, decision: &crate::policy::Decision) {
        self.requests
            .get_or_create(&DecisionLabels {
                decision: decision.effect.as_str().to_string(),
                family: family(&decision.action).to_string(),
            })
            .inc();
        for f in decision.fired.iter().filter(|f| f.fired_on_error) {
            self.fired_on_error
                .get_or_create(&RuleLabels {
                    rule: f.rule.to_string(),
                })
                .inc();
        }
    }

    pub fn request_time(&self, d: Duration) {
        self.request_seconds.observe(d.as_secs_f64());
    }

    pub fn upstream_time(&self, d: Duration) {
        self.upstream_seconds.observe(d.as_secs_f64());
    }

    pub fn vault_error(&self, provider: &str) {
        self.vault_errors
            .get_or_create(&ProviderLabels {
                provider: provider.to_string(),
            })
            .inc();
    }

    pub fn audit_write_error(&self) {
        self.audit_write_errors.inc();
    }

    pub fn policy_reload(&self, ok: bool) {
        self.policy_reloads
            .get_or_create(&ResultLabels {
                result: if ok { "loaded" } else { "failed" }.to_string(),
            })
            .inc();
    }

    /// A request starts or stops being held for a reviewer.
    pub fn held_change(&self, delta: i64) {
        self.held.inc_by(delta);
    }

    /// The text exposition.
    pub fn encode(&self) -> String {
        if let Some(bytes) = resident_bytes() {
            self.resident.set(bytes);
        }
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
            out.push_str("# EOF\n");
        }
        out
    }
}

/// This process's resident memory, from `/proc/self/status` (Linux; `None` elsewhere).
fn resident_bytes() -> Option<i64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kb: i64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    kb.checked_mul(1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_process_memory_is_read_at_each_scrape() {
        let m = Metrics::new();
        let text = m.encode();
        let line = text
            .lines()
            .find(|l| l.starts_with("agentgate_resident_memory_bytes "))
            .unwrap();
        let bytes: i64 = line.rsplit(' ').next().unwrap().parse().unwrap();
        // More than a megabyte, less than the machine.
        assert!(bytes > 1 << 20 && bytes < 1 << 40, "{line}");
    }

    #[test]
    fn counts_show_in_the_text() {
        let m = Metrics::new();
        let mut d = crate::policy::Decision::blocked("r", "github.repos.delete", "no");
        d.fired.push(crate::policy::Fired {
            rule: "r".into(),
            effect: "block",
            shadow: false,
            fired_on_error: true,
            errors: vec![],
            reason: "no".into(),
            annotations: None,
            action: "github.repos.delete".into(),
        });
        m.decided(&d);
        m.vault_error("github");
        m.request_time(Duration::from_micros(300));
        let text = m.encode();
        assert!(
            text.contains("agentgate_requests_total{decision=\"block\",family=\"github\"} 1"),
            "{text}"
        );
        assert!(text.contains("agentgate_rules_fired_on_error_total{rule=\"r\"} 1"));
        assert!(text.contains("agentgate_vault_errors_total{provider=\"github\"} 1"));
        assert!(text.contains("agentgate_request_seconds_count 1"));
        assert!(text.ends_with("# EOF\n"));
    }
}
