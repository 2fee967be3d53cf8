//! Gmail message params: finds the RFC 5322 message that a send, insert, import or draft request
//! carries, in whichever body shape it came (wire-formats.md sections 1.4 and 1.6), and adds
//! what [`mime::extract`] reads from it.
//!
//! - `raw`: `/gmail/v1/...` with a JSON Message `{"raw": base64url}` or, for drafts, a Draft
//!   `{"id": .., "message": {"raw": ..}}`.
//! - `media`: `/upload/gmail/v1/...?uploadType=media`; the body is the message.
//! - `multipart`: `/upload/gmail/v1/...?uploadType=multipart`; a multipart/related body of JSON
//!   metadata, then the message.
//! - `resumable`: `/resumable/upload/...`, or `/upload/...?uploadType=resumable`; JSON metadata
//!   only: the POST starts a session and the message follows in it (`gmail_resumable`).
//!
//! A message found adds `to`, `cc`, `bcc`, `recipients`, `from`, `subject`, `attachments`,
//! `size` and `recipients_known: true`. A resumable start adds `resumable: "start"` and
//! `recipients_known: false` (the message comes later, in the session). `drafts.send` with only a
//! draft `id` adds `id`, `body_shape: "none"` and `recipients_known: false`: the recipients are
//! in the stored draft, not in the request. Every other request of these actions without a
//! message is refused, as Gmail refuses it: the gate never lets through a send it cannot read.
//!
//! Refused as well, since Gmail could read them differently from the gate: upload parameters
//! (`uploadType`, `upload_protocol`, `upload_id`) that do not match the route or each other,
//! `X-Goog-Upload-*` headers, a resumable session's data requests (`upload_id`: the session, not
//! the path, decides what they do), a JSON body that is not `application/json`, metadata or
//! JSON bodies that carry a second copy of the message (`raw` in upload metadata, `payload`),
//! and a multipart/related body without exactly a JSON part and a message part.

use std::borrow::Cow;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use http::HeaderMap;
use serde_json::{Map, Value};

use super::mime::{self, Field};
use super::routes::{Kind, Loc, Route};
use super::{ClassifyError, Request, canonical};

/// The resource an action's body holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Resource {
    /// A Message: `{"raw": ...}`.
    Message,
    /// A Draft: `{"id": ..., "message": {"raw": ...}}`.
    Draft,
}

/// An action that carries a message.
#[derive(Debug, Clone, Copy)]
struct Target {
    action: &'static str,
    resource: Resource,
    /// A draft id may stand in for the message (`drafts.send`).
    id_suffices: bool,
}

const fn target(action: &'static str, resource: Resource, id_suffices: bool) -> Target {
    Target {
        action,
        resource,
        id_suffices,
    }
}

const TARGETS: [Target; 6] = [
    target("gmail.users.messages.send", Resource::Message, false),
    target("gmail.users.messages.insert", Resource::Message, false),
    target("gmail.users.messages.import", Resource::Message, false),
    target("gmail.users.drafts.create", Resource::Draft, false),
    target("gmail.users.drafts.update", Resource::Draft, false),
    target("gmail.users.drafts.send", Resource::Draft, true),
];

/// How the request carries the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shape {
    Raw,
    Media,
    Multipart,
    ResumableStart,
}

impl Shape {
    fn name(self) -> &'static str {
        match self {
            Shape::Raw => "raw",
            Shape::Media => "media",
            Shape::Multipart => "multipart",
            Shape::ResumableStart => "resumable",
        }
    }
}

/// What a request body carried.
#[derive(Debug, Default)]
struct Carried<'a> {
    /// The RFC 5322 message.
    message: Option<Cow<'a, [u8]>>,
    /// A draft's `id`, from the body or the upload metadata.
    draft_id: Option<String>,
    /// Upload metadata (the JSON part of a multipart upload, or a resumable start's body).
    metadata: Map<String, Value>,
}

fn bad(msg: impl Into<String>) -> ClassifyError {
    ClassifyError::Malformed(msg.into())
}

/// Adds the message params of a matched Gmail route to `params` (see the module docs); other
/// actions are left as they are. Path params (`userId`, a draft's `id`) are never overwritten.
/// Whether `message_params` reads this route's body (the catalog then leaves it alone).
pub fn reads_body(route: &Route) -> bool {
    TARGETS.iter().any(|t| t.action == route.action)
}

