//! Policy text to [`ast`](super::ast): the only module that sees pest's types.
//!
//! Before pest runs, a lexical pre-scan bounds what the recursive descent could be made to do:
//! the file size and the nesting depth of brackets. Parse errors name the tokens a user can
//! write (`expected ';' or 'reason'`), never a grammar rule.

use pest::Parser as _;
use pest::error::{ErrorVariant, InputLocation};
use pest::iterators::Pair;

use super::ast::{
    CmpOp, CountCall, Days, DefaultDef, EffectKw, Expr, ExprKind, File, Func, ListDef, Lit, Quant,
    RuleDef, Source, Span, TestDef, Text,
};
use super::error::LoadError;

/// Largest policy file accepted (policy-language.md, semantics 9).
pub const MAX_FILE_BYTES: usize = 1024 * 1024;
/// Deepest nesting of `(`, `[` and `{` accepted.
pub const MAX_DEPTH: usize = 32;

#[derive(pest_derive::Parser)]
#[grammar = "policy/grammar.pest"]
struct Grammar;

/// Bracket depth up to which a file is parsed on the caller's stack. pest's recursive descent
/// (and the tree builder) take about 100 KB of stack per bracket level in a debug build, far
/// less in release: a deeper file is parsed on a thread of its own with [`PARSE_STACK`] bytes of
/// stack, so `MAX_DEPTH` levels never overflow a 2 MiB worker thread.
const INLINE_DEPTH: usize = 8;
/// Stack of the thread that parses a deeply nested file.
const PARSE_STACK: usize = 16 * 1024 * 1024;

/// Parses one file of a set; `file` is its index in the set's sources (for spans).
pub fn parse_file(file: usize, src: &Source) -> Result<File, LoadError> {
    if src.text.len() > MAX_FILE_BYTES {
        return Err(LoadError::whole(
            &src.name,
            format!(
                "the file is {} bytes; policy files are limited to {MAX_FILE_BYTES} bytes (1 MiB)",
                src.text.len()
            ),
        ));
    }
    let depth = prescan(&src.text).map_err(|(offset, msg)| fail(src, offset, msg))?;
    if depth <= INLINE_DEPTH {
        return parse_prescanned(file, src);
    }
    let parsed = std::thread::scope(|s| {
        std::thread::Builder::new()
            .name("policy-parse".into())
            .stack_size(PARSE_STACK)
            .spawn_scoped(s, || parse_prescanned(file, src))
            .map(|h| h.join())
    });
    match parsed {
        Ok(Ok(result)) => result,
        Ok(Err(_)) => Err(LoadError::whole(
            &src.name,
            "the parser failed on this file",
        )),
        Err(e) => Err(LoadError::whole(
            &src.name,
            format!("cannot start the parser: {e}"),
        )),
    }
}

/// A load error at a byte offset of `src`.
fn fail(src: &Source, offset: usize, msg: String) -> LoadError {
    let mut e = LoadError::at(
        std::slice::from_ref(src),
        Span {
            file: 0,
            start: offset,
            end: offset,
        },
        msg,
    );
    e.file.clone_from(&src.name);
    e
}

/// The parse proper, of a file whose size and nesting [`prescan`] accepted.
fn parse_prescanned(file: usize, src: &Source) -> Result<File, LoadError> {
    let mut pairs = Grammar::parse(Rule::file, &src.text).map_err(|e| {
        let offset = match e.location {
            InputLocation::Pos(p) => p,
            InputLocation::Span((s, _)) => s,
        };
        fail(src, offset, describe(&e.variant))
    })?;
    let mut b = Builder {
        file,
        out: File::default(),
    };
    if let Some(top) = pairs.next() {
        for p in top.into_inner() {
            b.statement(p)
                .map_err(|(span, msg)| fail(src, span.start, msg))?;
        }
    }
    Ok(b.out)
}

/// Checks bracket nesting outside strings and comments, so the recursive parse stays shallow;
/// returns the deepest nesting.
fn prescan(text: &str) -> Result<usize, (usize, String)> {
    let bytes = text.as_bytes();
    let mut depth = 0usize;
    let mut deepest = 0usize;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'#' => {
                while i < bytes.len() && bytes[i] != b'\n' {
                    i += 1;
                }
            }
            b'"' => {
                let raw = i > 0 && bytes[i - 1] == b'r';
                i += 1;
                while i < bytes.len() && bytes[i] != b'"' && bytes[i] != b'\n' {
                    if bytes[i] == b'\\' && !raw {
                        i += 1;
                    }
                    i += 1;
                }
            }
            b'(' | b'[' | b'{' => {
                depth += 1;
                deepest = deepest.max(depth);
                if depth > MAX_DEPTH {
                    return Err((i, format!("brackets nest deeper than {MAX_DEPTH} levels")));
                }
            }
            b')' | b']' | b'}' => depth = depth.saturating_sub(1),
            0 => return Err((i, "the file contains a NUL byte".into())),
            _ => {}
        }
        i += 1;
    }
    Ok(deepest)
}

