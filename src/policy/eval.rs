//! The evaluator: pure (it takes `now` and the counts, reads no clock, does no I/O), three-valued,
//! and bounded by a step budget.
//!
//! An expression is true, false or unknown (a missing value, a wrong type from an untyped
//! field, the budget spent). `and`/`or`/`not`/`any`/`all` follow Kleene's three-valued logic.
//! A block or step_up rule fires unless its conditions are definitely false; an allow rule
//! fires only when they are definitely true. So an error can only make a decision stricter.

use std::borrow::Cow;
use std::cell::{Cell, RefCell};
use std::sync::Arc;

use serde::Serialize;
use serde_json::Value;

use super::ast::{CmpOp, EffectKw, Func};
use super::check::{Builtin, CExpr, CRule, Clause, Piece, Plan, Program, Template};
use crate::actions::Action;

/// Most expression steps one decision may take.
pub const STEP_BUDGET: u32 = 100_000;
/// Longest text one template hole renders (agent-controlled values end up in reasons).
const MAX_HOLE_CHARS: usize = 200;

/// What the gate does with an action (or a request).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Effect {
    Allow,
    StepUp,
    Block,
}

impl Effect {
    /// How a shadow rule with this effect is reported: `would_allow` and so on.
    pub fn shadow_str(self) -> &'static str {
        match self {
            Effect::Allow => "would_allow",
            Effect::StepUp => "would_step_up",
            Effect::Block => "would_block",
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Effect::Allow => "allow",
            Effect::StepUp => "step_up",
            Effect::Block => "block",
        }
    }
}

impl From<EffectKw> for Effect {
    fn from(e: EffectKw) -> Effect {
        match e {
            EffectKw::Allow => Effect::Allow,
            EffectKw::StepUp => Effect::StepUp,
            EffectKw::Block => Effect::Block,
        }
    }
}

/// The counts `count(...)` reads: admitted requests of a series in `(now - window, now]`.
pub trait Counts {
    fn count(&self, spec: &str, group: &str, window_ms: u64, now_ms: i64) -> u64;
}

/// No counts at all (every `count` is 0).
#[derive(Debug, Clone, Copy, Default)]
pub struct NoCounts;

impl Counts for NoCounts {
    fn count(&self, _: &str, _: &str, _: u64, _: i64) -> u64 {
        0
    }
}

/// What one decision is about.
#[derive(Debug, Clone, Copy)]
pub struct Input<'a> {
    pub action: &'a Action,
    pub agent: &'a str,
    /// Unix milliseconds.
    pub now_ms: i64,
    /// Step-up rules a reviewer approved (release re-evaluation); empty otherwise.
    pub approved: &'a [String],
    /// The credential the request carried: `placeholder`, `foreign` or `none`.
    pub credential: &'a str,
}

/// A text shared by reference count (a rule id, an action name): copying one into a
/// decision does not allocate. Compares, prints and serialises as the string it holds.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SharedStr(Arc<str>);

impl SharedStr {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::ops::Deref for SharedStr {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl std::borrow::Borrow<str> for SharedStr {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl From<&str> for SharedStr {
    fn from(s: &str) -> SharedStr {
        SharedStr(Arc::from(s))
    }
}

impl From<String> for SharedStr {
    fn from(s: String) -> SharedStr {
        SharedStr(Arc::from(s))
    }
}

impl PartialEq<str> for SharedStr {
    fn eq(&self, other: &str) -> bool {
        *self.0 == *other
    }
}

impl PartialEq<&str> for SharedStr {
    fn eq(&self, other: &&str) -> bool {
        *self.0 == **other
    }
}

impl PartialEq<String> for SharedStr {
    fn eq(&self, other: &String) -> bool {
        *self.0 == **other
    }
}

impl PartialEq<SharedStr> for String {
    fn eq(&self, other: &SharedStr) -> bool {
        **self == *other.0
    }
}

impl PartialEq<SharedStr> for &str {
    fn eq(&self, other: &SharedStr) -> bool {
        **self == *other.0
    }
}

impl std::fmt::Debug for SharedStr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(&*self.0, f)
    }
}

impl std::fmt::Display for SharedStr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl Serialize for SharedStr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

/// A rule that fired. Its texts are shared with the program and the decision: recording one
/// does not allocate.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Fired {
    pub rule: SharedStr,
    /// `allow`, `step_up`, `block`, or for a shadow rule `would_allow` and so on.
    pub effect: &'static str,
    pub shadow: bool,
    /// The rule fired because a condition could not be evaluated (policy-language.md 4).
    pub fired_on_error: bool,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<String>,
    /// The rule's reason, rendered for the rules of the winning effect (empty for the others).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub reason: String,
    /// The rule's annotations (`@owner("..")`), `None` when it has none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub annotations: Option<Arc<[(String, String)]>>,
    pub action: SharedStr,
}

/// A decision, with the rules that caused it and every rule that fired.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Decision {
    pub effect: Effect,
    /// The action the decision is about (the first with the winning effect).
    pub action: String,
    /// Ids of the enforcing rules that fired with the winning effect (`default` when none).
    pub rules: Vec<SharedStr>,
    /// Their reasons, joined with "; ".
    pub reason: String,
    /// Every rule that fired, enforcing and shadow, for every action.
    pub fired: Vec<Fired>,
}

impl Decision {
    /// A decision no rule made (no policy, no action): blocked with `reason`.
    pub fn blocked(rule: &str, action: &str, reason: impl Into<String>) -> Decision {
        Decision {
            effect: Effect::Block,
            action: action.to_string(),
            rules: vec![SharedStr::from(rule)],
            reason: reason.into(),
            fired: Vec::new(),
        }
    }

