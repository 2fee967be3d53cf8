//! `GET /api/audit?after=SEQ&limit=N` (records as JSON, oldest first), `GET
//! /api/audit/export?since=&until=&agent=&action=&decision=&last=N` (JSON lines, as `agentgate
//! audit export` prints them; `last=N` keeps only the newest N lines, for the page), `GET
//! /api/audit/verify` (the chain check). Store reads run on a blocking thread.

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::Bytes;
use http::{Response, StatusCode};

use super::reply::{self, ApiError, Body};
use crate::audit::{Audit, Filter};

/// Most records one `GET /api/audit` returns.
const MAX_AUDIT_PAGE: usize = 1000;
/// Most lines `last=N` keeps.
const MAX_LAST: usize = 10_000;

pub async fn handle(
    audit: &Arc<Audit>,
    path: &str,
    query: &str,
) -> Result<Response<Body>, ApiError> {
    let params: Vec<(String, String)> = crate::actions::canonical::parse_query(query)
        .map_err(|e| ApiError::BadRequest(format!("the query does not parse: {e}")))?;
    let get = |k: &str| {
        params
            .iter()
            .find(|(n, v)| n == k && !v.is_empty())
            .map(|(_, v)| v.clone())
    };
    let audit = audit.clone();
    match path {
        "/api/audit/verify" => {
            blocking(move || {
                Ok(reply::json(
                    StatusCode::OK,
                    &serde_json::json!(audit.verify()),
                ))
            })
            .await
        }
        "/api/audit/export" => {
            let filter = Filter::parse(
                get("since").as_deref(),
                get("until").as_deref(),
                get("agent").as_deref(),
                get("action").as_deref(),
                get("decision").as_deref(),
            )
            .map_err(|e| ApiError::BadRequest(e.to_string()))?;
            let last = get("last")
                .map(|l| l.parse::<usize>())
                .transpose()
                .map_err(|_| ApiError::BadRequest("last is a number of lines".into()))?
                .map(|n| n.clamp(1, MAX_LAST));
            blocking(move || export(&audit, &filter, last)).await
        }
        _ => {
            let after = get("after")
                .map(|a| a.parse::<u64>())
                .transpose()
                .map_err(|_| ApiError::BadRequest("after is a sequence number".into()))?
                .unwrap_or(0);
            let limit = get("limit")
                .map(|l| l.parse::<usize>())
                .transpose()
                .map_err(|_| ApiError::BadRequest("limit is a number".into()))?
                .unwrap_or(100)
                .clamp(1, MAX_AUDIT_PAGE);
            blocking(move || {
                let records = audit
                    .after(after, limit)
                    .map_err(|e| ApiError::Internal(e.to_string()))?;
                let next = records.last().map_or(after, |r| r.seq);
                Ok(reply::json(
                    StatusCode::OK,
                    &serde_json::json!({"records": records, "next": next}),
                ))
            })
            .await
        }
    }
}

/// Runs a store read on a blocking thread.
async fn blocking<F>(f: F) -> Result<Response<Body>, ApiError>
where
    F: FnOnce() -> Result<Response<Body>, ApiError> + Send + 'static,
{
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::Internal(format!("the audit read failed: {e}")))?
}

fn export(audit: &Audit, filter: &Filter, last: Option<usize>) -> Result<Response<Body>, ApiError> {
    let mut out = Vec::new();
    match last {
        None => {
            crate::audit::cli::write_lines(audit.export(filter), &mut out)
                .map_err(|e| ApiError::Internal(e.to_string()))?;
        }
        Some(n) => {
            let mut kept = VecDeque::with_capacity(n.min(1024));
            for r in audit.export(filter).flatten() {
                if kept.len() == n {
                    kept.pop_front();
                }
                kept.push_back(r);
            }
            crate::audit::cli::write_lines(kept.into_iter().map(Ok), &mut out)
                .map_err(|e| ApiError::Internal(e.to_string()))?;
        }
    }
    Ok(reply::bytes("application/x-ndjson", Bytes::from(out)))
}
