//! CONNECT: parse the target, refuse the gate's own addresses, then either intercept (guarded
//! hosts) or decide `net.connect` and open a blind tunnel.

use std::sync::Arc;

use http::{Request, Response};
use hyper::body::Incoming;

use super::respond::{self, Refusal, RequestId};
use super::{ProxyState, RespBody, intercept, tunnel};
use crate::actions::Action;
use crate::actions::host::Authority;
use crate::agents::Agent;
use crate::audit::DecisionRecord;
use crate::policy::{Decision, Effect};

/// Answers one CONNECT request; the tunnel itself runs in a task of its own.
pub async fn handle(
    state: Arc<ProxyState>,
    agent: Arc<Agent>,
    mut req: Request<Incoming>,
) -> Response<RespBody> {
    let rid = RequestId::new();
    match open(&state, agent, &mut req, &rid).await {
        Ok(()) => respond::connect_established(),
        Err(refusal) => {
            tracing::info!(request_id = %rid, uri = %req.uri(), ?refusal, "CONNECT refused");
            respond::refusal(&refusal, &rid)
        }
    }
}

async fn open(
    state: &Arc<ProxyState>,
    agent: Arc<Agent>,
    req: &mut Request<Incoming>,
    rid: &RequestId,
) -> Result<(), Refusal> {
    let target = connect_target(req)?;
    if state.is_own_address(&target) {
        return Err(own_address(&target));
    }
    if state.intercepts(&target.host) {
        let upgrade = hyper::upgrade::on(req);
        let state = state.clone();
        tokio::spawn(async move {
            match upgrade.await {
                Ok(io) => intercept::serve(state, io, target, agent).await,
                Err(e) => tracing::debug!("CONNECT upgrade failed: {e}"),
            }
        });
        return Ok(());
    }
    let actions = [Action::net_connect(&target)];
    let now = crate::decider::now_ms();
    let decision = state.decider.admit(&actions, &agent.name, "none", now);
    state.metrics.decided(&decision);
    let record = DecisionRecord::new(
        now,
        &agent.name,
        &rid.to_string(),
        "none",
        &decision,
        &actions,
    );
    state.audit.decision(record).await.map_err(|e| {
        state.metrics.audit_write_error();
        Refusal::Audit(format!(
            "the audit log cannot record this tunnel ({e}); it was not opened"
        ))
    })?;
    if decision.effect != Effect::Allow {
        return Err(Refusal::Blocked(decision));
    }
    let upstream = state
        .forwarder
        .dialer()
        .dial(&target)
        .await
        .map_err(|e| Refusal::Upstream(format!("cannot open a tunnel to {target}: {e}")))?;
    let upgrade = hyper::upgrade::on(req);
    let idle = state.limits.idle_timeout;
    tokio::spawn(async move {
        match upgrade.await {
            Ok(io) => tunnel::run(io, upstream, idle).await,
            Err(e) => tracing::debug!("CONNECT upgrade failed: {e}"),
        }
    });
    Ok(())
}

/// The CONNECT target, which must be authority-form `host:port`.
fn connect_target(req: &Request<Incoming>) -> Result<Authority, Refusal> {
    let uri = req.uri();
    let authority = match (uri.scheme(), uri.authority(), uri.path_and_query()) {
        (None, Some(a), None) => a.as_str(),
        _ => {
            return Err(Refusal::BadRequest(format!(
                "CONNECT needs a host:port target, not {uri}"
            )));
        }
    };
    Authority::parse(authority, None).map_err(|e| {
        Refusal::BadRequest(format!("the CONNECT target {authority:?} is refused: {e}"))
    })
}

/// The block for a request aimed at the gate itself (its proxy or dashboard port).
pub fn own_address(target: &Authority) -> Refusal {
    Refusal::Blocked(Decision::blocked(
        "builtin:gate-address",
        "net.connect",
        format!("{target} is the gate's own address and is not reachable through the proxy"),
    ))
}