/// What the user may write where a parse failed, in their terms.
fn describe(variant: &ErrorVariant<Rule>) -> String {
    let ErrorVariant::ParsingError { positives, .. } = variant else {
        return "syntax error".into();
    };
    let mut names: Vec<&'static str> = Vec::new();
    for r in positives {
        let name = token_name(*r);
        if !names.contains(&name) {
            names.push(name);
        }
    }
    match names.as_slice() {
        [] => "unexpected input".into(),
        [one] => format!("expected {one}"),
        [init @ .., last] => format!("expected {} or {last}", init.join(", ")),
    }
}

fn token_name(r: Rule) -> &'static str {
    match r {
        Rule::EOI => "end of file",
        Rule::file | Rule::rule | Rule::annotation => {
            "a statement ('list', 'default', 'allow', 'step_up', 'block', 'test' or '@annotation')"
        }
        Rule::list_def | Rule::kw_list => "'list'",
        Rule::default_def | Rule::kw_default => "'default'",
        Rule::test_def | Rule::kw_test => "'test'",
        Rule::effect => "'allow', 'step_up' or 'block'",
        Rule::kw_allow => "'allow'",
        Rule::kw_step_up => "'step_up'",
        Rule::kw_block => "'block'",
        Rule::semi => "';'",
        Rule::comma => "','",
        Rule::colon => "':'",
        Rule::eq_sign => "'='",
        Rule::at_sign => "'@'",
        Rule::lparen => "'('",
        Rule::rparen => "')'",
        Rule::lbracket | Rule::list_lit => "'['",
        Rule::rbracket => "']'",
        Rule::lbrace | Rule::record_lit => "'{'",
        Rule::rbrace => "'}'",
        Rule::range_dots => "'..'",
        Rule::pattern | Rule::segment => "an action name or pattern",
        Rule::ident => "a name",
        Rule::field_name => "a field name",
        Rule::string | Rule::str_inner | Rule::str_escape => "a string",
        Rule::raw_string | Rule::raw_inner => "a regex (r\"...\")",
        Rule::int => "a number",
        Rule::duration => "a duration (such as 15m or 1h)",
        Rule::bool_lit => "true or false",
        Rule::clock => "a time of day (HH:MM)",
        Rule::value | Rule::field => "a value",
        Rule::kw_on => "'on'",
        Rule::kw_when | Rule::when_clause => "'when'",
        Rule::kw_unless | Rule::unless_clause => "'unless'",
        Rule::kw_exempt | Rule::exempt_clause => "'exempt'",
        Rule::kw_reason | Rule::reason_clause => "'reason'",
        Rule::kw_mode | Rule::mode_clause => "'mode'",
        Rule::mode_name | Rule::kw_shadow | Rule::kw_enforce => "'shadow' or 'enforce'",
        Rule::given | Rule::kw_given => "'given'",
        Rule::kw_as | Rule::as_clause => "'as'",
        Rule::kw_at | Rule::at_clause => "'at'",
        Rule::kw_with | Rule::with_count | Rule::with_approved => "'with'",
        Rule::kw_approved => "'approved'",
        Rule::kw_credential | Rule::with_credential => "'credential'",
        Rule::kw_via | Rule::via_clause => "'via'",
        Rule::kw_expect | Rule::expect | Rule::expect_reason => "'expect'",
        Rule::kw_by => "'by'",
        Rule::kw_window => "'window'",
        Rule::kw_contains => "'contains'",
        Rule::kw_in => "'in'",
        Rule::kw_glob => "'glob'",
        Rule::day_set | Rule::kw_weekdays | Rule::kw_daily => "'weekdays' or 'daily'",
        Rule::kw_or
        | Rule::kw_and
        | Rule::cmp_op
        | Rule::op_eq
        | Rule::op_ne
        | Rule::op_le
        | Rule::op_ge
        | Rule::op_lt
        | Rule::op_gt
        | Rule::op_not_in
        | Rule::kw_under
        | Rule::kw_starts_with
        | Rule::kw_ends_with
        | Rule::kw_matches
        | Rule::kw_within
        | Rule::glob_tail
        | Rule::regex_tail
        | Rule::within_tail
        | Rule::op_coalesce => "an operator",
        Rule::expr
        | Rule::or_expr
        | Rule::and_expr
        | Rule::not_expr
        | Rule::cmp_expr
        | Rule::coalesce
        | Rule::kw_not
        | Rule::call
        | Rule::func_name
        | Rule::kw_domain
        | Rule::kw_lower
        | Rule::kw_len
        | Rule::quantifier
        | Rule::quant_kind
        | Rule::kw_any
        | Rule::kw_all
        | Rule::count_call
        | Rule::kw_count
        | Rule::count_by
        | Rule::path => "an expression",
        _ => "a statement",
    }
}

