//! The catalog: which classifier a request goes to (by host and path), the typed params of a
//! matched route, and the one `inspect` entry point the proxy and `agentgate classify` share.

use std::collections::BTreeSet;

use http::HeaderMap;
use serde::Serialize;
use serde_json::{Map, Value};

use super::routes::{Kind, Loc, Match, Route, Router, TableError, Ty};
use super::{
    Action, ClassifyError, Request, canonical, git_smart_http, github_graphql, gmail, gmail_batch,
};

/// Hosts that serve the GitHub REST and GraphQL APIs.
const GITHUB_API_HOSTS: [&str; 2] = ["api.github.com", "uploads.github.com"];
/// Hosts that serve the Gmail API (security.md: every alias is the same action).
const GOOGLE_API_HOSTS: [&str; 2] = ["gmail.googleapis.com", "www.googleapis.com"];

/// Everything the gate knows about the APIs it guards.
#[derive(Debug)]
pub struct Catalog {
    github: Router,
    gmail: Router,
    /// GitHub Enterprise Server hosts: REST under `/api/v3`, uploads under `/api/uploads`.
    enterprise: BTreeSet<String>,
}

/// What the pipeline inspected: the actions, and the body the upstream is to receive.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Inspected {
    pub actions: Vec<Action>,
    /// The effective method (after an honoured method override).
    pub method: String,
    /// The body with its Content-Encoding removed, when it had one: the gate forwards these
    /// bytes (and drops the Content-Encoding header), so the upstream gets what was inspected.
    #[serde(skip)]
    pub decoded_body: Option<Vec<u8>>,
}

impl Catalog {
    /// The catalog over the generated tables.
    pub fn builtin(enterprise: BTreeSet<String>) -> Result<Catalog, TableError> {
        Ok(Catalog {
            github: Router::new(super::generated::github_rest::ROUTES)?,
            gmail: Router::new(super::generated::gmail::ROUTES)?,
            enterprise,
        })
    }

    /// Whether the host honours `X-HTTP-Method-Override` (Google APIs do).
    pub fn honours_method_override(host: &str) -> bool {
        GOOGLE_API_HOSTS.contains(&host)
    }

    /// Canonicalises and classifies one whole request on an intercepted host.
    pub fn inspect(
        &self,
        host: &str,
        method: &str,
        path_and_query: &str,
        headers: &HeaderMap,
        body: &[u8],
        limit: u64,
    ) -> Result<Inspected, ClassifyError> {
        let (path, query) = path_and_query
            .split_once('?')
            .unwrap_or((path_and_query, ""));
        canonical::check_path(path)?;
        let query = canonical::parse_query(query)?;
        let method =
            canonical::effective_method(method, headers, Self::honours_method_override(host))?;
        let decoded_body = canonical::decode_body(headers, body, limit)?;
        let req = Request {
            host,
            method: &method,
            path,
            query: &query,
            headers,
            body: decoded_body.as_deref().unwrap_or(body),
        };
        let mut actions = self.classify(&req, limit)?;
        if path.contains('%')
            && path.split('/').any(canonical::has_encoded_slash)
            && actions.iter().any(|a| a.name == "http.request")
        {
            return Err(ClassifyError::Malformed(
                "an encoded slash is accepted only inside a multi-segment parameter of a described route"
                    .into(),
            ));
        }
        for a in &mut actions {
            add_common(a, &req);
        }
        Ok(Inspected {
            actions,
            method,
            decoded_body,
        })
    }

    fn classify(&self, req: &Request<'_>, limit: u64) -> Result<Vec<Action>, ClassifyError> {
        if GITHUB_API_HOSTS.contains(&req.host) {
            if req.path == "/graphql" {
                return github_graphql::classify(req);
            }
            return self.github_api(req, req.path).map(|a| vec![a]);
        }
        if GOOGLE_API_HOSTS.contains(&req.host) {
            if gmail_batch::is_batch_path(req.path) {
                return self.google_batch(req, limit);
            }
            return self.google(req).map(|a| vec![a]);
        }
        if self.enterprise.contains(req.host) {
            if req.path == "/api/graphql" {
                return github_graphql::classify(req);
            }
            for prefix in ["/api/v3", "/api/uploads"] {
                if let Some(rest) = req.path.strip_prefix(prefix) {
                    if rest.starts_with('/') {
                        return self.github_api(req, rest).map(|a| vec![a]);
                    }
                }
            }
        }
        if let Some(git) = git_smart_http::classify(req) {
            return git.map(|a| vec![a]);
        }
        Ok(vec![Action::unmapped()])
    }

