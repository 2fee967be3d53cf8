//! GitHub GraphQL: maps a `POST /graphql` request to one action per root mutation field, or to
//! one `github.graphql.query` (wire-formats.md section 3, design.md section 4).
//!
//! | executed operation                | actions                                              |
//! |-----------------------------------|------------------------------------------------------|
//! | `query` (or the `{ … }` shorthand)| one `github.graphql.query`: `fields`, `operation`    |
//! | `mutation`                        | `github.graphql.<field>` per root field, in order    |
//! | `subscription`                    | refused (GitHub has none)                            |
//! | persisted query, or a document that does not parse | one `http.request`: `unparsed: true`, `reason` |
//!
//! A mutation action is named by the schema field, never the alias (`x: deleteRef(…)` is
//! `github.graphql.deleteRef`). Its params are the field's arguments as JSON, variables
//! substituted, so they mirror GitHub's input objects (`params.input.refId`); enum values become
//! strings. `alias` is added when the field has one and `operation` always (the operation's
//! name, or null). Fragment spreads and inline fragments in the root selection set are expanded
//! whatever their type condition, and fields under `@skip`/`@include` are still reported: the
//! gate reports everything that could run, which is stricter than what will. `__typename` at
//! the root selects no mutation and is left out.
//!
//! The body is JSON (`query`, `variables`, `operationName`; `extensions` and other fields are
//! ignored), whatever its Content-Type, as GitHub reads it; `Content-Type: application/graphql`
//! sends the document itself. Anything this module could read differently from GitHub is
//! refused rather than repaired: a JSON array (a batch), duplicate JSON keys, a method other
//! than POST or a query string on the endpoint, an ambiguous or unknown operation, an
//! undeclared variable, a missing or null non-null variable, repeated arguments or input-object
//! fields (the parser would keep only the last), strings the parser decodes differently from
//! the GraphQL spec, and any limit exceeded.
//!
//! The parser is recursive, so the document is lexed first (without recursion) to bound its
//! size and nesting before it is parsed. Types are not checked: there is no schema here.

use std::collections::{HashMap, HashSet};

use graphql_parser::query::{
    Definition, Document, Field, FragmentDefinition, OperationDefinition, Selection, SelectionSet,
    Type, Value as GqlValue, VariableDefinition,
};
use serde_json::{Map, Value};

use super::{Action, ClassifyError, Request, canonical};

/// Largest document accepted, in bytes of text.
pub const MAX_DOCUMENT_BYTES: usize = 1024 * 1024;
/// Deepest bracket nesting (`(`, `[` and `{` together) accepted. graphql-parser's tokenizer
/// stops at 50, but its recursive parse of 50 nested selection sets needs over 1 MiB of stack
/// in a debug build (about 200 KiB in release); 32 stays near half of a 2 MiB tokio worker's
/// stack in debug, and real GitHub queries rarely nest past 15.
pub const MAX_DEPTH: usize = 32;
/// Most root fields one mutation may select (after fragments are expanded).
pub const MAX_MUTATION_FIELDS: usize = 100;
/// Deepest chain of fragments (spreads and inline fragments) expanded at the root.
pub const MAX_FRAGMENT_DEPTH: usize = 32;
/// Most root selections visited while expanding fragments (bounds `...A` spread twice in `A1`,
/// `A1` twice in `A2`, and so on).
pub const MAX_ROOT_SELECTIONS: usize = 10_000;
/// Body fields that name a stored document instead of sending one.
const PERSISTED_ID_FIELDS: [&str; 3] = ["id", "doc_id", "documentId"];
/// Longest parser message quoted in an `unparsed` reason.
const MAX_REASON_CHARS: usize = 300;
/// Params the classifier adds beside the arguments.
const RESERVED_PARAMS: [&str; 2] = ["alias", "operation"];

type Doc<'a> = Document<'a, &'a str>;
type Fragment<'a> = FragmentDefinition<'a, &'a str>;
type Selections<'a> = SelectionSet<'a, &'a str>;
type VarDef<'a> = VariableDefinition<'a, &'a str>;
type GqlField<'a> = Field<'a, &'a str>;
type Val<'a> = GqlValue<'a, &'a str>;

fn bad(msg: impl Into<String>) -> ClassifyError {
    ClassifyError::Malformed(msg.into())
}

/// Classifies a GitHub GraphQL request (`POST /graphql`, or `POST /api/graphql` on GitHub
/// Enterprise Server; the catalog routes, this reads the body).
///
/// `Err` when the request is refused (400); otherwise at least one action. The caller adds
/// host, method and path.
pub fn classify(req: &Request<'_>) -> Result<Vec<Action>, ClassifyError> {
    if req.method != "POST" {
        return Err(bad(format!(
            "GitHub GraphQL takes POST, not {}",
            req.method
        )));
    }
    if !req.query.is_empty() {
        // A server that merges URL and body parameters could take `variables` or
        // `operationName` from the URL, unseen by the policy.
        return Err(bad("the GraphQL endpoint takes no query string"));
    }
    match read_body(req)? {
        Body::Persisted(reason) => Ok(vec![unparsed(reason)]),
        Body::Document(gql) => match classify_document(&gql) {
            Ok(actions) => Ok(actions),
            Err(Reject::Unparsed(reason)) => Ok(vec![unparsed(reason)]),
            Err(Reject::Refused(e)) => Err(e),
        },
    }
}

/// The one action for a request the gate cannot read: the shipped policy blocks it.
fn unparsed(reason: String) -> Action {
    let mut params = Map::new();
    params.insert("unparsed".into(), Value::Bool(true));
    params.insert("reason".into(), Value::String(reason));
    Action::new("http.request", params)
}

/// What the body asks GitHub to run.
#[derive(Debug)]
enum Body {
    Document(GraphqlRequest),
    /// A persisted query: the document is not in the request.
    Persisted(String),
}

#[derive(Debug)]
struct GraphqlRequest {
    document: String,
    operation_name: Option<String>,
    variables: Map<String, Value>,
}

/// Why a document yields no classified actions.
#[derive(Debug)]
enum Reject {
    /// It does not parse: one `http.request` with `unparsed: true`.
    Unparsed(String),
    /// It parses but is refused (400).
    Refused(ClassifyError),
}

impl From<ClassifyError> for Reject {
    fn from(e: ClassifyError) -> Reject {
        Reject::Refused(e)
    }
}

fn refused(msg: impl Into<String>) -> Reject {
    Reject::Refused(bad(msg))
}

fn read_body(req: &Request<'_>) -> Result<Body, ClassifyError> {
    if raw_document(req.headers)? {
        if req.body.len() > MAX_DOCUMENT_BYTES {
            return Err(too_long());
        }
        let text = std::str::from_utf8(req.body)
            .map_err(|_| bad("the application/graphql body is not UTF-8"))?;
        return Ok(Body::Document(GraphqlRequest {
            document: text.to_string(),
            operation_name: None,
            variables: Map::new(),
        }));
    }
    match canonical::parse_json(req.body)? {
        Value::Object(fields) => json_request(fields),
        Value::Array(_) => Err(bad(
            "batched GraphQL requests (a JSON array) are refused: GitHub does not batch",
        )),
        _ => Err(bad("the GraphQL request body is not a JSON object")),
    }
}

