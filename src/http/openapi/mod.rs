//! `GET /api/v1/openapi.json`: the API as an OpenAPI 3.1 document, built
//! from the route table and the request and response types themselves, so
//! it cannot drift from what is served.
//!
//! The paths, methods and who may call them come from [`super::route_table`];
//! each route's payloads from [`ops::describe`] (a test checks that every
//! route has exactly one description and no description names a route that
//! is not served); the schemas from the types' `utoipa::ToSchema` derives;
//! the problem codes from the one code table, [`crate::errors::CODES`].

mod ops;

use std::collections::BTreeMap;
use std::sync::OnceLock;

use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};
use utoipa::openapi::RefOr;
use utoipa::openapi::schema::Schema;

use super::{Access, RouteSpec};
pub(crate) use ops::describe;

/// Schemas referenced from operations, collected while the document is built.
#[derive(Default)]
pub(crate) struct Components {
    schemas: BTreeMap<String, Value>,
}

impl Components {
    fn add(&mut self, name: String, schema: RefOr<Schema>) {
        let v = serde_json::to_value(schema).unwrap_or(Value::Null);
        self.schemas.entry(name).or_insert(v);
    }
}

/// A request or response payload.
#[derive(Clone, Copy)]
pub(crate) enum Payload {
    None,
    /// `application/json` with the schema this function registers.
    Json(fn(&mut Components) -> Value),
    /// A text body of this media type.
    Text(&'static str),
}

/// Registers `T` (and what it refers to) and returns a reference to it.
pub(crate) fn schema_of<T: utoipa::ToSchema>(c: &mut Components) -> Value {
    let mut nested = Vec::new();
    T::schemas(&mut nested);
    for (name, s) in nested {
        c.add(name, s);
    }
    let name = T::name().into_owned();
    c.add(name.clone(), T::schema());
    json!({ "$ref": format!("#/components/schemas/{name}") })
}

/// A header a route reads.
#[derive(Clone, Copy)]
pub(crate) struct HeaderParam {
    pub name: &'static str,
    pub required: bool,
    pub pattern: &'static str,
    pub description: &'static str,
}

/// What a route takes and gives, beyond its path.
#[derive(Clone)]
pub(crate) struct OpDoc {
    pub id: &'static str,
    pub summary: &'static str,
    pub body: Payload,
    /// The body may be left out.
    pub body_optional: bool,
    /// Media types the body may also be sent as (beside `application/json`).
    pub body_also: &'static [&'static str],
    pub query: Option<fn() -> Vec<Value>>,
    pub headers: &'static [HeaderParam],
    /// Success statuses (the first carries `out`).
    pub ok: &'static [u16],
    pub out: Payload,
    /// Error statuses beyond the ones every route of its kind may answer.
    pub errors: &'static [u16],
}

/// The pattern of each path parameter, as the server checks it.
fn path_param(name: &str) -> Value {
    let (pattern, desc) = match name {
        "firm_id" => ("^frm_[0-9a-f]{24}$", "the firm (tenant)"),
        "key_id" => ("^key_[0-9a-f]{16}$", "an API key of the firm"),
        "user_id" => ("^usr_[0-9a-f]{16}$", "a person of the firm"),
        "session_id" => ("^ses_[0-9a-f]{16}$", "a session of the signed-in person"),
        "record_id" => ("^rec_[0-9a-f]{24}$", "a record of the collection"),
        "endpoint_id" => ("^whk_[0-9a-f]{16}$", "a webhook endpoint of the firm"),
        "message_id" => ("^msg_[0-9a-f]{24}$", "a webhook message of the endpoint"),
        "collection" => (
            "^[a-z][a-z0-9_]{0,63}$",
            "a collection: 1 to 64 of a-z 0-9 _, starting with a letter",
        ),
        "name" => (
            "^[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}$",
            "a secret's name: 1 to 128 of A-Z a-z 0-9 . _ -, not starting with .",
        ),
        _ => (".*", ""),
    };
    json!({
        "name": name,
        "in": "path",
        "required": true,
        "description": desc,
        "schema": { "type": "string", "pattern": pattern },
    })
}