type Fail = (Span, String);

struct Builder {
    file: usize,
    out: File,
}

impl Builder {
    fn span(&self, p: &Pair<'_, Rule>) -> Span {
        let s = p.as_span();
        Span {
            file: self.file,
            start: s.start(),
            end: s.end(),
        }
    }

    fn statement(&mut self, p: Pair<'_, Rule>) -> Result<(), Fail> {
        match p.as_rule() {
            Rule::list_def => {
                let l = self.list_def(p)?;
                self.out.lists.push(l);
            }
            Rule::default_def => {
                let d = self.default_def(p)?;
                self.out.defaults.push(d);
            }
            Rule::rule => {
                let r = self.rule(p)?;
                self.out.rules.push(r);
            }
            Rule::test_def => {
                let t = self.test_def(p)?;
                self.out.tests.push(t);
            }
            _ => {}
        }
        Ok(())
    }

    fn list_def(&self, p: Pair<'_, Rule>) -> Result<ListDef, Fail> {
        let span = self.span(&p);
        let mut name = None;
        let mut items = Vec::new();
        for c in p.into_inner() {
            match c.as_rule() {
                Rule::ident => name = Some(self.text_raw(&c)),
                Rule::list_lit => {
                    if let (Lit::List(v), _) = self.lit(c)? {
                        items = v;
                    }
                }
                _ => {}
            }
        }
        let name = name.ok_or((span, "a list needs a name".to_string()))?;
        Ok(ListDef { name, items, span })
    }

    fn default_def(&self, p: Pair<'_, Rule>) -> Result<DefaultDef, Fail> {
        let span = self.span(&p);
        let mut effect = None;
        let mut reason = None;
        for c in p.into_inner() {
            match c.as_rule() {
                Rule::effect => effect = Some((effect_kw(&c), self.span(&c))),
                Rule::reason_clause => reason = self.reason(c)?,
                _ => {}
            }
        }
        let (effect, effect_span) = effect.ok_or((span, "a default needs an effect".into()))?;
        Ok(DefaultDef {
            effect,
            effect_span,
            reason,
            span,
        })
    }

    fn reason(&self, p: Pair<'_, Rule>) -> Result<Option<Text>, Fail> {
        for c in p.into_inner() {
            if c.as_rule() == Rule::string {
                return Ok(Some(self.string(&c)?));
            }
        }
        Ok(None)
    }

    fn rule(&self, p: Pair<'_, Rule>) -> Result<RuleDef, Fail> {
        let span = self.span(&p);
        let mut r = RuleDef {
            annotations: Vec::new(),
            effect: EffectKw::Block,
            id: Text {
                value: String::new(),
                span,
            },
            patterns: Vec::new(),
            when: Vec::new(),
            unless: Vec::new(),
            exempt: None,
            reason: None,
            shadow: false,
            repeated: Vec::new(),
            span,
        };
        let mut saw_mode = false;
        for c in p.into_inner() {
            let cspan = self.span(&c);
            match c.as_rule() {
                Rule::annotation => {
                    let mut key = None;
                    let mut value = None;
                    for a in c.into_inner() {
                        match a.as_rule() {
                            Rule::ident => key = Some(self.text_raw(&a)),
                            Rule::string => value = Some(self.string(&a)?),
                            _ => {}
                        }
                    }
                    if let (Some(k), Some(v)) = (key, value) {
                        r.annotations.push((k, v));
                    }
                }
                Rule::effect => r.effect = effect_kw(&c),
                Rule::string => r.id = self.string(&c)?,
                Rule::pattern => r.patterns.push(self.text_raw(&c)),
                Rule::when_clause => r.when.push(self.first_expr(c)?),
                Rule::unless_clause => r.unless.push(self.first_expr(c)?),
                Rule::exempt_clause => {
                    if r.exempt.is_some() {
                        r.repeated.push(("exempt", cspan));
                    }
                    r.exempt = Some(self.first_expr(c)?);
                }
                Rule::reason_clause => {
                    if r.reason.is_some() {
                        r.repeated.push(("reason", cspan));
                    }
                    r.reason = self.reason(c)?;
                }
                Rule::mode_clause => {
                    if saw_mode {
                        r.repeated.push(("mode", cspan));
                    }
                    saw_mode = true;
                    r.shadow = c
                        .into_inner()
                        .flat_map(|m| m.into_inner())
                        .any(|m| m.as_rule() == Rule::kw_shadow);
                }
                _ => {}
            }
        }
        Ok(r)
    }

