//! The load pipeline after parsing: resolve lists, type-check every expression against the
//! catalog's [`Schema`], compile patterns, globs, regexes and time zones, and index the rules by
//! action. The output, a [`Program`], is what the evaluator runs; it is immutable.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use serde_json::Value;

use super::ast::{
    CmpOp, CountCall, Days, EffectKw, Expr, ExprKind, File, Func, Lit, Quant, RuleDef, Source,
    Span, TestDef, Text,
};
use super::error::LoadError;
use super::pattern::Pattern;
use super::schema::{ActionSchema, GRAPHQL_PREFIX, Schema, Ty};

/// Longest window `count` accepts.
pub const MAX_WINDOW_MS: i64 = 24 * 3_600_000;
/// Compiled-size limit of one regex (or glob), in bytes of the regex crate's program.
pub const MAX_REGEX_BYTES: usize = 256 * 1024;
/// Deepest nesting a regex may have.
pub const MAX_REGEX_NEST: u32 = 64;

/// A name an expression can read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Builtin {
    Action,
    Agent,
    Method,
    Host,
    Path,
    Now,
    Approved,
    /// `placeholder`, `foreign` or `none`: the credential the request carried.
    Credential,
}

/// A compiled expression.
#[derive(Debug, Clone)]
pub enum CExpr {
    Or(Vec<CExpr>),
    And(Vec<CExpr>),
    Not(Box<CExpr>),
    Cmp(CmpOp, Box<CExpr>, Box<CExpr>),
    /// `x in L` / `x not in L` against a constant list of strings: a hash lookup.
    InStrs {
        subject: Box<CExpr>,
        set: Arc<StrSet>,
        negate: bool,
    },
    /// `d under L` with the (lower-case) domains of L.
    Under(Box<CExpr>, Arc<Vec<String>>),
    Regex(Box<CExpr>, Arc<regex::Regex>),
    Within {
        subject: Box<CExpr>,
        weekdays: bool,
        start: u16,
        end: u16,
        zone: Arc<jiff::tz::TimeZone>,
    },
    Coalesce(Vec<CExpr>),
    Call(Func, Box<CExpr>),
    Quant {
        all: bool,
        slot: usize,
        list: Box<CExpr>,
        body: Box<CExpr>,
    },
    Count {
        spec: usize,
        window_ms: u64,
    },
    Const(Value),
    Builtin(Builtin),
    /// `params.a.b`: the field path under params.
    Param(Vec<String>),
    /// A quantifier variable (by slot) and a field path under it.
    Var(usize, Vec<String>),
}

/// A constant set of strings. The values looked up in it come from requests, but the set is
/// fixed when the policy loads, so a fast unkeyed hash cannot be turned against it (a lookup
/// probes a table whose layout the request does not choose).
pub type StrSet = std::collections::HashSet<String, rustc_hash::FxBuildHasher>;

/// What `count` counts: admitted actions matching `pattern`, grouped by `by`.
#[derive(Debug, Clone)]
pub struct CountSpec {
    /// The series' identity across reloads and restarts: `pattern|by`.
    pub key: String,
    pub pattern: Pattern,
    /// Empty for `agent`, else the field path under params.
    pub by_param: Vec<String>,
}

/// A reason template: text and `{name}` holes.
#[derive(Debug, Clone, Default)]
pub struct Template(pub Vec<Piece>);

impl Template {
    /// A likely length of the rendered text: its own text and 24 bytes per hole.
    pub fn len_hint(&self) -> usize {
        self.0
            .iter()
            .map(|p| match p {
                Piece::Text(t) => t.len(),
                _ => 24,
            })
            .sum()
    }
}

#[derive(Debug, Clone)]
pub enum Piece {
    Text(String),
    Builtin(Builtin),
    Rule,
    Param(Vec<String>),
}

/// One compiled clause, with its source text for `explain`.
#[derive(Debug, Clone)]
pub struct Clause {
    pub expr: CExpr,
    pub source: String,
    /// The clause's slot in a decision's memo: clauses that compile to the same expression
    /// share one, so a condition many rules repeat (`agent in bots`, `method in
    /// read_methods`) is evaluated once per decision (see [`intern_clauses`]).
    pub memo: usize,
}

#[derive(Debug, Clone)]
pub struct CRule {
    /// Shared with every [`super::Fired`] record of the rule (no copy per decision).
    pub id: super::eval::SharedStr,
    pub effect: EffectKw,
    pub shadow: bool,
    pub annotations: Arc<[(String, String)]>,
    pub patterns: Vec<Pattern>,
    pub when: Vec<Clause>,
    pub unless: Vec<Clause>,
    pub exempt: Option<Clause>,
    pub reason: Template,
    /// Count specs this rule's expressions read.
    pub counts: Vec<usize>,
    /// Quantifier slots the rule's expressions use.
    pub slots: usize,
    pub location: String,
}

#[derive(Debug, Clone)]
pub struct CDefault {
    pub effect: EffectKw,
    pub reason: Template,
}

/// A compiled `test` block.
#[derive(Debug, Clone)]
pub struct CTest {
    pub name: String,
    pub location: String,
    pub action: String,
    pub params: serde_json::Map<String, Value>,
    pub agent: String,
    pub method: String,
    pub host: String,
    pub path: String,
    pub now_ms: i64,
    /// (count spec, window) -> the count the test states.
    pub counts: Vec<(usize, u64, u64)>,
    pub approved: Vec<String>,
    pub credential: String,
    pub expect: EffectKw,
    pub expect_by: Option<String>,
    pub reason_contains: Vec<String>,
}

/// A loaded, checked policy set.
#[derive(Debug)]
pub struct Program {
    pub rules: Vec<CRule>,
    pub default: CDefault,
    pub counts: Vec<CountSpec>,
    pub tests: Vec<CTest>,
    /// Catalog action name -> the rules that apply to it, in evaluation (id) order.
    pub(super) index: HashMap<String, Vec<usize>>,
    /// Rules with a pattern that may match a GraphQL mutation (an open family).
    pub(super) graphql_rules: Vec<usize>,
    /// Count specs whose pattern may match each catalog action (for recording).
    pub(super) count_index: HashMap<String, Vec<usize>>,
    pub(super) graphql_counts: Vec<usize>,
    pub sources: Vec<Source>,
    pub lists: BTreeMap<String, Value>,
    /// Distinct clause expressions (the size of a decision's memo).
    pub(super) memo_slots: usize,
    /// Each memo slot's expression.
    pub(super) memo_exprs: Vec<CExpr>,
    /// Each rule's clauses as memo slots, parallel to `rules`: what a decision walks, dense
    /// and small, so it touches a rule's full record only when the rule fires.
    pub(super) plans: Vec<Plan>,
    /// The memo slots the plans' ranges point into.
    pub(super) plan_slots: Vec<u32>,
    /// The most quantifier slots one rule uses.
    pub(super) max_slots: usize,
}