    fn github_api(&self, req: &Request<'_>, path: &str) -> Result<Action, ClassifyError> {
        match self.github.matched(req.method, path) {
            Some(found) => {
                let mut params = route_params(&found, path, req)?;
                lower_repo(&mut params);
                Ok(Action::new(found.route.action, params))
            }
            None => Ok(Action::unmapped()),
        }
    }

    fn google(&self, req: &Request<'_>) -> Result<Action, ClassifyError> {
        match self.gmail.matched(req.method, req.path) {
            Some(found) => {
                let mut params = route_params(&found, req.path, req)?;
                gmail::message_params(found.route, req, &mut params)?;
                Ok(Action::new(found.route.action, params))
            }
            None => Ok(Action::unmapped()),
        }
    }

    /// A batch: every inner request canonicalised and classified as if sent on its own.
    fn google_batch(&self, req: &Request<'_>, limit: u64) -> Result<Vec<Action>, ClassifyError> {
        let mut actions = Vec::new();
        for (n, inner) in gmail_batch::split(req)?.into_iter().enumerate() {
            let part =
                |e: ClassifyError| ClassifyError::Malformed(format!("batch part {}: {e}", n + 1));
            let inspected = self
                .inspect(
                    req.host,
                    &inner.method,
                    &inner.path_and_query,
                    &inner.headers,
                    &inner.body,
                    limit,
                )
                .map_err(part)?;
            if inspected.decoded_body.is_some() {
                // The batch is forwarded as sent: an encoded part would reach the upstream in
                // another form than the one inspected.
                return Err(part(ClassifyError::Malformed(
                    "a Content-Encoding inside a batch part is not accepted".into(),
                )));
            }
            actions.extend(inspected.actions);
        }
        Ok(actions)
    }
}

/// Path, query and JSON-body params of a matched route (`path` is the path it matched),
/// typed from the description. A body field named like a path or query param (a variable's
/// new `name`, a draft's `id`) keeps its value under `body_<name>`.
fn route_params(
    found: &Match<'_>,
    path: &str,
    req: &Request<'_>,
) -> Result<Map<String, Value>, ClassifyError> {
    let route = found.route;
    // The body is parsed first, so that the params can be built in its map; a query error
    // is still the one reported when both are wrong.
    let mut fields = None;
    let mut body_error = None;
    if route.kind == Kind::Plain
        && !gmail::reads_body(route)
        && route.params.iter().any(|p| p.loc == Loc::Body)
        && !req.body.is_empty()
    {
        match canonical::parse_json(req.body) {
            Ok(Value::Object(body)) => fields = Some(described_fields(route, body)),
            Ok(_) => {}
            Err(e) => body_error = Some(e),
        }
    }
    // With distinct names, each path or query param goes straight into the body's map,
    // moving a body field it meets to `body_<name>`: the same result as merging the body
    // into the params field by field (`merge_body`), without a second map.
    let direct = found.distinct_names()
        && fields
            .as_ref()
            .is_some_and(|f| !f.keys().any(|k| k.starts_with("body_")));
    let mut params = match fields.take_if(|_| direct) {
        Some(fields) => fields,
        None => Map::new(),
    };
    let mut put = |name: &'static str, value: Value| {
        if direct {
            put_over_body(&mut params, name, value);
        } else {
            params.insert(name.to_string(), value);
        }
    };
    for (name, value) in found.captures(path) {
        let ty = ty_of(route, name, Loc::Path);
        let value = match ty {
            Ty::Int | Ty::Bool => typed(&value, ty),
            _ => Value::String(value.into_owned()),
        };
        put(name, value);
    }
    for p in route.params.iter().filter(|p| p.loc == Loc::Query) {
        let mut values = req
            .query
            .iter()
            .filter(|(k, _)| k == p.name)
            .map(|(_, v)| v.as_str());
        let Some(first) = values.next() else {
            continue;
        };
        let second = values.next();
        match (second, p.ty) {
            (_, Ty::Array) => {
                let list = std::iter::once(first)
                    .chain(second)
                    .chain(values)
                    .map(|v| Value::String(v.to_string()))
                    .collect();
                put(p.name, Value::Array(list));
            }
            (None, ty) => put(p.name, typed(first, ty)),
            (Some(_), _) => {
                return Err(ClassifyError::Malformed(format!(
                    "the query parameter {:?} is given more than once",
                    p.name
                )));
            }
        }
    }
    if let Some(e) = body_error {
        return Err(e);
    }
    Ok(match fields {
        Some(fields) => merge_body(params, fields),
        None => params,
    })
}