    /// The strictest of several decisions (one per action of a request); ties keep the
    /// earliest action and merge the rules.
    pub fn strictest(mut decisions: Vec<Decision>) -> Decision {
        if decisions.len() == 1 {
            if let Some(only) = decisions.pop() {
                return only;
            }
        }
        let Some(effect) = decisions.iter().map(|d| d.effect).max() else {
            return Decision::blocked("builtin:no-action", "", "the request carries no action");
        };
        let mut out: Option<Decision> = None;
        let mut fired = Vec::new();
        for d in decisions {
            fired.extend(d.fired.iter().cloned());
            if d.effect != effect {
                continue;
            }
            match &mut out {
                None => out = Some(d),
                Some(o) => {
                    for r in d.rules {
                        if !o.rules.contains(&r) {
                            o.rules.push(r);
                        }
                    }
                    if !o.reason.contains(&d.reason) {
                        o.reason.push_str("; ");
                        o.reason.push_str(&d.reason);
                    }
                }
            }
        }
        let mut out = out.unwrap_or_else(|| Decision::blocked("builtin:no-action", "", ""));
        out.fired = fired;
        out
    }
}

/// How one clause came out, for `explain`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ClauseTrace {
    pub clause: &'static str,
    pub source: String,
    /// `true`, `false`, `unknown`, or `skipped` (not evaluated: the rule's conditions were
    /// already false).
    pub value: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// How one applicable rule came out, for `explain`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RuleTrace {
    pub rule: String,
    pub effect: Effect,
    pub shadow: bool,
    pub location: String,
    pub fired: bool,
    pub fired_on_error: bool,
    /// The rule would have fired, but a reviewer approved it.
    pub approved: bool,
    pub clauses: Vec<ClauseTrace>,
}

/// Decides one action.
pub fn decide(program: &Program, input: &Input<'_>, counts: &dyn Counts) -> Decision {
    decide_traced(program, input, counts, None)
}

/// Decides one action, recording every applicable rule's clauses in `trace`.
pub fn decide_traced(
    program: &Program,
    input: &Input<'_>,
    counts: &dyn Counts,
    mut trace: Option<&mut Vec<RuleTrace>>,
) -> Decision {
    let approved = Value::Array(
        input
            .approved
            .iter()
            .map(|a| Value::String(a.clone()))
            .collect(),
    );
    let ev = Ev {
        program,
        input,
        counts,
        approved: &approved,
        steps: Cell::new(0),
        slots: RefCell::new(vec![None; program.max_slots]),
        memo: vec![Cell::new(UNSEEN); program.memo_slots],
        unknowns: RefCell::new(Vec::with_capacity(8)),
        counted: RefCell::new(Vec::new()),
    };
    let mut approved_fired: Vec<SharedStr> = Vec::new();
    // Rules come from the index in id order (see `check::index_rules`), so these lists are
    // sorted by id as they are built: neither file order nor file splitting changes a
    // decision's text.
    let applicable = applicable(program, &input.action.name);
    let mut hits: Vec<Hit<'_>> = Vec::with_capacity(applicable.len());
    for &i in applicable.iter() {
        let (rule, fires, on_error, errors) = match trace.as_deref_mut() {
            None => {
                // The rule's plan alone until it fires.
                let Some(plan) = program.plans.get(i) else {
                    continue;
                };
                let out = ev.rule_fast(plan);
                if !out.fires {
                    continue;
                }
                let Some(rule) = program.rules.get(i) else {
                    continue;
                };
                // Messages only for a rule that fires on an error (rare): nothing to build
                // otherwise.
                let errors = if out.on_error {
                    ev.errors(rule)
                } else {
                    Vec::new()
                };
                (rule, out.fires, out.on_error, errors)
            }
            Some(t) => {
                let Some(rule) = program.rules.get(i) else {
                    continue;
                };
                let out = ev.rule(rule);
                let is_approved = approves(input, rule, out.fires);
                t.push(RuleTrace {
                    rule: rule.id.to_string(),
                    effect: rule.effect.into(),
                    shadow: rule.shadow,
                    location: rule.location.clone(),
                    fired: out.fires && !is_approved,
                    fired_on_error: out.on_error,
                    approved: is_approved,
                    clauses: out.clauses,
                });
                let errors = out.errors.iter().map(Why::message).collect();
                (rule, out.fires, out.on_error, errors)
            }
        };
        if !fires {
            continue;
        }
        if approves(input, rule, fires) {
            if !rule.shadow {
                approved_fired.push(rule.id.clone());
            }
            continue;
        }
        hits.push(Hit {
            rule,
            on_error,
            errors,
        });
    }
    debug_assert!(hits.is_sorted_by(|a, b| a.rule.id <= b.rule.id));
    let winner = hits
        .iter()
        .filter(|h| !h.rule.shadow)
        .map(|h| Effect::from(h.rule.effect))
        .max();
    // The winners' reasons, rendered once: each into the decision's reason and its record.
    let mut reasons: Vec<String> = Vec::new();
    let (effect, rules, reason) = match winner {
        Some(effect) => {
            let winners = || {
                hits.iter()
                    .filter(move |h| !h.rule.shadow && Effect::from(h.rule.effect) == effect)
            };
            let n = winners().count();
            let mut rules = Vec::with_capacity(n);
            reasons.reserve_exact(n);
            let mut reason =
                String::with_capacity(winners().map(|h| h.rule.reason.len_hint() + 2).sum());
            for h in winners() {
                let r = ev.render(&h.rule.reason, Some(&h.rule.id));
                if !rules.is_empty() {
                    reason.push_str("; ");
                }
                reason.push_str(&r);
                reasons.push(r);
                rules.push(h.rule.id.clone());
            }
            (effect, rules, reason)
        }
        // Only approved step-ups would have fired: the reviewer's approval is the allow (the
        // default does not undo it; a block or another step-up that fires still wins).
        None if !approved_fired.is_empty() => {
            approved_fired.sort();
            let reason = format!("approved by a reviewer ({})", approved_fired.join(", "));
            (Effect::Allow, approved_fired, reason)
        }
        // No rule fires, and the request was held by the default (`default step_up`): the
        // reviewer approved exactly that, so the approval is the allow. A default that is now a
        // block still blocks.
        None if program.default.effect == EffectKw::StepUp
            && input.approved.iter().any(|a| a == "default") =>
        {
            (
                Effect::Allow,
                vec![SharedStr::from("default")],
                "approved by a reviewer (default)".to_string(),
            )
        }
        None => (
            program.default.effect.into(),
            vec![SharedStr::from("default")],
            ev.render(&program.default.reason, None),
        ),
    };
    // One copy of the action's name, shared by every record.
    let action = SharedStr::from(input.action.name.as_str());
    let mut reasons = reasons.into_iter();
    let mut fired: Vec<Fired> = Vec::with_capacity(hits.len());
    // Enforcing rules first, then shadow rules, each in id order.
    for shadows in [false, true] {
        for h in hits.iter_mut().filter(|h| h.rule.shadow == shadows) {
            fired.push(ev.record(h, winner, &mut reasons, &action));
        }
    }
    Decision {
        effect,
        action: input.action.name.clone(),
        rules,
        reason,
        fired,
    }
}