/// Statuses any route of this kind may answer besides its own.
fn common_errors(spec: &RouteSpec, has_body: bool) -> Vec<u16> {
    // 400: a malformed header or query; 408: a body too slow; 429: a limit;
    // 500/503: internal, busy or maintenance; 507: storage full.
    let mut v = vec![400, 408, 429, 500, 503, 507];
    if has_body {
        v.extend([413, 415, 422]);
    }
    match spec.access {
        Access::Public => {}
        Access::SignIn => v.extend([401, 403, 404]),
        Access::Firm(_) => {
            v.extend([401, 403, 404]);
            // 423: the firm is frozen (writes only).
            if spec.method != axum::http::Method::GET {
                v.push(423);
            }
        }
    }
    v
}

fn content(payload: Payload, c: &mut Components, also: &[&str]) -> Option<Value> {
    match payload {
        Payload::None => None,
        Payload::Json(f) => {
            let schema = f(c);
            let mut m = Map::new();
            m.insert("application/json".into(), json!({ "schema": schema }));
            for t in also {
                m.insert((*t).into(), json!({ "schema": schema }));
            }
            Some(Value::Object(m))
        }
        Payload::Text(mime) => Some(json!({ mime: { "schema": { "type": "string" } } })),
    }
}

fn operation(spec: &RouteSpec, doc: &OpDoc, c: &mut Components) -> Value {
    let mut params: Vec<Value> = spec
        .path
        .split('/')
        .filter_map(|s| s.strip_prefix('{')?.strip_suffix('}'))
        .map(path_param)
        .collect();
    if let Some(q) = doc.query {
        params.extend(q());
    }
    for h in doc.headers {
        params.push(json!({
            "name": h.name,
            "in": "header",
            "required": h.required,
            "description": h.description,
            "schema": { "type": "string", "pattern": h.pattern },
        }));
    }
    let mut op = json!({
        "operationId": doc.id,
        "summary": doc.summary,
        "tags": [tag(spec.path)],
        "parameters": params,
    });
    if let Some(body) = content(doc.body, c, doc.body_also) {
        op["requestBody"] = json!({ "required": !doc.body_optional, "content": body });
    }
    let mut responses = Map::new();
    for (i, status) in doc.ok.iter().enumerate() {
        let mut r = json!({ "description": ok_text(*status) });
        if i == 0 || *status != 204 {
            if let Some(out) = content(doc.out, c, &[]) {
                r["content"] = out;
            }
        }
        responses.insert(status.to_string(), r);
    }
    let mut errors = common_errors(spec, !matches!(doc.body, Payload::None));
    errors.extend(doc.errors);
    errors.sort_unstable();
    errors.dedup();
    for s in errors {
        responses.insert(
            s.to_string(),
            json!({ "$ref": format!("#/components/responses/Problem{s}") }),
        );
    }
    op["responses"] = Value::Object(responses);
    match spec.access {
        Access::Firm(p) => {
            op["security"] = json!([{ "bearer": [] }]);
            op["x-permission"] = json!(p.as_str());
        }
        Access::Public | Access::SignIn => op["security"] = json!([]),
    }
    op
}

fn ok_text(status: u16) -> &'static str {
    match status {
        201 => "created",
        204 => "done; no body",
        _ => "success",
    }
}

fn tag(path: &str) -> &str {
    path.strip_prefix("/api/v1/")
        .and_then(|r| r.split('/').next())
        .unwrap_or("service")
}

/// One shared response per error status, naming the codes it carries.
fn problem_responses() -> Value {
    let mut by_status: BTreeMap<u16, Vec<&str>> = BTreeMap::new();
    for c in crate::errors::CODES {
        if c.status != 0 {
            by_status.entry(c.status).or_default().push(c.code);
        }
    }
    let mut out = Map::new();
    for (status, codes) in by_status {
        let list = codes
            .iter()
            .map(|c| format!("`{c}`"))
            .collect::<Vec<_>>()
            .join(", ");
        out.insert(
            format!("Problem{status}"),
            json!({
                "description": format!("problem details; code one of {list}"),
                "content": { super::problem::PROBLEM_JSON: { "schema": {
                    "allOf": [
                        { "$ref": "#/components/schemas/Problem" },
                        { "properties": { "status": { "const": status }, "code": { "enum": codes } } }
                    ]
                } } }
            }),
        );
    }
    Value::Object(out)
}