/// Whether the body is the document itself (`Content-Type: application/graphql`).
fn raw_document(headers: &http::HeaderMap) -> Result<bool, ClassifyError> {
    let mut values = headers.get_all(http::header::CONTENT_TYPE).iter();
    let Some(value) = values.next() else {
        return Ok(false);
    };
    if values.next().is_some() {
        return Err(bad("the request has more than one Content-Type"));
    }
    let value = value
        .to_str()
        .map_err(|_| bad("the Content-Type is not ASCII"))?;
    let media = value.split(';').next().unwrap_or_default().trim();
    Ok(media.eq_ignore_ascii_case("application/graphql"))
}

fn json_request(mut fields: Map<String, Value>) -> Result<Body, ClassifyError> {
    if let Some(key) = PERSISTED_ID_FIELDS
        .iter()
        .find(|k| fields.contains_key(**k))
    {
        return Ok(Body::Persisted(format!(
            "persisted query: the request names a stored document by {key:?} instead of sending it"
        )));
    }
    let extensions = match fields.remove("extensions") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(m)) => m,
        Some(_) => return Err(bad("extensions must be a JSON object or null")),
    };
    let operation_name = match fields.remove("operationName") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s),
        Some(_) => return Err(bad("operationName must be a string or null")),
    };
    let variables = match fields.remove("variables") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(m)) => m,
        Some(_) => return Err(bad("variables must be a JSON object or null")),
    };
    match fields.remove("query") {
        Some(Value::String(document)) => Ok(Body::Document(GraphqlRequest {
            document,
            operation_name,
            variables,
        })),
        Some(Value::Null) | None if extensions.contains_key("persistedQuery") => {
            Ok(Body::Persisted(
                "persisted query: the request sends extensions.persistedQuery instead of a \
                 document"
                    .into(),
            ))
        }
        Some(Value::Null) | None => Err(bad("the GraphQL request has no query")),
        Some(_) => Err(bad("the GraphQL query must be a string")),
    }
}

fn too_long() -> ClassifyError {
    bad(format!(
        "the GraphQL document is over {MAX_DOCUMENT_BYTES} bytes"
    ))
}

fn classify_document(gql: &GraphqlRequest) -> Result<Vec<Action>, Reject> {
    let text = gql.document.as_str();
    if text.len() > MAX_DOCUMENT_BYTES {
        return Err(Reject::Refused(too_long()));
    }
    check_tokens(&lex(text)?)?;
    let doc: Doc<'_> = graphql_parser::parse_query(text).map_err(|e| {
        // One line, and short: the message quotes the offending token, which can be long.
        let msg: String = e
            .to_string()
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
            .chars()
            .take(MAX_REASON_CHARS)
            .collect();
        Reject::Unparsed(format!("the GraphQL document does not parse: {msg}"))
    })?;
    let fragments = fragments(&doc)?;
    let op = select_operation(&doc, gql.operation_name.as_deref())?;
    let fields = RootFields::collect(op.selection, &fragments)?;
    match op.kind {
        OpKind::Query => Ok(vec![query_action(op.name, &fields)]),
        OpKind::Subscription => Err(refused(
            "GraphQL subscriptions are refused: GitHub has none",
        )),
        OpKind::Mutation => {
            let vars = Vars::new(op.variables, &gql.variables)?;
            Ok(mutation_actions(op.name, &fields, &vars)?)
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Lexing: bounds the document before the recursive parser sees it.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TokKind {
    Punct,
    Name,
    Number,
    Str,
}

#[derive(Debug, Clone, Copy)]
struct Tok<'a> {
    kind: TokKind,
    text: &'a str,
}

/// Bytes that end a number token, as graphql-parser reads them.
const NUMBER_END: &[u8] = b" \n\r\t,#!$:=@|&()[]{}";

/// Splits a document into tokens the way graphql-parser's tokenizer does (whitespace, commas,
/// `#` comments and byte-order marks are skipped). A token it could not read is `Unparsed`.
fn lex(text: &str) -> Result<Vec<Tok<'_>>, Reject> {
    let mut toks = Vec::new();
    let mut i = 0;
    while i < text.len() {
        let (kind, end) = next_token(text, i)?;
        if let Some(kind) = kind {
            let text = text
                .get(i..end)
                .ok_or_else(|| Reject::Unparsed("the GraphQL document is not lexable".into()))?;
            toks.push(Tok { kind, text });
        }
        i = end;
    }
    Ok(toks)
}

/// The token starting at byte `i` (`None` for whitespace, a comma, a comment or a byte-order
/// mark) and the byte where it ends.
fn next_token(text: &str, i: usize) -> Result<(Option<TokKind>, usize), Reject> {
    let b = text.as_bytes();
    let Some(&c) = b.get(i) else {
        return Ok((None, b.len()));
    };
    Ok(match c {
        b' ' | b'\t' | b'\n' | b'\r' | b',' => (None, i + 1),
        b'#' => (None, scan(b, i, |c| c != b'\n' && c != b'\r')),
        b'(' | b'[' | b'{' | b')' | b']' | b'}' | b'!' | b'$' | b':' | b'=' | b'@' | b'|'
        | b'&' => (Some(TokKind::Punct), i + 1),
        b'.' if b.get(i..i + 3) == Some(b"...") => (Some(TokKind::Punct), i + 3),
        b'_' | b'a'..=b'z' | b'A'..=b'Z' => (
            Some(TokKind::Name),
            scan(b, i, |c| c.is_ascii_alphanumeric() || c == b'_'),
        ),
        b'-' | b'0'..=b'9' => (
            Some(TokKind::Number),
            scan(b, i + 1, |c| !NUMBER_END.contains(&c)),
        ),
        b'"' if b.get(i..i + 3) == Some(b"\"\"\"") => {
            (Some(TokKind::Str), block_string_end(text, i)?)
        }
        b'"' => (Some(TokKind::Str), string_end(b, i)?),
        _ if text.get(i..).is_some_and(|t| t.starts_with('\u{feff}')) => {
            (None, i + '\u{feff}'.len_utf8())
        }
        _ => {
            let ch = text.get(i..).and_then(|t| t.chars().next());
            return Err(Reject::Unparsed(format!(
                "the GraphQL document has an unexpected character {ch:?}"
            )));
        }
    })
}

/// The first index at or after `from` whose byte is not `keep`, or the end.
fn scan(b: &[u8], from: usize, keep: impl Fn(u8) -> bool) -> usize {
    b.get(from..)
        .and_then(|rest| rest.iter().position(|&c| !keep(c)))
        .map_or(b.len(), |p| from + p)
}