impl<'a> Ev<'a> {
    /// The record of a rule that fired; `reasons` has the next winning rule's reason.
    fn record(
        &self,
        h: &mut Hit<'_>,
        winner: Option<Effect>,
        reasons: &mut std::vec::IntoIter<String>,
        action: &SharedStr,
    ) -> Fired {
        let r = h.rule;
        let e = Effect::from(r.effect);
        let winning = !r.shadow && Some(e) == winner;
        Fired {
            rule: r.id.clone(),
            effect: if r.shadow { e.shadow_str() } else { e.as_str() },
            shadow: r.shadow,
            fired_on_error: h.on_error,
            errors: std::mem::take(&mut h.errors),
            // The reasons of the rules of the winning effect; the others' are not shown.
            reason: if winning {
                reasons.next().unwrap_or_default()
            } else {
                String::new()
            },
            annotations: (!r.annotations.is_empty()).then(|| r.annotations.clone()),
            action: action.clone(),
        }
    }
}

/// A rule that fired, before its record is built.
struct Hit<'p> {
    rule: &'p CRule,
    on_error: bool,
    errors: Vec<String>,
}

/// Whether a reviewer approved `rule`, which `fires`: only step-up rules can be approved.
fn approves(input: &Input<'_>, rule: &CRule, fires: bool) -> bool {
    fires && rule.effect == EffectKw::StepUp && input.approved.iter().any(|a| **a == *rule.id)
}

/// The rules that apply to an action name: from the index, or for a GraphQL mutation outside
/// the catalog, the rules whose patterns reach that family.
pub fn applicable<'p>(program: &'p Program, name: &str) -> Cow<'p, [usize]> {
    if let Some(list) = program.index.get(name) {
        return Cow::Borrowed(list.as_slice());
    }
    Cow::Owned(
        program
            .graphql_rules
            .iter()
            .copied()
            .filter(|i| {
                program
                    .rules
                    .get(*i)
                    .is_some_and(|r| r.patterns.iter().any(|p| p.matches(name)))
            })
            .collect(),
    )
}

/// The count specs whose pattern matches an action (it counts toward them when admitted).
pub fn counted_specs(program: &Program, name: &str) -> Vec<usize> {
    if let Some(list) = program.count_index.get(name) {
        return list.clone();
    }
    program
        .graphql_counts
        .iter()
        .copied()
        .filter(|i| {
            program
                .counts
                .get(*i)
                .is_some_and(|c| c.pattern.matches(name))
        })
        .collect()
}

/// The count specs the rules applying to an action read.
pub fn read_specs(program: &Program, name: &str) -> Vec<usize> {
    let mut out: Vec<usize> = Vec::new();
    for &i in applicable(program, name).iter() {
        if let Some(r) = program.rules.get(i) {
            for c in &r.counts {
                if !out.contains(c) {
                    out.push(*c);
                }
            }
        }
    }
    out
}

/// The group an action falls in for a count spec (`None` when the grouping param is missing).
pub fn group_of<'a>(
    program: &Program,
    spec: usize,
    action: &'a Action,
    agent: &'a str,
) -> Option<Cow<'a, str>> {
    let spec = program.counts.get(spec)?;
    if spec.by_param.is_empty() {
        return Some(Cow::Borrowed(agent));
    }
    let v = lookup(&action.params, &spec.by_param)?;
    match v {
        Value::String(s) => Some(Cow::Borrowed(s.as_str())),
        Value::Number(n) => Some(Cow::Owned(n.to_string())),
        _ => None,
    }
}

fn lookup<'a>(params: &'a serde_json::Map<String, Value>, path: &[String]) -> Option<&'a Value> {
    let (first, rest) = path.split_first()?;
    let mut v = params.get(first)?;
    for f in rest {
        v = v.as_object()?.get(f)?;
    }
    (!v.is_null()).then_some(v)
}