pub fn message_params(
    route: &Route,
    req: &Request<'_>,
    params: &mut Map<String, Value>,
) -> Result<(), ClassifyError> {
    let Some(&target) = TARGETS.iter().find(|t| t.action == route.action) else {
        return Ok(());
    };
    refuse_upload_headers(req.headers)?;
    let shape = shape(route.kind, req.query)?;
    let carried = match shape {
        Shape::Raw => json_body(req, target.resource)?,
        Shape::Media => Carried {
            message: Some(Cow::Borrowed(req.body)),
            ..Carried::default()
        },
        Shape::Multipart => multipart_body(req, target.resource)?,
        Shape::ResumableStart => metadata_body(req, target.resource)?,
    };
    let found = read_message(target, shape, &carried)?;
    metadata_params(route, &carried.metadata, params);
    for (key, value) in found {
        let is_path = route
            .params
            .iter()
            .any(|p| p.loc == Loc::Path && p.name == key);
        if !is_path {
            params.insert(key, value);
        }
    }
    Ok(())
}

/// The params of what the request carried: the message's, or why the recipients are unknown.
fn read_message(
    target: Target,
    shape: Shape,
    carried: &Carried<'_>,
) -> Result<Map<String, Value>, ClassifyError> {
    let mut found = Map::new();
    found.insert("body_shape".into(), shape.name().into());
    match (&carried.message, &carried.draft_id) {
        _ if shape == Shape::ResumableStart => {
            found.insert("resumable".into(), "start".into());
            found.insert("recipients_known".into(), false.into());
        }
        (Some(message), _) => {
            found.extend(mime::extract(message)?);
            found.insert("recipients_known".into(), true.into());
        }
        (None, Some(_)) if target.id_suffices => {
            found.insert("body_shape".into(), "none".into());
            found.insert("recipients_known".into(), false.into());
        }
        (None, _) if target.id_suffices => {
            return Err(bad(format!(
                "{} needs a draft id or a message",
                target.action
            )));
        }
        (None, _) => {
            let field = match target.resource {
                Resource::Message => "raw",
                Resource::Draft => "message.raw",
            };
            return Err(bad(format!(
                "{} carries no message ({field})",
                target.action
            )));
        }
    }
    if let Some(id) = carried.draft_id.as_ref().filter(|_| target.id_suffices) {
        found.insert("id".into(), Value::String(id.clone()));
    }
    Ok(found)
}

/// Google's newer upload protocol headers choose the upload shape too: refused.
fn refuse_upload_headers(headers: &HeaderMap) -> Result<(), ClassifyError> {
    match headers
        .keys()
        .find(|k| k.as_str().starts_with("x-goog-upload-"))
    {
        Some(name) => Err(bad(format!(
            "the header {name} is not accepted on a Gmail message upload"
        ))),
        None => Ok(()),
    }
}

/// The one value of a query parameter; repeated is refused.
fn query_one<'q>(
    query: &'q [(String, String)],
    name: &str,
) -> Result<Option<&'q str>, ClassifyError> {
    let mut values = query
        .iter()
        .filter(|(k, _)| k == name)
        .map(|(_, v)| v.as_str());
    let first = values.next();
    if values.next().is_some() {
        return Err(bad(format!(
            "the query parameter {name:?} is given more than once"
        )));
    }
    Ok(first)
}

/// The body shape, from the route kind and the upload parameters, which must agree.
fn shape(kind: Kind, query: &[(String, String)]) -> Result<Shape, ClassifyError> {
    let upload_type = query_one(query, "uploadType")?;
    let protocol = query_one(query, "upload_protocol")?;
    if query_one(query, "upload_id")?.is_some() {
        return Err(bad(
            "a resumable upload's data request (upload_id) is decided by its session, not its path",
        ));
    }
    let shape = match (kind, upload_type) {
        (Kind::Plain, None) => Shape::Raw,
        (Kind::Plain, Some(_)) => {
            return Err(bad("uploadType is only accepted on /upload/ paths"));
        }
        (Kind::UploadSimple, Some("media")) => Shape::Media,
        (Kind::UploadSimple, Some("multipart")) => Shape::Multipart,
        (Kind::UploadSimple | Kind::UploadResumable, Some("resumable"))
        | (Kind::UploadResumable, None) => Shape::ResumableStart,
        (Kind::UploadSimple, None) => {
            return Err(bad(
                "an upload needs uploadType (media, multipart or resumable)",
            ));
        }
        (_, Some(other)) => {
            return Err(bad(format!("uploadType {other:?} is not accepted here")));
        }
    };
    let expected = match shape {
        Shape::Raw => None,
        Shape::Media => Some("raw"),
        Shape::Multipart => Some("multipart"),
        Shape::ResumableStart => Some("resumable"),
    };
    match protocol {
        Some(p) if Some(p) != expected => Err(bad(format!(
            "upload_protocol {p:?} does not match the upload"
        ))),
        _ => Ok(shape),
    }
}