    fn first_expr(&self, p: Pair<'_, Rule>) -> Result<Expr, Fail> {
        let span = self.span(&p);
        for c in p.into_inner() {
            if c.as_rule() == Rule::expr {
                return self.expr(c);
            }
        }
        Err((span, "expected an expression".into()))
    }

    fn test_def(&self, p: Pair<'_, Rule>) -> Result<TestDef, Fail> {
        let span = self.span(&p);
        let empty = Text {
            value: String::new(),
            span,
        };
        let mut t = TestDef {
            name: empty.clone(),
            action: empty,
            params: None,
            agent: None,
            at: None,
            counts: Vec::new(),
            approved: Vec::new(),
            credential: None,
            via: None,
            expect: EffectKw::Block,
            expect_by: None,
            reason_contains: Vec::new(),
            repeated: Vec::new(),
            span,
        };
        for c in p.into_inner() {
            let cspan = self.span(&c);
            match c.as_rule() {
                Rule::string => t.name = self.string(&c)?,
                Rule::given => {
                    for g in c.into_inner() {
                        match g.as_rule() {
                            Rule::pattern => t.action = self.text_raw(&g),
                            Rule::record_lit => {
                                let gspan = self.span(&g);
                                t.params = Some((self.lit(g)?.0, gspan));
                            }
                            _ => {}
                        }
                    }
                }
                Rule::as_clause => {
                    if t.agent.is_some() {
                        t.repeated.push(("as", cspan));
                    }
                    t.agent = self.only_string(c)?;
                }
                Rule::at_clause => {
                    if t.at.is_some() {
                        t.repeated.push(("at", cspan));
                    }
                    t.at = self.only_string(c)?;
                }
                Rule::with_count => {
                    let mut call = None;
                    let mut n = 0;
                    for w in c.into_inner() {
                        match w.as_rule() {
                            Rule::count_call => call = Some(self.count_call(w)?),
                            Rule::int => n = self.int(&w)?,
                            _ => {}
                        }
                    }
                    if let Some(call) = call {
                        t.counts.push((call, n, cspan));
                    }
                }
                Rule::with_approved => {
                    if let Some(s) = self.only_string(c)? {
                        t.approved.push(s);
                    }
                }
                Rule::with_credential => {
                    if t.credential.is_some() {
                        t.repeated.push(("with credential", cspan));
                    }
                    t.credential = self.only_string(c)?;
                }
                Rule::via_clause => {
                    if t.via.is_some() {
                        t.repeated.push(("via", cspan));
                    }
                    let mut parts = Vec::new();
                    for v in c.into_inner() {
                        if v.as_rule() == Rule::string {
                            parts.push(self.string(&v)?);
                        }
                    }
                    let mut parts = parts.into_iter();
                    if let (Some(m), Some(h)) = (parts.next(), parts.next()) {
                        t.via = Some((m, h, parts.next()));
                    }
                }
                Rule::expect => {
                    for e in c.into_inner() {
                        match e.as_rule() {
                            Rule::effect => t.expect = effect_kw(&e),
                            Rule::string => t.expect_by = Some(self.string(&e)?),
                            _ => {}
                        }
                    }
                }
                Rule::expect_reason => {
                    if let Some(s) = self.only_string(c)? {
                        t.reason_contains.push(s);
                    }
                }
                _ => {}
            }
        }
        Ok(t)
    }

    fn only_string(&self, p: Pair<'_, Rule>) -> Result<Option<Text>, Fail> {
        for c in p.into_inner() {
            if c.as_rule() == Rule::string {
                return Ok(Some(self.string(&c)?));
            }
        }
        Ok(None)
    }

    fn text_raw(&self, p: &Pair<'_, Rule>) -> Text {
        Text {
            value: p.as_str().to_string(),
            span: self.span(p),
        }
    }