/// A timestamp for tests that give none: 2026-01-05T12:00:00Z, a Monday at noon.
pub const DEFAULT_TEST_NOW_MS: i64 = 1_767_614_400_000;

/// Compiles parsed files into a program (tests are compiled, not run).
pub fn compile(
    files: &[File],
    sources: &[Source],
    schema: &Schema,
) -> Result<Program, Vec<LoadError>> {
    let mut c = Checker {
        sources,
        schema,
        line_starts: sources
            .iter()
            .map(|s| {
                std::iter::once(0)
                    .chain(s.text.match_indices('\n').map(|(i, _)| i + 1))
                    .collect()
            })
            .collect(),
        matched: HashMap::new(),
        errors: Vec::new(),
        lists: BTreeMap::new(),
        list_types: BTreeMap::new(),
        counts: Vec::new(),
    };
    c.lists(files);
    let default = c.default(files);
    let mut rules = Vec::new();
    let mut ids: HashMap<String, Span> = HashMap::new();
    for f in files {
        for r in &f.rules {
            if let Some(first) = ids.get(&r.id.value) {
                let (file, (line, col)) = c.place(*first);
                c.err(
                    r.id.span,
                    format!(
                        "the rule id {:?} is already used at {file}:{line}:{col}; ids are unique across the set",
                        r.id.value
                    ),
                );
            } else {
                ids.insert(r.id.value.clone(), r.id.span);
            }
            if let Some(rule) = c.rule(r) {
                rules.push(rule);
            }
        }
    }
    let mut tests = Vec::new();
    for f in files {
        for t in &f.tests {
            if let Some(test) = c.test(t, &ids) {
                tests.push(test);
            }
        }
    }
    if !c.errors.is_empty() {
        return Err(c.errors);
    }
    let Some(default) = default else {
        return Err(vec![LoadError::whole(
            sources
                .first()
                .map_or("<policy>".to_string(), |s| s.name.clone()),
            "the policy set has no `default` statement; add `default block;` or `default step_up;`",
        )]);
    };
    let (index, graphql_rules) = index_rules(&rules, schema);
    let (count_index, graphql_counts) = index_counts(&c.counts, schema);
    let (memo_exprs, plans, plan_slots) = intern_clauses(&mut rules);
    let memo_slots = memo_exprs.len();
    let max_slots = rules.iter().map(|r| r.slots).max().unwrap_or(0);
    Ok(Program {
        rules,
        default,
        counts: c.counts,
        tests,
        index,
        graphql_rules,
        count_index,
        graphql_counts,
        sources: sources.to_vec(),
        lists: c.lists,
        memo_slots,
        memo_exprs,
        plans,
        plan_slots,
        max_slots,
    })
}

/// Numbers the rules' clauses by what they compute: two clauses get the same memo slot
/// exactly when their compiled expressions are the same (same operators, operands, constants,
/// lists, patterns and zones), so within one decision the second is the first's value. A
/// top-level clause reads only the request, the clock and the counters, all fixed for the
/// decision, never a quantifier variable from outside itself. Returns each slot's expression,
/// and each rule's [`Plan`] with the slots its ranges point into.
fn intern_clauses(rules: &mut [CRule]) -> (Vec<CExpr>, Vec<Plan>, Vec<u32>) {
    let mut ids: HashMap<String, usize> = HashMap::new();
    let mut exprs: Vec<CExpr> = Vec::new();
    let mut plans = Vec::with_capacity(rules.len());
    let mut flat: Vec<u32> = Vec::new();
    let mut key = String::new();
    let mut slot = |c: &mut Clause| -> u32 {
        key.clear();
        expr_key(&c.expr, &mut key);
        let next = ids.len();
        let id = *ids.entry(key.clone()).or_insert(next);
        if id == next {
            exprs.push(c.expr.clone());
        }
        c.memo = id;
        u32::try_from(id).unwrap_or(u32::MAX)
    };
    let span = |start: usize, end: usize| {
        (
            u32::try_from(start).unwrap_or(u32::MAX),
            u32::try_from(end).unwrap_or(u32::MAX),
        )
    };
    for r in rules.iter_mut() {
        let start = flat.len();
        for c in r.when.iter_mut() {
            flat.push(slot(c));
        }
        let mid = flat.len();
        for c in r.unless.iter_mut() {
            flat.push(slot(c));
        }
        let end = flat.len();
        let exempt = r.exempt.as_mut().map(&mut slot);
        plans.push(Plan {
            when: span(start, mid),
            unless: span(mid, end),
            exempt,
            effect: r.effect,
        });
    }
    (exprs, plans, flat)
}

/// A rule as a decision walks it: its `when` and `unless` clauses as ranges of memo slots in
/// [`Program::plan_slots`], its `exempt` slot, its effect.
#[derive(Debug, Clone, Copy)]
pub struct Plan {
    pub when: (u32, u32),
    pub unless: (u32, u32),
    pub exempt: Option<u32>,
    pub effect: EffectKw,
}

/// Writes a canonical text of `e`: equal texts mean equal behaviour (set elements sorted,
/// strings quoted with escapes, every field that changes a result included).
fn expr_key(e: &CExpr, out: &mut String) {
    use std::fmt::Write as _;
    let list = |out: &mut String, tag: &str, parts: &[CExpr]| {
        out.push_str(tag);
        out.push('(');
        for p in parts {
            expr_key(p, out);
            out.push(',');
        }
        out.push(')');
    };
    // Writing to a String cannot fail.
    match e {
        CExpr::Or(parts) => list(out, "or", parts),
        CExpr::And(parts) => list(out, "and", parts),
        CExpr::Coalesce(parts) => list(out, "coalesce", parts),
        CExpr::Not(inner) => {
            out.push_str("not(");
            expr_key(inner, out);
            out.push(')');
        }
        CExpr::Cmp(op, l, r) => {
            let _ = write!(out, "cmp:{op:?}(");
            expr_key(l, out);
            out.push(',');
            expr_key(r, out);
            out.push(')');
        }
        CExpr::InStrs {
            subject,
            set,
            negate,
        } => {
            let mut items: Vec<&String> = set.iter().collect();
            items.sort();
            let _ = write!(out, "in:{negate}:{items:?}(");
            expr_key(subject, out);
            out.push(')');
        }
        CExpr::Under(subject, domains) => {
            let _ = write!(out, "under:{domains:?}(");
            expr_key(subject, out);
            out.push(')');
        }
        CExpr::Regex(subject, re) => {
            let _ = write!(out, "re:{:?}(", re.as_str());
            expr_key(subject, out);
            out.push(')');
        }
        CExpr::Within {
            subject,
            weekdays,
            start,
            end,
            zone,
        } => {
            let _ = write!(
                out,
                "within:{weekdays}:{start}:{end}:{:?}(",
                zone.iana_name()
                    .map_or_else(|| format!("{zone:?}"), str::to_string)
            );
            expr_key(subject, out);
            out.push(')');
        }
        CExpr::Call(func, arg) => {
            let _ = write!(out, "call:{func:?}(");
            expr_key(arg, out);
            out.push(')');
        }
        CExpr::Quant {
            all,
            slot,
            list,
            body,
        } => {
            let _ = write!(out, "quant:{all}:{slot}(");
            expr_key(list, out);
            out.push(',');
            expr_key(body, out);
            out.push(')');
        }
        CExpr::Count { spec, window_ms } => {
            let _ = write!(out, "count:{spec}:{window_ms}");
        }
        CExpr::Const(v) => {
            let _ = write!(out, "const:{v}");
        }
        CExpr::Builtin(b) => {
            let _ = write!(out, "builtin:{b:?}");
        }
        CExpr::Param(path) => {
            let _ = write!(out, "param:{path:?}");
        }
        CExpr::Var(slot, path) => {
            let _ = write!(out, "var:{slot}:{path:?}");
        }
    }
}