/// The one value of a request header, as text; repeated is refused.
fn header_one<'h>(headers: &'h HeaderMap, name: &str) -> Result<Option<&'h str>, ClassifyError> {
    let mut values = headers.get_all(name).iter();
    let first = values.next();
    if values.next().is_some() {
        return Err(bad(format!("the {name} header is given more than once")));
    }
    first
        .map(|v| {
            v.to_str()
                .map_err(|_| bad(format!("the {name} header is not ASCII")))
        })
        .transpose()
}

/// Parses a JSON object body (or metadata part), refusing a declared type other than JSON.
fn json_object(
    content_type: Option<&str>,
    body: &[u8],
) -> Result<Map<String, Value>, ClassifyError> {
    if let Some(ct) = content_type {
        if !mime::parse_media_type(ct)?.is("application", "json") {
            return Err(bad(format!(
                "a JSON body is declared as {ct:?}, not application/json"
            )));
        }
    }
    if body.trim_ascii().is_empty() {
        return Ok(Map::new());
    }
    match canonical::parse_json(body)? {
        Value::Object(map) => Ok(map),
        _ => Err(bad("the JSON body is not an object")),
    }
}

/// A plain JSON Message or Draft.
fn json_body<'a>(req: &Request<'a>, resource: Resource) -> Result<Carried<'a>, ClassifyError> {
    let mut body = json_object(header_one(req.headers, "content-type")?, req.body)?;
    let message = match resource {
        Resource::Message => message_raw(&body)?,
        Resource::Draft => match body.get("message") {
            None => None,
            Some(Value::Object(m)) => message_raw(m)?,
            Some(_) => return Err(bad("the draft's message is not an object")),
        },
    };
    let draft_id = draft_id(&body, resource)?;
    // The rest of the body lends its described fields to the params (the catalog leaves the
    // body of these routes to this module, so it is parsed once); the message itself is
    // described by the message params, not copied.
    body.remove("raw");
    body.remove("message");
    Ok(Carried {
        message: message.map(Cow::Owned),
        draft_id,
        metadata: body,
    })
}

/// A draft's `id`, which must be a string.
fn draft_id(
    body: &Map<String, Value>,
    resource: Resource,
) -> Result<Option<String>, ClassifyError> {
    match (resource, body.get("id")) {
        (Resource::Draft, Some(Value::String(id))) => Ok(Some(id.clone())),
        (Resource::Draft, Some(_)) => Err(bad("the draft id is not a string")),
        _ => Ok(None),
    }
}

/// The decoded `raw` of a Message object. A `payload` (the parsed form Gmail returns) is refused:
/// the message must have one form only.
fn message_raw(message: &Map<String, Value>) -> Result<Option<Vec<u8>>, ClassifyError> {
    if message.contains_key("payload") {
        return Err(bad(
            "a message payload is not accepted; send the message as raw",
        ));
    }
    match message.get("raw") {
        None => Ok(None),
        Some(Value::String(raw)) => decode_raw(raw).map(Some),
        Some(_) => Err(bad("the message raw is not a string")),
    }
}

/// Decodes `raw`: base64url with or without padding. The standard alphabet's `+` and `/` are
/// read as `-` and `_` (Google's decoder accepts both); whitespace and any other byte, padding
/// anywhere but the end, and a wrong padded length are refused.
fn decode_raw(raw: &str) -> Result<Vec<u8>, ClassifyError> {
    let unpadded = raw.trim_end_matches('=');
    let padding = raw.len() - unpadded.len();
    if padding > 2 || (padding > 0 && raw.len() % 4 != 0) {
        return Err(bad("the message raw has invalid base64 padding"));
    }
    // Google also reads the standard alphabet; decode it as such, without rewriting the text
    // (a mix of both alphabets is refused by either engine).
    let engine = if memchr::memchr2(b'+', b'/', unpadded.as_bytes()).is_some() {
        &base64::engine::general_purpose::STANDARD_NO_PAD
    } else {
        &URL_SAFE_NO_PAD
    };
    engine
        .decode(unpadded)
        .map_err(|e| bad(format!("the message raw is not valid base64url: {e}")))
}