/// The body's fields that the route describes. A Gmail message travels in `raw` (or a
/// draft's `message.raw`); the message params describe it, so the base64 text is not copied
/// into params.
fn described_fields(route: &Route, mut body: Map<String, Value>) -> Map<String, Value> {
    let carries_message = route.action.starts_with("gmail.");
    body.retain(|name, _| {
        route
            .params
            .iter()
            .any(|p| p.loc == Loc::Body && p.name == name)
            && !(carries_message && matches!(name.as_str(), "raw" | "message"))
    });
    body
}

/// Puts a path or query param into a map of body fields, moving a field of that name to
/// `body_<name>`.
fn put_over_body(fields: &mut Map<String, Value>, name: &str, value: Value) {
    match fields.entry(name) {
        serde_json::map::Entry::Vacant(e) => {
            e.insert(value);
        }
        serde_json::map::Entry::Occupied(mut e) => {
            let field = std::mem::replace(e.get_mut(), value);
            fields.insert(format!("body_{name}"), field);
        }
    }
}

/// The path and query `params` with the described body `fields` added, one at a time in key
/// order: each under its own name, or under `body_<name>` when that name is taken.
fn merge_body(mut params: Map<String, Value>, fields: Map<String, Value>) -> Map<String, Value> {
    for (name, v) in fields {
        let key = if params.contains_key(&name) {
            format!("body_{name}")
        } else {
            name
        };
        params.insert(key, v);
    }
    params
}

fn ty_of(route: &Route, name: &str, loc: Loc) -> Ty {
    route
        .params
        .iter()
        .find(|p| p.name == name && p.loc == loc)
        .map_or(Ty::Str, |p| p.ty)
}

/// A path or query value typed as described; a value that does not fit stays a string, so a
/// policy comparing it as a number sees a type error and fails closed.
fn typed(value: &str, ty: Ty) -> Value {
    match ty {
        Ty::Int => value
            .parse::<i64>()
            .map_or_else(|_| Value::String(value.into()), Value::from),
        Ty::Bool => match value {
            "true" => Value::Bool(true),
            "false" => Value::Bool(false),
            _ => Value::String(value.into()),
        },
        _ => Value::String(value.into()),
    }
}

/// GitHub treats owners and repository names without case: `owner` is lower-cased and `repo`
/// becomes the lower-case `owner/name` (design.md section 4, the `gh` convention).
fn lower_repo(params: &mut Map<String, Value>) {
    // One walk over the (key-ordered) map holds both values at once; "owner" < "repo".
    let mut owner: Option<&mut String> = None;
    for (key, value) in params.iter_mut() {
        match (key.as_str(), value) {
            ("owner", Value::String(o)) => {
                o.make_ascii_lowercase();
                owner = Some(o);
            }
            ("owner", _) => return,
            ("repo", Value::String(repo)) => {
                if let Some(owner) = owner {
                    let mut full = String::with_capacity(owner.len() + 1 + repo.len());
                    full.push_str(owner);
                    full.push('/');
                    full.push_str(repo);
                    full.make_ascii_lowercase();
                    *repo = full;
                }
                return;
            }
            (k, _) if k > "repo" => return,
            _ => {}
        }
    }
}