/// Which catalog actions each rule applies to; and the rules that may apply to a GraphQL
/// mutation name outside the catalog.
fn index_rules(rules: &[CRule], schema: &Schema) -> (HashMap<String, Vec<usize>>, Vec<usize>) {
    let mut index: HashMap<String, Vec<usize>> = HashMap::new();
    let mut exact: HashMap<&str, Vec<usize>> = HashMap::new();
    // Each distinct wildcard pattern once, with the rules that use it: large sets repeat a few
    // patterns (`github.**`) many times, and each is matched against the whole catalog.
    let mut wild: Vec<(&Pattern, Vec<usize>)> = Vec::new();
    let mut wild_at: HashMap<&str, usize> = HashMap::new();
    let mut graphql = Vec::new();
    for (i, r) in rules.iter().enumerate() {
        for p in &r.patterns {
            if p.is_exact() {
                exact.entry(p.text.as_str()).or_default().push(i);
            } else {
                let at = *wild_at.entry(p.text.as_str()).or_insert_with(|| {
                    wild.push((p, Vec::new()));
                    wild.len() - 1
                });
                if let Some((_, users)) = wild.get_mut(at) {
                    users.push(i);
                }
            }
            if may_match_graphql(p) && !graphql.contains(&i) {
                graphql.push(i);
            }
        }
    }
    for name in schema.actions.keys() {
        let mut list: Vec<usize> = exact.get(name.as_str()).cloned().unwrap_or_default();
        for (p, users) in &wild {
            if p.matches(name) {
                list.extend_from_slice(users);
            }
        }
        if !list.is_empty() {
            list.sort_unstable();
            list.dedup();
            list.sort_by(|a, b| by_id(rules, *a, *b));
            index.insert(name.clone(), list);
        }
    }
    graphql.sort_by(|a, b| by_id(rules, *a, *b));
    (index, graphql)
}

/// The order rules are evaluated in: by id, never by file. A decision's step budget is shared
/// by its rules, and which rule runs out of it must not depend on how the set is split.
fn by_id(rules: &[CRule], a: usize, b: usize) -> std::cmp::Ordering {
    let id = |i: usize| rules.get(i).map(|r| &*r.id);
    id(a).cmp(&id(b))
}

fn index_counts(
    counts: &[CountSpec],
    schema: &Schema,
) -> (HashMap<String, Vec<usize>>, Vec<usize>) {
    let mut index: HashMap<String, Vec<usize>> = HashMap::new();
    for name in schema.actions.keys() {
        let list: Vec<usize> = counts
            .iter()
            .enumerate()
            .filter(|(_, c)| c.pattern.matches(name))
            .map(|(i, _)| i)
            .collect();
        if !list.is_empty() {
            index.insert(name.clone(), list);
        }
    }
    let graphql = counts
        .iter()
        .enumerate()
        .filter(|(_, c)| may_match_graphql(&c.pattern))
        .map(|(i, _)| i)
        .collect();
    (index, graphql)
}

/// Whether a pattern may match some `github.graphql.<field>` name.
pub fn may_match_graphql(p: &Pattern) -> bool {
    let mut probes = vec!["zzProbeField".to_string()];
    probes.extend(p.literal_pieces());
    probes
        .iter()
        .filter(|f| super::schema::is_graphql_name(f) && f.as_str() != "query")
        .any(|f| p.matches(&format!("{GRAPHQL_PREFIX}{f}")))
}

struct Checker<'a> {
    sources: &'a [Source],
    schema: &'a Schema,
    /// Byte offsets of each source's line starts (locations without rescanning the text).
    line_starts: Vec<Vec<usize>>,
    /// The catalog actions each wildcard pattern text matches, computed once per text.
    matched: HashMap<String, Vec<&'a ActionSchema>>,
    errors: Vec<LoadError>,
    lists: BTreeMap<String, Value>,
    list_types: BTreeMap<String, Ty>,
    counts: Vec<CountSpec>,
}

/// What names mean inside one rule's expressions.
struct Scope<'s> {
    /// The actions the rule applies to.
    actions: Vec<&'s ActionSchema>,
    /// Quantifier variables in scope: name, slot, element type.
    vars: Vec<(String, usize, Ty)>,
    next_slot: usize,
    max_slots: usize,
    counts: Vec<usize>,
    /// Whether the rule's patterns reach an open family (GraphQL mutations).
    open: bool,
}

impl<'a> Checker<'a> {
    fn err(&mut self, span: Span, msg: impl Into<String>) {
        // Messages are written "a {type}"; the two type names that start with a vowel read
        // "an int" and "an any".
        let msg = msg
            .into()
            .replace(" a int", " an int")
            .replace(" a any", " an any");
        self.errors.push(LoadError::at(self.sources, span, msg));
    }

    fn place(&self, span: Span) -> (String, (usize, usize)) {
        let (Some(src), Some(starts)) =
            (self.sources.get(span.file), self.line_starts.get(span.file))
        else {
            return ("<policy>".into(), (0, 0));
        };
        let line = starts.partition_point(|&s| s <= span.start).max(1);
        let start = starts.get(line - 1).copied().unwrap_or(0);
        let col = src
            .text
            .get(start..span.start.min(src.text.len()))
            .map_or(0, |t| t.chars().count())
            + 1;
        (src.name.clone(), (line, col))
    }

    fn location(&self, span: Span) -> String {
        let (file, (line, col)) = self.place(span);
        format!("{file}:{line}:{col}")
    }

    fn snippet(&self, span: Span) -> String {
        self.sources
            .get(span.file)
            .map(|s| s.snippet(span).to_string())
            .unwrap_or_default()
    }

