//! RFC 5322 / MIME: the params of one e-mail message (recipients, sender, subject, attachments,
//! size), read strictly (wire-formats.md section 1.5).
//!
//! The gate decides on the recipients it reads here, and Gmail sends to the recipients it reads
//! itself: anything two careful readers could read differently is refused, never repaired
//! (security.md). So the structure is parsed here, strictly, and `mail-parser` is used where
//! decoding rather than structure is at stake (RFC 2047 encoded words, RFC 2231 parameters), and
//! as a second, lenient reader of every address header, which must agree with the strict one.
//!
//! - Header block: lines end in CRLF or LF, one or the other throughout; a field is
//!   `name ":" value` with a printable-ASCII name; a line starting with SP or HTAB continues the
//!   previous field (unfolded by removing the line break). Refused: a line without a colon, a
//!   name with spaces or other bytes, a folded first line, a blank continuation line, bare CR,
//!   NUL and other control characters, invalid UTF-8.
//! - Address headers (`To`, `Cc`, `Bcc`, `From`, every occurrence): RFC 5322 address lists with
//!   quoted strings, comments, groups and encoded words in display names. Refused: anything that
//!   is not an address (a phrase without `<addr>`, a missing comma), whitespace or comments
//!   inside an addr-spec, quoted local parts, domain literals, source routes, encoded words,
//!   invisible or look-alike characters inside an address, a non-empty header with no address or
//!   group, and any header the second reader reads as a different list of addresses.
//! - `Resent-To`, `Resent-Cc` and `Resent-Bcc` are refused (a submission agent may send to them
//!   instead of To/Cc/Bcc); so are a second `Subject`, `Content-Type`,
//!   `Content-Transfer-Encoding` or `Content-Disposition` in one header block.
//! - MIME: multipart bodies are split on their boundary exactly (RFC 2046): a line that starts
//!   with the delimiter but is not one, a missing closing delimiter or a boundary line after it,
//!   a multipart without a boundary, with a transfer encoding, or nested deeper than
//!   [`MAX_DEPTH`] are refused. `message/rfc822` parts are read as messages too.
//! - Attachments: every leaf part (the top-level entity included) that has a file name
//!   (`filename` or `name`, RFC 2231 forms included), is not `text/*`, or is marked
//!   `Content-Disposition: attachment`; an attached `message/rfc822` is listed and its own
//!   attachments after it. Inline images count: they leave the mailbox like any attachment, and
//!   `inline` must not hide a file from the policy. `size` is the decoded size (base64 or
//!   quoted-printable removed); an undecodable base64 part is refused.

use mail_parser::parsers::MessageStream;
use mail_parser::{Address, HeaderValue};
use serde_json::{Map, Value};

use super::ClassifyError;

/// Largest message read (Gmail's own cap for insert and import is 50 MiB).
pub const MAX_MESSAGE_BYTES: usize = 50 * 1024 * 1024;
/// Deepest nesting of multiparts (and attached messages) read.
pub const MAX_DEPTH: usize = 32;
/// Most addresses in one message (Gmail allows far fewer recipients).
pub const MAX_ADDRESSES: usize = 10_000;
/// Most attachments listed for one message.
pub const MAX_ATTACHMENTS: usize = 10_000;
/// Longest boundary RFC 2046 allows.
const MAX_BOUNDARY_LEN: usize = 70;

/// The headers whose addresses Gmail sends to; each becomes the param of its lower-case name.
const RECIPIENT_HEADERS: [&str; 3] = ["to", "cc", "bcc"];
/// Headers some submission agents send to instead of To/Cc/Bcc.
const RESENT_HEADERS: [&str; 3] = ["resent-to", "resent-cc", "resent-bcc"];

fn bad(msg: impl Into<String>) -> ClassifyError {
    ClassifyError::Malformed(msg.into())
}

/// The params of one message: `to`, `cc`, `bcc`, `recipients` (the three together, each address
/// once, in order), `from` (arrays of lower-cased bare addresses), `subject` (decoded, `""` when
/// there is none), `attachments` (`{name, type, size}` each), `body_preview` (the start of the
/// first text/plain part, for the reviewer; `""` when there is none) and `size` (bytes).
pub fn extract(message: &[u8]) -> Result<Map<String, Value>, ClassifyError> {
    if message.len() > MAX_MESSAGE_BYTES {
        return Err(bad(format!(
            "the message is over the {MAX_MESSAGE_BYTES}-byte limit"
        )));
    }
    let (fields, body) = split_header(message)?;
    if fields.is_empty() {
        return Err(bad("the message has no header fields"));
    }
    if let Some(f) = fields
        .iter()
        .find(|f| RESENT_HEADERS.iter().any(|h| f.is(h)))
    {
        return Err(bad(format!(
            "the message has a {} header: resent messages are not accepted",
            f.name
        )));
    }
    let mut params = Map::new();
    let mut recipients: Vec<String> = Vec::new();
    let mut total = 0;
    for header in RECIPIENT_HEADERS.into_iter().chain(["from"]) {
        let list = addresses(&fields, header)?;
        total += list.len();
        if total > MAX_ADDRESSES {
            return Err(bad(format!(
                "the message has more than {MAX_ADDRESSES} addresses"
            )));
        }
        if header != "from" {
            for a in &list {
                if !recipients.contains(a) {
                    recipients.push(a.clone());
                }
            }
        }
        params.insert(header.into(), strings(list));
    }
    params.insert("recipients".into(), strings(recipients));
    params.insert("subject".into(), Value::String(subject(&fields)?));
    let mut walker = Walker::default();
    walker.walk(&fields, body, false, 0)?;
    params.insert("attachments".into(), Value::Array(walker.attachments));
    params.insert(
        "body_preview".into(),
        Value::String(walker.preview.unwrap_or_default()),
    );
    params.insert("size".into(), Value::from(message.len()));
    Ok(params)
}

fn strings(list: Vec<String>) -> Value {
    Value::Array(list.into_iter().map(Value::String).collect())
}

// ---------------------------------------------------------------------------------------------
// Header block

/// One header field, unfolded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Field<'a> {
    /// The name as written.
    pub name: &'a str,
    /// Everything after the colon, line breaks of folded lines removed.
    pub value: String,
}

impl Field<'_> {
    /// Whether the field has this (lower-case) name.
    pub fn is(&self, name: &str) -> bool {
        self.name.eq_ignore_ascii_case(name)
    }
}

/// One line of a body: its text without the line ending, whether it ended in CRLF (`Some(true)`),
/// LF (`Some(false)`) or the end of the data (`None`), and where the next line starts.
struct Line<'a> {
    text: &'a [u8],
    crlf: Option<bool>,
    next: usize,
}

fn line_at(data: &[u8], pos: usize) -> Line<'_> {
    let rest = data.get(pos..).unwrap_or_default();
    match memchr::memchr(b'\n', rest) {
        Some(i) => {
            let raw = rest.get(..i).unwrap_or_default();
            let (text, crlf) = match raw.strip_suffix(b"\r") {
                Some(text) => (text, true),
                None => (raw, false),
            };
            Line {
                text,
                crlf: Some(crlf),
                next: pos + i + 1,
            }
        }
        None => Line {
            text: rest,
            crlf: None,
            next: data.len(),
        },
    }
}