    /// A string literal, escapes decoded (`\{` and `\}` stay escaped: templates read them).
    fn string(&self, p: &Pair<'_, Rule>) -> Result<Text, Fail> {
        let span = self.span(p);
        let raw = p.as_str();
        let inner = raw
            .strip_prefix('"')
            .and_then(|s| s.strip_suffix('"'))
            .unwrap_or(raw);
        Ok(Text {
            value: unescape(inner).map_err(|m| (span, m))?,
            span,
        })
    }

    fn int(&self, p: &Pair<'_, Rule>) -> Result<i64, Fail> {
        p.as_str().parse::<i64>().map_err(|_| {
            (
                self.span(p),
                format!("the number {} is out of range", p.as_str()),
            )
        })
    }

    fn duration(&self, p: &Pair<'_, Rule>) -> Result<i64, Fail> {
        let s = p.as_str();
        let digits: String = s.chars().take_while(char::is_ascii_digit).collect();
        let unit = s.get(digits.len()..).unwrap_or("");
        let per: i64 = match unit {
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            _ => return Err((self.span(p), format!("unknown duration unit in {s}"))),
        };
        digits
            .parse::<i64>()
            .ok()
            .and_then(|n| n.checked_mul(per))
            .ok_or((self.span(p), format!("the duration {s} is out of range")))
    }

    fn lit(&self, p: Pair<'_, Rule>) -> Result<(Lit, Span), Fail> {
        let span = self.span(&p);
        let lit = match p.as_rule() {
            Rule::value => {
                return match p.into_inner().next() {
                    Some(inner) => self.lit(inner),
                    None => Err((span, "expected a value".into())),
                };
            }
            Rule::string => Lit::Str(self.string(&p)?.value),
            Rule::int => Lit::Int(self.int(&p)?),
            Rule::duration => Lit::Duration(self.duration(&p)?),
            Rule::bool_lit => Lit::Bool(p.as_str() == "true"),
            Rule::list_lit => {
                let mut items = Vec::new();
                for c in p.into_inner() {
                    if c.as_rule() == Rule::value {
                        items.push(self.lit(c)?);
                    }
                }
                Lit::List(items)
            }
            Rule::record_lit => {
                let mut fields = Vec::new();
                for f in p.into_inner() {
                    if f.as_rule() != Rule::field {
                        continue;
                    }
                    let fspan = self.span(&f);
                    let mut name = None;
                    let mut value = None;
                    for c in f.into_inner() {
                        match c.as_rule() {
                            Rule::field_name => name = Some(c.as_str().to_string()),
                            Rule::value => value = Some(self.lit(c)?.0),
                            _ => {}
                        }
                    }
                    if let (Some(n), Some(v)) = (name, value) {
                        if fields.iter().any(|(k, _, _): &(String, Lit, Span)| *k == n) {
                            return Err((fspan, format!("the field {n} is given twice")));
                        }
                        fields.push((n, v, fspan));
                    }
                }
                Lit::Record(fields)
            }
            _ => return Err((span, "expected a value".into())),
        };
        Ok((lit, span))
    }