/// Why an expression has no value. Kept as references into the program until a message is
/// needed (a rule that fires on it, `explain`): most unknowns are a param some rule reads and
/// the request lacks, and a decision should not allocate for them.
#[derive(Debug, Clone, PartialEq)]
enum Why<'a> {
    Param(&'a [String]),
    Field(&'a str),
    Group,
    NoValue,
    NotBool,
    Unbound,
    Budget,
    Text(String),
}

impl Why<'_> {
    fn message(&self) -> String {
        match self {
            Why::Param(path) => format!("params.{} is not in the request", path.join(".")),
            Why::Field(f) => format!("the field {f} is not in the request"),
            Why::Group => "the param this count groups by is not in the request".into(),
            Why::NoValue => "no value".into(),
            Why::NotBool => "a condition is not true or false".into(),
            Why::Unbound => "an unbound variable".into(),
            Why::Budget => format!("the decision ran out of its step budget ({STEP_BUDGET})"),
            Why::Text(t) => t.clone(),
        }
    }
}

/// Why an expression has no value, and whether `??` may supply one.
#[derive(Debug, Clone, PartialEq)]
enum Err<'a> {
    /// The value is not in the request (`??` supplies a default for this one only).
    Missing(Why<'a>),
    Type(Why<'a>),
    Budget,
}

impl<'a> Err<'a> {
    fn why(self) -> Why<'a> {
        match self {
            Err::Missing(w) | Err::Type(w) => w,
            Err::Budget => Why::Budget,
        }
    }
}

/// A value during evaluation.
#[derive(Debug, Clone)]
enum V<'a> {
    J(&'a Value),
    S(Cow<'a, str>),
    I(i64),
    B(bool),
}

#[derive(Debug, Clone, PartialEq)]
enum Tri<'a> {
    T,
    F,
    U(Why<'a>),
}

impl<'a> Tri<'a> {
    fn of(b: bool) -> Tri<'a> {
        if b { Tri::T } else { Tri::F }
    }
    fn not(self) -> Tri<'a> {
        match self {
            Tri::T => Tri::F,
            Tri::F => Tri::T,
            u => u,
        }
    }
    fn name(&self) -> &'static str {
        match self {
            Tri::T => "true",
            Tri::F => "false",
            Tri::U(_) => "unknown",
        }
    }
}

/// How one rule came out on the untraced path.
struct Outcome {
    fires: bool,
    on_error: bool,
}

struct RuleOutcome<'a> {
    fires: bool,
    on_error: bool,
    errors: Vec<Why<'a>>,
    clauses: Vec<ClauseTrace>,
}

struct Ev<'a> {
    program: &'a Program,
    input: &'a Input<'a>,
    counts: &'a dyn Counts,
    approved: &'a Value,
    steps: Cell<u32>,
    slots: RefCell<Vec<Option<&'a Value>>>,
    /// Each clause slot's value in this decision (see [`Clause::memo`]): [`UNSEEN`], [`TRUE`],
    /// [`FALSE`], or `UNKNOWN_0 + i` for `unknowns[i]`.
    memo: Vec<Cell<u32>>,
    unknowns: RefCell<Vec<Why<'a>>>,
    /// Counts read in this decision: (spec, window, count).
    counted: RefCell<Vec<(usize, u64, u64)>>,
}

const UNSEEN: u32 = 0;
const TRUE: u32 = 1;
const FALSE: u32 = 2;
const UNKNOWN_0: u32 = 3;