    fn lists(&mut self, files: &[File]) {
        let mut seen: HashMap<String, Span> = HashMap::new();
        for f in files {
            for l in &f.lists {
                if seen.contains_key(&l.name.value) {
                    self.err(
                        l.name.span,
                        format!("the list {} is defined twice", l.name.value),
                    );
                    continue;
                }
                if is_reserved(&l.name.value) {
                    self.err(
                        l.name.span,
                        format!("{} is a built-in name and cannot name a list", l.name.value),
                    );
                    continue;
                }
                seen.insert(l.name.value.clone(), l.name.span);
                let mut elem: Option<Ty> = None;
                let mut values = Vec::new();
                let mut ok = true;
                for (item, span) in &l.items {
                    let t = lit_ty(item);
                    match &elem {
                        Some(e) if !e.compatible(&t) || *e != t => {
                            self.err(
                                *span,
                                format!(
                                    "the list {} mixes {} and {}; a list is typed by its elements",
                                    l.name.value,
                                    e.name(),
                                    t.name()
                                ),
                            );
                            ok = false;
                        }
                        _ => elem = Some(t),
                    }
                    values.push(lit_value(item));
                }
                if ok {
                    self.lists
                        .insert(l.name.value.clone(), Value::Array(values));
                    self.list_types.insert(
                        l.name.value.clone(),
                        Ty::List(Box::new(elem.unwrap_or(Ty::Any))),
                    );
                }
            }
        }
    }

    fn default(&mut self, files: &[File]) -> Option<CDefault> {
        let mut found: Option<(CDefault, Span)> = None;
        for f in files {
            for d in &f.defaults {
                if d.effect == EffectKw::Allow {
                    self.err(
                        d.effect_span,
                        "`default allow` is not accepted: the default is block or step_up, and allow rules say what is allowed",
                    );
                    continue;
                }
                if let Some((_, first)) = &found {
                    let at = self.location(*first);
                    self.err(
                        d.span,
                        format!("a second `default`: the policy set has one, at {at}"),
                    );
                    continue;
                }
                let reason = match &d.reason {
                    Some(r) => self.template(r, None),
                    None => Template(vec![
                        Piece::Text(match d.effect {
                            EffectKw::StepUp => "no rule covers ".into(),
                            _ => "no rule allows ".into(),
                        }),
                        Piece::Builtin(Builtin::Action),
                    ]),
                };
                found = Some((
                    CDefault {
                        effect: d.effect,
                        reason,
                    },
                    d.span,
                ));
            }
        }
        found.map(|(d, _)| d)
    }

    fn pattern(&mut self, t: &Text) -> Option<(Pattern, Vec<&'a ActionSchema>, bool)> {
        let p = match Pattern::new(&t.value) {
            Ok(p) => p,
            Err(e) => {
                self.err(t.span, e);
                return None;
            }
        };
        let matched: Vec<&ActionSchema> = if p.is_exact() {
            self.schema.actions.get(&p.text).into_iter().collect()
        } else if let Some(m) = self.matched.get(&p.text) {
            m.clone()
        } else {
            let m: Vec<&ActionSchema> = self
                .schema
                .actions
                .iter()
                .filter(|(name, _)| p.matches(name))
                .map(|(_, a)| a)
                .collect();
            self.matched.insert(p.text.clone(), m.clone());
            m
        };
        let open = may_match_graphql(&p);
        if matched.is_empty() && !open {
            let hint = self.suggest(&t.value);
            self.err(
                t.span,
                format!(
                    "the pattern {} matches no action in the catalog{hint}",
                    t.value
                ),
            );
            return None;
        }
        Some((p, matched, open))
    }

    /// `; did you mean X?` for a near miss of a catalog action name.
    fn suggest(&self, name: &str) -> String {
        let best = self
            .schema
            .actions
            .keys()
            .map(|k| (edit_distance(k, name), k))
            .min();
        match best {
            Some((d, k)) if d <= 3 => format!("; did you mean {k}?"),
            _ => String::new(),
        }
    }

    fn rule(&mut self, r: &RuleDef) -> Option<CRule> {
        let before = self.errors.len();
        for (what, span) in &r.repeated {
            self.err(*span, format!("a rule takes at most one `{what}` clause"));
        }
        if r.exempt.is_some() && r.effect == EffectKw::Allow {
            self.err(
                r.span,
                "`exempt` is only for block and step_up rules; write the condition into the allow rule's `when`",
            );
        }
        if r.id.value.is_empty() {
            self.err(r.id.span, "a rule id may not be empty");
        }
        let mut patterns = Vec::new();
        let mut actions: Vec<&ActionSchema> = Vec::new();
        let mut open = false;
        let mut seen: std::collections::HashSet<*const ActionSchema> =
            std::collections::HashSet::new();
        for t in &r.patterns {
            if let Some((p, matched, o)) = self.pattern(t) {
                patterns.push(p);
                for a in matched {
                    if seen.insert(std::ptr::from_ref(a)) {
                        actions.push(a);
                    }
                }
                open |= o;
            }
        }
        if open {
            actions.push(&self.schema.graphql_mutation);
        }
        let mut scope = Scope {
            actions,
            vars: Vec::new(),
            next_slot: 0,
            max_slots: 0,
            counts: Vec::new(),
            open,
        };
        let clauses = |c: &mut Checker<'a>, exprs: &[Expr], scope: &mut Scope<'_>| {
            exprs
                .iter()
                .filter_map(|e| c.condition(e, scope))
                .collect::<Vec<_>>()
        };
        let when = clauses(self, &r.when, &mut scope);
        let unless = clauses(self, &r.unless, &mut scope);
        let exempt = r
            .exempt
            .as_ref()
            .and_then(|e| self.condition(e, &mut scope));
        let reason = match &r.reason {
            Some(t) => self.template(t, Some(&scope)),
            None => Template(vec![
                Piece::Text("rule ".into()),
                Piece::Rule,
                Piece::Text(" matched ".into()),
                Piece::Builtin(Builtin::Action),
            ]),
        };
        if self.errors.len() > before {
            return None;
        }
        let mut annotations = Vec::new();
        for (k, v) in &r.annotations {
            annotations.push((k.value.clone(), v.value.clone()));
        }
        Some(CRule {
            id: r.id.value.as_str().into(),
            effect: r.effect,
            shadow: r.shadow,
            annotations: Arc::from(annotations),
            patterns,
            when,
            unless,
            exempt,
            reason,
            counts: scope.counts,
            slots: scope.max_slots,
            location: self.location(r.span),
        })
    }

    fn condition(&mut self, e: &Expr, scope: &mut Scope<'_>) -> Option<Clause> {
        let (expr, ty) = self.expr(e, scope)?;
        if !Ty::Bool.compatible(&ty) {
            self.err(
                e.span,
                format!("a condition must be true or false; this is a {}", ty.name()),
            );
            return None;
        }
        Some(Clause {
            expr,
            source: self.snippet(e.span),
            memo: 0,
        })
    }