    fn expr(&self, p: Pair<'_, Rule>) -> Result<Expr, Fail> {
        let span = self.span(&p);
        match p.as_rule() {
            Rule::expr => match p.into_inner().next() {
                Some(c) => self.expr(c),
                None => Err((span, "expected an expression".into())),
            },
            Rule::or_expr | Rule::and_expr => {
                let is_or = p.as_rule() == Rule::or_expr;
                let mut parts = Vec::new();
                for c in p.into_inner() {
                    if !matches!(c.as_rule(), Rule::kw_or | Rule::kw_and) {
                        parts.push(self.expr(c)?);
                    }
                }
                if parts.len() == 1 {
                    if let Some(only) = parts.pop() {
                        return Ok(only);
                    }
                }
                let kind = if is_or {
                    ExprKind::Or(parts)
                } else {
                    ExprKind::And(parts)
                };
                Ok(Expr { kind, span })
            }
            Rule::not_expr => {
                let mut nots = 0;
                let mut inner = None;
                for c in p.into_inner() {
                    if c.as_rule() == Rule::kw_not {
                        nots += 1;
                    } else {
                        inner = Some(self.expr(c)?);
                    }
                }
                let inner = inner.ok_or((span, "expected an expression".to_string()))?;
                if nots == 0 {
                    return Ok(inner);
                }
                Ok(Expr {
                    kind: ExprKind::Not(nots, Box::new(inner)),
                    span,
                })
            }
            Rule::cmp_expr => self.cmp(p),
            Rule::coalesce => {
                let mut parts = Vec::new();
                for c in p.into_inner() {
                    if !matches!(c.as_rule(), Rule::op_coalesce | Rule::lparen | Rule::rparen) {
                        parts.push(self.expr(c)?);
                    }
                }
                if parts.len() == 1 {
                    if let Some(only) = parts.pop() {
                        return Ok(only);
                    }
                }
                Ok(Expr {
                    kind: ExprKind::Coalesce(parts),
                    span,
                })
            }
            Rule::call => {
                let mut func = Func::Len;
                let mut arg = None;
                for c in p.into_inner() {
                    match c.as_rule() {
                        Rule::func_name => {
                            func = match c.as_str() {
                                "domain" => Func::Domain,
                                "lower" => Func::Lower,
                                _ => Func::Len,
                            }
                        }
                        Rule::expr => arg = Some(self.expr(c)?),
                        _ => {}
                    }
                }
                let arg = arg.ok_or((span, "expected an expression".to_string()))?;
                Ok(Expr {
                    kind: ExprKind::Call(func, Box::new(arg)),
                    span,
                })
            }
            Rule::quantifier => {
                let mut kind = Quant::Any;
                let mut var = None;
                let mut exprs = Vec::new();
                for c in p.into_inner() {
                    match c.as_rule() {
                        Rule::quant_kind if c.as_str() == "all" => kind = Quant::All,
                        Rule::ident => var = Some(self.text_raw(&c)),
                        Rule::expr => exprs.push(self.expr(c)?),
                        _ => {}
                    }
                }
                let mut exprs = exprs.into_iter();
                match (var, exprs.next(), exprs.next()) {
                    (Some(var), Some(list), Some(body)) => Ok(Expr {
                        kind: ExprKind::Quant {
                            kind,
                            var,
                            list: Box::new(list),
                            body: Box::new(body),
                        },
                        span,
                    }),
                    _ => Err((span, "a quantifier reads any(x in LIST: CONDITION)".into())),
                }
            }
            Rule::count_call => Ok(Expr {
                kind: ExprKind::Count(self.count_call(p)?),
                span,
            }),
            Rule::path => Ok(Expr {
                kind: ExprKind::Path(p.as_str().split('.').map(str::to_string).collect()),
                span,
            }),
            Rule::string
            | Rule::int
            | Rule::duration
            | Rule::bool_lit
            | Rule::list_lit
            | Rule::value => {
                let (lit, _) = self.lit(p)?;
                Ok(Expr {
                    kind: ExprKind::Lit(lit),
                    span,
                })
            }
            _ => Err((span, "expected an expression".into())),
        }
    }

    fn cmp(&self, p: Pair<'_, Rule>) -> Result<Expr, Fail> {
        let span = self.span(&p);
        let mut inner = p.into_inner();
        let lhs = match inner.next() {
            Some(c) => self.expr(c)?,
            None => return Err((span, "expected an expression".into())),
        };
        let Some(tail) = inner.next() else {
            return Ok(lhs);
        };
        let lhs = Box::new(lhs);
        let kind = match tail.as_rule() {
            Rule::cmp_op => {
                let op = match tail.into_inner().next().map(|o| o.as_rule()) {
                    Some(Rule::op_eq) => CmpOp::Eq,
                    Some(Rule::op_ne) => CmpOp::Ne,
                    Some(Rule::op_le) => CmpOp::Le,
                    Some(Rule::op_ge) => CmpOp::Ge,
                    Some(Rule::op_lt) => CmpOp::Lt,
                    Some(Rule::op_gt) => CmpOp::Gt,
                    Some(Rule::op_not_in) => CmpOp::NotIn,
                    Some(Rule::kw_in) => CmpOp::In,
                    Some(Rule::kw_under) => CmpOp::Under,
                    Some(Rule::kw_starts_with) => CmpOp::StartsWith,
                    Some(Rule::kw_ends_with) => CmpOp::EndsWith,
                    _ => CmpOp::Contains,
                };
                let rhs = match inner.next() {
                    Some(c) => self.expr(c)?,
                    None => return Err((span, "expected an expression".into())),
                };
                ExprKind::Cmp(op, lhs, Box::new(rhs))
            }
            Rule::glob_tail => {
                let pat = self
                    .only_string(tail)?
                    .ok_or((span, "expected a string".into()))?;
                ExprKind::Glob(lhs, pat)
            }
            Rule::regex_tail => {
                let raw = tail
                    .into_inner()
                    .find(|c| c.as_rule() == Rule::raw_string)
                    .ok_or((span, "expected a regex".to_string()))?;
                let text = raw.as_str();
                let body = text
                    .strip_prefix("r\"")
                    .and_then(|s| s.strip_suffix('"'))
                    .unwrap_or(text);
                ExprKind::Regex(
                    lhs,
                    Text {
                        value: body.to_string(),
                        span: self.span(&raw),
                    },
                )
            }
            Rule::within_tail => {
                let mut days = Days::Daily;
                let mut clocks = Vec::new();
                let mut zone = None;
                for c in tail.into_inner() {
                    match c.as_rule() {
                        Rule::day_set if c.as_str() == "weekdays" => days = Days::Weekdays,
                        Rule::clock => clocks.push(self.clock(&c)?),
                        Rule::string => zone = Some(self.string(&c)?),
                        _ => {}
                    }
                }
                match (clocks.as_slice(), zone) {
                    ([start, end], Some(zone)) => ExprKind::Within {
                        subject: lhs,
                        days,
                        start: *start,
                        end: *end,
                        zone,
                    },
                    _ => return Err((span, "expected HH:MM..HH:MM in \"Area/City\"".into())),
                }
            }
            _ => return Err((span, "expected an operator".into())),
        };
        Ok(Expr { kind, span })
    }

