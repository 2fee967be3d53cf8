//! What the action catalog can produce: every action name and the type of each of its params.
//! Policies are type-checked against this at load, so a typo in an action or a param name, or
//! a comparison of a string with a number, is a load error instead of a rule that never fires.

use std::collections::BTreeMap;

use crate::actions::generated::{github_rest, gmail as gmail_routes};
use crate::actions::gmail;
use crate::actions::routes::{Loc, Route, Ty as RouteTy};

/// A type in the policy language.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ty {
    Str,
    Int,
    Bool,
    /// Milliseconds.
    Duration,
    /// Unix milliseconds.
    Timestamp,
    List(Box<Ty>),
    /// A record with known fields, or (None) an object whose fields are not described.
    Record(Option<BTreeMap<String, Ty>>),
    /// Known only at run time (untyped body fields, GraphQL arguments); a wrong type is an
    /// error then, and so fails closed.
    Any,
}

impl Ty {
    /// The type both may be: equal types stay, anything else is `Any`.
    pub fn join(&self, other: &Ty) -> Ty {
        if self == other { self.clone() } else { Ty::Any }
    }

    /// Whether a value of one type can be compared with a value of the other.
    pub fn compatible(&self, other: &Ty) -> bool {
        match (self, other) {
            (Ty::Any, _) | (_, Ty::Any) => true,
            (Ty::List(a), Ty::List(b)) => a.compatible(b),
            (Ty::Record(_), Ty::Record(_)) => true,
            (a, b) => a == b,
        }
    }

    pub fn name(&self) -> String {
        match self {
            Ty::Str => "string".into(),
            Ty::Int => "int".into(),
            Ty::Bool => "bool".into(),
            Ty::Duration => "duration".into(),
            Ty::Timestamp => "timestamp".into(),
            Ty::List(t) => format!("list of {}", t.name()),
            Ty::Record(_) => "record".into(),
            Ty::Any => "any".into(),
        }
    }
}

fn strs() -> Ty {
    Ty::List(Box::new(Ty::Str))
}

fn record(fields: &[(&str, Ty)]) -> Ty {
    Ty::Record(Some(
        fields
            .iter()
            .map(|(k, t)| (k.to_string(), t.clone()))
            .collect(),
    ))
}

/// One action the catalog can produce.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActionSchema {
    pub params: BTreeMap<String, Ty>,
    /// Params beyond those listed may occur (GraphQL arguments): any other name is `Any`.
    pub open: bool,
    /// What a `test` block's request uses unless it says otherwise.
    pub method: &'static str,
    pub host: &'static str,
    pub path: String,
}

impl ActionSchema {
    fn new(method: &'static str, host: &'static str, path: &str) -> ActionSchema {
        ActionSchema {
            params: BTreeMap::new(),
            open: false,
            method,
            host,
            path: path.to_string(),
        }
    }

    fn with(mut self, params: &[(&str, Ty)]) -> ActionSchema {
        for (k, t) in params {
            self.params.insert(k.to_string(), t.clone());
        }
        self
    }

    /// The type of a param, if the action has it.
    pub fn param(&self, name: &str) -> Option<Ty> {
        match self.params.get(name) {
            Some(t) => Some(t.clone()),
            None if self.open => Some(Ty::Any),
            None => None,
        }
    }
}

/// Every action of the catalog, plus the open family of GraphQL mutations.
#[derive(Debug, Clone)]
pub struct Schema {
    pub actions: BTreeMap<String, ActionSchema>,
    /// `github.graphql.<field>` for any mutation field: the gate has no GraphQL schema, so any
    /// field name is accepted in patterns and its arguments are `Any`.
    pub graphql_mutation: ActionSchema,
}

/// The prefix of GraphQL mutation actions.
pub const GRAPHQL_PREFIX: &str = "github.graphql.";