    /// The type of `params.<path>` over the rule's actions.
    fn param_ty(&mut self, path: &[String], span: Span, scope: &Scope<'_>) -> Option<Ty> {
        let Some(first) = path.first() else {
            self.err(span, "`params` needs a field: params.NAME");
            return None;
        };
        let mut ty: Option<Ty> = None;
        for a in &scope.actions {
            if let Some(t) = a.param(first) {
                ty = Some(match ty {
                    Some(old) => old.join(&t),
                    None => t,
                });
            }
        }
        let Some(mut ty) = ty else {
            let mut known: BTreeSet<&str> = BTreeSet::new();
            for a in &scope.actions {
                known.extend(a.params.keys().map(String::as_str));
            }
            let known: Vec<&str> = known.into_iter().take(12).collect();
            self.err(
                span,
                format!(
                    "params.{first}: none of the actions this rule applies to has a param {first:?} (they have: {})",
                    if known.is_empty() { "none".to_string() } else { known.join(", ") }
                ),
            );
            return None;
        };
        for f in &path[1..] {
            ty = self.field_ty(&ty, f, span)?;
        }
        Some(ty)
    }

    fn field_ty(&mut self, ty: &Ty, field: &str, span: Span) -> Option<Ty> {
        match ty {
            Ty::Any | Ty::Record(None) => Some(Ty::Any),
            Ty::Record(Some(fields)) => match fields.get(field) {
                Some(t) => Some(t.clone()),
                None => {
                    let names: Vec<&str> = fields.keys().map(String::as_str).collect();
                    self.err(
                        span,
                        format!(
                            "no field {field:?} here (the fields are: {})",
                            names.join(", ")
                        ),
                    );
                    None
                }
            },
            other => {
                self.err(span, format!("a {} has no field {field:?}", other.name()));
                None
            }
        }
    }

    fn expr(&mut self, e: &Expr, scope: &mut Scope<'_>) -> Option<(CExpr, Ty)> {
        let span = e.span;
        match &e.kind {
            ExprKind::Or(parts) | ExprKind::And(parts) => {
                let mut out = Vec::new();
                let mut ok = true;
                for p in parts {
                    match self.expr(p, scope) {
                        Some((c, t)) if Ty::Bool.compatible(&t) => out.push(c),
                        Some((_, t)) => {
                            let op = if matches!(e.kind, ExprKind::Or(_)) {
                                "or"
                            } else {
                                "and"
                            };
                            self.err(
                                p.span,
                                format!(
                                    "`{op}` needs true or false on both sides; this is a {}",
                                    t.name()
                                ),
                            );
                            ok = false;
                        }
                        None => ok = false,
                    }
                }
                if !ok {
                    return None;
                }
                let c = if matches!(e.kind, ExprKind::Or(_)) {
                    CExpr::Or(out)
                } else {
                    CExpr::And(out)
                };
                Some((c, Ty::Bool))
            }
            ExprKind::Not(n, inner) => {
                let (c, t) = self.expr(inner, scope)?;
                if !Ty::Bool.compatible(&t) {
                    self.err(
                        inner.span,
                        format!("`not` needs true or false; this is a {}", t.name()),
                    );
                    return None;
                }
                let c = if n % 2 == 1 {
                    CExpr::Not(Box::new(c))
                } else {
                    c
                };
                Some((c, Ty::Bool))
            }
            ExprKind::Cmp(op, lhs, rhs) => self.cmp(*op, lhs, rhs, span, scope),
            ExprKind::Glob(subject, pat) => {
                let (c, t) = self.expr(subject, scope)?;
                self.want_str(&t, subject.span, "matches glob")?;
                let re = self.regex(&glob_to_regex(&pat.value), pat.span)?;
                Some((CExpr::Regex(Box::new(c), re), Ty::Bool))
            }
            ExprKind::Regex(subject, pat) => {
                let (c, t) = self.expr(subject, scope)?;
                self.want_str(&t, subject.span, "matches")?;
                // The pattern must be a regex on its own: wrapped unchecked, `a)|(b` would
                // compile as `^(?:a)|(b)$`, which is not anchored.
                self.regex(&pat.value, pat.span)?;
                let re = self.regex(&format!("^(?:{})$", pat.value), pat.span)?;
                Some((CExpr::Regex(Box::new(c), re), Ty::Bool))
            }
            ExprKind::Within {
                subject,
                days,
                start,
                end,
                zone,
            } => {
                let (c, t) = self.expr(subject, scope)?;
                if !Ty::Timestamp.compatible(&t) {
                    self.err(
                        subject.span,
                        format!(
                            "`within` needs a timestamp such as now; this is a {}",
                            t.name()
                        ),
                    );
                    return None;
                }
                if start == end {
                    self.err(
                        span,
                        "the window is empty: its start and end are the same time",
                    );
                    return None;
                }
                let tz = match jiff::tz::TimeZone::get(&zone.value) {
                    Ok(tz) => tz,
                    Err(_) => {
                        self.err(zone.span, format!("unknown time zone {:?}; use an IANA name such as \"Europe/London\"", zone.value));
                        return None;
                    }
                };
                Some((
                    CExpr::Within {
                        subject: Box::new(c),
                        weekdays: *days == Days::Weekdays,
                        start: *start,
                        end: *end,
                        zone: Arc::new(tz),
                    },
                    Ty::Bool,
                ))
            }
            ExprKind::Coalesce(parts) => {
                let mut out = Vec::new();
                let mut ty: Option<Ty> = None;
                for p in parts {
                    let (c, t) = self.expr(p, scope)?;
                    if let Some(old) = &ty {
                        if !old.compatible(&t) {
                            self.err(
                                p.span,
                                format!(
                                    "`??` needs both sides of one type: {} and {}",
                                    old.name(),
                                    t.name()
                                ),
                            );
                            return None;
                        }
                        ty = Some(if *old == Ty::Any { t } else { old.clone() });
                    } else {
                        ty = Some(t);
                    }
                    out.push(c);
                }
                Some((CExpr::Coalesce(out), ty.unwrap_or(Ty::Any)))
            }
            ExprKind::Call(func, arg) => {
                let (c, t) = self.expr(arg, scope)?;
                let out = match func {
                    Func::Domain | Func::Lower => {
                        self.want_str(
                            &t,
                            arg.span,
                            if *func == Func::Domain {
                                "domain()"
                            } else {
                                "lower()"
                            },
                        )?;
                        Ty::Str
                    }
                    Func::Len => {
                        if !matches!(t, Ty::List(_) | Ty::Any) {
                            self.err(
                                arg.span,
                                format!("len() takes a list; this is a {}", t.name()),
                            );
                            return None;
                        }
                        Ty::Int
                    }
                };
                Some((CExpr::Call(*func, Box::new(c)), out))
            }
            ExprKind::Quant {
                kind,
                var,
                list,
                body,
            } => {
                let (lc, lt) = self.expr(list, scope)?;
                let elem = match lt {
                    Ty::List(e) => *e,
                    Ty::Any => Ty::Any,
                    other => {
                        self.err(
                            list.span,
                            format!(
                                "{}(x in ...) needs a list; this is a {}",
                                if *kind == Quant::Any { "any" } else { "all" },
                                other.name()
                            ),
                        );
                        return None;
                    }
                };
                if is_reserved(&var.value)
                    || self.lists.contains_key(&var.value)
                    || scope.vars.iter().any(|(n, _, _)| *n == var.value)
                {
                    self.err(
                        var.span,
                        format!(
                            "{} is already a name here; pick another variable name",
                            var.value
                        ),
                    );
                    return None;
                }
                let slot = scope.next_slot;
                scope.next_slot += 1;
                scope.max_slots = scope.max_slots.max(scope.next_slot);
                scope.vars.push((var.value.clone(), slot, elem));
                let body_checked = self.expr(body, scope);
                scope.vars.pop();
                scope.next_slot -= 1;
                let (bc, bt) = body_checked?;
                if !Ty::Bool.compatible(&bt) {
                    self.err(
                        body.span,
                        format!(
                            "the condition of a quantifier must be true or false; this is a {}",
                            bt.name()
                        ),
                    );
                    return None;
                }
                Some((
                    CExpr::Quant {
                        all: *kind == Quant::All,
                        slot,
                        list: Box::new(lc),
                        body: Box::new(bc),
                    },
                    Ty::Bool,
                ))
            }
            ExprKind::Count(call) => {
                let spec = self.count_spec(call)?;
                if !scope.counts.contains(&spec) {
                    scope.counts.push(spec);
                }
                Some((
                    CExpr::Count {
                        spec,
                        window_ms: u64::try_from(call.window_ms).unwrap_or(0),
                    },
                    Ty::Int,
                ))
            }
            ExprKind::Lit(l) => Some((CExpr::Const(lit_value(l)), lit_ty(l))),
            ExprKind::Path(path) => self.path(path, span, scope),
        }
    }