    fn clock(&self, p: &Pair<'_, Rule>) -> Result<u16, Fail> {
        let s = p.as_str();
        let (h, m) = s.split_once(':').unwrap_or((s, ""));
        match (h.parse::<u16>(), m.parse::<u16>()) {
            (Ok(h), Ok(m)) if h <= 24 && m < 60 && (h < 24 || m == 0) => Ok(h * 60 + m),
            _ => Err((
                self.span(p),
                format!("{s} is not a time of day (00:00 to 24:00)"),
            )),
        }
    }

    fn count_call(&self, p: Pair<'_, Rule>) -> Result<CountCall, Fail> {
        let span = self.span(&p);
        let mut pattern = None;
        let mut by = None;
        let mut window = None;
        for c in p.into_inner() {
            match c.as_rule() {
                Rule::pattern => pattern = Some(self.text_raw(&c)),
                Rule::count_by => {
                    let bspan = self.span(&c);
                    by = Some((
                        c.as_str()
                            .split('.')
                            .map(str::to_string)
                            .collect::<Vec<_>>(),
                        bspan,
                    ));
                }
                Rule::duration => window = Some((self.duration(&c)?, self.span(&c))),
                _ => {}
            }
        }
        match (pattern, by, window) {
            (Some(pattern), Some((by, by_span)), Some((window_ms, window_span))) => Ok(CountCall {
                pattern,
                by,
                by_span,
                window_ms,
                window_span,
                span,
            }),
            _ => Err((
                span,
                "count reads count(PATTERN, by: agent, window: DURATION)".into(),
            )),
        }
    }
}

fn effect_kw(p: &Pair<'_, Rule>) -> EffectKw {
    match p.as_str() {
        "allow" => EffectKw::Allow,
        "step_up" => EffectKw::StepUp,
        _ => EffectKw::Block,
    }
}