/// The end of the string starting at `start` (its opening quote). graphql-parser decodes `\b`
/// as U+0010, not the backspace GitHub reads, so it is refused.
fn string_end(b: &[u8], start: usize) -> Result<usize, Reject> {
    let mut escaped = false;
    let mut i = start + 1;
    while let Some(&c) = b.get(i) {
        match c {
            b'"' if !escaped => return Ok(i + 1),
            b'\n' => break,
            b'b' if escaped => {
                return Err(refused(
                    "the GraphQL document has a \\b escape, which the gate's parser misreads",
                ));
            }
            _ => {}
        }
        escaped = !escaped && c == b'\\';
        i += 1;
    }
    Err(Reject::Unparsed(
        "the GraphQL document has an unterminated string".into(),
    ))
}

/// The end of the block string starting at `start`: the first `"""` not preceded by `\`.
/// graphql-parser splits its lines and strips its indentation differently from the spec (and
/// can panic) when it holds a lone CR or whitespace other than space and tab, so those are
/// refused.
fn block_string_end(text: &str, start: usize) -> Result<usize, Reject> {
    let body_start = start + 3;
    let tail = text.get(body_start..).unwrap_or_default();
    let end = tail
        .match_indices("\"\"\"")
        .map(|(idx, _)| idx)
        .find(|&idx| !tail.get(..idx).is_some_and(|t| t.ends_with('\\')))
        .ok_or_else(|| {
            Reject::Unparsed("the GraphQL document has an unterminated block string".into())
        })?;
    let content = tail.get(..end).unwrap_or_default();
    let mut chars = content.chars().peekable();
    while let Some(c) = chars.next() {
        let lone_cr = c == '\r' && chars.peek() != Some(&'\n');
        if lone_cr || (c.is_whitespace() && !matches!(c, ' ' | '\t' | '\n' | '\r')) {
            return Err(refused(
                "a GraphQL block string may hold only spaces, tabs and newlines as whitespace",
            ));
        }
    }
    Ok(body_start + end + 3)
}

/// An open bracket while checking tokens.
#[derive(Debug)]
struct Frame<'a> {
    open: &'a str,
    /// The field names seen so far, when the bracket opens an input-object value.
    keys: Option<HashSet<&'a str>>,
}