impl Schema {
    /// The schema of the built-in catalog.
    pub fn builtin() -> Schema {
        let mut actions = BTreeMap::new();
        for r in github_rest::ROUTES {
            add_route(&mut actions, r, "api.github.com", true);
        }
        for r in gmail_routes::ROUTES {
            add_route(&mut actions, r, "gmail.googleapis.com", false);
        }
        let message = [
            ("to", strs()),
            ("cc", strs()),
            ("bcc", strs()),
            ("from", strs()),
            ("recipients", strs()),
            ("subject", Ty::Str),
            (
                "attachments",
                Ty::List(Box::new(record(&[
                    ("name", Ty::Str),
                    ("type", Ty::Str),
                    ("size", Ty::Int),
                ]))),
            ),
            ("size", Ty::Int),
            ("body_preview", Ty::Str),
            ("body_shape", Ty::Str),
            ("recipients_known", Ty::Bool),
            ("resumable", Ty::Str),
            ("id", Ty::Str),
        ];
        for r in gmail_routes::ROUTES.iter().filter(|r| gmail::reads_body(r)) {
            if let Some(a) = actions.get_mut(r.action) {
                for (k, t) in &message {
                    a.params.entry(k.to_string()).or_insert_with(|| t.clone());
                }
            }
        }
        let repo = [
            ("repo", Ty::Str),
            ("owner", Ty::Str),
            ("service", Ty::Str),
            ("phase", Ty::Str),
        ];
        actions.insert(
            "git.fetch".into(),
            ActionSchema::new("POST", "github.com", "/{owner}/{name}.git/git-upload-pack")
                .with(&repo),
        );
        let ref_update = record(&[
            ("name", Ty::Str),
            ("old", Ty::Str),
            ("new", Ty::Str),
            ("kind", Ty::Str),
        ]);
        actions.insert(
            "git.push".into(),
            ActionSchema::new("POST", "github.com", "/{owner}/{name}.git/git-receive-pack")
                .with(&repo)
                .with(&[
                    ("refs", Ty::List(Box::new(ref_update))),
                    ("push_options", strs()),
                    ("capabilities", strs()),
                    ("probe", Ty::Bool),
                ]),
        );
        actions.insert(
            "github.graphql.query".into(),
            ActionSchema::new("POST", "api.github.com", "/graphql")
                .with(&[("fields", strs()), ("operation", Ty::Str)]),
        );
        actions.insert(
            "http.request".into(),
            ActionSchema::new("GET", "api.github.com", "/")
                .with(&[("unparsed", Ty::Bool), ("reason", Ty::Str)]),
        );
        actions.insert(
            "net.connect".into(),
            ActionSchema::new("CONNECT", "example.com", "")
                .with(&[("host", Ty::Str), ("port", Ty::Int)]),
        );
        let mut graphql_mutation = ActionSchema::new("POST", "api.github.com", "/graphql")
            .with(&[("alias", Ty::Str), ("operation", Ty::Str)]);
        graphql_mutation.open = true;
        Schema {
            actions,
            graphql_mutation,
        }
    }

    /// The schema of an action name, the GraphQL family included.
    pub fn lookup(&self, name: &str) -> Option<&ActionSchema> {
        if let Some(a) = self.actions.get(name) {
            return Some(a);
        }
        let field = name.strip_prefix(GRAPHQL_PREFIX)?;
        is_graphql_name(field).then_some(&self.graphql_mutation)
    }
}

/// A GraphQL name: `[_A-Za-z][_0-9A-Za-z]*`.
pub fn is_graphql_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c == '_' || c.is_ascii_alphabetic())
        && chars.all(|c| c == '_' || c.is_ascii_alphanumeric())
}

fn route_ty(t: RouteTy) -> Ty {
    match t {
        RouteTy::Str => Ty::Str,
        RouteTy::Int => Ty::Int,
        RouteTy::Bool => Ty::Bool,
        RouteTy::Array => Ty::List(Box::new(Ty::Any)),
        RouteTy::Object => Ty::Record(None),
        RouteTy::Num | RouteTy::Any => Ty::Any,
    }
}

fn add_route(
    actions: &mut BTreeMap<String, ActionSchema>,
    r: &Route,
    host: &'static str,
    github: bool,
) {
    let a = actions
        .entry(r.action.to_string())
        .or_insert_with(|| ActionSchema::new(r.method, host, r.template));
    let path_names: Vec<&str> = r
        .params
        .iter()
        .filter(|p| p.loc == Loc::Path)
        .map(|p| p.name)
        .collect();
    for p in r.params {
        let carries_message = !github && matches!(p.name, "raw" | "message");
        if p.loc == Loc::Body && carries_message {
            continue;
        }
        let name = if p.loc == Loc::Body && path_names.contains(&p.name) {
            format!("body_{}", p.name)
        } else {
            p.name.to_string()
        };
        // Path values that do not fit their described type stay strings (catalog.rs), so a
        // typed path param may also be a string at run time: the check keeps its type and an
        // odd value fails closed as a type error.
        let ty = route_ty(p.ty);
        let ty = match a.params.get(&name) {
            Some(old) => old.join(&ty),
            None => ty,
        };
        a.params.insert(name, ty);
    }
    if github && path_names.contains(&"owner") {
        a.params.insert("owner".into(), Ty::Str);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_catalog_is_described() {
        let s = Schema::builtin();
        assert!(s.actions.len() > 1_000);
        let del = s.lookup("github.repos.delete").unwrap();
        assert_eq!(del.params.get("repo"), Some(&Ty::Str));
        assert_eq!(del.method, "DELETE");
        let send = s.lookup("gmail.users.messages.send").unwrap();
        assert_eq!(send.params.get("recipients"), Some(&strs()));
        assert!(!send.params.contains_key("raw"));
        let push = s.lookup("git.push").unwrap();
        assert!(matches!(push.params.get("refs"), Some(Ty::List(_))));
        assert!(s.lookup("github.graphql.deleteRef").is_some());
        assert!(s.lookup("github.graphql.delete-ref").is_none());
        assert!(s.lookup("gmail.user.messages.send").is_none());
        assert_eq!(
            s.lookup("github.graphql.deleteRef").unwrap().param("input"),
            Some(Ty::Any)
        );
    }
}