    fn path(&mut self, path: &[String], span: Span, scope: &Scope<'_>) -> Option<(CExpr, Ty)> {
        let Some(first) = path.first() else {
            self.err(span, "expected a name");
            return None;
        };
        let rest = &path[1..];
        if let Some((_, slot, ty)) = scope.vars.iter().rev().find(|(n, _, _)| n == first) {
            let mut t = ty.clone();
            let slot = *slot;
            for f in rest {
                t = self.field_ty(&t, f, span)?;
            }
            return Some((CExpr::Var(slot, rest.to_vec()), t));
        }
        if first == "params" {
            let t = self.param_ty(rest, span, scope)?;
            return Some((CExpr::Param(rest.to_vec()), t));
        }
        let builtin = match first.as_str() {
            "action" => Some((Builtin::Action, Ty::Str)),
            "agent" => Some((Builtin::Agent, Ty::Str)),
            "method" => Some((Builtin::Method, Ty::Str)),
            "host" => Some((Builtin::Host, Ty::Str)),
            "path" => Some((Builtin::Path, Ty::Str)),
            "now" => Some((Builtin::Now, Ty::Timestamp)),
            "approved" => Some((Builtin::Approved, Ty::List(Box::new(Ty::Str)))),
            "credential" => Some((Builtin::Credential, Ty::Str)),
            _ => None,
        };
        if let Some((b, t)) = builtin {
            if !rest.is_empty() {
                self.err(span, format!("{first} has no fields"));
                return None;
            }
            return Some((CExpr::Builtin(b), t));
        }
        if let (Some(v), Some(t)) = (self.lists.get(first), self.list_types.get(first)) {
            if !rest.is_empty() {
                self.err(span, format!("the list {first} has no fields"));
                return None;
            }
            return Some((CExpr::Const(v.clone()), t.clone()));
        }
        let _ = scope.open;
        self.err(
            span,
            format!("unknown name {first:?}: expected params.NAME, action, agent, credential, method, host, path, now, approved, a list name or a quantifier variable"),
        );
        None
    }

    fn want_str(&mut self, t: &Ty, span: Span, what: &str) -> Option<()> {
        if Ty::Str.compatible(t) {
            Some(())
        } else {
            self.err(
                span,
                format!("{what} needs a string; this is a {}", t.name()),
            );
            None
        }
    }

    fn cmp(
        &mut self,
        op: CmpOp,
        lhs: &Expr,
        rhs: &Expr,
        span: Span,
        scope: &mut Scope<'_>,
    ) -> Option<(CExpr, Ty)> {
        let (lc, lt) = self.expr(lhs, scope)?;
        let (rc, rt) = self.expr(rhs, scope)?;
        match op {
            CmpOp::Eq | CmpOp::Ne => {
                if !lt.compatible(&rt) {
                    self.err(
                        span,
                        format!(
                            "`{op}` compares a {} with a {}; they can never be equal",
                            lt.name(),
                            rt.name()
                        ),
                    );
                    return None;
                }
            }
            CmpOp::Lt | CmpOp::Le | CmpOp::Gt | CmpOp::Ge => {
                let ordered =
                    |t: &Ty| matches!(t, Ty::Int | Ty::Duration | Ty::Timestamp | Ty::Any);
                if !ordered(&lt) || !ordered(&rt) || !lt.compatible(&rt) {
                    self.err(span, format!("`{op}` orders ints, durations and timestamps of one kind; this compares a {} with a {}", lt.name(), rt.name()));
                    return None;
                }
            }
            CmpOp::In | CmpOp::NotIn => {
                let elem = match &rt {
                    Ty::List(e) => (**e).clone(),
                    Ty::Any => Ty::Any,
                    other => {
                        self.err(
                            rhs.span,
                            format!(
                                "`{op}` needs a list on its right; this is a {}",
                                other.name()
                            ),
                        );
                        return None;
                    }
                };
                if !lt.compatible(&elem) {
                    self.err(
                        span,
                        format!(
                            "`{op}` looks for a {} in a list of {}",
                            lt.name(),
                            elem.name()
                        ),
                    );
                    return None;
                }
                if let CExpr::Const(Value::Array(items)) = &rc {
                    if items.iter().all(Value::is_string) {
                        let set = items
                            .iter()
                            .filter_map(|v| v.as_str().map(str::to_string))
                            .collect();
                        return Some((
                            CExpr::InStrs {
                                subject: Box::new(lc),
                                set: Arc::new(set),
                                negate: op == CmpOp::NotIn,
                            },
                            Ty::Bool,
                        ));
                    }
                }
            }
            CmpOp::Under => {
                self.want_str(&lt, lhs.span, "under")?;
                let CExpr::Const(Value::Array(items)) = &rc else {
                    self.err(
                        rhs.span,
                        "`under` needs a literal or named list of domains on its right",
                    );
                    return None;
                };
                let mut domains = Vec::new();
                for v in items {
                    match v.as_str() {
                        Some(d) if !d.is_empty() => {
                            domains.push(d.trim_end_matches('.').to_ascii_lowercase())
                        }
                        _ => {
                            self.err(rhs.span, "`under` needs a list of non-empty domain strings");
                            return None;
                        }
                    }
                }
                return Some((CExpr::Under(Box::new(lc), Arc::new(domains)), Ty::Bool));
            }
            CmpOp::StartsWith | CmpOp::EndsWith | CmpOp::Contains => {
                self.want_str(&lt, lhs.span, &op.to_string())?;
                self.want_str(&rt, rhs.span, &op.to_string())?;
            }
        }
        Some((CExpr::Cmp(op, Box::new(lc), Box::new(rc)), Ty::Bool))
    }