/// Bounds the nesting, checks that brackets balance, and refuses an input-object value that
/// repeats a field (graphql-parser keeps only the last of `{refId: "a", refId: "b"}`).
fn check_tokens(toks: &[Tok<'_>]) -> Result<(), Reject> {
    let mut stack: Vec<Frame<'_>> = Vec::new();
    let mut prev: Option<&str> = None;
    for (i, tok) in toks.iter().enumerate() {
        match (tok.kind, tok.text) {
            (TokKind::Name, key) if toks.get(i + 1).is_some_and(|t| t.text == ":") => {
                if let Some(keys) = stack.last_mut().and_then(|f| f.keys.as_mut()) {
                    if !keys.insert(key) {
                        return Err(refused(format!(
                            "a GraphQL input object repeats the field {key:?}"
                        )));
                    }
                }
            }
            (TokKind::Punct, open @ ("(" | "[" | "{")) => {
                if stack.len() >= MAX_DEPTH {
                    return Err(refused(format!(
                        "the GraphQL document nests deeper than {MAX_DEPTH} brackets"
                    )));
                }
                let in_list = stack.last().is_some_and(|f| f.open == "[");
                let object = open == "{" && (matches!(prev, Some(":" | "=")) || in_list);
                stack.push(Frame {
                    open,
                    keys: object.then(HashSet::new),
                });
            }
            (TokKind::Punct, close @ (")" | "]" | "}")) => {
                let matching = match stack.pop().map(|f| f.open) {
                    Some("(") => ")",
                    Some("[") => "]",
                    Some(_) => "}",
                    None => "",
                };
                if close != matching {
                    return Err(Reject::Unparsed(
                        "the GraphQL document has unbalanced brackets".into(),
                    ));
                }
            }
            _ => {}
        }
        prev = Some(tok.text);
    }
    if !stack.is_empty() {
        return Err(Reject::Unparsed(
            "the GraphQL document has an unclosed bracket".into(),
        ));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Operations and fragments.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OpKind {
    Query,
    Mutation,
    Subscription,
}

/// One operation of the document.
#[derive(Debug, Clone, Copy)]
struct Op<'d> {
    kind: OpKind,
    name: Option<&'d str>,
    variables: &'d [VarDef<'d>],
    selection: &'d Selections<'d>,
}

impl<'d> Op<'d> {
    fn from_definition(def: &'d OperationDefinition<'d, &'d str>) -> Op<'d> {
        let (kind, name, variables, selection) = match def {
            OperationDefinition::SelectionSet(s) => (OpKind::Query, None, &[][..], s),
            OperationDefinition::Query(q) => (
                OpKind::Query,
                q.name,
                &q.variable_definitions[..],
                &q.selection_set,
            ),
            OperationDefinition::Mutation(m) => (
                OpKind::Mutation,
                m.name,
                &m.variable_definitions[..],
                &m.selection_set,
            ),
            OperationDefinition::Subscription(s) => (
                OpKind::Subscription,
                s.name,
                &s.variable_definitions[..],
                &s.selection_set,
            ),
        };
        Op {
            kind,
            name,
            variables,
            selection,
        }
    }
}

/// The fragment definitions by name; a name defined twice is refused.
fn fragments<'d>(doc: &'d Doc<'d>) -> Result<HashMap<&'d str, &'d Fragment<'d>>, Reject> {
    let mut out = HashMap::new();
    for def in &doc.definitions {
        if let Definition::Fragment(f) = def {
            if out.insert(f.name, f).is_some() {
                return Err(refused(format!(
                    "the GraphQL document defines the fragment {:?} twice",
                    f.name
                )));
            }
        }
    }
    Ok(out)
}

/// The operation that runs: the one named by `operationName`, else the only one.
fn select_operation<'d>(doc: &'d Doc<'d>, wanted: Option<&str>) -> Result<Op<'d>, Reject> {
    let ops: Vec<Op<'d>> = doc
        .definitions
        .iter()
        .filter_map(|d| match d {
            Definition::Operation(o) => Some(Op::from_definition(o)),
            Definition::Fragment(_) => None,
        })
        .collect();
    let mut names = HashSet::new();
    for op in &ops {
        match op.name {
            None if ops.len() > 1 => {
                return Err(refused(
                    "an anonymous GraphQL operation must be the only operation in the document",
                ));
            }
            Some(name) if !names.insert(name) => {
                return Err(refused(format!(
                    "the GraphQL document defines the operation {name:?} twice"
                )));
            }
            _ => {}
        }
    }
    match (wanted, ops.as_slice()) {
        (_, []) => Err(refused("the GraphQL document has no operation")),
        (Some(wanted), _) => ops
            .iter()
            .find(|op| op.name == Some(wanted))
            .copied()
            .ok_or_else(|| {
                refused(format!(
                    "operationName {wanted:?} names no operation in the GraphQL document"
                ))
            }),
        (None, [only]) => Ok(*only),
        (None, _) => Err(refused(
            "the GraphQL document has several operations and no operationName",
        )),
    }
}

/// The root fields an operation selects, fragments expanded, in document order.
#[derive(Debug)]
struct RootFields<'d, 'f> {
    fragments: &'f HashMap<&'d str, &'d Fragment<'d>>,
    /// Fragments being expanded (the cycle guard).
    active: Vec<&'d str>,
    visited: usize,
    fields: Vec<&'d GqlField<'d>>,
}

impl<'d, 'f> RootFields<'d, 'f> {
    fn collect(
        selection: &'d Selections<'d>,
        fragments: &'f HashMap<&'d str, &'d Fragment<'d>>,
    ) -> Result<Vec<&'d GqlField<'d>>, Reject> {
        let mut root = RootFields {
            fragments,
            active: Vec::new(),
            visited: 0,
            fields: Vec::new(),
        };
        root.expand(selection, 0)?;
        Ok(root.fields)
    }

    fn expand(&mut self, set: &'d Selections<'d>, depth: usize) -> Result<(), Reject> {
        for selection in &set.items {
            self.visited += 1;
            if self.visited > MAX_ROOT_SELECTIONS {
                return Err(refused(format!(
                    "the GraphQL operation has more than {MAX_ROOT_SELECTIONS} root selections \
                     once fragments are expanded"
                )));
            }
            match selection {
                Selection::Field(f) if f.name == "__typename" => {}
                Selection::Field(f) => self.fields.push(f),
                Selection::InlineFragment(inline) => {
                    self.descend(depth)?;
                    self.expand(&inline.selection_set, depth + 1)?;
                }
                Selection::FragmentSpread(spread) => {
                    let name = spread.fragment_name;
                    let fragment = self.fragments.get(name).ok_or_else(|| {
                        refused(format!("the GraphQL fragment {name:?} is not defined"))
                    })?;
                    if self.active.contains(&name) {
                        return Err(refused(format!(
                            "the GraphQL fragment {name:?} spreads itself"
                        )));
                    }
                    self.descend(depth)?;
                    self.active.push(name);
                    self.expand(&fragment.selection_set, depth + 1)?;
                    self.active.pop();
                }
            }
        }
        Ok(())
    }

    fn descend(&self, depth: usize) -> Result<(), Reject> {
        if depth >= MAX_FRAGMENT_DEPTH {
            return Err(refused(format!(
                "the GraphQL operation nests fragments deeper than {MAX_FRAGMENT_DEPTH}"
            )));
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// Actions.

fn operation_param(name: Option<&str>) -> Value {
    name.map_or(Value::Null, |n| Value::String(n.to_string()))
}

/// `github.graphql.query` with the distinct root field names, in order.
fn query_action(op_name: Option<&str>, fields: &[&GqlField<'_>]) -> Action {
    let mut seen = HashSet::new();
    let names = fields
        .iter()
        .filter(|f| seen.insert(f.name))
        .map(|f| Value::String(f.name.to_string()))
        .collect();
    let mut params = Map::new();
    params.insert("fields".into(), Value::Array(names));
    params.insert("operation".into(), operation_param(op_name));
    Action::new("github.graphql.query", params)
}

fn mutation_actions(
    op_name: Option<&str>,
    fields: &[&GqlField<'_>],
    vars: &Vars<'_, '_>,
) -> Result<Vec<Action>, ClassifyError> {
    if fields.is_empty() {
        return Err(bad("the GraphQL mutation selects no mutation field"));
    }
    if fields.len() > MAX_MUTATION_FIELDS {
        return Err(bad(format!(
            "the GraphQL mutation has {} root fields; at most {MAX_MUTATION_FIELDS} are accepted",
            fields.len()
        )));
    }
    fields
        .iter()
        .map(|f| mutation_action(op_name, f, vars))
        .collect()
}

/// `github.graphql.<field>`: the arguments, `alias` when there is one, and `operation`.
fn mutation_action(
    op_name: Option<&str>,
    field: &GqlField<'_>,
    vars: &Vars<'_, '_>,
) -> Result<Action, ClassifyError> {
    let mut params = Map::new();
    let mut seen = HashSet::new();
    for (name, value) in &field.arguments {
        if RESERVED_PARAMS.contains(name) {
            return Err(bad(format!(
                "the GraphQL field {} has an argument named {name:?}, which the gate reserves",
                field.name
            )));
        }
        if !seen.insert(*name) {
            return Err(bad(format!(
                "the GraphQL field {} repeats the argument {name:?}",
                field.name
            )));
        }
        if let Some(v) = to_json(value, Some(vars))? {
            params.insert(name.to_string(), v);
        }
    }
    if let Some(alias) = field.alias {
        params.insert("alias".into(), Value::String(alias.to_string()));
    }
    params.insert("operation".into(), operation_param(op_name));
    Ok(Action::new(
        &format!("github.graphql.{}", field.name),
        params,
    ))
}

// ---------------------------------------------------------------------------------------------
// Values and variables.

/// The executed operation's variable definitions, and the values the request gives them.
#[derive(Debug)]
struct Vars<'d, 'v> {
    defs: HashMap<&'d str, &'d VarDef<'d>>,
    values: &'v Map<String, Value>,
}

impl<'d, 'v> Vars<'d, 'v> {
    fn new(defs: &'d [VarDef<'d>], values: &'v Map<String, Value>) -> Result<Self, Reject> {
        let mut by_name = HashMap::new();
        for def in defs {
            if by_name.insert(def.name, def).is_some() {
                return Err(refused(format!(
                    "the GraphQL operation declares the variable ${} twice",
                    def.name
                )));
            }
        }
        Ok(Vars {
            defs: by_name,
            values,
        })
    }

    /// A variable's value: the request's, else the declared default, else not provided
    /// (`None`). A non-null variable (`$input: X!`) that ends up null or not provided is
    /// refused, as GitHub refuses it.
    fn get(&self, name: &str) -> Result<Option<Value>, ClassifyError> {
        let def = self.defs.get(name).ok_or_else(|| {
            bad(format!(
                "the GraphQL variable ${name} is used but not declared by the operation"
            ))
        })?;
        let value = match self.values.get(name) {
            Some(v) => Some(v.clone()),
            None => match &def.default_value {
                Some(default) => to_json(default, None)?,
                None => None,
            },
        };
        let non_null = matches!(def.var_type, Type::NonNullType(_));
        if non_null && value.as_ref().is_none_or(Value::is_null) {
            return Err(bad(format!(
                "the non-null GraphQL variable ${name} has no value"
            )));
        }
        Ok(value)
    }
}

/// A GraphQL value as JSON. `None` is a variable that was not provided: an argument or
/// input-object field holding one is left out (as GraphQL leaves it unset), a list item is
/// null. `vars` is `None` in a default value, where variables are not allowed.
fn to_json(value: &Val<'_>, vars: Option<&Vars<'_, '_>>) -> Result<Option<Value>, ClassifyError> {
    Ok(Some(match value {
        GqlValue::Variable(name) => {
            let vars = vars.ok_or_else(|| {
                bad(format!(
                    "the GraphQL default value uses the variable ${name}"
                ))
            })?;
            return vars.get(name);
        }
        GqlValue::Int(n) => n
            .as_i64()
            .map(Value::from)
            .ok_or_else(|| bad("a GraphQL integer is out of range"))?,
        GqlValue::Float(f) => serde_json::Number::from_f64(*f)
            .map(Value::Number)
            .ok_or_else(|| bad("a GraphQL float is not finite"))?,
        GqlValue::String(s) => Value::String(s.clone()),
        GqlValue::Boolean(b) => Value::Bool(*b),
        GqlValue::Null => Value::Null,
        GqlValue::Enum(e) => Value::String(e.to_string()),
        GqlValue::List(items) => Value::Array(
            items
                .iter()
                .map(|v| Ok(to_json(v, vars)?.unwrap_or(Value::Null)))
                .collect::<Result<_, ClassifyError>>()?,
        ),
        GqlValue::Object(fields) => {
            let mut out = Map::new();
            for (k, v) in fields {
                if let Some(v) = to_json(v, vars)? {
                    out.insert(k.to_string(), v);
                }
            }
            Value::Object(out)
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn headers(content_type: Option<&str>) -> http::HeaderMap {
        let mut h = http::HeaderMap::new();
        if let Some(ct) = content_type {
            h.insert(http::header::CONTENT_TYPE, ct.parse().unwrap());
        }
        h
    }

    fn run(content_type: Option<&str>, body: &[u8]) -> Result<Vec<Action>, ClassifyError> {
        let headers = headers(content_type);
        classify(&Request {
            host: "api.github.com",
            method: "POST",
            path: "/graphql",
            query: &[],
            headers: &headers,
            body,
        })
    }

    /// A JSON body as Octokit and gh send it.
    fn run_json(body: &Value) -> Result<Vec<Action>, ClassifyError> {
        let bytes = serde_json::to_vec(body).unwrap();
        run(Some("application/json; charset=utf-8"), &bytes)
    }

    fn ok(body: Value) -> Vec<Action> {
        run_json(&body).unwrap()
    }

    fn err(body: Value) -> String {
        match run_json(&body) {
            Err(ClassifyError::Malformed(msg)) => msg,
            Ok(actions) => panic!("accepted: {actions:?}"),
        }
    }

    fn one(body: Value) -> Action {
        let mut actions = ok(body);
        assert_eq!(actions.len(), 1, "{actions:?}");
        actions.remove(0)
    }

    fn doc(query: &str) -> Value {
        json!({ "query": query })
    }

    fn names(actions: &[Action]) -> Vec<&str> {
        actions.iter().map(|a| a.name.as_str()).collect()
    }

    fn params(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            other => panic!("not an object: {other}"),
        }
    }

    fn assert_unparsed(action: &Action, reason_part: &str) {
        assert_eq!(action.name, "http.request");
        assert_eq!(action.params["unparsed"], true);
        let reason = action.params["reason"].as_str().unwrap();
        assert!(reason.contains(reason_part), "{reason}");
    }

    const DELETE_REF: &str = r#"mutation { deleteRef(input: {refId: "x"}) { clientMutationId } }"#;

    #[test]
    fn octokit_query_with_variables() {
        // octokit.graphql(query, { owner: "octokit", repo: "graphql.js" })
        let query = r#"
          query lastIssues($owner: String!, $repo: String!, $num: Int = 3) {
            repository(owner: $owner, name: $repo) {
              issues(last: $num) { edges { node { title } } }
            }
          }"#;
        let a = one(json!({
            "query": query,
            "variables": { "owner": "octokit", "repo": "graphql.js" }
        }));
        assert_eq!(a.name, "github.graphql.query");
        assert_eq!(
            a.params,
            params(json!({ "fields": ["repository"], "operation": "lastIssues" }))
        );
        assert_eq!(a.host, "", "the catalog sets host, method and path");
    }

    #[test]
    fn gh_api_graphql_query() {
        // gh api graphql -F owner=cli -F name=cli -f query='query($name: String!, ...) {...}'
        let query = "query($name: String!, $owner: String!) {\n  repository(owner: $owner, \
                     name: $name) {\n    releases(last: 3) { nodes { tagName } }\n  }\n  \
                     viewer { login }\n  __typename\n  r2: repository(owner: \"a\", name: \
                     \"b\") { id }\n}";
        let a = one(json!({ "query": query, "variables": { "name": "cli", "owner": "cli" } }));
        assert_eq!(a.name, "github.graphql.query");
        assert_eq!(
            a.params,
            params(json!({ "fields": ["repository", "viewer"], "operation": null }))
        );
        // The anonymous shorthand is a query.
        let a = one(doc("{ viewer { login } }"));
        assert_eq!(a.params["fields"], json!(["viewer"]));
    }

    #[test]
    fn create_issue_with_input_variable() {
        let query = r#"mutation CreateIssue($input: CreateIssueInput!) {
            createIssue(input: $input) { issue { number url } }
        }"#;
        let input = json!({
            "repositoryId": "R_kgDOAbc",
            "title": "Bug",
            "labelIds": ["LA_1", "LA_2"]
        });
        let a = one(json!({ "query": query, "variables": { "input": input.clone() } }));
        assert_eq!(a.name, "github.graphql.createIssue");
        assert_eq!(
            a.params,
            params(json!({ "input": input, "operation": "CreateIssue" }))
        );
        assert_eq!(a.params["input"]["repositoryId"], "R_kgDOAbc");
    }

    #[test]
    fn alias_does_not_hide_the_mutation() {
        let a = one(doc(
            r#"mutation { harmless: deleteRef(input: {refId: "x"}) { clientMutationId } }"#,
        ));
        assert_eq!(a.name, "github.graphql.deleteRef");
        assert_eq!(
            a.params,
            params(json!({ "input": { "refId": "x" }, "alias": "harmless", "operation": null }))
        );
    }

    #[test]
    fn fragment_spread_does_not_hide_the_mutation() {
        let a = one(doc(
            r#"mutation { ...F } fragment F on Mutation { deleteRef(input:{refId:"x"}) { clientMutationId } }"#,
        ));
        assert_eq!(a.name, "github.graphql.deleteRef");
        assert_eq!(a.params["input"], json!({ "refId": "x" }));
        // Fragments within fragments, defined before the operation, and a spread that is
        // skipped: still reported.
        let actions = ok(doc(r#"
            fragment B on Mutation { b: deleteRef(input: {refId: "y"}) { clientMutationId } }
            fragment A on Mutation { ...B @skip(if: true) }
            mutation Sneaky { ...A }"#));
        assert_eq!(names(&actions), ["github.graphql.deleteRef"]);
        assert_eq!(
            actions[0].params,
            params(json!({ "input": { "refId": "y" }, "alias": "b", "operation": "Sneaky" }))
        );
    }

    #[test]
    fn inline_fragments_do_not_hide_mutations() {
        let actions = ok(doc(r#"mutation {
            ... on Mutation { deleteRef(input: {refId: "x"}) { clientMutationId } }
            ... @include(if: false) {
              ... { updateRef(input: {refId: "y", oid: "abc", force: true}) { clientMutationId } }
            }
        }"#));
        assert_eq!(
            names(&actions),
            ["github.graphql.deleteRef", "github.graphql.updateRef"]
        );
        assert_eq!(actions[1].params["input"]["force"], true);
    }

    #[test]
    fn two_mutations_keep_their_order() {
        let actions = ok(doc(r#"mutation {
            createRef(input: {repositoryId: "R_1", name: "refs/heads/x", oid: "a1"}) { ref { id } }
            mergePullRequest(input: {pullRequestId: "PR_1", mergeMethod: SQUASH}) { clientMutationId }
        }"#));
        assert_eq!(
            names(&actions),
            [
                "github.graphql.createRef",
                "github.graphql.mergePullRequest"
            ]
        );
        assert_eq!(actions[0].params["input"]["name"], "refs/heads/x");
        assert_eq!(
            actions[1].params["input"]["mergeMethod"], "SQUASH",
            "enum values become strings"
        );
    }

    #[test]
    fn operation_name_picks_the_operation() {
        let query = r#"
            query Q { viewer { login } }
            mutation M($id: ID!) { deleteRef(input: {refId: $id}) { clientMutationId } }"#;
        let a = one(json!({
            "query": query,
            "operationName": "M",
            "variables": { "id": "REF_1" }
        }));
        assert_eq!(a.name, "github.graphql.deleteRef");
        assert_eq!(
            a.params,
            params(json!({ "input": { "refId": "REF_1" }, "operation": "M" }))
        );
        let a = one(json!({ "query": query, "operationName": "Q" }));
        assert_eq!(a.name, "github.graphql.query");
        assert_eq!(a.params["operation"], "Q");
        // gh and Octokit send "operationName": null when there is none.
        let a = one(json!({ "query": DELETE_REF, "operationName": null, "variables": null }));
        assert_eq!(a.name, "github.graphql.deleteRef");
    }

    #[test]
    fn unknown_or_missing_operation_is_refused() {
        let query = "query Q { viewer { login } } mutation M { deleteRef(input: {refId: \"x\"}) { clientMutationId } }";
        assert!(
            err(json!({ "query": query, "operationName": "Nope" })).contains("names no operation")
        );
        assert!(err(json!({ "query": query, "operationName": "" })).contains("names no operation"));
        assert!(
            err(json!({ "query": DELETE_REF, "operationName": "M" }))
                .contains("names no operation")
        );
        assert!(err(doc(query)).contains("several operations"));
        for query in [
            "query Q { a } query Q { b }",
            "{ a } mutation M { deleteRef(input: {refId: \"x\"}) { clientMutationId } }",
            "fragment F on Query { a }",
        ] {
            assert!(
                run_json(&json!({ "query": query, "operationName": "Q" })).is_err(),
                "{query}"
            );
            assert!(run_json(&doc(query)).is_err(), "{query}");
        }
        assert!(err(doc("subscription { x }")).contains("subscriptions"));
    }

    #[test]
    fn variables_are_substituted_exactly() {
        let query = r#"mutation($ref: ID!, $oid: GitObjectID, $force: Boolean = false, $extra: String) {
            updateRef(input: {refId: $ref, oid: $oid, force: $force, clientMutationId: $extra})
              { clientMutationId }
            updateRefs(input: {repositoryId: "R", refUpdates: [{name: "refs/heads/a", afterOid: $oid}, $extra]})
              { clientMutationId }
        }"#;
        let actions = ok(json!({ "query": query, "variables": { "ref": "REF_1", "unused": 1 } }));
        assert_eq!(
            actions[0].params["input"],
            json!({ "refId": "REF_1", "force": false }),
            "a nullable variable not given is left out; a default is used"
        );
        assert_eq!(
            actions[1].params["input"]["refUpdates"],
            json!([{ "name": "refs/heads/a" }, null]),
            "in a list a variable not given is null"
        );
        let a =
            &ok(json!({ "query": query, "variables": { "ref": "R", "force": true, "oid": null } }))
                [0];
        assert_eq!(
            a.params["input"],
            json!({ "refId": "R", "oid": null, "force": true })
        );
    }

    #[test]
    fn variable_errors_are_refused() {
        let undeclared =
            r#"mutation($a: ID!) { deleteRef(input: {refId: $b}) { clientMutationId } }"#;
        assert!(
            err(json!({ "query": undeclared, "variables": { "a": "x", "b": "y" } }))
                .contains("not declared")
        );
        let non_null =
            r#"mutation($id: ID!) { deleteRef(input: {refId: $id}) { clientMutationId } }"#;
        assert!(err(doc(non_null)).contains("no value"));
        assert!(
            err(json!({ "query": non_null, "variables": { "id": null } })).contains("no value")
        );
        let twice =
            r#"mutation($id: ID, $id: ID) { deleteRef(input: {refId: $id}) { clientMutationId } }"#;
        assert!(err(doc(twice)).contains("twice"));
        // graphql-parser refuses a variable in a default value.
        let var_default =
            r#"mutation($a: ID, $b: ID = $a) { deleteRef(input: {refId: $b}) { a } }"#;
        assert_unparsed(&one(doc(var_default)), "does not parse");
        for variables in [json!([]), json!("{\"id\": \"x\"}"), json!(1)] {
            assert!(
                err(json!({ "query": non_null, "variables": variables })).contains("variables")
            );
        }
    }

    #[test]
    fn persisted_queries_are_unparsed() {
        let apq = json!({
            "operationName": "DeleteIt",
            "variables": { "id": "x" },
            "extensions": { "persistedQuery": { "version": 1, "sha256Hash": "ab12" } }
        });
        assert_unparsed(&one(apq), "extensions.persistedQuery");
        assert_unparsed(&one(json!({ "id": "q1", "variables": {} })), "\"id\"");
        assert_unparsed(&one(json!({ "doc_id": "123" })), "\"doc_id\"");
        // A server that honours ids may run the stored document rather than `query`.
        assert_unparsed(
            &one(json!({ "query": "{ viewer { login } }", "id": "q1" })),
            "\"id\"",
        );
        // With the document present, APQ's extension is ignored, as GitHub ignores it.
        let a = one(json!({
            "query": DELETE_REF,
            "extensions": { "persistedQuery": { "version": 1, "sha256Hash": "ab12" } }
        }));
        assert_eq!(a.name, "github.graphql.deleteRef");
        assert!(err(json!({ "variables": {} })).contains("no query"));
        assert!(err(json!({ "query": 1 })).contains("string"));
    }

    #[test]
    fn unparseable_documents_are_unparsed() {
        assert_unparsed(
            &one(doc(
                r#"mutation { deleteRef(input: {refId: "x"} { clientMutationId } }"#,
            )),
            "bracket",
        );
        assert_unparsed(&one(doc("mutation {")), "unclosed");
        assert_unparsed(
            &one(doc("mutation { deleteRef(input: 01) }")),
            "does not parse",
        );
        assert_unparsed(&one(doc("mutation { a.b }")), "unexpected character");
        assert_unparsed(&one(doc("mutation { a(x: \"open) }")), "unterminated");
        assert_unparsed(&one(doc("mutation { a(x: \"\"\"open) }")), "unterminated");
        assert_unparsed(&one(doc("mutation { a € }")), "unexpected character");
        assert_unparsed(&one(doc("type Query { a: Int }")), "does not parse");
        assert_unparsed(&one(doc("")), "does not parse");
        let long = format!("mutation {{ a(x: 1) \"{}\" }}", "y".repeat(100_000));
        let a = one(doc(&long));
        assert!(a.params["reason"].as_str().unwrap().len() < 400, "{a:?}");
    }

    #[test]
    fn duplicate_json_keys_are_refused() {
        let body = br#"{"query":"{a}","query":"mutation{deleteRef(input:{})}"}"#;
        let e = run(Some("application/json"), body).unwrap_err();
        assert!(e.to_string().contains("duplicate key"), "{e}");
        let body = br#"{"query":"mutation($i: X!){deleteRef(input:$i){a}}","variables":{"i":{"refId":"a","refId":"b"}}}"#;
        assert!(run(None, body).is_err());
    }

    #[test]
    fn ambiguous_documents_are_refused() {
        // graphql-parser would keep only the last of repeated input fields.
        let e = err(doc(
            r#"mutation { deleteRef(input: {refId: "protected", refId: "x"}) { a } }"#,
        ));
        assert!(e.contains("repeats the field \"refId\""), "{e}");
        let e = err(doc(
            r#"mutation { a(x: [{k: 1}, {k: 2, b: {k: 1, k: 2}}]) { a } }"#,
        ));
        assert!(e.contains("\"k\""), "{e}");
        let e = err(doc(r#"mutation($v: In = {k: 1, k: 2}) { a(x: $v) { a } }"#));
        assert!(e.contains("\"k\""), "{e}");
        let e = err(doc(
            r#"mutation { deleteRef(input: {refId: "a"}, input: {refId: "b"}) { a } }"#,
        ));
        assert!(e.contains("repeats the argument"), "{e}");
        for arg in ["alias", "operation"] {
            let e = err(doc(&format!(
                "mutation {{ deleteRef({arg}: \"x\") {{ a }} }}"
            )));
            assert!(e.contains("reserves"), "{e}");
        }
        assert!(
            err(doc(
                "fragment F on Mutation { a } fragment F on Mutation { b } mutation { ...F }"
            ))
            .contains("twice")
        );
        // Same keys in sibling objects and aliases in selection sets are fine.
        let actions = ok(doc(
            r#"mutation { a: f(x: {k: 1}, y: {k: 2}) { k: id k2: id } }"#,
        ));
        assert_eq!(actions[0].params["y"], json!({ "k": 2 }));
    }

    #[test]
    fn strings_the_parser_misreads_are_refused() {
        // graphql-parser panics on this (a byte slice inside U+3000); it never sees it.
        let e = err(doc(
            "mutation { a(x: \"\"\"\n\u{3000}x\n \u{3000}y\"\"\") { a } }",
        ));
        assert!(e.contains("block string"), "{e}");
        assert!(err(doc("mutation { a(x: \"\"\"a\rb\"\"\") { a } }")).contains("block string"));
        assert!(err(doc(r#"mutation { a(x: "\b") { a } }"#)).contains("\\b"));
        // What it reads like the spec is accepted.
        let a = one(doc(
            "mutation { a(x: \"\"\"\r\n    one\r\n      two \\\"\"\" \"\"\", y: \"q\\\"{\\\\\", z: \"\\\\b\") { a } }",
        ));
        assert_eq!(a.params["x"], "one\n  two \"\"\" ");
        assert_eq!(a.params["y"], "q\"{\\");
        assert_eq!(a.params["z"], "\\b");
    }

    #[test]
    fn strings_and_comments_hide_nothing() {
        let a = one(doc(
            "query { a(x: \"} mutation { deleteRef }\", y: \"\"\"{\"\"\") # } mutation { deleteRef\n { b } }",
        ));
        assert_eq!(a.name, "github.graphql.query");
        assert_eq!(a.params["fields"], json!(["a"]));
        let a = one(doc(
            "\u{feff}mutation # {\n,{,deleteRef(input: {refId: \"x\", n: -1.5e3, i: 0}) { a } }",
        ));
        assert_eq!(
            a.params["input"],
            json!({ "refId": "x", "n": -1500.0, "i": 0 })
        );
    }

    #[test]
    fn deep_nesting_is_refused_before_parsing() {
        let deep = format!("{}{}", "{a".repeat(100_000), "}".repeat(100_000));
        assert!(err(doc(&deep)).contains("nests deeper"));
        let deep = format!(
            "mutation {{ a(x: {}1{}) }}",
            "[".repeat(5000),
            "]".repeat(5000)
        );
        assert!(err(doc(&deep)).contains("nests deeper"));
        let unbalanced = format!("{}{}", "}".repeat(100), "{".repeat(100));
        assert_unparsed(&one(doc(&unbalanced)), "bracket");
        let nested = |n: usize| format!("{}a{}", "{a ".repeat(n - 1) + "{", "}".repeat(n));
        assert!(err(doc(&nested(MAX_DEPTH + 1))).contains("nests deeper"));
        // At the limit the recursive parse fits well inside a worker's stack, even in debug.
        let shapes = [
            nested(MAX_DEPTH),
            format!(
                "mutation {{ {}f{} }}",
                "... on M {".repeat(MAX_DEPTH - 1),
                "}".repeat(MAX_DEPTH - 1)
            ),
            format!(
                "mutation {{ f(x: {}1{}) {{ a }} }}",
                "{a:".repeat(MAX_DEPTH - 2),
                "}".repeat(MAX_DEPTH - 2)
            ),
        ];
        let handle = std::thread::Builder::new()
            .stack_size(1536 * 1024)
            .spawn(move || {
                shapes
                    .iter()
                    .map(|s| run_json(&doc(s)).is_ok())
                    .collect::<Vec<_>>()
            })
            .unwrap();
        assert_eq!(handle.join().unwrap(), [true, true, true]);
    }

    #[test]
    fn fragment_limits() {
        let undefined = err(doc("mutation { ...Missing }"));
        assert!(undefined.contains("not defined"), "{undefined}");
        let cycle = err(doc(
            "mutation { ...A } fragment A on Mutation { ...B } fragment B on Mutation { ...A }",
        ));
        assert!(cycle.contains("spreads itself"), "{cycle}");
        // 2^40 selections if expanded naively.
        let mut bomb = String::from("mutation { ...F0 } fragment F40 on Mutation { __typename }");
        for i in 0..40 {
            bomb.push_str(&format!(
                " fragment F{i} on Mutation {{ ...F{n} ...F{n} }}",
                n = i + 1
            ));
        }
        assert!(err(doc(&bomb)).contains("fragment"));
        let mut chain = String::from("mutation { ...F0 } fragment F40 on Mutation { a }");
        for i in 0..40 {
            chain.push_str(&format!(" fragment F{i} on Mutation {{ ...F{} }}", i + 1));
        }
        assert!(err(doc(&chain)).contains("deeper"));
    }

    #[test]
    fn mutation_field_limits() {
        let fields = |n: usize| {
            let body: String = (0..n)
                .map(|i| format!("m{i}: deleteRef(input: {{refId: \"{i}\"}}) {{ a }} "))
                .collect();
            format!("mutation {{ {body} }}")
        };
        assert_eq!(
            ok(doc(&fields(MAX_MUTATION_FIELDS))).len(),
            MAX_MUTATION_FIELDS
        );
        assert!(err(doc(&fields(MAX_MUTATION_FIELDS + 1))).contains("at most"));
        let long = format!("{{ a(x: \"{}\") }}", "x".repeat(MAX_DOCUMENT_BYTES));
        assert!(err(doc(&long)).contains("bytes"));
        assert!(run(Some("application/graphql"), long.as_bytes()).is_err());
    }

    #[test]
    fn typename_at_the_root_is_ignored() {
        let actions = ok(doc(
            r#"mutation { __typename deleteRef(input: {refId: "x"}) { clientMutationId } }"#,
        ));
        assert_eq!(names(&actions), ["github.graphql.deleteRef"]);
        assert!(err(doc("mutation { __typename }")).contains("no mutation field"));
        let a = one(doc("{ __typename }"));
        assert_eq!(a.params["fields"], json!([]));
    }

    #[test]
    fn application_graphql_body_is_the_document() {
        let actions = run(
            Some("application/graphql; charset=utf-8"),
            DELETE_REF.as_bytes(),
        )
        .unwrap();
        assert_eq!(names(&actions), ["github.graphql.deleteRef"]);
        let actions = run(Some("Application/GraphQL"), b"{ viewer { login } }").unwrap();
        assert_eq!(names(&actions), ["github.graphql.query"]);
        let needs_var = b"mutation($id: ID!) { deleteRef(input: {refId: $id}) { a } }";
        assert!(run(Some("application/graphql"), needs_var).is_err());
        assert!(run(Some("application/graphql"), b"{ a(x: \"\xff\") }").is_err());
        // The JSON body is read whatever the Content-Type says, as GitHub reads it.
        let body = serde_json::to_vec(&doc(DELETE_REF)).unwrap();
        for ct in [
            None,
            Some("application/x-www-form-urlencoded"),
            Some("text/plain"),
        ] {
            assert_eq!(
                names(&run(ct, &body).unwrap()),
                ["github.graphql.deleteRef"]
            );
        }
    }

    #[test]
    fn malformed_requests_are_refused() {
        let batch = json!([{ "query": "{ viewer { login } }" }, { "query": DELETE_REF }]);
        assert!(err(batch).contains("batch"));
        assert!(err(json!("{ viewer { login } }")).contains("JSON object"));
        assert!(run(None, b"").is_err());
        assert!(run(None, b"query=mutation").is_err());
        assert!(err(json!({ "query": DELETE_REF, "operationName": 1 })).contains("operationName"));
        assert!(err(json!({ "query": DELETE_REF, "extensions": [] })).contains("extensions"));
        // Other fields are ignored.
        assert_eq!(
            one(json!({ "query": DELETE_REF, "foo": 1 })).name,
            "github.graphql.deleteRef"
        );
        let mut h = headers(Some("application/json"));
        h.append(
            http::header::CONTENT_TYPE,
            "application/graphql".parse().unwrap(),
        );
        let body = serde_json::to_vec(&doc(DELETE_REF)).unwrap();
        let req = Request {
            host: "api.github.com",
            method: "POST",
            path: "/graphql",
            query: &[],
            headers: &h,
            body: &body,
        };
        assert!(classify(&req).is_err(), "two Content-Types");
        let query = [("variables".to_string(), "{}".to_string())];
        let h = headers(None);
        let req = Request {
            query: &query,
            headers: &h,
            ..req
        };
        assert!(
            classify(&req)
                .unwrap_err()
                .to_string()
                .contains("query string")
        );
        let req = Request {
            method: "GET",
            query: &[],
            ..req
        };
        assert!(classify(&req).unwrap_err().to_string().contains("POST"));
    }

    #[test]
    fn branch_protection_input_mirrors_github() {
        let query = r#"mutation($input: CreateBranchProtectionRuleInput!) {
            createBranchProtectionRule(input: $input) { branchProtectionRule { id } }
        }"#;
        let input =
            json!({ "repositoryId": "R_1", "pattern": "main", "requiresApprovingReviews": false });
        let a = one(json!({ "query": query, "variables": { "input": input } }));
        assert_eq!(a.name, "github.graphql.createBranchProtectionRule");
        assert_eq!(a.params["input"]["pattern"], "main");
        assert_eq!(a.params["operation"], Value::Null);
    }

    /// Valid documents with random pieces inserted: classifying never panics, and the lexer
    /// calls nothing unparsable that graphql-parser reads.
    #[test]
    fn mutated_documents() {
        const SEEDS: [&str; 4] = [
            DELETE_REF,
            "query Q($n: Int = 3) { viewer { login } r: repository(owner: \"o\", name: \"n\") { issues(last: $n) { nodes { title } } } }",
            "mutation M($i: X!) { ...F ... on Mutation { createRef(input: {repositoryId: \"R\", name: \"\"\"refs/heads/a\"\"\", oid: $i}) { a } } } fragment F on Mutation { a: updateRef(input: {refId: \"r\", force: true, l: [1, -2.5e1, null, ENUM]}) { b } }",
            "{ a(x: \"} q\\\"{\", y: [{k: 1} {k: 2}]) # c\n @d(if: $v) }",
        ];
        const PIECES: [&str; 32] = [
            "{", "}", "(", ")", "[", "]", ":", "$", "a", "k: 1", "\"x\"", "\"\"\"", "1", "-2.5e1",
            "...", " on ", "mutation", "fragment", " ", ",", "#", "=", "@d", "!", "\\", "\"", "\r",
            "\n", "\u{feff}", "\\u0041", "\\b", "\u{3000}",
        ];
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            (seed >> 33) as usize
        };
        let mut parsed_count = 0;
        for _ in 0..5_000 {
            let mut text = SEEDS[next() % SEEDS.len()].to_string();
            for _ in 0..1 + next() % 3 {
                let mut at = next() % (text.len() + 1);
                while !text.is_char_boundary(at) {
                    at -= 1;
                }
                text.insert_str(at, PIECES[next() % PIECES.len()]);
            }
            let Ok(actions) = run(Some("application/graphql"), text.as_bytes()) else {
                continue;
            };
            if actions[0].name != "http.request" {
                parsed_count += 1;
            } else if !text.contains('\u{3000}') {
                // (graphql-parser itself may panic on U+3000 in a block string.)
                let parsed = graphql_parser::parse_query::<&str>(&text);
                assert!(
                    parsed.is_err(),
                    "{text:?} parses, but is unparsed: {actions:?}"
                );
            }
        }
        assert!(parsed_count > 250, "only {parsed_count} classified");
    }
}