impl<'a> Ev<'a> {
    fn step(&self) -> Result<(), Err<'a>> {
        let n = self.steps.get().saturating_add(1);
        self.steps.set(n);
        if n > STEP_BUDGET {
            Err(Err::Budget)
        } else {
            Ok(())
        }
    }

    /// Whether `r` fires, and on an error: [`Ev::rule`] without the trace, which is every
    /// decision's path. Clause values come from the decision's memo; a quantifier sets its
    /// slot before its body reads it, so slots need no reset between rules.
    fn rule_fast(&self, p: &Plan) -> Outcome {
        let slots = &self.program.plan_slots;
        let range = |(a, b): (u32, u32)| slots.get(a as usize..b as usize).unwrap_or(&[]);
        let mut unknown = false;
        let mut falsified = false;
        for &m in range(p.when) {
            match self.code_of(m as usize) {
                TRUE => {}
                FALSE => {
                    falsified = true;
                    break;
                }
                _ => unknown = true,
            }
        }
        if !falsified {
            for &m in range(p.unless) {
                match self.code_of(m as usize) {
                    FALSE => {}
                    TRUE => {
                        falsified = true;
                        break;
                    }
                    _ => unknown = true,
                }
            }
        }
        let (fires, on_error) = match p.effect {
            _ if falsified => (false, false),
            EffectKw::Allow => (!unknown, false),
            _ => match p.exempt.map(|m| self.code_of(m as usize)) {
                None | Some(FALSE) => (true, unknown),
                Some(TRUE) => (false, false),
                Some(_) => (true, true),
            },
        };
        Outcome { fires, on_error }
    }

    /// Why a rule that fired on an error did: the unknown values among its clauses. A rule
    /// that fires had every clause evaluated (none came out false), so the memo holds them.
    fn errors(&self, r: &'a CRule) -> Vec<String> {
        r.when
            .iter()
            .chain(&r.unless)
            .chain(r.exempt.as_ref())
            .filter_map(|c| self.memo.get(c.memo).map(Cell::get))
            .filter(|code| *code >= UNKNOWN_0)
            .map(|code| self.why(code).message())
            .collect()
    }

    fn rule(&self, r: &'a CRule) -> RuleOutcome<'a> {
        let mut errors = Vec::new();
        let mut clauses = Vec::new();
        let mut cond = Tri::T;
        // `None`: the clause was not evaluated (the conditions were already false).
        let mut record =
            |kind: &'static str, source: &str, t: Option<&Tri<'a>>, errors: &mut Vec<Why<'a>>| {
                if let Some(Tri::U(e)) = t {
                    errors.push(e.clone());
                }
                clauses.push(ClauseTrace {
                    clause: kind,
                    source: source.to_string(),
                    value: t.map_or("skipped", Tri::name),
                    error: match t {
                        Some(Tri::U(e)) => Some(e.message()),
                        _ => None,
                    },
                });
            };
        // Once the conditions are false the rest is skipped, as `rule_fast` does, so `explain`
        // spends the step budget exactly as the decision does.
        for c in &r.when {
            if cond == Tri::F {
                record("when", &c.source, None, &mut errors);
                continue;
            }
            let t = self.clause(c);
            record("when", &c.source, Some(&t), &mut errors);
            cond = and(cond, t);
        }
        for c in &r.unless {
            if cond == Tri::F {
                record("unless", &c.source, None, &mut errors);
                continue;
            }
            let t = self.clause(c);
            record("unless", &c.source, Some(&t), &mut errors);
            cond = and(cond, t.not());
        }
        let (fires, on_error) = match (r.effect, &cond) {
            (EffectKw::Allow, Tri::T) => (true, false),
            (EffectKw::Allow, _) => (false, false),
            (_, Tri::F) => (false, false),
            (_, c) => {
                let mut on_error = matches!(c, Tri::U(_));
                let mut fires = true;
                if let Some(ex) = &r.exempt {
                    let t = self.clause(ex);
                    record("exempt", &ex.source, Some(&t), &mut errors);
                    match t {
                        Tri::T => fires = false,
                        Tri::U(_) => on_error = true,
                        Tri::F => {}
                    }
                }
                (fires, on_error && fires)
            }
        };
        RuleOutcome {
            fires,
            on_error,
            errors,
            clauses,
        }
    }

    /// A top-level clause's value as a memo code ([`TRUE`], [`FALSE`], or `UNKNOWN_0 + i`),
    /// computed once per decision however many rules repeat it.
    fn code(&self, c: &'a Clause) -> u32 {
        self.code_of(c.memo)
    }

    /// The value of memo slot `m` (evaluated on its first use in the decision).
    #[inline]
    fn code_of(&self, m: usize) -> u32 {
        match self.memo.get(m).map(Cell::get) {
            Some(UNSEEN) => self.evaluate(m),
            Some(seen) => seen,
            None => self.unknown(Why::Text("a clause outside the program's memo".into())),
        }
    }

    /// Evaluates memo slot `m` and keeps its value for the rest of the decision.
    #[inline(never)]
    fn evaluate(&self, m: usize) -> u32 {
        let (Some(cell), Some(expr)) = (self.memo.get(m), self.program.memo_exprs.get(m)) else {
            return self.unknown(Why::Text("a clause outside the program's memo".into()));
        };
        let code = match self.truth(expr) {
            Tri::T => TRUE,
            Tri::F => FALSE,
            Tri::U(w) => self.unknown(w),
        };
        cell.set(code);
        code
    }

    /// Keeps `w` for the decision and returns its code.
    fn unknown(&self, w: Why<'a>) -> u32 {
        let mut unknowns = self.unknowns.borrow_mut();
        unknowns.push(w);
        UNKNOWN_0.saturating_add(u32::try_from(unknowns.len() - 1).unwrap_or(u32::MAX - 3))
    }

    /// Why the clause with `code` is unknown.
    fn why(&self, code: u32) -> Why<'a> {
        code.checked_sub(UNKNOWN_0)
            .and_then(|i| self.unknowns.borrow().get(i as usize).cloned())
            .unwrap_or(Why::NoValue)
    }

    /// A top-level clause's truth (for the traced path).
    fn clause(&self, c: &'a Clause) -> Tri<'a> {
        match self.code(c) {
            TRUE => Tri::T,
            FALSE => Tri::F,
            u => Tri::U(self.why(u)),
        }
    }

    fn truth(&self, e: &'a CExpr) -> Tri<'a> {
        if let Err(e) = self.step() {
            return Tri::U(e.why());
        }
        match e {
            CExpr::Or(parts) => {
                let mut acc = Tri::F;
                for p in parts {
                    match self.truth(p) {
                        Tri::T => return Tri::T,
                        Tri::U(m) => acc = Tri::U(m),
                        Tri::F => {}
                    }
                }
                acc
            }
            CExpr::And(parts) => {
                let mut acc = Tri::T;
                for p in parts {
                    acc = and(acc, self.truth(p));
                    if acc == Tri::F {
                        return Tri::F;
                    }
                }
                acc
            }
            CExpr::Not(inner) => self.truth(inner).not(),
            CExpr::Quant {
                all,
                slot,
                list,
                body,
            } => {
                let items = match self.value(list).and_then(|v| self.list(v)) {
                    Ok(items) => items,
                    Err(e) => return Tri::U(e.why()),
                };
                let mut acc = Tri::of(*all);
                for item in items {
                    if let Some(s) = self.slots.borrow_mut().get_mut(*slot) {
                        *s = Some(item);
                    }
                    match (self.truth(body), *all) {
                        (Tri::T, false) => return Tri::T,
                        (Tri::F, true) => return Tri::F,
                        (Tri::U(m), _) => acc = Tri::U(m),
                        _ => {}
                    }
                }
                acc
            }
            other => match self.value(other) {
                Ok(V::B(b)) => Tri::of(b),
                Ok(V::J(Value::Bool(b))) => Tri::of(*b),
                Ok(_) => Tri::U(Why::NotBool),
                Err(e) => Tri::U(e.why()),
            },
        }
    }

    fn value(&self, e: &'a CExpr) -> Result<V<'a>, Err<'a>> {
        self.step()?;
        match e {
            CExpr::Or(_) | CExpr::And(_) | CExpr::Not(_) | CExpr::Quant { .. } => {
                match self.truth(e) {
                    Tri::T => Ok(V::B(true)),
                    Tri::F => Ok(V::B(false)),
                    Tri::U(m) => Err(Err::Type(m)),
                }
            }
            CExpr::Cmp(op, l, r) => {
                let l = self.value(l)?;
                let r = self.value(r)?;
                self.cmp(*op, l, r).map(V::B)
            }
            CExpr::InStrs {
                subject,
                set,
                negate,
            } => {
                let v = self.value(subject)?;
                let s = self.str(v)?;
                Ok(V::B(set.contains(s.as_ref()) != *negate))
            }
            CExpr::Under(subject, domains) => {
                let v = self.value(subject)?;
                let d = self.str(v)?;
                // Compared without case, label by label, without allocating.
                let d = d.trim_end_matches('.').as_bytes();
                Ok(V::B(domains.iter().any(|e| {
                    let e = e.as_bytes();
                    match d.len().checked_sub(e.len()) {
                        Some(0) => d.eq_ignore_ascii_case(e),
                        Some(start) => {
                            d.get(start - 1) == Some(&b'.')
                                && d.get(start..)
                                    .is_some_and(|tail| tail.eq_ignore_ascii_case(e))
                        }
                        None => false,
                    }
                })))
            }
            CExpr::Regex(subject, re) => {
                let v = self.value(subject)?;
                let s = self.str(v)?;
                Ok(V::B(re.is_match(&s)))
            }
            CExpr::Within {
                subject,
                weekdays,
                start,
                end,
                zone,
            } => {
                let v = self.value(subject)?;
                let ms = self.int(v)?;
                within(ms, *weekdays, *start, *end, zone).map(V::B)
            }
            CExpr::Coalesce(parts) => {
                let mut last = Err::Missing(Why::NoValue);
                for p in parts {
                    match self.value(p) {
                        Ok(v) => return Ok(v),
                        Err(Err::Missing(m)) => last = Err::Missing(m),
                        Err(other) => return Err(other),
                    }
                }
                Err(last)
            }
            CExpr::Call(func, arg) => {
                let v = self.value(arg)?;
                match func {
                    Func::Len => Ok(V::I(i64::try_from(self.list(v)?.len()).unwrap_or(i64::MAX))),
                    Func::Lower => Ok(V::S(Cow::Owned(self.str(v)?.to_lowercase()))),
                    Func::Domain => {
                        let s = self.str(v)?;
                        match s.rsplit_once('@') {
                            Some((local, domain)) if !local.is_empty() && !domain.is_empty() => {
                                Ok(V::S(Cow::Owned(
                                    domain.trim_end_matches('.').to_ascii_lowercase(),
                                )))
                            }
                            _ => Err(Err::Type(Why::Text(format!(
                                "{s:?} is not an e-mail address"
                            )))),
                        }
                    }
                }
            }
            CExpr::Count { spec, window_ms } => {
                // One lookup per series and window in a decision, however many rules (with
                // different limits) read it.
                if let Some(&(_, _, n)) = self
                    .counted
                    .borrow()
                    .iter()
                    .find(|(s, w, _)| s == spec && w == window_ms)
                {
                    return Ok(V::I(i64::try_from(n).unwrap_or(i64::MAX)));
                }
                let group = group_of(self.program, *spec, self.input.action, self.input.agent)
                    .ok_or(Err::Missing(Why::Group))?;
                let key = self
                    .program
                    .counts
                    .get(*spec)
                    .map_or("", |c| c.key.as_str());
                let n = self
                    .counts
                    .count(key, &group, *window_ms, self.input.now_ms);
                self.counted.borrow_mut().push((*spec, *window_ms, n));
                Ok(V::I(i64::try_from(n).unwrap_or(i64::MAX)))
            }
            CExpr::Const(v) => Ok(V::J(v)),
            CExpr::Builtin(b) => Ok(match b {
                Builtin::Action => V::S(Cow::Borrowed(self.input.action.name.as_str())),
                Builtin::Agent => V::S(Cow::Borrowed(self.input.agent)),
                Builtin::Method => V::S(Cow::Borrowed(self.input.action.method.as_str())),
                Builtin::Host => V::S(Cow::Borrowed(self.input.action.host.as_str())),
                Builtin::Path => V::S(Cow::Borrowed(self.input.action.path.as_str())),
                Builtin::Now => V::I(self.input.now_ms),
                Builtin::Approved => V::J(self.approved),
                Builtin::Credential => V::S(Cow::Borrowed(self.input.credential)),
            }),
            CExpr::Param(path) => lookup(&self.input.action.params, path)
                .map(V::J)
                .ok_or_else(|| Err::Missing(Why::Param(path))),
            CExpr::Var(slot, path) => {
                let item = self
                    .slots
                    .borrow()
                    .get(*slot)
                    .copied()
                    .flatten()
                    .ok_or(Err::Type(Why::Unbound))?;
                let mut v = item;
                for f in path {
                    v = v
                        .as_object()
                        .and_then(|o| o.get(f))
                        .filter(|v| !v.is_null())
                        .ok_or_else(|| Err::Missing(Why::Field(f)))?;
                }
                Ok(V::J(v))
            }
        }
    }

    fn str(&self, v: V<'a>) -> Result<Cow<'a, str>, Err<'a>> {
        match v {
            V::S(s) => Ok(s),
            V::J(Value::String(s)) => Ok(Cow::Borrowed(s.as_str())),
            other => Err(Err::Type(Why::Text(format!(
                "expected a string, found {}",
                kind(&other)
            )))),
        }
    }

    fn int(&self, v: V<'a>) -> Result<i64, Err<'a>> {
        match v {
            V::I(i) => Ok(i),
            V::J(Value::Number(n)) => n
                .as_i64()
                .ok_or_else(|| Err::Type(Why::Text(format!("{n} is not an integer")))),
            other => Err(Err::Type(Why::Text(format!(
                "expected a number, found {}",
                kind(&other)
            )))),
        }
    }

    fn list(&self, v: V<'a>) -> Result<&'a [Value], Err<'a>> {
        match v {
            V::J(Value::Array(items)) => Ok(items.as_slice()),
            other => Err(Err::Type(Why::Text(format!(
                "expected a list, found {}",
                kind(&other)
            )))),
        }
    }

    fn cmp(&self, op: CmpOp, l: V<'a>, r: V<'a>) -> Result<bool, Err<'a>> {
        match op {
            CmpOp::Eq => self.equal(l, r),
            CmpOp::Ne => self.equal(l, r).map(|b| !b),
            CmpOp::Lt => Ok(self.int(l)? < self.int(r)?),
            CmpOp::Le => Ok(self.int(l)? <= self.int(r)?),
            CmpOp::Gt => Ok(self.int(l)? > self.int(r)?),
            CmpOp::Ge => Ok(self.int(l)? >= self.int(r)?),
            CmpOp::In | CmpOp::NotIn => {
                let items = self.list(r)?;
                let mut found = false;
                for item in items {
                    self.step()?;
                    if self.equal(l.clone(), V::J(item))? {
                        found = true;
                        break;
                    }
                }
                Ok(found == (op == CmpOp::In))
            }
            CmpOp::StartsWith => Ok(self.str(l)?.starts_with(self.str(r)?.as_ref())),
            CmpOp::EndsWith => Ok(self.str(l)?.ends_with(self.str(r)?.as_ref())),
            CmpOp::Contains => Ok(self.str(l)?.contains(self.str(r)?.as_ref())),
            CmpOp::Under => Err(Err::Type(Why::Text(
                "`under` needs a list of domains".into(),
            ))),
        }
    }

    /// Typed equality: comparing values of different types is an error, not `false`.
    fn equal(&self, l: V<'a>, r: V<'a>) -> Result<bool, Err<'a>> {
        match (scalar(&l), scalar(&r)) {
            (Scalar::Str(a), Scalar::Str(b)) => Ok(a == b),
            (Scalar::Int(a), Scalar::Int(b)) => Ok(a == b),
            (Scalar::Bool(a), Scalar::Bool(b)) => Ok(a == b),
            (Scalar::Json(a), Scalar::Json(b))
                if a.is_array() == b.is_array() && a.is_object() == b.is_object() =>
            {
                Ok(a == b)
            }
            _ => Err(Err::Type(Why::Text(format!(
                "cannot compare {} with {}",
                kind(&l),
                kind(&r)
            )))),
        }
    }

    fn render(&self, t: &Template, rule: Option<&str>) -> String {
        let mut out = String::with_capacity(t.len_hint());
        for p in &t.0 {
            match p {
                Piece::Text(s) => out.push_str(s),
                Piece::Rule => out.push_str(rule.unwrap_or("default")),
                Piece::Builtin(b) => {
                    let s = match b {
                        Builtin::Action => self.input.action.name.as_str(),
                        Builtin::Agent => self.input.agent,
                        Builtin::Method => self.input.action.method.as_str(),
                        Builtin::Host => self.input.action.host.as_str(),
                        Builtin::Path => self.input.action.path.as_str(),
                        Builtin::Credential => self.input.credential,
                        Builtin::Now | Builtin::Approved => "",
                    };
                    push_hole(&mut out, s);
                }
                Piece::Param(path) => match lookup(&self.input.action.params, path) {
                    Some(v) => push_hole(&mut out, &show(v)),
                    None => out.push_str("(none)"),
                },
            }
        }
        out
    }
}

