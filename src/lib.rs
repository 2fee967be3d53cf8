//! AgentGate: a zero-trust egress gate for AI agents.
//!
//! Module map (dependency direction: `main -> app -> proxy -> {actions, policy, tls}`):
//! - [`app`]: composition root; builds every component from the config, binds, runs, shuts down.
//! - [`config`]: the TOML file as serde structs, then a validated [`config::Config`].
//! - [`proxy`]: listener, CONNECT, interception, tunnels, the request pipeline, forwarding, and
//!   the one module ([`proxy::respond`]) that turns refusals into responses.
//! - [`tls`]: the local CA, per-host leaf certificates, upstream trust roots.
//! - [`actions`]: what a request does (name + params) and host canonicalisation; no I/O.
//! - [`policy`]: decisions; pure, no I/O, no clock.
//! - [`agent_env`]: the `export` lines that point an agent at the gate.

pub mod actions;
pub mod agent_env;
pub mod app;
pub mod config;
pub mod policy;
pub mod proxy;
pub mod tls;