    fn regex(&mut self, re: &str, span: Span) -> Option<Arc<regex::Regex>> {
        match regex::RegexBuilder::new(re)
            .size_limit(MAX_REGEX_BYTES)
            .dfa_size_limit(MAX_REGEX_BYTES)
            .nest_limit(MAX_REGEX_NEST)
            .build()
        {
            Ok(r) => Some(Arc::new(r)),
            Err(regex::Error::CompiledTooBig(_)) => {
                self.err(
                    span,
                    format!(
                        "the pattern compiles to more than {} KiB; simplify it",
                        MAX_REGEX_BYTES / 1024
                    ),
                );
                None
            }
            Err(e) => {
                let msg = e.to_string();
                let first = msg.lines().last().unwrap_or("invalid").trim();
                let first = first.strip_prefix("error: ").unwrap_or(first).to_string();
                self.err(span, format!("not a valid regex: {first}"));
                None
            }
        }
    }

    fn count_spec(&mut self, call: &CountCall) -> Option<usize> {
        if call.window_ms <= 0 || call.window_ms > MAX_WINDOW_MS {
            self.err(
                call.window_span,
                "a count window is more than 0 and at most 24h",
            );
            return None;
        }
        let (pattern, actions, open) = self.pattern(&call.pattern)?;
        let by_param = match call.by.as_slice() {
            [a] if a == "agent" => Vec::new(),
            [p, rest @ ..] if p == "params" && !rest.is_empty() => {
                let mut scope = Scope {
                    actions: actions.clone(),
                    vars: Vec::new(),
                    next_slot: 0,
                    max_slots: 0,
                    counts: Vec::new(),
                    open,
                };
                if open {
                    scope.actions.push(&self.schema.graphql_mutation);
                }
                let t = self.param_ty(rest, call.by_span, &scope)?;
                if !matches!(t, Ty::Str | Ty::Int | Ty::Any) {
                    self.err(
                        call.by_span,
                        format!("count groups by a string or an int; this is a {}", t.name()),
                    );
                    return None;
                }
                rest.to_vec()
            }
            _ => {
                self.err(
                    call.by_span,
                    "count groups `by: agent` or `by: params.NAME`",
                );
                return None;
            }
        };
        let key = format!("{}|{}", pattern.text, call.by.join("."));
        if let Some(i) = self.counts.iter().position(|c| c.key == key) {
            return Some(i);
        }
        self.counts.push(CountSpec {
            key,
            pattern,
            by_param,
        });
        Some(self.counts.len() - 1)
    }

    fn template(&mut self, t: &Text, scope: Option<&Scope<'_>>) -> Template {
        let mut pieces = Vec::new();
        let mut text = String::new();
        let mut chars = t.value.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '\\' if matches!(chars.peek(), Some('{') | Some('}')) => {
                    if let Some(b) = chars.next() {
                        text.push(b);
                    }
                }
                '{' => {
                    let name: String = chars.by_ref().take_while(|&c| c != '}').collect();
                    if !text.is_empty() {
                        pieces.push(Piece::Text(std::mem::take(&mut text)));
                    }
                    let path: Vec<String> = name.trim().split('.').map(str::to_string).collect();
                    let piece = match path.first().map(String::as_str) {
                        Some("action") if path.len() == 1 => Some(Piece::Builtin(Builtin::Action)),
                        Some("agent") if path.len() == 1 => Some(Piece::Builtin(Builtin::Agent)),
                        Some("method") if path.len() == 1 => Some(Piece::Builtin(Builtin::Method)),
                        Some("host") if path.len() == 1 => Some(Piece::Builtin(Builtin::Host)),
                        Some("path") if path.len() == 1 => Some(Piece::Builtin(Builtin::Path)),
                        Some("rule") if path.len() == 1 && scope.is_some() => Some(Piece::Rule),
                        Some("params") if path.len() > 1 => match scope {
                            Some(s) => self
                                .param_ty(&path[1..], t.span, s)
                                .map(|_| Piece::Param(path[1..].to_vec())),
                            // The default applies to every action: a param is shown when the
                            // action has it, and "(none)" otherwise.
                            None => Some(Piece::Param(path[1..].to_vec())),
                        },
                        _ => {
                            self.err(t.span, format!("unknown template name {{{name}}}: use {{action}}, {{agent}}, {{method}}, {{host}}, {{path}}, {{rule}} or {{params.NAME}}"));
                            None
                        }
                    };
                    pieces.extend(piece);
                }
                '}' => {
                    self.err(
                        t.span,
                        "a `}` without its `{` in a reason; write \\} for a literal brace",
                    );
                }
                c => text.push(c),
            }
        }
        if !text.is_empty() {
            pieces.push(Piece::Text(text));
        }
        Template(pieces)
    }

    fn test(&mut self, t: &TestDef, ids: &HashMap<String, Span>) -> Option<CTest> {
        let before = self.errors.len();
        for (what, span) in &t.repeated {
            self.err(*span, format!("a test takes at most one `{what}` clause"));
        }
        let name = t.action.value.clone();
        let Some(schema) = self.schema.lookup(&name) else {
            let hint = self.suggest(&name);
            self.err(
                t.action.span,
                format!("{name} is not an action of the catalog{hint}"),
            );
            return None;
        };
        let schema = schema.clone();
        let mut params = serde_json::Map::new();
        if let Some((Lit::Record(fields), _)) = &t.params {
            for (k, v, span) in fields {
                match schema.param(k) {
                    Some(ty) => {
                        let lt = lit_ty(v);
                        if !ty.compatible(&lt) && !lit_fits(v, &ty) {
                            self.err(
                                *span,
                                format!(
                                    "{name} has {k} as a {}; this is a {}",
                                    ty.name(),
                                    lt.name()
                                ),
                            );
                        }
                    }
                    None => self.err(*span, format!("{name} has no param {k:?}")),
                }
                params.insert(k.clone(), lit_value(v));
            }
        }
        if name.starts_with("github.") || name.starts_with("git.") {
            // As the catalog does: owner and repo without case.
            for k in ["owner", "repo"] {
                if let Some(Value::String(s)) = params.get_mut(k) {
                    s.make_ascii_lowercase();
                }
            }
        }
        let now_ms = match &t.at {
            Some(at) => match at.value.parse::<jiff::Timestamp>() {
                Ok(ts) => ts.as_millisecond(),
                Err(e) => {
                    self.err(
                        at.span,
                        format!(
                            "`at` needs an RFC 3339 time such as \"2026-03-03T10:00:00Z\": {e}"
                        ),
                    );
                    0
                }
            },
            None => DEFAULT_TEST_NOW_MS,
        };
        let mut counts = Vec::new();
        for (call, n, span) in &t.counts {
            let Some(spec) = self.count_spec(call) else {
                continue;
            };
            if *n < 0 {
                self.err(*span, "a count is 0 or more");
                continue;
            }
            counts.push((
                spec,
                u64::try_from(call.window_ms).unwrap_or(0),
                u64::try_from(*n).unwrap_or(0),
            ));
        }
        let mut approved = Vec::new();
        for a in &t.approved {
            // `default`: a request held by the default (`default step_up`), then approved.
            if a.value != "default" && !ids.contains_key(&a.value) {
                self.err(a.span, format!("no rule has the id {:?}", a.value));
            }
            approved.push(a.value.clone());
        }
        let credential = match &t.credential {
            None => "placeholder".to_string(),
            Some(c) if matches!(c.value.as_str(), "placeholder" | "foreign" | "none") => {
                c.value.clone()
            }
            Some(c) => {
                self.err(
                    c.span,
                    "a credential is \"placeholder\", \"foreign\" or \"none\"",
                );
                String::new()
            }
        };
        if let Some(by) = &t.expect_by {
            if by.value != "default" && !ids.contains_key(&by.value) {
                self.err(by.span, format!("no rule has the id {:?}", by.value));
            }
        }
        let (method, host, path) = match &t.via {
            Some((m, h, p)) => (
                m.value.to_ascii_uppercase(),
                h.value.to_ascii_lowercase(),
                p.as_ref().map_or(schema.path.clone(), |p| p.value.clone()),
            ),
            None => {
                let host = match (name.as_str(), params.get("host").and_then(Value::as_str)) {
                    ("net.connect", Some(h)) => h.to_string(),
                    _ => schema.host.to_string(),
                };
                (schema.method.to_string(), host, schema.path.clone())
            }
        };
        if self.errors.len() > before {
            return None;
        }
        Some(CTest {
            name: t.name.value.clone(),
            location: self.location(t.span),
            action: name,
            params,
            agent: t.agent.as_ref().map_or(String::new(), |a| a.value.clone()),
            method,
            host,
            path,
            now_ms,
            counts,
            approved,
            credential,
            expect: t.expect,
            expect_by: t.expect_by.as_ref().map(|b| b.value.clone()),
            reason_contains: t.reason_contains.iter().map(|r| r.value.clone()).collect(),
        })
    }
}