/// Checks upload metadata holds no message of its own (the message is the media).
fn check_metadata(metadata: &Map<String, Value>, resource: Resource) -> Result<(), ClassifyError> {
    let message = match resource {
        Resource::Message => Some(metadata),
        Resource::Draft => match metadata.get("message") {
            None => None,
            Some(Value::Object(m)) => Some(m),
            Some(_) => return Err(bad("the draft's message is not an object")),
        },
    };
    if let Some(m) = message {
        if m.contains_key("raw") || m.contains_key("payload") {
            return Err(bad(
                "upload metadata must not carry the message (raw or payload)",
            ));
        }
    }
    Ok(())
}

/// A resumable start: metadata only.
fn metadata_body<'a>(req: &Request<'a>, resource: Resource) -> Result<Carried<'a>, ClassifyError> {
    let metadata = json_object(header_one(req.headers, "content-type")?, req.body)?;
    check_metadata(&metadata, resource)?;
    Ok(Carried {
        message: None,
        draft_id: draft_id(&metadata, resource)?,
        metadata,
    })
}

/// `uploadType=multipart`: a multipart/related body of exactly two parts, JSON metadata and the
/// message (of any declared type, 7bit, 8bit or binary). Split here with [`mime::split_multipart`]
/// (RFC 2046, strict), not with `mail-parser`.
fn multipart_body<'a>(req: &Request<'a>, resource: Resource) -> Result<Carried<'a>, ClassifyError> {
    let ct = header_one(req.headers, "content-type")?
        .ok_or_else(|| bad("a multipart upload has no Content-Type"))?;
    let media = mime::parse_media_type(ct)?;
    if !media.is("multipart", "related") {
        return Err(bad(format!(
            "a multipart upload must be multipart/related, not {}/{}",
            media.ty, media.subtype
        )));
    }
    let boundary = media
        .param("boundary")
        .ok_or_else(|| bad("the multipart upload's Content-Type has no boundary"))?;
    let parts = mime::split_multipart(req.body, boundary)?;
    let [meta, message] = parts.as_slice() else {
        return Err(bad(format!(
            "a multipart upload has {} parts, not 2 (metadata and message)",
            parts.len()
        )));
    };
    let (meta_fields, meta_body) = mime::split_header(meta)?;
    let meta_type = mime::single(&meta_fields, "content-type")?
        .ok_or_else(|| bad("the multipart upload's first part has no Content-Type"))?;
    let metadata = json_object(Some(meta_type), meta_body)?;
    check_metadata(&metadata, resource)?;
    let (message_fields, message_body) = mime::split_header(message)?;
    check_identity(&message_fields)?;
    Ok(Carried {
        message: Some(Cow::Borrowed(message_body)),
        draft_id: draft_id(&metadata, resource)?,
        metadata,
    })
}