/// Splits a message (or body part) into its header fields and its body. A header block without a
/// blank line after it is all header (the body is empty).
pub fn split_header(data: &[u8]) -> Result<(Vec<Field<'_>>, &[u8]), ClassifyError> {
    let mut fields: Vec<Field<'_>> = Vec::new();
    let mut ending: Option<bool> = None;
    let mut pos = 0;
    while pos < data.len() {
        let line = line_at(data, pos);
        if let Some(crlf) = line.crlf {
            if *ending.get_or_insert(crlf) != crlf {
                return Err(bad("the header block mixes CRLF and bare LF line endings"));
            }
        }
        if line.text.is_empty() {
            return Ok((fields, data.get(line.next..).unwrap_or_default()));
        }
        let text = header_line(line.text)?;
        if text.starts_with([' ', '\t']) {
            let last = fields
                .last_mut()
                .ok_or_else(|| bad("the header block starts with a folded line"))?;
            if text.trim_matches([' ', '\t']).is_empty() {
                return Err(bad("a folded header line is blank"));
            }
            last.value.push_str(text);
        } else {
            let (name, value) = text
                .split_once(':')
                .ok_or_else(|| bad(format!("the header line {:?} has no colon", clip(text))))?;
            if name.is_empty() || !name.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(bad(format!("the header name {:?} is invalid", clip(name))));
            }
            fields.push(Field {
                name,
                value: value.to_string(),
            });
        }
        pos = line.next;
    }
    Ok((fields, &[]))
}

/// A header line as text: UTF-8, no control characters but HTAB, no bare CR.
fn header_line(line: &[u8]) -> Result<&str, ClassifyError> {
    if line.contains(&b'\r') {
        return Err(bad("the header block has a bare CR"));
    }
    if line.iter().any(|&b| (b < 0x20 && b != b'\t') || b == 0x7f) {
        return Err(bad("the header block has a control character or NUL"));
    }
    std::str::from_utf8(line).map_err(|_| bad("the header block is not UTF-8"))
}

/// The first 60 characters of `text`, for messages.
fn clip(text: &str) -> String {
    text.chars().take(60).collect()
}