fn push_hole(out: &mut String, s: &str) {
    // A string of at most MAX_HOLE_CHARS bytes has at most that many characters.
    if s.len() <= MAX_HOLE_CHARS || s.chars().count() <= MAX_HOLE_CHARS {
        out.push_str(s);
    } else {
        out.extend(s.chars().take(MAX_HOLE_CHARS));
        out.push('…');
    }
}

fn show(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Array(items) => items.iter().map(show).collect::<Vec<_>>().join(", "),
        other => other.to_string(),
    }
}

enum Scalar<'v> {
    Str(&'v str),
    Int(i64),
    Bool(bool),
    Json(&'v Value),
    Other,
}

fn scalar<'v>(v: &'v V<'_>) -> Scalar<'v> {
    match v {
        V::S(s) => Scalar::Str(s.as_ref()),
        V::I(i) => Scalar::Int(*i),
        V::B(b) => Scalar::Bool(*b),
        V::J(Value::String(s)) => Scalar::Str(s.as_str()),
        V::J(Value::Number(n)) => n.as_i64().map_or(Scalar::Other, Scalar::Int),
        V::J(Value::Bool(b)) => Scalar::Bool(*b),
        V::J(j @ (Value::Array(_) | Value::Object(_))) => Scalar::Json(j),
        V::J(Value::Null) => Scalar::Other,
    }
}

fn kind(v: &V<'_>) -> &'static str {
    match v {
        V::S(_) | V::J(Value::String(_)) => "a string",
        V::I(_) | V::J(Value::Number(_)) => "a number",
        V::B(_) | V::J(Value::Bool(_)) => "a bool",
        V::J(Value::Array(_)) => "a list",
        V::J(Value::Object(_)) => "a record",
        V::J(Value::Null) => "null",
    }
}

fn and<'a>(a: Tri<'a>, b: Tri<'a>) -> Tri<'a> {
    match (a, b) {
        (Tri::F, _) | (_, Tri::F) => Tri::F,
        (Tri::U(m), _) | (_, Tri::U(m)) => Tri::U(m),
        _ => Tri::T,
    }
}

/// Whether the instant `ms` falls in the local window `[start, end)` (minutes after
/// midnight, in `zone`); a window whose end is before its start runs past midnight and
/// belongs to the day it starts on.
fn within(
    ms: i64,
    weekdays: bool,
    start: u16,
    end: u16,
    zone: &jiff::tz::TimeZone,
) -> Result<bool, Err<'static>> {
    let ts = jiff::Timestamp::from_millisecond(ms)
        .map_err(|e| Err::Type(Why::Text(format!("the time is out of range: {e}"))))?;
    let local = ts.to_zoned(zone.clone());
    let minute =
        u16::try_from(i32::from(local.hour()) * 60 + i32::from(local.minute())).unwrap_or(0);
    let day = local.weekday().to_monday_zero_offset();
    let day_ok = |d: i8| !weekdays || d < 5;
    Ok(if start < end {
        minute >= start && minute < end && day_ok(day)
    } else {
        (minute >= start && day_ok(day)) || (minute < end && day_ok((day + 6) % 7))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn zone(name: &str) -> jiff::tz::TimeZone {
        jiff::tz::TimeZone::get(name).unwrap()
    }

    fn ms(s: &str) -> i64 {
        s.parse::<jiff::Timestamp>().unwrap().as_millisecond()
    }

    #[test]
    fn windows_follow_local_time_across_dst() {
        let london = zone("Europe/London");
        // 08:00..19:00 weekdays. In winter London is UTC, in summer UTC+1.
        let w = |t: &str| within(ms(t), true, 8 * 60, 19 * 60, &london).unwrap();
        assert!(w("2026-01-05T08:00:00Z")); // Monday 08:00 GMT: start is inside
        assert!(!w("2026-01-05T07:59:59Z"));
        assert!(!w("2026-01-05T19:00:00Z")); // end is outside (half-open)
        assert!(w("2026-07-06T07:00:00Z")); // Monday 08:00 BST
        assert!(!w("2026-07-06T18:00:00Z")); // 19:00 BST
        assert!(!w("2026-01-10T12:00:00Z")); // Saturday
        // The Monday after the spring change (29 March 2026): 07:30 UTC is 08:30 BST.
        assert!(w("2026-03-30T07:30:00Z"));
        assert!(!w("2026-03-27T07:30:00Z")); // the Friday before: 07:30 GMT
    }

    #[test]
    fn windows_across_midnight_belong_to_their_start_day() {
        let utc = zone("UTC");
        let w = |t: &str| within(ms(t), true, 22 * 60, 6 * 60, &utc).unwrap();
        assert!(w("2026-01-09T23:00:00Z")); // Friday 23:00
        assert!(w("2026-01-10T05:59:00Z")); // Saturday 05:59, from Friday's window
        assert!(!w("2026-01-10T23:00:00Z")); // Saturday night: not a weekday window
        assert!(!w("2026-01-12T05:00:00Z")); // Monday 05:00: Sunday's window, none
        assert!(w("2026-01-13T05:00:00Z")); // Tuesday 05:00: Monday's window
        let d = |t: &str| within(ms(t), false, 22 * 60, 6 * 60, &utc).unwrap();
        assert!(d("2026-01-12T05:00:00Z"));
        assert!(!d("2026-01-12T06:00:00Z"));
    }

    #[test]
    fn a_budget_overrun_decides_the_same_in_any_file_order() {
        // `big` spends the whole budget; the rules evaluated after it see an error. Which
        // rules those are must not depend on the order of the files.
        let big = "allow \"big\" on github.issues.add-labels when not any(x in params.labels: \
                   any(y in params.labels: any(z in params.labels: x == y and y == z and z == \"n\")));\n";
        let small =
            "block \"small\" on github.issues.add-labels when \"secret\" in params.labels;\n";
        let schema = crate::policy::schema::Schema::builtin();
        let labels: Vec<Value> = (0..60).map(|i| Value::String(format!("l{i}"))).collect();
        let mut params = serde_json::Map::new();
        params.insert("labels".into(), Value::Array(labels));
        let action = Action::new("github.issues.add-labels", params);
        let decide = |files: [&str; 3]| {
            let sources = files
                .iter()
                .enumerate()
                .map(|(i, t)| crate::policy::source(&format!("{i}.policy"), t))
                .collect();
            let p = crate::policy::load(sources, &schema).unwrap();
            p.decide_all(std::slice::from_ref(&action), "a", 0, &[], &NoCounts)
        };
        let one = decide(["default step_up;\n", big, small]);
        let other = decide([small, big, "default step_up;\n"]);
        assert_eq!(one, other);
        assert_eq!(one.effect, Effect::Block);
        assert!(one.fired.iter().all(|f| f.fired_on_error));
    }

    #[test]
    fn three_valued_and() {
        assert_eq!(and(Tri::U(Why::Text("x".into())), Tri::F), Tri::F);
        assert_eq!(
            and(Tri::T, Tri::U(Why::Text("x".into()))),
            Tri::U(Why::Text("x".into()))
        );
        assert_eq!(
            Tri::U(Why::Text("x".into())).not(),
            Tri::U(Why::Text("x".into()))
        );
    }
}