/// Every action carries the request's host, effective method and path (actions of a batch
/// part already carry their own).
fn add_common(action: &mut Action, req: &Request<'_>) {
    if !action.method.is_empty() {
        return;
    }
    action.host = req.host.to_string();
    action.method = req.method.to_string();
    action.path = req.path.to_string();
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// `lower_repo` as first written (two lookups and a clone), the reference for the
    /// one-walk version.
    fn lower_repo_reference(params: &mut Map<String, Value>) {
        let owner = match params.get_mut("owner") {
            Some(Value::String(owner)) => {
                owner.make_ascii_lowercase();
                owner.clone()
            }
            _ => return,
        };
        if let Some(Value::String(repo)) = params.get_mut("repo") {
            repo.make_ascii_lowercase();
            repo.insert(0, '/');
            repo.insert_str(0, &owner);
        }
    }

    fn inspect(method: &str, target: &str, body: &[u8]) -> Result<Value, ClassifyError> {
        let catalog = Catalog::builtin(BTreeSet::new()).unwrap();
        let got = catalog.inspect(
            "api.github.com",
            method,
            target,
            &HeaderMap::new(),
            body,
            1 << 20,
        )?;
        Ok(Value::Object(got.actions[0].params.clone()))
    }

    #[test]
    fn body_fields_join_the_path_and_query_params() {
        let got = inspect(
            "PATCH",
            "/repos/Acme/API/actions/variables/OLD",
            br#"{"value":"v2","name":"NEW","undescribed":{"a":1}}"#,
        );
        let want = json!({"owner": "acme", "repo": "acme/api", "name": "OLD", "body_name": "NEW", "value": "v2"});
        assert_eq!(got.unwrap(), want);
        let got = inspect(
            "POST",
            "/orgs/acme/attestations/bulk-list?per_page=5&after=x",
            br#"{"subject_digests":["sha256:ab"],"per_page":"body"}"#,
        );
        let want =
            json!({"org": "acme", "per_page": 5, "after": "x", "subject_digests": ["sha256:ab"]});
        assert_eq!(got.unwrap(), want);
        let got = inspect("POST", "/orgs/acme/attestations/bulk-list", b"[1]");
        assert_eq!(got.unwrap(), json!({"org": "acme"}));
    }

    #[test]
    fn a_query_error_is_reported_before_a_body_error() {
        let target = "/orgs/acme/attestations/bulk-list?after=x&after=y";
        let e = inspect("POST", target, br#"{"a":1,"a":2}"#).unwrap_err();
        assert!(e.to_string().contains("more than once"), "{e}");
        let e = inspect(
            "POST",
            "/orgs/acme/attestations/bulk-list",
            br#"{"a":1,"a":2}"#,
        );
        assert!(e.unwrap_err().to_string().contains("duplicate key"));
    }

    #[test]
    fn params_put_over_the_body_match_the_merge() {
        let names = ["id", "name", "title", "labels", "body"];
        // Every pair of subsets (path and query params, body fields) of five names.
        for pm in 0u32..32 {
            for fm in 0u32..32 {
                let pick = |mask: u32| {
                    names
                        .iter()
                        .enumerate()
                        .filter(move |(i, _)| mask & (1 << i) != 0)
                };
                let params: Map<String, Value> = pick(pm)
                    .map(|(_, n)| (n.to_string(), json!(format!("param:{n}"))))
                    .collect();
                let fields: Map<String, Value> = pick(fm)
                    .map(|(_, n)| (n.to_string(), json!(format!("field:{n}"))))
                    .collect();
                let want = merge_body(params.clone(), fields.clone());
                let mut got = fields;
                for (n, v) in params {
                    put_over_body(&mut got, &n, v);
                }
                assert_eq!(got, want, "{pm:05b} {fm:05b}");
            }
        }
    }

    #[test]
    fn lower_repo_matches_the_reference() {
        for v in [
            json!({"owner": "Acme", "repo": "API", "title": "X"}),
            json!({"owner": "Acme", "title": "X"}),
            json!({"repo": "API", "title": "X"}),
            json!({"owner": 5, "repo": "API"}),
            json!({"owner": "Acme", "repo": 5}),
            json!({"a": "B", "owner": "ÄcMe", "path": "P", "repo": "Ré", "z": "Z"}),
            json!({}),
        ] {
            let Value::Object(mut got) = v.clone() else {
                unreachable!()
            };
            let Value::Object(mut want) = v else {
                unreachable!()
            };
            lower_repo(&mut got);
            lower_repo_reference(&mut want);
            assert_eq!(got, want);
        }
    }
}
