//! The policy language's syntax tree, as the parser builds it: no pest types, every node with
//! the span of source text it came from.

use std::fmt;

/// Where a node came from: a file of the set and a byte range in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Span {
    pub file: usize,
    pub start: usize,
    pub end: usize,
}

/// One policy file as read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    /// The name errors use (a path relative to the policy directory, or `<stdin>`).
    pub name: String,
    pub text: String,
}

impl Source {
    /// 1-based line and column (in characters) of a byte offset.
    pub fn line_col(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.text.len());
        let before = self.text.get(..offset).unwrap_or("");
        let line = before.bytes().filter(|&b| b == b'\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let col = before.get(line_start..).map_or(0, |s| s.chars().count()) + 1;
        (line, col)
    }

    /// The source text of a span (empty when the span is not in this file's text).
    pub fn snippet(&self, span: Span) -> &str {
        self.text.get(span.start..span.end).unwrap_or("")
    }
}

/// The effect of a rule, a default or a test expectation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum EffectKw {
    Allow,
    StepUp,
    Block,
}

impl fmt::Display for EffectKw {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            EffectKw::Allow => "allow",
            EffectKw::StepUp => "step_up",
            EffectKw::Block => "block",
        })
    }
}

/// A literal value (lists, test params).
#[derive(Debug, Clone, PartialEq)]
pub enum Lit {
    Str(String),
    Int(i64),
    Bool(bool),
    /// Milliseconds.
    Duration(i64),
    List(Vec<(Lit, Span)>),
    Record(Vec<(String, Lit, Span)>),
}

/// A string literal with its span (ids, reasons, names).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Text {
    pub value: String,
    pub span: Span,
}

/// Everything in one policy file.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct File {
    pub lists: Vec<ListDef>,
    pub defaults: Vec<DefaultDef>,
    pub rules: Vec<RuleDef>,
    pub tests: Vec<TestDef>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ListDef {
    pub name: Text,
    pub items: Vec<(Lit, Span)>,
    pub span: Span,
}

#[derive(Debug, Clone, PartialEq)]
pub struct DefaultDef {
    pub effect: EffectKw,
    pub effect_span: Span,
    /// The reason template as written (escapes already decoded, braces kept).
    pub reason: Option<Text>,
    pub span: Span,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RuleDef {
    pub annotations: Vec<(Text, Text)>,
    pub effect: EffectKw,
    pub id: Text,
    pub patterns: Vec<Text>,
    pub when: Vec<Expr>,
    pub unless: Vec<Expr>,
    pub exempt: Option<Expr>,
    pub reason: Option<Text>,
    pub shadow: bool,
    /// Clauses given more than once where only one is allowed (reported by the checker).
    pub repeated: Vec<(&'static str, Span)>,
    pub span: Span,
}

#[derive(Debug, Clone, PartialEq)]
pub struct TestDef {
    pub name: Text,
    pub action: Text,
    pub params: Option<(Lit, Span)>,
    pub agent: Option<Text>,
    pub at: Option<Text>,
    pub counts: Vec<(CountCall, i64, Span)>,
    pub approved: Vec<Text>,
    /// `with credential "placeholder|foreign|none"`.
    pub credential: Option<Text>,
    /// `via "METHOD" "host" ["/path"]`.
    pub via: Option<(Text, Text, Option<Text>)>,
    pub expect: EffectKw,
    pub expect_by: Option<Text>,
    pub reason_contains: Vec<Text>,
    pub repeated: Vec<(&'static str, Span)>,
    pub span: Span,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Expr {
    pub kind: ExprKind,
    pub span: Span,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CmpOp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    In,
    NotIn,
    Under,
    StartsWith,
    EndsWith,
    Contains,
}

impl fmt::Display for CmpOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CmpOp::Eq => "==",
            CmpOp::Ne => "!=",
            CmpOp::Lt => "<",
            CmpOp::Le => "<=",
            CmpOp::Gt => ">",
            CmpOp::Ge => ">=",
            CmpOp::In => "in",
            CmpOp::NotIn => "not in",
            CmpOp::Under => "under",
            CmpOp::StartsWith => "starts_with",
            CmpOp::EndsWith => "ends_with",
            CmpOp::Contains => "contains",
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Func {
    Domain,
    Lower,
    Len,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Quant {
    Any,
    All,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Days {
    Weekdays,
    Daily,
}

#[derive(Debug, Clone, PartialEq)]
pub struct CountCall {
    pub pattern: Text,
    /// `agent` or `params.F` (as path segments).
    pub by: Vec<String>,
    pub by_span: Span,
    pub window_ms: i64,
    pub window_span: Span,
    pub span: Span,
}

#[derive(Debug, Clone, PartialEq)]
pub enum ExprKind {
    Or(Vec<Expr>),
    And(Vec<Expr>),
    /// `not` applied `count` times (a run of `not`s is one node).
    Not(usize, Box<Expr>),
    Cmp(CmpOp, Box<Expr>, Box<Expr>),
    Glob(Box<Expr>, Text),
    Regex(Box<Expr>, Text),
    /// `e within DAYS HH:MM..HH:MM in "Zone"`: minutes after midnight.
    Within {
        subject: Box<Expr>,
        days: Days,
        start: u16,
        end: u16,
        zone: Text,
    },
    /// `a ?? b ?? c`: the first present value.
    Coalesce(Vec<Expr>),
    Call(Func, Box<Expr>),
    Quant {
        kind: Quant,
        var: Text,
        list: Box<Expr>,
        body: Box<Expr>,
    },
    Count(CountCall),
    Lit(Lit),
    /// A name and its field accesses: `params.repo`, `r.name`, `internal_domains`.
    Path(Vec<String>),
}