/// The value of the one field called `name`, if any; a second one is refused.
pub fn single<'f>(fields: &'f [Field<'_>], name: &str) -> Result<Option<&'f str>, ClassifyError> {
    let mut found = fields.iter().filter(|f| f.is(name));
    let first = found.next();
    if found.next().is_some() {
        return Err(bad(format!("the {name} header appears more than once")));
    }
    Ok(first.map(|f| f.value.as_str()))
}

fn subject(fields: &[Field<'_>]) -> Result<String, ClassifyError> {
    let Some(value) = single(fields, "subject")? else {
        return Ok(String::new());
    };
    let text = format!("{value}\n");
    Ok(
        match MessageStream::new(text.as_bytes()).parse_unstructured() {
            HeaderValue::Text(t) => t.into_owned(),
            _ => String::new(),
        },
    )
}

// ---------------------------------------------------------------------------------------------
// Addresses

/// The addresses of every header called `name`, in order.
fn addresses(fields: &[Field<'_>], name: &str) -> Result<Vec<String>, ClassifyError> {
    let mut out = Vec::new();
    for field in fields.iter().filter(|f| f.is(name)) {
        let list = parse_address_list(&field.value)
            .map_err(|ClassifyError::Malformed(e)| bad(format!("the {name} header: {e}")))?;
        let mut mine: Vec<String> = list.clone();
        let mut theirs = second_reading(&field.value);
        mine.sort();
        theirs.sort();
        if mine != theirs {
            return Err(bad(format!(
                "the {name} header can be read as different addresses; it is refused as ambiguous"
            )));
        }
        out.extend(list);
    }
    Ok(out)
}

/// The addresses `mail-parser` reads in a header value (lower-cased; `""` for an entry without
/// an address).
fn second_reading(value: &str) -> Vec<String> {
    let text = format!("{value}\n");
    let lower = |a: &mail_parser::Addr<'_>| {
        a.address
            .as_deref()
            .map(str::to_lowercase)
            .unwrap_or_default()
    };
    match MessageStream::new(text.as_bytes()).parse_address() {
        HeaderValue::Address(Address::List(list)) => list.iter().map(lower).collect(),
        HeaderValue::Address(Address::Group(groups)) => groups
            .iter()
            .flat_map(|g| g.addresses.iter())
            .map(lower)
            .collect(),
        _ => Vec::new(),
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Tok {
    Atom(String),
    Quoted(String),
    Special(char),
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Token {
    tok: Tok,
    /// Whitespace or a comment came before it.
    spaced: bool,
}

fn is_atext(c: char) -> bool {
    c.is_ascii_alphanumeric()
        || "!#$%&'*+-/=?^_`{|}~".contains(c)
        || (!c.is_ascii() && !c.is_control() && !c.is_whitespace())
}

/// Splits an address header value into atoms, quoted strings and specials; comments and
/// whitespace only mark the token after them as `spaced`.
fn tokenize(value: &str) -> Result<Vec<Token>, ClassifyError> {
    let mut out = Vec::new();
    let mut spaced = false;
    let mut chars = value.chars().peekable();
    while let Some(c) = chars.next() {
        let tok = match c {
            ' ' | '\t' => {
                spaced = true;
                continue;
            }
            '(' => {
                skip_comment(&mut chars)?;
                spaced = true;
                continue;
            }
            '"' => Tok::Quoted(quoted(&mut chars)?),
            '<' | '>' | ':' | ';' | '@' | ',' | '.' => Tok::Special(c),
            '[' | ']' => return Err(bad("domain literals are not accepted")),
            ')' => return Err(bad("a ')' closes no comment")),
            c if is_atext(c) => {
                let mut atom = String::from(c);
                while let Some(&n) = chars.peek().filter(|n| is_atext(**n)) {
                    atom.push(n);
                    chars.next();
                }
                Tok::Atom(atom)
            }
            c => return Err(bad(format!("unexpected character {c:?}"))),
        };
        out.push(Token { tok, spaced });
        spaced = false;
    }
    Ok(out)
}

/// Skips a comment (after its `(`), nested comments and quoted pairs included.
fn skip_comment(chars: &mut impl Iterator<Item = char>) -> Result<(), ClassifyError> {
    let mut depth = 1usize;
    while depth > 0 {
        match chars.next() {
            None => return Err(bad("a comment is not closed")),
            Some('\\') => {
                chars.next().ok_or_else(|| bad("a comment is not closed"))?;
            }
            Some('(') => depth += 1,
            Some(')') => depth -= 1,
            Some(_) => {}
        }
    }
    Ok(())
}

/// A quoted string's content (after its opening quote), quoted pairs resolved.
fn quoted(chars: &mut impl Iterator<Item = char>) -> Result<String, ClassifyError> {
    let mut out = String::new();
    loop {
        match chars.next() {
            None => return Err(bad("a quoted string is not closed")),
            Some('"') => return Ok(out),
            Some('\\') => out.push(
                chars
                    .next()
                    .ok_or_else(|| bad("a quoted string is not closed"))?,
            ),
            Some(c) => out.push(c),
        }
    }
}

struct AddrParser {
    toks: Vec<Token>,
    i: usize,
}

impl AddrParser {
    fn peek(&self) -> Option<&Token> {
        self.toks.get(self.i)
    }

    fn peek_special(&self, c: char) -> bool {
        self.peek().is_some_and(|t| t.tok == Tok::Special(c))
    }

    fn eat_special(&mut self, c: char) -> bool {
        let found = self.peek_special(c);
        if found {
            self.i += 1;
        }
        found
    }

    /// One address (a mailbox, or at the top level a group) into `out`.
    fn address(&mut self, out: &mut Vec<String>, top: bool) -> Result<(), ClassifyError> {
        if let Some(a) = self.try_addr_spec()? {
            out.push(a);
            return Ok(());
        }
        let words = self.phrase();
        if self.eat_special('<') {
            out.push(self.angle_addr()?);
            return Ok(());
        }
        if self.eat_special(':') {
            return match (top, words) {
                (false, _) => Err(bad("groups cannot nest")),
                (true, 0) => Err(bad("a group has no name")),
                (true, _) => self.group(out),
            };
        }
        Err(bad("it holds something that is not an address"))
    }

    /// A display name: words (atoms or quoted strings) and, after the first, dots. Returns how
    /// many tokens it took.
    fn phrase(&mut self) -> usize {
        let start = self.i;
        while let Some(t) = self.peek() {
            match t.tok {
                Tok::Atom(_) | Tok::Quoted(_) => self.i += 1,
                Tok::Special('.') if self.i > start => self.i += 1,
                _ => break,
            }
        }
        self.i - start
    }

    /// `<addr-spec>`, after the `<`.
    fn angle_addr(&mut self) -> Result<String, ClassifyError> {
        if self.peek_special('@') {
            return Err(bad("source routes are not accepted"));
        }
        let addr = self
            .try_addr_spec()?
            .ok_or_else(|| bad("'<' is not followed by an address"))?;
        if !self.eat_special('>') {
            return Err(bad("an address in '<' is not closed by '>'"));
        }
        Ok(addr)
    }

    /// A group's members and its `;`, after the `:`.
    fn group(&mut self, out: &mut Vec<String>) -> Result<(), ClassifyError> {
        loop {
            if self.eat_special(';') {
                return Ok(());
            }
            if self.eat_special(',') {
                continue;
            }
            if self.peek().is_none() {
                return Err(bad("a group is not closed by ';'"));
            }
            self.address(out, false)?;
            if !self.peek_special(',') && !self.peek_special(';') {
                return Err(bad("the members of a group are not separated by ','"));
            }
        }
    }

    /// An addr-spec at this point, lower-cased; `None` (and nothing taken) when the tokens here
    /// are not a local part followed by `@`.
    fn try_addr_spec(&mut self) -> Result<Option<String>, ClassifyError> {
        let start = self.i;
        let local = match self.peek().map(|t| &t.tok) {
            Some(Tok::Quoted(_)) => {
                if self
                    .toks
                    .get(self.i + 1)
                    .is_some_and(|t| t.tok == Tok::Special('@'))
                {
                    return Err(bad("quoted local parts are not accepted"));
                }
                return Ok(None);
            }
            Some(Tok::Atom(_)) => self.dot_atom(),
            _ => return Ok(None),
        };
        let at = self.peek().filter(|t| t.tok == Tok::Special('@')).cloned();
        let Some(at) = at else {
            self.i = start;
            return Ok(None);
        };
        if local.is_none() || at.spaced {
            return Err(bad(
                "an address has whitespace, a comment or a stray dot inside",
            ));
        }
        self.i += 1;
        let domain = self
            .peek()
            .is_some_and(|t| !t.spaced)
            .then(|| self.dot_atom())
            .flatten()
            .ok_or_else(|| bad("an address has no domain, or whitespace inside"))?;
        let local = local.unwrap_or_default();
        normalise(&local, &domain).map(Some)
    }

    /// `atom *("." atom)` with nothing between the tokens; `None` when it ends in a dot or has
    /// whitespace inside (the tokens are still taken).
    fn dot_atom(&mut self) -> Option<String> {
        let mut text = String::new();
        let mut first = true;
        loop {
            let t = self.peek()?;
            let Tok::Atom(atom) = &t.tok else {
                return None;
            };
            if t.spaced && !first {
                return None;
            }
            text.push_str(atom);
            self.i += 1;
            first = false;
            match self.peek() {
                Some(t) if t.tok == Tok::Special('.') && !t.spaced => {
                    text.push('.');
                    self.i += 1;
                }
                _ => return Some(text),
            }
        }
    }
}

/// Parses an address list: the bare addresses of its mailboxes and group members, lower-cased.
/// Empty list elements (`a@x.com,,b@y.com`) are allowed; a value that is not blank must hold at
/// least one address or group.
fn parse_address_list(value: &str) -> Result<Vec<String>, ClassifyError> {
    let mut p = AddrParser {
        toks: tokenize(value)?,
        i: 0,
    };
    let mut out = Vec::new();
    let mut elements = 0;
    while p.peek().is_some() {
        if p.eat_special(',') {
            continue;
        }
        p.address(&mut out, true)?;
        elements += 1;
        if p.peek().is_some() && !p.eat_special(',') {
            return Err(bad("addresses are not separated by ','"));
        }
    }
    if elements == 0 && !value.trim_matches([' ', '\t']).is_empty() {
        return Err(bad("it holds no address"));
    }
    Ok(out)
}

/// Characters refused inside an address: invisible ones, and look-alikes of `.` and `@`.
fn hidden_or_lookalike(c: char) -> bool {
    c.is_whitespace()
        || c.is_control()
        || matches!(c,
            '\u{00AD}' | '\u{034F}' | '\u{061C}' | '\u{115F}' | '\u{1160}' | '\u{17B4}'
            | '\u{17B5}' | '\u{180B}'..='\u{180F}' | '\u{200B}'..='\u{200F}'
            | '\u{202A}'..='\u{202E}' | '\u{2060}'..='\u{206F}' | '\u{3164}'
            | '\u{FE00}'..='\u{FE0F}' | '\u{FEFF}' | '\u{FFA0}' | '\u{FFF0}'..='\u{FFFF}'
            | '\u{E0000}'..='\u{E0FFF}'
            | '\u{2024}' | '\u{3002}' | '\u{FE52}' | '\u{FF0E}' | '\u{FF61}'
            | '\u{FE6B}' | '\u{FF20}')
}

/// `local@domain`, lower-cased. Refused: encoded words (RFC 2047 forbids them in addresses, and
/// a reader that decoded them would see another address), hidden or look-alike characters, and
/// non-ASCII letters whose lower case is ASCII (the Kelvin sign), which would alias an ASCII
/// domain.
fn normalise(local: &str, domain: &str) -> Result<String, ClassifyError> {
    let addr = format!("{local}@{domain}");
    if addr.contains("=?") {
        return Err(bad("an address holds an encoded word"));
    }
    let mut out = String::with_capacity(addr.len());
    for c in addr.chars() {
        if c.is_ascii() {
            out.push(c.to_ascii_lowercase());
            continue;
        }
        if hidden_or_lookalike(c) {
            return Err(bad(format!(
                "an address holds the invisible or look-alike character U+{:04X}",
                u32::from(c)
            )));
        }
        for l in c.to_lowercase() {
            if l.is_ascii() {
                return Err(bad(format!(
                    "an address holds U+{:04X}, whose lower case is ASCII",
                    u32::from(c)
                )));
            }
            out.push(l);
        }
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// MIME

/// A parsed `Content-Type` (or, with an empty subtype, `Content-Disposition`): lower-case type,
/// subtype and parameter names; parameter values as written (quoted pairs resolved).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaType {
    pub ty: String,
    pub subtype: String,
    pub params: Vec<(String, String)>,
}

impl MediaType {
    /// The value of the parameter `name` (lower-case).
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Whether this is `ty/subtype` (both lower-case).
    pub fn is(&self, ty: &str, subtype: &str) -> bool {
        self.ty == ty && self.subtype == subtype
    }

    /// Whether a parameter `name`, or an RFC 2231 form of it (`name*`, `name*0*`), is present.
    fn has_param(&self, name: &str) -> bool {
        self.params.iter().any(|(n, _)| {
            n == name
                || n.strip_prefix(name)
                    .is_some_and(|rest| rest.starts_with('*'))
        })
    }
}

/// RFC 2045 token characters.
fn is_tchar(c: char) -> bool {
    c.is_ascii_graphic() && !"()<>@,;:\\\"/[]?=".contains(c)
}

struct Cursor<'a> {
    rest: std::iter::Peekable<std::str::Chars<'a>>,
}

impl Cursor<'_> {
    fn skip_ws(&mut self) {
        while self.rest.next_if(|c| *c == ' ' || *c == '\t').is_some() {}
    }

    fn token(&mut self) -> String {
        let mut out = String::new();
        while let Some(c) = self.rest.next_if(|c| is_tchar(*c)) {
            out.push(c);
        }
        out
    }
}

/// Parses `type/subtype *(";" name "=" value)` strictly: tokens and quoted strings only, no
/// comments, no repeated parameter.
pub fn parse_media_type(value: &str) -> Result<MediaType, ClassifyError> {
    parse_typed(value, true)
}

/// Parses `disposition *(";" name "=" value)` the same way (`subtype` is empty).
fn parse_disposition(value: &str) -> Result<MediaType, ClassifyError> {
    parse_typed(value, false)
}

fn parse_typed(value: &str, with_subtype: bool) -> Result<MediaType, ClassifyError> {
    let what = if with_subtype {
        "Content-Type"
    } else {
        "Content-Disposition"
    };
    let mut cur = Cursor {
        rest: value.chars().peekable(),
    };
    cur.skip_ws();
    let ty = cur.token().to_ascii_lowercase();
    let subtype = if with_subtype {
        if cur.rest.next() != Some('/') {
            return Err(bad(format!("the {what} {:?} is invalid", clip(value))));
        }
        cur.token().to_ascii_lowercase()
    } else {
        String::new()
    };
    if ty.is_empty() || (with_subtype && subtype.is_empty()) {
        return Err(bad(format!("the {what} {:?} is invalid", clip(value))));
    }
    let mut params: Vec<(String, String)> = Vec::new();
    loop {
        cur.skip_ws();
        match cur.rest.next() {
            None => break,
            Some(';') => {}
            Some(_) => return Err(bad(format!("the {what} {:?} is invalid", clip(value)))),
        }
        cur.skip_ws();
        if cur.rest.peek().is_none() {
            break;
        }
        let name = cur.token().to_ascii_lowercase();
        cur.skip_ws();
        if name.is_empty() || cur.rest.next() != Some('=') {
            return Err(bad(format!(
                "the {what} {:?} has an invalid parameter",
                clip(value)
            )));
        }
        cur.skip_ws();
        let v = if cur.rest.next_if_eq(&'"').is_some() {
            quoted(&mut cur.rest)?
        } else {
            let v = cur.token();
            if v.is_empty() {
                return Err(bad(format!("the {what} parameter {name:?} has no value")));
            }
            v
        };
        if params.iter().any(|(n, _)| *n == name) {
            return Err(bad(format!("the {what} parameter {name:?} is repeated")));
        }
        params.push((name, v));
    }
    Ok(MediaType {
        ty,
        subtype,
        params,
    })
}

/// Checks a multipart boundary: 1 to 70 of RFC 2046's `bchars`, not ending in a space.
fn check_boundary(boundary: &str) -> Result<(), ClassifyError> {
    let ok = !boundary.is_empty()
        && boundary.len() <= MAX_BOUNDARY_LEN
        && !boundary.ends_with(' ')
        && boundary
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "'()+_,-./:=? ".contains(c));
    if ok {
        return Ok(());
    }
    Err(bad(format!(
        "the multipart boundary {boundary:?} is invalid"
    )))
}

/// Splits a multipart body into its parts (RFC 2046): the preamble and epilogue are dropped,
/// and the line ending before each delimiter belongs to the delimiter.
pub fn split_multipart<'a>(body: &'a [u8], boundary: &str) -> Result<Vec<&'a [u8]>, ClassifyError> {
    check_boundary(boundary)?;
    let delimiter = format!("--{boundary}");
    let mut parts = Vec::new();
    let mut start: Option<usize> = None;
    let mut closed = false;
    let mut pos = 0;
    while pos < body.len() {
        let line = line_at(body, pos);
        if let Some(rest) = line.text.strip_prefix(delimiter.as_bytes()) {
            if closed {
                return Err(bad(
                    "a multipart body has a boundary line after its closing delimiter",
                ));
            }
            let (close, padding) = match rest.strip_prefix(b"--") {
                Some(p) => (true, p),
                None => (false, rest),
            };
            if !padding.iter().all(|&b| b == b' ' || b == b'\t') {
                return Err(bad(
                    "a multipart body has a line that starts with its boundary but is no delimiter",
                ));
            }
            if let Some(s) = start {
                let end = content_end(body, pos).max(s);
                parts.push(body.get(s..end).unwrap_or_default());
                if parts.len() > MAX_ATTACHMENTS {
                    return Err(bad("a multipart body has too many parts"));
                }
            }
            start = (!close).then_some(line.next);
            closed = close;
        }
        pos = line.next;
    }
    if !closed {
        return Err(bad("a multipart body has no closing delimiter"));
    }
    Ok(parts)
}

/// Where a part's content ends, given the start of the delimiter line after it.
fn content_end(body: &[u8], delimiter: usize) -> usize {
    let before = body.get(..delimiter).unwrap_or_default();
    if before.ends_with(b"\r\n") {
        delimiter - 2
    } else if before.ends_with(b"\n") {
        delimiter - 1
    } else {
        delimiter
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TransferEncoding {
    Identity,
    Base64,
    QuotedPrintable,
}

fn transfer_encoding(fields: &[Field<'_>]) -> Result<TransferEncoding, ClassifyError> {
    let Some(value) = single(fields, "content-transfer-encoding")? else {
        return Ok(TransferEncoding::Identity);
    };
    match value
        .trim_matches([' ', '\t'])
        .to_ascii_lowercase()
        .as_str()
    {
        "7bit" | "8bit" | "binary" => Ok(TransferEncoding::Identity),
        "base64" => Ok(TransferEncoding::Base64),
        "quoted-printable" => Ok(TransferEncoding::QuotedPrintable),
        other => Err(bad(format!(
            "the Content-Transfer-Encoding {:?} is not supported",
            clip(other)
        ))),
    }
}

/// The size of a body once its transfer encoding is removed.
fn decoded_len(body: &[u8], encoding: TransferEncoding) -> Result<usize, ClassifyError> {
    match encoding {
        TransferEncoding::Identity => Ok(body.len()),
        TransferEncoding::Base64 => base64_len(body),
        TransferEncoding::QuotedPrintable => Ok(quoted_printable_len(body)),
    }
}

/// The decoded size of a MIME base64 body, computed in one pass without decoding: whitespace
/// is skipped, every other byte must be in the base64 alphabet, `=` may only end the body (at
/// most two), and a lone trailing character (which no encoder produces) is refused.
fn base64_len(body: &[u8]) -> Result<usize, ClassifyError> {
    let invalid = || bad("a base64 body part cannot be decoded: invalid byte, length or padding");
    // Everything before the padding: alphabet and whitespace only.
    let end = body
        .iter()
        .rposition(|b| !matches!(b, b'=' | b' ' | b'\t' | b'\r' | b'\n'))
        .map_or(0, |i| i + 1);
    let (data, tail) = body.split_at(end);
    // Branch-free over the bytes: count the alphabet, note anything foreign.
    let mut chars = 0usize;
    let mut foreign = false;
    for &b in data {
        let class = B64_CLASS[usize::from(b)];
        chars += usize::from(class == 1);
        foreign |= class == 2;
    }
    if foreign {
        return Err(invalid());
    }
    let padding = tail.iter().filter(|&&b| b == b'=').count();
    if padding > 2 || chars % 4 == 1 {
        return Err(invalid());
    }
    Ok(chars / 4 * 3 + (chars % 4).saturating_sub(1))
}

/// Byte classes for MIME base64: 0 whitespace, 1 alphabet, 2 anything else.
const B64_CLASS: [u8; 256] = {
    let mut t = [2u8; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        if c.is_ascii_alphanumeric() || c == b'+' || c == b'/' {
            t[b] = 1;
        } else if matches!(c, b' ' | b'\t' | b'\r' | b'\n') {
            t[b] = 0;
        }
        b += 1;
    }
    t
};

/// The decoded size of a quoted-printable body (RFC 2045 6.7): `=XX` is one byte, a trailing `=`
/// joins lines, trailing whitespace is dropped; an invalid escape counts as written.
fn quoted_printable_len(body: &[u8]) -> usize {
    let mut n = 0;
    let mut pos = 0;
    while pos < body.len() {
        let line = line_at(body, pos);
        let text = line.text.trim_ascii_end();
        let (text, soft) = match text.strip_suffix(b"=") {
            Some(t) => (t, true),
            None => (text, false),
        };
        let mut i = 0;
        while i < text.len() {
            let escape = text
                .get(i + 1..i + 3)
                .filter(|h| text.get(i) == Some(&b'=') && h.iter().all(u8::is_ascii_hexdigit));
            i += if escape.is_some() { 3 } else { 1 };
            n += 1;
        }
        if !soft {
            n += match line.crlf {
                Some(true) => 2,
                Some(false) => 1,
                None => 0,
            };
        }
        pos = line.next;
    }
    n
}

/// Collects the attachments of a message.
#[derive(Debug, Default)]
struct Walker {
    attachments: Vec<Value>,
    /// The start of the first text/plain part that is not an attachment, decoded.
    preview: Option<String>,
}

/// How many characters of the message's text a reviewer sees before approving it.
pub const PREVIEW_CHARS: usize = 500;

/// The first [`PREVIEW_CHARS`] characters of a text part's content: the transfer encoding
/// undone, the charset decoded (unknown charsets and bad bytes as U+FFFD), line endings as
/// `\n`. `None` when the encoding is broken (the message is still classified; the reviewer
/// sees no preview).
fn preview(body: &[u8], encoding: TransferEncoding, charset: Option<&str>) -> Option<String> {
    use mail_parser::decoders;
    // Enough encoded bytes for PREVIEW_CHARS characters of up to 4 bytes each, cut at a line
    // end so no base64 quantum or quoted-printable escape is split: a long body costs no more
    // than a short one.
    const ENOUGH: usize = PREVIEW_CHARS * 4 * 4 / 3 + 512;
    let body = match body.get(..ENOUGH) {
        Some(head) if encoding != TransferEncoding::Identity => {
            let end = memchr::memrchr(b'\n', head).map_or(head.len(), |i| i + 1);
            head.get(..end).unwrap_or(head)
        }
        Some(head) => head,
        None => body,
    };
    let bytes: std::borrow::Cow<'_, [u8]> = match encoding {
        TransferEncoding::Identity => std::borrow::Cow::Borrowed(body),
        TransferEncoding::Base64 => std::borrow::Cow::Owned(decoders::base64::base64_decode(body)?),
        TransferEncoding::QuotedPrintable => {
            std::borrow::Cow::Owned(decoders::quoted_printable::quoted_printable_decode(body)?)
        }
    };
    let text = match charset.and_then(|c| decoders::charsets::map::charset_decoder(c.as_bytes())) {
        Some(decode) => decode(&bytes),
        None => String::from_utf8_lossy(&bytes).into_owned(),
    };
    Some(
        text.replace("\r\n", "\n")
            .chars()
            .take(PREVIEW_CHARS)
            .collect::<String>()
            .trim_end()
            .to_string(),
    )
}

impl Walker {
    /// Reads one entity (a message or body part) at `depth` containers down; `digest` says its
    /// parent is a multipart/digest (where the default type is message/rfc822).
    fn walk(
        &mut self,
        fields: &[Field<'_>],
        body: &[u8],
        digest: bool,
        depth: usize,
    ) -> Result<(), ClassifyError> {
        let content_type = single(fields, "content-type")?;
        let media = match content_type {
            Some(v) => parse_media_type(v)?,
            None if digest => default_type("message", "rfc822"),
            None => default_type("text", "plain"),
        };
        let encoding = transfer_encoding(fields)?;
        let disposition_value = single(fields, "content-disposition")?;
        let disposition = disposition_value.map(parse_disposition).transpose()?;
        if media.ty == "multipart" {
            return self.multipart(&media, encoding, body, depth);
        }
        let size = decoded_len(body, encoding)?;
        let name = match (&disposition, disposition_value, content_type) {
            (Some(d), Some(raw), _) if d.has_param("filename") => {
                Some(decoded_param(raw, "filename"))
            }
            (_, _, Some(raw)) if media.has_param("name") => Some(decoded_param(raw, "name")),
            _ => None,
        };
        let is_attachment = disposition.as_ref().is_some_and(|d| d.ty == "attachment");
        if name.is_some() || media.ty != "text" || is_attachment {
            self.list(name.unwrap_or_default(), &media, size)?;
        } else if self.preview.is_none() && media.is("text", "plain") {
            self.preview = preview(body, encoding, media.param("charset"));
        }
        let is_message =
            media.ty == "message" && matches!(media.subtype.as_str(), "rfc822" | "global");
        if is_message && encoding == TransferEncoding::Identity {
            if depth >= MAX_DEPTH {
                return Err(bad(format!(
                    "the message nests deeper than {MAX_DEPTH} levels"
                )));
            }
            let (inner, inner_body) = split_header(body)?;
            self.walk(&inner, inner_body, false, depth + 1)?;
        }
        Ok(())
    }

    /// Lists one attachment.
    fn list(&mut self, name: String, media: &MediaType, size: usize) -> Result<(), ClassifyError> {
        if self.attachments.len() >= MAX_ATTACHMENTS {
            return Err(bad(format!(
                "the message has more than {MAX_ATTACHMENTS} attachments"
            )));
        }
        let mut a = Map::new();
        a.insert("name".into(), Value::String(name));
        a.insert(
            "type".into(),
            Value::String(format!("{}/{}", media.ty, media.subtype)),
        );
        a.insert("size".into(), Value::from(size));
        self.attachments.push(Value::Object(a));
        Ok(())
    }

    fn multipart(
        &mut self,
        media: &MediaType,
        encoding: TransferEncoding,
        body: &[u8],
        depth: usize,
    ) -> Result<(), ClassifyError> {
        if depth >= MAX_DEPTH {
            return Err(bad(format!(
                "the message nests deeper than {MAX_DEPTH} levels"
            )));
        }
        if encoding != TransferEncoding::Identity {
            return Err(bad(
                "a multipart has a base64 or quoted-printable transfer encoding",
            ));
        }
        let boundary = media
            .param("boundary")
            .ok_or_else(|| bad("a multipart Content-Type has no boundary"))?;
        let digest = media.subtype == "digest";
        for part in split_multipart(body, boundary)? {
            let (fields, part_body) = split_header(part)?;
            self.walk(&fields, part_body, digest, depth + 1)?;
        }
        Ok(())
    }
}

fn default_type(ty: &str, subtype: &str) -> MediaType {
    MediaType {
        ty: ty.into(),
        subtype: subtype.into(),
        params: Vec::new(),
    }
}

/// A file name parameter decoded by `mail-parser` (RFC 2231 continuations and charsets, RFC 2047
/// encoded words).
fn decoded_param(raw: &str, name: &str) -> String {
    let text = format!("{raw}\n");
    let value = match MessageStream::new(text.as_bytes()).parse_content_type() {
        HeaderValue::ContentType(ct) => ct.attribute(name).map(str::to_string),
        _ => None,
    };
    let value = value.unwrap_or_default();
    if !value.contains("=?") {
        return value;
    }
    let text = format!("{value}\n");
    match MessageStream::new(text.as_bytes()).parse_unstructured() {
        HeaderValue::Text(t) => t.into_owned(),
        _ => value,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ok(message: &str) -> Map<String, Value> {
        match extract(message.as_bytes()) {
            Ok(p) => p,
            Err(e) => panic!("refused: {e}\n{message}"),
        }
    }

    fn err(message: &str) -> String {
        match extract(message.as_bytes()) {
            Ok(p) => panic!("accepted: {p:?}\n{message}"),
            Err(ClassifyError::Malformed(e)) => e,
        }
    }

    /// Python: `EmailMessage()`, `set_content(...)`, To/From/Subject, `as_bytes()` (the Gmail
    /// API guide's example).
    const PYTHON_DOCS: &str = "Content-Type: text/plain; charset=\"utf-8\"\nContent-Transfer-Encoding: 7bit\nMIME-Version: 1.0\nTo: gduser1@workspacesamples.dev\nFrom: gduser2@workspacesamples.dev\nSubject: Automated draft\n\nThis is automated draft mail\n";

    #[test]
    fn the_preview_is_the_first_plain_text_part_decoded() {
        // base64 in ISO-8859-1, after an HTML alternative would come; an attachment first.
        let m = "From: a@x.com\r\nTo: b@y.com\r\nSubject: s\r\nContent-Type: multipart/mixed; boundary=B\r\n\r\n--B\r\nContent-Type: text/plain; charset=iso-8859-1\r\nContent-Disposition: attachment; filename=a.txt\r\n\r\nnot this\r\n--B\r\nContent-Type: text/plain; charset=iso-8859-1\r\nContent-Transfer-Encoding: base64\r\n\r\nUulzdW3pIDxiPg==\r\n--B\r\nContent-Type: text/plain\r\n\r\nnor this\r\n--B--\r\n";
        assert_eq!(ok(m)["body_preview"], json!("Résumé <b>"));
        // Quoted-printable, cut at PREVIEW_CHARS characters.
        let long = "é".repeat(PREVIEW_CHARS + 10);
        let qp: String = long
            .bytes()
            .map(|b| format!("={b:02X}"))
            .collect::<Vec<_>>()
            .chunks(20)
            .map(|c| c.concat())
            .collect::<Vec<_>>()
            .join("=\r\n");
        let m = format!(
            "From: a@x.com\r\nTo: b@y.com\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n{qp}\r\n"
        );
        let p = ok(&m);
        let preview = p["body_preview"].as_str().unwrap();
        assert_eq!(preview.chars().count(), PREVIEW_CHARS);
        assert!(preview.chars().all(|c| c == 'é'));
        // HTML only: no preview, and the message is still classified.
        let m = "From: a@x.com\r\nTo: b@y.com\r\nContent-Type: text/html\r\n\r\n<p>hi</p>\r\n";
        assert_eq!(ok(m)["body_preview"], json!(""));
    }

    #[test]
    fn python_email_message() {
        let p = ok(PYTHON_DOCS);
        assert_eq!(
            Value::Object(p),
            json!({
                "to": ["gduser1@workspacesamples.dev"],
                "cc": [],
                "bcc": [],
                "from": ["gduser2@workspacesamples.dev"],
                "recipients": ["gduser1@workspacesamples.dev"],
                "subject": "Automated draft",
                "attachments": [],
                "body_preview": "This is automated draft mail",
                "size": PYTHON_DOCS.len(),
            })
        );
    }

    #[test]
    fn folded_headers_encoded_subject_and_quoted_comma() {
        // Python folds a long To and an encoded-word Subject over two lines.
        let m = "From: Agent <agent@acme.com>\nTo: Person Number0 <p0@Example.COM>, Person Number1 <p1@Example.COM>,\n Person Number2 <p2@Example.COM>, Person Number3 <p3@Example.COM>\nCc: \"Smith, John\" <JS@Example.COM>\nSubject: =?utf-8?b?R3LDvMOfZSBhdXMgS8O2bG4g4oCTIMO8bsOvY8O2ZMOp?= subject that\n is long enough to be folded over lines\nContent-Type: text/plain; charset=\"utf-8\"\nContent-Transfer-Encoding: 7bit\nMIME-Version: 1.0\n\nhi\n";
        let p = ok(m);
        assert_eq!(
            p["to"],
            json!([
                "p0@example.com",
                "p1@example.com",
                "p2@example.com",
                "p3@example.com"
            ])
        );
        assert_eq!(p["cc"], json!(["js@example.com"]));
        assert_eq!(p["recipients"].as_array().map(Vec::len), Some(5));
        assert_eq!(
            p["subject"],
            json!("Grüße aus Köln – ünïcödé subject that is long enough to be folded over lines")
        );
    }

    #[test]
    fn to_folded_over_several_lines() {
        let m = "To: a@x.com,\r\n\tB <b@Y.com>,\r\n   \"Doe,\r\n Jane\" <jd@z.com>,\r\n team:\r\n c@w.com;\r\nSubject: f\r\n\r\nbody";
        assert_eq!(
            ok(m)["to"],
            json!(["a@x.com", "b@y.com", "jd@z.com", "c@w.com"])
        );
    }

    #[test]
    fn encoded_display_names() {
        let m = "From: =?utf-8?q?J=C3=B6rg_M=C3=BCller?= <jm@acme.com>\nTo: =?utf-8?q?Zo=C3=AB_=C3=9Cnal?= <zoe@Partner.example>,\n \"Smith, John\" <js@example.com>\nSubject: =?utf-8?q?R=C3=A9sum=C3=A9?=\nContent-Type: text/plain; charset=\"utf-8\"\nContent-Transfer-Encoding: 7bit\nMIME-Version: 1.0\n\nhi\n";
        let p = ok(m);
        assert_eq!(p["to"], json!(["zoe@partner.example", "js@example.com"]));
        assert_eq!(p["from"], json!(["jm@acme.com"]));
        assert_eq!(p["subject"], json!("Résumé"));
        // A display name that decodes to an address is still only a name.
        let m = "To: =?UTF-8?B?ZXZpbEBldmlsLmNvbQ==?= <good@acme.com>\n\nx";
        assert_eq!(ok(m)["to"], json!(["good@acme.com"]));
    }

    #[test]
    fn groups() {
        let m = "From: agent@acme.com\nTo: team: A <a@x.com>, b@y.com;\nBcc: undisclosed-recipients:;\nSubject: group\n\nhi\n";
        let p = ok(m);
        assert_eq!(p["to"], json!(["a@x.com", "b@y.com"]));
        assert_eq!(p["bcc"], json!([]));
        let p = ok("To: a@x.com, team: b@y.com, C <c@z.com>;, d@w.com\n\nx");
        assert_eq!(p["to"], json!(["a@x.com", "b@y.com", "c@z.com", "d@w.com"]));
    }

    #[test]
    fn repeated_headers_union_and_bcc() {
        let m = "To: a@x.com\nCc: B@Y.com\nTo: c@z.com, A@X.COM\nBcc: hidden@Evil.example\nBCC: also@evil.example\nSubject: s\n\nbody";
        let p = ok(m);
        assert_eq!(p["to"], json!(["a@x.com", "c@z.com", "a@x.com"]));
        assert_eq!(p["cc"], json!(["b@y.com"]));
        assert_eq!(
            p["bcc"],
            json!(["hidden@evil.example", "also@evil.example"])
        );
        assert_eq!(
            p["recipients"],
            json!([
                "a@x.com",
                "c@z.com",
                "b@y.com",
                "hidden@evil.example",
                "also@evil.example"
            ])
        );
    }

    #[test]
    fn comments_quotes_and_case() {
        for (to, want) in [
            ("\"Smith, John\" <JS@Example.COM>", vec!["js@example.com"]),
            ("\"john@acme.com\" <evil@evil.com>", vec!["evil@evil.com"]),
            ("a@b.com (John, \"x\" <e@v.il>)", vec!["a@b.com"]),
            ("John (c <e@v.il>) <good@acme.com>", vec!["good@acme.com"]),
            (
                "\"a\\\" <evil@x.com> \\\"b\" <good@acme.com>",
                vec!["good@acme.com"],
            ),
            ("John Q. Public <JQP@X.com>", vec!["jqp@x.com"]),
            ("< a@b.com >", vec!["a@b.com"]),
            ("a@b.com,,c@d.com,", vec!["a@b.com", "c@d.com"]),
            ("Ünïcode <Ü@BÜCHER.de>", vec!["ü@bücher.de"]),
            ("x@XN--BCHER-KVA.DE", vec!["x@xn--bcher-kva.de"]),
            ("", vec![]),
        ] {
            let m = format!("To: {to}\r\nSubject: t\r\n\r\nbody");
            assert_eq!(ok(&m)["to"], json!(want), "{to}");
        }
    }

    #[test]
    fn crlf_nodemailer_multipart_with_attachment() {
        let m = concat!(
            "Content-Type: multipart/mixed;\r\n boundary=\"--_NmP-2a3c6f7e8d9b0a1c-Part_1\"\r\n",
            "From: Sender Name <sender@example.com>\r\n",
            "To: recipient@example.com, \"Other, Person\" <other@Example.org>\r\n",
            "Subject: Report\r\n",
            "Message-ID: <a1b2c3@example.com>\r\n",
            "Date: Mon, 01 Jan 2024 00:00:00 +0000\r\n",
            "MIME-Version: 1.0\r\n",
            "\r\n",
            "----_NmP-2a3c6f7e8d9b0a1c-Part_1\r\n",
            "Content-Type: multipart/alternative;\r\n boundary=\"--_NmP-2a3c6f7e8d9b0a1c-Part_2\"\r\n",
            "\r\n",
            "----_NmP-2a3c6f7e8d9b0a1c-Part_2\r\n",
            "Content-Type: text/plain; charset=utf-8\r\n",
            "Content-Transfer-Encoding: 7bit\r\n",
            "\r\n",
            "Hello world\r\n",
            "----_NmP-2a3c6f7e8d9b0a1c-Part_2\r\n",
            "Content-Type: text/html; charset=utf-8\r\n",
            "Content-Transfer-Encoding: quoted-printable\r\n",
            "\r\n",
            "<p>Hello =C3=A9 world</p>\r\n",
            "----_NmP-2a3c6f7e8d9b0a1c-Part_2--\r\n",
            "\r\n",
            "----_NmP-2a3c6f7e8d9b0a1c-Part_1\r\n",
            "Content-Type: application/pdf; name=report.pdf\r\n",
            "Content-Transfer-Encoding: base64\r\n",
            "Content-Disposition: attachment; filename=report.pdf\r\n",
            "\r\n",
            "JVBERi0xLjQKJcfsj6IK\r\n",
            "----_NmP-2a3c6f7e8d9b0a1c-Part_1\r\n",
            "Content-Type: image/png\r\n",
            "Content-Transfer-Encoding: base64\r\n",
            "Content-Id: <logo@example.com>\r\n",
            "Content-Disposition: inline\r\n",
            "\r\n",
            "iVBORw0KGgo=\r\n",
            "----_NmP-2a3c6f7e8d9b0a1c-Part_1--\r\n",
        );
        let p = ok(m);
        assert_eq!(
            p["to"],
            json!(["recipient@example.com", "other@example.org"])
        );
        assert_eq!(
            p["attachments"],
            json!([
                {"name": "report.pdf", "type": "application/pdf", "size": 15},
                {"name": "", "type": "image/png", "size": 8},
            ])
        );
    }

    #[test]
    fn python_attachments_rfc2231_name() {
        let m = "From: agent@acme.com\nTo: bob@acme.com\nSubject: report\nMIME-Version: 1.0\nContent-Type: multipart/mixed; boundary=\"===============8316168234346098437==\"\n\n--===============8316168234346098437==\nContent-Type: text/plain; charset=\"utf-8\"\nContent-Transfer-Encoding: 7bit\n\nsee attached\n\n--===============8316168234346098437==\nContent-Type: application/pdf\nContent-Transfer-Encoding: base64\nContent-Disposition: attachment; filename=\"report.pdf\"\nMIME-Version: 1.0\n\nJVBERi0xLjQKAAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8gISIjJCUmJygpKissLS4v\nMDEyMzQ1Njc4OTo7PD0+P0BBQkNERUZHSElKS0xNTk9QUVJTVFVWV1hZWltcXV5fYGFiY2RlZmdo\naWprbG1ub3BxcnN0dXZ3eHl6e3x9fn+AgYKDhIWGh4iJiouMjY6PkJGSk5SVlpeYmZqbnJ2en6Ch\noqOkpaanqKmqq6ytrq+wsbKztLW2t7i5uru8vb6/wMHCw8TFxsfIycrLzM3Oz9DR0tPU1dbX2Nna\n29zd3t/g4eLj5OXm5+jp6uvs7e7v8PHy8/T19vf4+fr7/P3+/w==\n\n--===============8316168234346098437==\nContent-Type: text/csv; charset=\"utf-8\"\nContent-Transfer-Encoding: 7bit\nContent-Disposition: attachment; filename*=utf-8''donn%C3%A9es.csv\nMIME-Version: 1.0\n\na,b\n1,2\n\n--===============8316168234346098437==--\n";
        let p = ok(m);
        assert_eq!(
            p["attachments"],
            json!([
                {"name": "report.pdf", "type": "application/pdf", "size": 265},
                {"name": "données.csv", "type": "text/csv", "size": 8},
            ])
        );
    }

    #[test]
    fn attached_message_is_listed_and_read() {
        let m = "To: a@x.com\nContent-Type: multipart/mixed; boundary=b1\n\n--b1\n\nbody\n--b1\nContent-Type: message/rfc822\n\nTo: other@y.com\nContent-Type: application/zip; name=\"=?UTF-8?B?w6kuemlw?=\"\n\nPK\n--b1--\n";
        let p = ok(m);
        assert_eq!(
            p["to"],
            json!(["a@x.com"]),
            "inner recipients are not recipients"
        );
        assert_eq!(
            p["attachments"],
            json!([
                {"name": "", "type": "message/rfc822", "size": 78},
                {"name": "é.zip", "type": "application/zip", "size": 2},
            ])
        );
    }

    #[test]
    fn nesting_limit() {
        let nested = |levels: usize| {
            let mut m = String::from("To: a@x.com\n");
            for i in 0..levels {
                m.push_str(&format!(
                    "Content-Type: multipart/mixed; boundary=b{i}x\n\n--b{i}x\n"
                ));
            }
            m.push_str("\nleaf\n");
            for i in (0..levels).rev() {
                m.push_str(&format!("--b{i}x--\n"));
            }
            m
        };
        ok(&nested(MAX_DEPTH));
        assert!(err(&nested(MAX_DEPTH + 1)).contains("deeper"));
    }

    #[test]
    fn header_block_evasions() {
        for (what, m) in [
            ("no colon", "To: a@x.com\ngarbage line\n\nbody"),
            ("space in name", "To : evil@x.com\n\nbody"),
            ("folded first line", " To: a@x.com\n\nbody"),
            (
                "blank continuation",
                "To: a@x.com\n \nBcc: evil@x.com\n\nbody",
            ),
            ("mixed endings", "To: a@x.com\r\nBcc: evil@x.com\n\nbody"),
            ("bare CR", "To: a@x.com\rBcc: evil@x.com\n\nbody"),
            ("NUL", "To: a@x.com\0\n\nbody"),
            (
                "mbox line",
                "From agent Mon Jan  1 00:00:00 2024\nTo: a@x.com\n\nx",
            ),
            ("empty", ""),
            ("no headers", "\nbody"),
            ("two subjects", "To: a@x.com\nSubject: a\nSubject: b\n\nx"),
            ("resent", "To: a@x.com\nResent-To: evil@x.com\n\nx"),
        ] {
            err(m);
            let _ = what;
        }
        assert!(matches!(
            extract(b"To: a@x.com\nSubject: \xff\n\nx"),
            Err(ClassifyError::Malformed(_))
        ));
    }

    #[test]
    fn address_evasions() {
        for to in [
            "garbage",
            "John Smith",
            "(only a comment)",
            ",",
            "a@x.com b@y.com",
            "a@x.com; b@y.com",
            "john@acme.com <evil@evil.com>",
            "a @x.com",
            "a@ x.com",
            "a@x.com.",
            "a..b@x.com",
            "a@x..com",
            "\"evil@evil.com\"@acme.com",
            "x@[1.2.3.4]",
            "<@relay.com:a@x.com>",
            "=?UTF-8?B?ZXZpbEBldmlsLmNvbQ==?=",
            "=?utf-8?q?evil?=@acme.com",
            "a@acme\u{200b}.com",
            "a@acme\u{ff0e}com",
            "a@\u{212a}roger.com",
            "team: a@x.com",
            "team: inner: a@x.com;;",
            "a@x.com (unclosed",
            "\"unclosed <a@x.com>",
            "a@x.com)",
            "<a@x.com",
            "a@b@c.com",
            "Smith, John <js@x.com>",
            ": a@x.com;",
        ] {
            let m = format!("To: {to}\nSubject: t\n\nbody");
            err(&m);
        }
        for header in ["Cc", "Bcc", "From"] {
            err(&format!("To: a@x.com\n{header}: garbage\n\nx"));
        }
    }

    #[test]
    fn mime_evasions() {
        let cases = [
            ("no boundary", "To: a@x.com\nContent-Type: multipart/mixed\n\n--b\n\nx\n--b--\n".to_string()),
            ("no close", "To: a@x.com\nContent-Type: multipart/mixed; boundary=b\n\n--b\n\nx\n".to_string()),
            ("prefix line", "To: a@x.com\nContent-Type: multipart/mixed; boundary=b\n\n--b\n\nx\n--bb\n--b--\n".to_string()),
            ("after close", "To: a@x.com\nContent-Type: multipart/mixed; boundary=b\n\n--b\n\nx\n--b--\n--b\n\ny\n--b--\n".to_string()),
            ("two content types", "To: a@x.com\nContent-Type: text/plain\nContent-Type: multipart/mixed; boundary=b\n\nx".to_string()),
            ("repeated param", "To: a@x.com\nContent-Type: multipart/mixed; boundary=a; boundary=b\n\n--a\n\nx\n--a--\n".to_string()),
            ("comment in type", "To: a@x.com\nContent-Type: multipart/mixed (x); boundary=b\n\n--b\n\nx\n--b--\n".to_string()),
            ("encoded multipart", "To: a@x.com\nContent-Type: multipart/mixed; boundary=b\nContent-Transfer-Encoding: base64\n\n--b\n\nx\n--b--\n".to_string()),
            ("bad base64", "To: a@x.com\nContent-Type: application/pdf\nContent-Transfer-Encoding: base64\n\n!!!!\n".to_string()),
            ("unknown encoding", "To: a@x.com\nContent-Transfer-Encoding: x-uuencode\n\nx".to_string()),
            ("bad part header", "To: a@x.com\nContent-Type: multipart/mixed; boundary=b\n\n--b\nnot a header\n\nx\n--b--\n".to_string()),
            ("too big", format!("To: a@x.com\n\n{}", "x".repeat(MAX_MESSAGE_BYTES))),
        ];
        for (what, m) in cases {
            assert!(extract(m.as_bytes()).is_err(), "{what} accepted");
        }
    }

    #[test]
    fn nested_boundary_that_extends_the_outer_one_is_refused() {
        let m = "To: a@x.com\nContent-Type: multipart/mixed; boundary=b1\n\n--b1\nContent-Type: multipart/mixed; boundary=b10\n\n--b10\n\nx\n--b10--\n--b1--\n";
        assert!(err(m).contains("no delimiter"));
    }

    #[test]
    fn multipart_split() {
        let body = b"preamble\r\n--b\r\nA: 1\r\n\r\none\r\n--b \r\n\r\ntwo\r\n--b--\r\nepilogue";
        assert_eq!(
            split_multipart(body, "b").ok(),
            Some(vec![&b"A: 1\r\n\r\none"[..], &b"\r\ntwo"[..]])
        );
        assert!(split_multipart(b"--b\n\nx\n--b--", "").is_err());
        assert!(split_multipart(b"--b\n\nx\n", "b").is_err());
    }

    #[test]
    fn quoted_printable_sizes() {
        assert_eq!(quoted_printable_len(b"a=3Db=\r\nc\r\n"), 6);
        assert_eq!(quoted_printable_len(b"caf=C3=A9   \n"), 6);
        assert_eq!(quoted_printable_len(b"=ZZ"), 3);
    }

    #[test]
    fn media_types() {
        let t = parse_media_type(" multipart/Related; boundary=\"a b\";type=\"message/rfc822\"");
        assert_eq!(
            t.ok(),
            Some(MediaType {
                ty: "multipart".into(),
                subtype: "related".into(),
                params: vec![
                    ("boundary".into(), "a b".into()),
                    ("type".into(), "message/rfc822".into())
                ],
            })
        );
        for bad in [
            "multipart",
            "multipart/",
            "/x",
            "a/b; c",
            "a/b; c=",
            "a/b c",
            "a/b; c=d e",
        ] {
            assert!(parse_media_type(bad).is_err(), "{bad}");
        }
    }
}