/// Names expressions read as built-ins.
fn is_reserved(name: &str) -> bool {
    matches!(
        name,
        "action"
            | "agent"
            | "method"
            | "host"
            | "path"
            | "now"
            | "approved"
            | "params"
            | "credential"
    )
}

fn lit_ty(l: &Lit) -> Ty {
    match l {
        Lit::Str(_) => Ty::Str,
        Lit::Int(_) => Ty::Int,
        Lit::Bool(_) => Ty::Bool,
        Lit::Duration(_) => Ty::Duration,
        Lit::List(items) => {
            let mut elem: Option<Ty> = None;
            for (i, _) in items {
                let t = lit_ty(i);
                elem = Some(match elem {
                    Some(e) => e.join(&t),
                    None => t,
                });
            }
            Ty::List(Box::new(elem.unwrap_or(Ty::Any)))
        }
        Lit::Record(fields) => Ty::Record(Some(
            fields
                .iter()
                .map(|(k, v, _)| (k.clone(), lit_ty(v)))
                .collect(),
        )),
    }
}

/// Whether a literal fits a described type (a record literal fits a record with those fields).
fn lit_fits(l: &Lit, ty: &Ty) -> bool {
    match (l, ty) {
        (_, Ty::Any) => true,
        (Lit::List(items), Ty::List(e)) => items.iter().all(|(i, _)| lit_fits(i, e)),
        (Lit::Record(fields), Ty::Record(Some(known))) => fields
            .iter()
            .all(|(k, v, _)| known.get(k).is_some_and(|t| lit_fits(v, t))),
        (Lit::Record(_), Ty::Record(None)) => true,
        (l, t) => lit_ty(l) == *t,
    }
}

/// A literal as the JSON value the evaluator compares (durations as milliseconds).
pub fn lit_value(l: &Lit) -> Value {
    match l {
        Lit::Str(s) => Value::String(s.clone()),
        Lit::Int(i) | Lit::Duration(i) => Value::from(*i),
        Lit::Bool(b) => Value::Bool(*b),
        Lit::List(items) => Value::Array(items.iter().map(|(i, _)| lit_value(i)).collect()),
        Lit::Record(fields) => Value::Object(
            fields
                .iter()
                .map(|(k, v, _)| (k.clone(), lit_value(v)))
                .collect(),
        ),
    }
}

/// A whole-string glob as an anchored regex: `**` crosses `/`, `*` and `?` do not.
fn glob_to_regex(glob: &str) -> String {
    let mut re = String::from("^(?s:");
    let mut chars = glob.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '*' if chars.peek() == Some(&'*') => {
                chars.next();
                re.push_str(".*");
            }
            '*' => re.push_str("[^/]*"),
            '?' => re.push_str("[^/]"),
            c => re.push_str(&regex::escape(c.encode_utf8(&mut [0; 4]))),
        }
    }
    re.push_str(")$");
    re
}

/// Levenshtein distance, for "did you mean".
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != *cb);
            cur.push(sub.min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use crate::policy::schema::Schema;
    use crate::policy::{load, source};

    #[test]
    fn a_regex_must_be_valid_on_its_own() {
        let schema = Schema::builtin();
        for re in ["a)|(b", "a))|((b", ")(", "\\"] {
            let text = format!(
                "default block;\nallow \"x\" on github.pulls.create when params.title matches r\"{re}\";\n"
            );
            let e = load(vec![source("t.policy", &text)], &schema).unwrap_err();
            assert!(
                e.to_string()
                    .starts_with("t.policy:2:60: not a valid regex: "),
                "{re}: {e}"
            );
            assert!(!e.to_string().contains("error:"), "{e}");
        }
        let text = "default block;\nallow \"x\" on github.pulls.create when params.title matches r\"a|(b)\";\n";
        assert!(load(vec![source("t.policy", text)], &schema).is_ok());
    }
}
