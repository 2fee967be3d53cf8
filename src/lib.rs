//! AgentGate: a zero-trust egress gate for AI agents.
//!
//! Module map (dependency direction: `main -> app -> proxy -> {actions, policy, tls}`):
//! - [`app`]: composition root; builds every component from the config, binds, runs, shuts down.
//! - [`config`]: the TOML file as serde structs, then a validated [`config::Config`].
//! - [`proxy`]: listener, CONNECT, interception, tunnels, the request pipeline, forwarding, and
//!   the one module ([`proxy::respond`]) that turns refusals into responses.
//! - [`tls`]: the local CA, per-host leaf certificates, upstream trust roots.
//! - [`actions`]: what a request does: canonicalisation, the catalog and its generated route
//!   tables, one pure classifier per protocol (git smart HTTP, ...); no I/O.
//! - [`policy`]: decisions; pure, no I/O, no clock.
//! - [`dashboard`]: the reviewers' listener: `/metrics` (the reviewer API comes with step-up).
//! - [`decider`]: admission: the active policy decides, the counters reserve what it admits.
//! - [`policy_cli`]: `agentgate policy check|test|explain`.
//! - [`policy_files`]: the policy directory: reading a set, hot reload.
//! - [`counters`]: the sliding-window counts behind `count(...)`; reserved at admission, in sled.
//! - [`metrics`]: the counters and histograms served at `/metrics`.
//! - [`store`]: the data directory's sled database, opened once per process.
//! - [`audit_cli`]: `agentgate audit export|verify`, from the store or the running gate's API.
//! - [`challenges_cli`]: `agentgate challenges|approve|deny`, through the running gate's API.
//! - [`audit`]: the tamper-evident audit log: redacted records, hash chain, group-committed
//!   sled store, retention, export and verify.
//! - [`holds`]: step-up challenges: exactly-one resolution, bounds, deadlines, sled-stored.
//! - [`agents`]: agent identity from the proxy credentials; the default agent's token.
//! - [`agent_env`]: the `export` lines that point an agent at the gate.
//! - [`classify`]: `agentgate classify`, one raw request in, its actions and decision out.
//! - [`vault`]: real tokens: the vault trait, its backends (env, file, command, auth0), `Secret`.

pub mod actions;
pub mod agent_env;
pub mod agents;
pub mod app;
pub mod audit;
pub mod audit_cli;
pub mod challenges_cli;
pub mod classify;
pub mod config;
pub mod counters;
pub mod dashboard;
pub mod decider;
pub mod demo;
pub mod holds;
pub mod metrics;
pub mod policy;
pub mod policy_cli;
pub mod policy_files;
pub mod proxy;
pub mod store;
pub mod tls;
pub mod vault;