/// Decodes `\"`, `\\`, `\n`, `\t` and `\u{...}`; `\{` and `\}` are kept as written, for
/// reason templates to read.
fn unescape(s: &str) -> Result<String, String> {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('"') => out.push('"'),
            Some('\\') => out.push('\\'),
            Some('n') => out.push('\n'),
            Some('t') => out.push('\t'),
            Some('{') => out.push_str("\\{"),
            Some('}') => out.push_str("\\}"),
            Some('u') => {
                let hex: String = chars.by_ref().skip(1).take_while(|&c| c != '}').collect();
                let ch = u32::from_str_radix(&hex, 16)
                    .ok()
                    .and_then(char::from_u32)
                    .ok_or_else(|| format!("\\u{{{hex}}} is not a character"))?;
                out.push(ch);
            }
            other => return Err(format!("unknown escape \\{}", other.unwrap_or(' '))),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<File, LoadError> {
        parse_file(
            0,
            &Source {
                name: "t.policy".into(),
                text: text.into(),
            },
        )
    }

    #[test]
    fn the_language_page_example_parses() {
        let text = include_str!("../../tests/policy/language_example.policy");
        let f = parse(text).unwrap();
        assert_eq!(f.lists.len(), 2);
        assert_eq!(f.defaults.len(), 1);
        assert_eq!(f.rules.len(), 11);
        assert_eq!(f.tests.len(), 2);
        let ext = f
            .rules
            .iter()
            .find(|r| r.id.value == "external-recipient")
            .unwrap();
        assert_eq!(ext.effect, EffectKw::StepUp);
        assert_eq!(ext.patterns.len(), 2);
        let big = f
            .rules
            .iter()
            .find(|r| r.id.value == "big-attachments")
            .unwrap();
        assert!(big.shadow);
    }

    #[test]
    fn errors_name_what_was_expected() {
        let e = parse("block \"x\" on github.repos.delete reason \"r\"\n").unwrap_err();
        assert_eq!(e.line, 2);
        assert!(e.message.contains("';'"), "{e}");
        let e = parse("block \"x\" on github.repos.delete\n  when method == \n;").unwrap_err();
        assert_eq!((e.line, e.col), (3, 1), "{e}");
        assert!(e.message.contains("expression"), "{e}");
        let e = parse("blok \"x\" on a;").unwrap_err();
        assert!(e.message.contains("'block'"), "{e}");
        assert!(!e.message.contains("kw_"), "{e}");
        assert!(!e.message.contains("_def"), "{e}");
    }

    #[test]
    fn precedence_loosest_first() {
        let f = parse("allow \"a\" on x when a or b and not c == \"d\" ?? \"e\";").unwrap();
        let w = &f.rules[0].when[0];
        let ExprKind::Or(parts) = &w.kind else {
            panic!("{w:?}")
        };
        let ExprKind::And(and) = &parts[1].kind else {
            panic!()
        };
        let ExprKind::Not(1, cmp) = &and[1].kind else {
            panic!()
        };
        let ExprKind::Cmp(CmpOp::Eq, _, rhs) = &cmp.kind else {
            panic!()
        };
        assert!(matches!(rhs.kind, ExprKind::Coalesce(_)));
    }

    #[test]
    fn nesting_and_size_are_bounded() {
        let deep = format!(
            "allow \"a\" on x when {}a{};",
            "(".repeat(40),
            ")".repeat(40)
        );
        let e = parse(&deep).unwrap_err();
        assert!(e.message.contains("nest"), "{e}");
        let nots = format!("allow \"a\" on x when {} a;", "not ".repeat(100_000));
        assert!(parse(&nots).is_ok());
        let big = format!("# {}\n", "x".repeat(MAX_FILE_BYTES));
        let e = parse(&big).unwrap_err();
        assert!(e.message.contains("1 MiB"), "{e}");
    }

    #[test]
    fn the_deepest_nesting_parses_on_a_small_stack() {
        // MAX_DEPTH levels of every bracket, parsed from a thread with a 1 MiB stack (a debug
        // build needs several MiB for this on the caller's stack).
        let parens = format!(
            "allow \"a\" on x when {}a{};",
            "(".repeat(MAX_DEPTH),
            ")".repeat(MAX_DEPTH)
        );
        let lists = format!(
            "list x = {}1{};",
            "[".repeat(MAX_DEPTH),
            "]".repeat(MAX_DEPTH)
        );
        let quants = format!(
            "allow \"a\" on x when {}true{};",
            "any(x in l: ".repeat(MAX_DEPTH),
            ")".repeat(MAX_DEPTH)
        );
        std::thread::Builder::new()
            .stack_size(1024 * 1024)
            .spawn(move || {
                for text in [parens, lists, quants] {
                    assert!(parse(&text).is_ok(), "{text}");
                }
            })
            .unwrap()
            .join()
            .unwrap();
    }

    #[test]
    fn unknown_escapes_are_named() {
        let e = parse("default block reason \"a \\q\";").unwrap_err();
        assert_eq!((e.line, e.col), (1, 22), "{e}");
        assert_eq!(e.message, "unknown escape \\q");
        let e = parse("default block reason \"\\u{zz}\";").unwrap_err();
        assert!(e.message.contains("is not a character"), "{e}");
        let f = parse("default block reason \"\\\"\\u{41}\\t\\{x\\}\";").unwrap();
        let reason = f.defaults[0].reason.as_ref().unwrap();
        assert_eq!(reason.value, "\"A\t\\{x\\}");
    }

    #[test]
    fn keywords_are_field_names_after_a_dot() {
        let f = parse("block \"u\" on http.request when params.reason contains \"x\";").unwrap();
        let ExprKind::Cmp(CmpOp::Contains, lhs, _) = &f.rules[0].when[0].kind else {
            panic!()
        };
        assert_eq!(
            lhs.kind,
            ExprKind::Path(vec!["params".into(), "reason".into()])
        );
    }
}