/// The message part of an upload must be sent as is.
fn check_identity(fields: &[Field<'_>]) -> Result<(), ClassifyError> {
    match mime::single(fields, "content-transfer-encoding")? {
        None => Ok(()),
        Some(v) if ["7bit", "8bit", "binary"].contains(&v.trim().to_ascii_lowercase().as_str()) => {
            Ok(())
        }
        Some(v) => Err(bad(format!(
            "the uploaded message has the transfer encoding {:?}; send it as binary",
            v.trim()
        ))),
    }
}

/// Adds the described top-level fields of upload metadata (`threadId`, `labelIds`, a draft's
/// `id` and `message`) as the catalog adds those of a JSON body: by name, or `body_<name>` when a
/// path param has the name.
fn metadata_params(route: &Route, metadata: &Map<String, Value>, params: &mut Map<String, Value>) {
    for p in route.params.iter().filter(|p| p.loc == Loc::Body) {
        if let Some(v) = metadata.get(p.name) {
            let key = if params.contains_key(p.name) {
                format!("body_{}", p.name)
            } else {
                p.name.to_string()
            };
            params.insert(key, v.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::actions::generated::gmail::ROUTES;
    use serde_json::json;

    const HOST: &str = "gmail.googleapis.com";

    /// Python's `EmailMessage` for the Gmail guide, as `as_bytes()` writes it.
    const PYTHON_MESSAGE: &str = "Content-Type: text/plain; charset=\"utf-8\"\nContent-Transfer-Encoding: 7bit\nMIME-Version: 1.0\nTo: gduser1@workspacesamples.dev\nFrom: gduser2@workspacesamples.dev\nSubject: Automated draft\n\nThis is automated draft mail\n";
    /// `base64.urlsafe_b64encode(message.as_bytes()).decode()` of it.
    const PYTHON_RAW: &str = "Q29udGVudC1UeXBlOiB0ZXh0L3BsYWluOyBjaGFyc2V0PSJ1dGYtOCIKQ29udGVudC1UcmFuc2Zlci1FbmNvZGluZzogN2JpdApNSU1FLVZlcnNpb246IDEuMApUbzogZ2R1c2VyMUB3b3Jrc3BhY2VzYW1wbGVzLmRldgpGcm9tOiBnZHVzZXIyQHdvcmtzcGFjZXNhbXBsZXMuZGV2ClN1YmplY3Q6IEF1dG9tYXRlZCBkcmFmdAoKVGhpcyBpcyBhdXRvbWF0ZWQgZHJhZnQgbWFpbAo=";

    fn route(action: &str, kind: Kind) -> &'static Route {
        match ROUTES.iter().find(|r| r.action == action && r.kind == kind) {
            Some(r) => r,
            None => panic!("no route {action} {kind:?}"),
        }
    }

    struct Call<'a> {
        action: &'a str,
        kind: Kind,
        query: Vec<(String, String)>,
        headers: Vec<(&'static str, String)>,
        body: Vec<u8>,
        params: Map<String, Value>,
    }

    fn call(action: &str, kind: Kind) -> Call<'_> {
        let mut params = Map::new();
        params.insert("userId".into(), json!("me"));
        Call {
            action,
            kind,
            query: Vec::new(),
            headers: Vec::new(),
            body: Vec::new(),
            params,
        }
    }

    impl Call<'_> {
        fn query(mut self, k: &str, v: &str) -> Self {
            self.query.push((k.into(), v.into()));
            self
        }
        fn header(mut self, k: &'static str, v: &str) -> Self {
            self.headers.push((k, v.into()));
            self
        }
        fn json(self, body: Value) -> Self {
            self.header("content-type", "application/json")
                .body(body.to_string())
        }
        fn body(mut self, body: impl Into<Vec<u8>>) -> Self {
            self.body = body.into();
            self
        }
        fn run(self) -> Result<Map<String, Value>, ClassifyError> {
            let r = route(self.action, self.kind);
            let mut headers = HeaderMap::new();
            for (k, v) in &self.headers {
                match http::HeaderValue::from_str(v) {
                    Ok(v) => {
                        headers.append(*k, v);
                    }
                    Err(e) => panic!("{e}"),
                }
            }
            let req = Request {
                host: HOST,
                method: r.method,
                path: r.template,
                query: &self.query,
                headers: &headers,
                body: &self.body,
            };
            let mut params = self.params;
            message_params(r, &req, &mut params).map(|()| params)
        }
        fn ok(self) -> Map<String, Value> {
            match self.run() {
                Ok(p) => p,
                Err(e) => panic!("refused: {e}"),
            }
        }
        fn err(self) -> String {
            match self.run() {
                Ok(p) => panic!("accepted: {p:?}"),
                Err(ClassifyError::Malformed(e)) => e,
            }
        }
    }

    fn python_params(shape: &str) -> Value {
        json!({
            "userId": "me",
            "body_shape": shape,
            "to": ["gduser1@workspacesamples.dev"],
            "cc": [],
            "bcc": [],
            "recipients": ["gduser1@workspacesamples.dev"],
            "from": ["gduser2@workspacesamples.dev"],
            "subject": "Automated draft",
            "attachments": [],
            "body_preview": "This is automated draft mail",
            "size": PYTHON_MESSAGE.len(),
            "recipients_known": true,
        })
    }

    #[test]
    fn send_raw_python_client() {
        let p = call("gmail.users.messages.send", Kind::Plain)
            .json(json!({"raw": PYTHON_RAW}))
            .ok();
        assert_eq!(Value::Object(p), python_params("raw"));
        // Without padding, and with the standard alphabet, the same message.
        for raw in [
            PYTHON_RAW.trim_end_matches('=').to_string(),
            base64::engine::general_purpose::STANDARD.encode(PYTHON_MESSAGE),
        ] {
            let p = call("gmail.users.messages.send", Kind::Plain)
                .json(json!({"raw": raw, "threadId": "t1"}))
                .ok();
            assert_eq!(p["to"], json!(["gduser1@workspacesamples.dev"]));
        }
    }

    #[test]
    fn insert_and_import_raw() {
        for action in ["gmail.users.messages.insert", "gmail.users.messages.import"] {
            let p = call(action, Kind::Plain)
                .json(json!({"raw": PYTHON_RAW, "labelIds": ["INBOX"]}))
                .ok();
            assert_eq!(p["recipients"], json!(["gduser1@workspacesamples.dev"]));
        }
    }

    #[test]
    fn other_actions_untouched() {
        let mut params = Map::new();
        let r = route("gmail.users.messages.get", Kind::Plain);
        let headers = HeaderMap::new();
        let req = Request {
            host: HOST,
            method: "GET",
            path: "/gmail/v1/users/me/messages/x",
            query: &[],
            headers: &headers,
            body: b"garbage",
        };
        assert!(message_params(r, &req, &mut params).is_ok());
        assert!(params.is_empty());
    }

    #[test]
    fn media_upload() {
        let p = call("gmail.users.messages.send", Kind::UploadSimple)
            .query("uploadType", "media")
            .header("content-type", "message/rfc822")
            .body(PYTHON_MESSAGE)
            .ok();
        assert_eq!(Value::Object(p), python_params("media"));
    }

    /// googleapiclient's multipart/related: LF line endings, a leading blank line.
    fn python_multipart(metadata: &str, message: &str) -> String {
        format!(
            "\n--===============7330845974216740156==\nContent-Type: application/json\nMIME-Version: 1.0\n\n{metadata}\n--===============7330845974216740156==\nContent-Type: message/rfc822\nMIME-Version: 1.0\nContent-Transfer-Encoding: binary\n\n{message}\n--===============7330845974216740156==--"
        )
    }
    const PYTHON_MULTIPART_TYPE: &str =
        "multipart/related; boundary=\"===============7330845974216740156==\"";

    #[test]
    fn multipart_upload() {
        let p = call("gmail.users.messages.send", Kind::UploadSimple)
            .query("uploadType", "multipart")
            .header("content-type", PYTHON_MULTIPART_TYPE)
            .body(python_multipart("{\"threadId\": \"t1\"}", PYTHON_MESSAGE))
            .ok();
        let mut want = python_params("multipart");
        want["threadId"] = json!("t1");
        assert_eq!(Value::Object(p), want);
        // The Node client: CRLF, an unquoted uuid boundary, no transfer encoding.
        let node = format!(
            "--6b0b4e4c-6b37-4b4e-9d7e-1f0f0e8a9a11\r\nContent-Type: application/json\r\n\r\n{{}}\r\n--6b0b4e4c-6b37-4b4e-9d7e-1f0f0e8a9a11\r\nContent-Type: message/rfc822\r\n\r\n{}\r\n--6b0b4e4c-6b37-4b4e-9d7e-1f0f0e8a9a11--",
            PYTHON_MESSAGE.replace('\n', "\r\n")
        );
        let p = call("gmail.users.messages.send", Kind::UploadSimple)
            .query("uploadType", "multipart")
            .header(
                "content-type",
                "multipart/related; boundary=6b0b4e4c-6b37-4b4e-9d7e-1f0f0e8a9a11",
            )
            .body(node)
            .ok();
        assert_eq!(p["to"], json!(["gduser1@workspacesamples.dev"]));
    }

    #[test]
    fn resumable_start() {
        for (kind, query) in [
            (Kind::UploadResumable, None),
            (Kind::UploadResumable, Some("resumable")),
            (Kind::UploadSimple, Some("resumable")),
        ] {
            let mut c = call("gmail.users.messages.send", kind)
                .header("x-upload-content-type", "message/rfc822")
                .json(json!({"threadId": "t1"}));
            if let Some(q) = query {
                c = c.query("uploadType", q);
            }
            let p = c.ok();
            assert_eq!(
                Value::Object(p),
                json!({"userId": "me", "body_shape": "resumable", "resumable": "start",
                       "recipients_known": false, "threadId": "t1"})
            );
        }
        let p = call("gmail.users.messages.send", Kind::UploadResumable).ok();
        assert_eq!(p["resumable"], json!("start"));
        let e = call("gmail.users.messages.send", Kind::UploadResumable)
            .json(json!({"raw": PYTHON_RAW}))
            .err();
        assert!(e.contains("metadata"), "{e}");
    }

    #[test]
    fn drafts_create_and_update() {
        let p = call("gmail.users.drafts.create", Kind::Plain)
            .json(json!({"message": {"raw": PYTHON_RAW}}))
            .ok();
        assert_eq!(Value::Object(p), python_params("raw"));
        let mut c = call("gmail.users.drafts.update", Kind::Plain)
            .json(json!({"id": "r-1", "message": {"raw": PYTHON_RAW}}));
        c.params.insert("id".into(), json!("r-1"));
        let p = c.ok();
        assert_eq!(p["id"], json!("r-1"));
        assert_eq!(p["to"], json!(["gduser1@workspacesamples.dev"]));
        let p = call("gmail.users.drafts.create", Kind::UploadSimple)
            .query("uploadType", "media")
            .body(PYTHON_MESSAGE)
            .ok();
        assert_eq!(p["body_shape"], json!("media"));
        let p = call("gmail.users.drafts.create", Kind::UploadSimple)
            .query("uploadType", "multipart")
            .header("content-type", PYTHON_MULTIPART_TYPE)
            .body(python_multipart(
                "{\"message\": {\"threadId\": \"t1\"}}",
                PYTHON_MESSAGE,
            ))
            .ok();
        assert_eq!(p["message"], json!({"threadId": "t1"}));
        assert_eq!(p["recipients"], json!(["gduser1@workspacesamples.dev"]));
        for body in [
            json!({}),
            json!({"message": {}}),
            json!({"message": {"threadId": "t"}}),
        ] {
            call("gmail.users.drafts.create", Kind::Plain)
                .json(body)
                .err();
        }
        call("gmail.users.drafts.update", Kind::Plain).err();
    }

    #[test]
    fn drafts_send() {
        let p = call("gmail.users.drafts.send", Kind::Plain)
            .json(json!({"id": "r-123"}))
            .ok();
        assert_eq!(
            Value::Object(p),
            json!({"userId": "me", "id": "r-123", "body_shape": "none", "recipients_known": false})
        );
        let p = call("gmail.users.drafts.send", Kind::Plain)
            .json(json!({"id": "r-123", "message": {"raw": PYTHON_RAW}}))
            .ok();
        assert_eq!(p["id"], json!("r-123"));
        assert_eq!(p["recipients_known"], json!(true));
        assert_eq!(p["to"], json!(["gduser1@workspacesamples.dev"]));
        let e = call("gmail.users.drafts.send", Kind::Plain)
            .json(json!({}))
            .err();
        assert!(e.contains("draft id"), "{e}");
        call("gmail.users.drafts.send", Kind::Plain).err();
        call("gmail.users.drafts.send", Kind::Plain)
            .json(json!({"id": 5}))
            .err();
    }

    #[test]
    fn sends_without_a_message_are_refused() {
        call("gmail.users.messages.send", Kind::Plain).err();
        call("gmail.users.messages.send", Kind::Plain)
            .json(json!({"threadId": "t"}))
            .err();
        call("gmail.users.messages.send", Kind::UploadSimple)
            .query("uploadType", "media")
            .err();
        call("gmail.users.messages.send", Kind::Plain)
            .json(json!({"raw": ""}))
            .err();
    }

    #[test]
    fn raw_evasions() {
        let msg = |raw: &str| {
            call("gmail.users.messages.send", Kind::Plain)
                .json(json!({ "raw": raw }))
                .err()
        };
        for raw in [
            "not base64!",
            "Q29u dGVu",
            "Q29u\ndGVu",
            "Q29udA===",
            "Q29udA=",
            "Q2=9udA",
            "Q",
        ] {
            msg(raw);
        }
        let b64 = |m: &str| URL_SAFE_NO_PAD.encode(m);
        for m in [
            "To: a@x.com\ngarbage\n\nbody",
            "To: garbage only\n\nbody",
            "To: =?UTF-8?B?ZXZpbEBldmlsLmNvbQ==?=\n\nx",
        ] {
            msg(&b64(m));
        }
        for body in [
            json!({"raw": 5}),
            json!({"raw": PYTHON_RAW, "payload": {"headers": []}}),
            json!(["raw"]),
        ] {
            call("gmail.users.messages.send", Kind::Plain)
                .json(body)
                .err();
        }
        // Duplicate keys could hide a second raw.
        call("gmail.users.messages.send", Kind::Plain)
            .header("content-type", "application/json")
            .body(format!(
                "{{\"raw\": \"{PYTHON_RAW}\", \"raw\": \"{}\"}}",
                b64("To: e@v.il\n\nx")
            ))
            .err();
        // A body declared as something other than JSON.
        call("gmail.users.messages.send", Kind::Plain)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(format!("{{\"raw\": \"{PYTHON_RAW}\"}}"))
            .err();
    }

    #[test]
    fn upload_parameter_evasions() {
        let send = || call("gmail.users.messages.send", Kind::UploadSimple).body(PYTHON_MESSAGE);
        send().err();
        send()
            .query("uploadType", "media")
            .query("uploadType", "multipart")
            .err();
        send().query("uploadType", "Media").err();
        send()
            .query("uploadType", "media")
            .query("upload_protocol", "multipart")
            .err();
        send()
            .query("uploadType", "media")
            .query("upload_protocol", "raw")
            .ok();
        send()
            .query("uploadType", "resumable")
            .query("upload_id", "abc")
            .err();
        send()
            .query("uploadType", "media")
            .header("x-goog-upload-protocol", "multipart")
            .err();
        call("gmail.users.messages.send", Kind::Plain)
            .query("uploadType", "media")
            .json(json!({"raw": PYTHON_RAW}))
            .err();
        call("gmail.users.messages.send", Kind::UploadResumable)
            .query("uploadType", "media")
            .err();
    }

    #[test]
    fn multipart_evasions() {
        let upload = |ct: &str, body: String| {
            call("gmail.users.messages.send", Kind::UploadSimple)
                .query("uploadType", "multipart")
                .header("content-type", ct)
                .body(body)
                .err()
        };
        let b = "===============7330845974216740156==";
        // The message part is missing.
        let e = upload(
            PYTHON_MULTIPART_TYPE,
            format!("--{b}\nContent-Type: application/json\n\n{{}}\n--{b}--"),
        );
        assert!(e.contains("1 parts"), "{e}");
        // A second message part smuggled in.
        let e = upload(
            PYTHON_MULTIPART_TYPE,
            format!(
                "--{b}\nContent-Type: application/json\n\n{{}}\n--{b}\nContent-Type: message/rfc822\n\n{PYTHON_MESSAGE}\n--{b}\nContent-Type: message/rfc822\n\nTo: evil@evil.com\n\nx\n--{b}--"
            ),
        );
        assert!(e.contains("3 parts"), "{e}");
        // No boundary parameter.
        let e = upload("multipart/related", python_multipart("{}", PYTHON_MESSAGE));
        assert!(e.contains("boundary"), "{e}");
        // No closing delimiter.
        let body = python_multipart("{}", PYTHON_MESSAGE);
        let e = upload(
            PYTHON_MULTIPART_TYPE,
            body.trim_end_matches("--").to_string(),
        );
        assert!(e.contains("closing"), "{e}");
        // Not multipart/related, or no Content-Type at all.
        upload(
            "multipart/mixed; boundary=x",
            python_multipart("{}", PYTHON_MESSAGE),
        );
        call("gmail.users.messages.send", Kind::UploadSimple)
            .query("uploadType", "multipart")
            .body(python_multipart("{}", PYTHON_MESSAGE))
            .err();
        // Metadata that is not JSON, or carries its own raw; parts in the wrong order.
        upload(
            PYTHON_MULTIPART_TYPE,
            python_multipart("raw=x", PYTHON_MESSAGE),
        );
        let e = upload(
            PYTHON_MULTIPART_TYPE,
            python_multipart(&format!("{{\"raw\": \"{PYTHON_RAW}\"}}"), PYTHON_MESSAGE),
        );
        assert!(e.contains("metadata"), "{e}");
        upload(
            PYTHON_MULTIPART_TYPE,
            format!(
                "--{b}\nContent-Type: message/rfc822\n\n{PYTHON_MESSAGE}\n--{b}\nContent-Type: application/json\n\n{{}}\n--{b}--"
            ),
        );
        // A base64 message part.
        upload(
            PYTHON_MULTIPART_TYPE,
            format!(
                "--{b}\nContent-Type: application/json\n\n{{}}\n--{b}\nContent-Type: message/rfc822\nContent-Transfer-Encoding: base64\n\n{PYTHON_RAW}\n--{b}--"
            ),
        );
        // A boundary line hidden in the message.
        upload(
            PYTHON_MULTIPART_TYPE,
            python_multipart("{}", &format!("{PYTHON_MESSAGE}--{b}x\n")),
        );
    }
}