fn problem_schema() -> Value {
    let codes: Vec<&str> = crate::errors::CODES
        .iter()
        .filter(|c| c.status != 0)
        .map(|c| c.code)
        .collect();
    json!({
        "type": "object",
        "description": "RFC 9457 problem details. `code` is stable; `detail` is for people.",
        "required": ["type", "title", "status", "detail", "code", "request_id"],
        "properties": {
            "type": { "type": "string", "description": "`urn:strongroom:problem:<code>`" },
            "title": { "type": "string" },
            "status": { "type": "integer" },
            "detail": { "type": "string" },
            "code": { "type": "string", "enum": codes },
            "request_id": { "type": "string" }
        }
    })
}

/// Limits the validators enforce that the derives cannot spell: (schema,
/// property, JSON Schema keywords). A test checks each property exists.
fn constraints() -> Vec<(&'static str, &'static str, Value)> {
    let name = json!({ "pattern": crate::firms::name_pattern(), "maxLength": crate::firms::MAX_NAME_CHARS });
    let profile = json!({
        "pattern": format!("^[^{}]*$", crate::ids::NOT_SHOWN_CLASS),
        "maxLength": super::api::MAX_PROFILE_CHARS,
    });
    vec![
        ("MintBody", "name", name.clone()),
        ("InviteBody", "display_name", name.clone()),
        ("UpdateBody", "display_name", name),
        (
            "InviteBody",
            "login",
            json!({ "pattern": crate::people::login_pattern(), "maxLength": crate::people::MAX_LOGIN_CHARS }),
        ),
        ("ProfilePatch", "display_name", profile.clone()),
        ("ProfilePatch", "contact_email", profile),
        (
            "CreateBody",
            "url",
            json!({ "maxLength": crate::webhooks::egress::MAX_URL_LEN, "pattern": "^https?://" }),
        ),
        (
            "CreateBody",
            "events",
            json!({ "minItems": 1, "maxItems": crate::webhooks::events::MAX_PATTERNS }),
        ),
        (
            "CreateBody",
            "description",
            json!({ "maxLength": crate::webhooks::MAX_DESCRIPTION_CHARS }),
        ),
        (
            "ValueBody",
            "value",
            json!({ "minLength": 1, "maxLength": crate::vault::MAX_VALUE_BYTES }),
        ),
        (
            "Schema",
            "fields",
            json!({
                "maxProperties": crate::records::schema::MAX_FIELDS,
                "propertyNames": { "pattern": "^[a-z][a-z0-9_]{0,63}$" },
            }),
        ),
    ]
}

fn constrain(schemas: &mut Map<String, Value>) {
    for (schema, prop, keywords) in constraints() {
        if let Some(Value::Object(p)) = schemas
            .get_mut(schema)
            .and_then(|s| s.pointer_mut(&format!("/properties/{prop}")))
        {
            if let Value::Object(k) = keywords {
                p.extend(k);
            }
        }
    }
}

/// Builds the document.
pub fn document() -> Value {
    let mut c = Components::default();
    let mut paths: BTreeMap<&str, Map<String, Value>> = BTreeMap::new();
    for spec in super::route_table() {
        let Some(doc) = describe(&spec.method, spec.path) else {
            continue;
        };
        let op = operation(&spec, &doc, &mut c);
        paths
            .entry(spec.path)
            .or_default()
            .insert(spec.method.as_str().to_ascii_lowercase(), op);
    }
    let mut schemas = Map::new();
    for (k, v) in std::mem::take(&mut c.schemas) {
        schemas.insert(k, v);
    }
    schemas.insert("Problem".into(), problem_schema());
    constrain(&mut schemas);
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "Strongroom API",
            "version": crate::VERSION,
            "description": "The appliance's local HTTPS API. Every route under /api/v1/{resource}/{firm_id} is scoped to one firm and needs a bearer credential of that firm: an API key (`sr_…`) or a person's session (`srs_…`). Errors are RFC 9457 problem details with a stable `code`.",
            "license": { "name": "Apache-2.0", "identifier": "Apache-2.0" }
        },
        "paths": paths,
        "components": {
            "schemas": schemas,
            "responses": problem_responses(),
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "An API key (`sr_<firm>_<key>_<secret>`) or a session token (`srs_…`) of the firm in the path."
                }
            }
        }
    })
}

/// `GET /api/v1/openapi.json` (public: it describes the API, holds no data).
pub async fn serve() -> Response {
    static DOC: OnceLock<String> = OnceLock::new();
    let body = DOC.get_or_init(|| document().to_string()).clone();
    let mut resp = body.into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

#[cfg(test)]
mod tests;
