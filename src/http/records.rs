//! `/api/v1/collections/{firm_id}` and `/api/v1/records/{firm_id}`: schemas
//! and records.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::AppState;
use super::api::{ApiJson, ApiQuery, blocking};
use super::authz::Authz;
use super::problem::Problem;
use crate::auth::policy::perm;
use crate::records::schema::Schema;
use crate::records::{CollectionView, RecordPage, Written};

/// `PUT /api/v1/collections/{firm_id}/{collection}`: declare or change a
/// schema (201 when new).
pub async fn put_collection(
    State(shared): State<Arc<AppState>>,
    Authz(auth): Authz<perm::CollectionsWrite>,
    Path((_, name)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<(StatusCode, Json<CollectionView>), Problem> {
    let ApiJson(schema) = ApiJson::<Schema>::parse(&headers, &body)?;
    let svc = shared.records.clone();
    let (view, created) = blocking(move || svc.put_collection(&auth, &name, schema)).await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(view)))
}

/// `GET /api/v1/collections/{firm_id}/{collection}`
pub async fn get_collection(
    State(shared): State<Arc<AppState>>,
    Authz(auth): Authz<perm::RecordsRead>,
    Path((_, name)): Path<(String, String)>,
) -> Result<Json<CollectionView>, Problem> {
    let svc = shared.records.clone();
    Ok(Json(
        blocking(move || svc.get_collection(&auth, &name)).await?,
    ))
}

fn written(w: Written, status: StatusCode) -> Response {
    let etag = w.record.etag();
    let mut body = serde_json::to_value(&w.record).unwrap_or(Value::Null);
    if !w.warnings.is_empty() {
        body["warnings"] = json!(w.warnings);
    }
    let mut resp = (status, Json(body)).into_response();
    if let Ok(v) = HeaderValue::from_str(&etag) {
        resp.headers_mut().insert(header::ETAG, v);
    }
    if w.replayed {
        resp.headers_mut()
            .insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    resp
}

fn bad_header(name: &str, detail: &str) -> Problem {
    Problem::new(
        StatusCode::BAD_REQUEST,
        "invalid_header",
        format!("{name}: {detail}"),
    )
}

/// `Idempotency-Key`: 1 to 255 visible ASCII characters.
fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, Problem> {
    let Some(v) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    let s = v
        .to_str()
        .ok()
        .filter(|s| (1..=255).contains(&s.len()) && s.bytes().all(|b| (0x21..0x7f).contains(&b)))
        .ok_or_else(|| bad_header("Idempotency-Key", "1 to 255 visible ASCII characters"))?;
    Ok(Some(s.to_owned()))
}

/// `If-Match: "<version>"` (None when absent). Any other form cannot match.
fn if_match(headers: &HeaderMap) -> Result<Option<u32>, Problem> {
    // An empty If-Match names no tag: as if absent (RFC 9110's list may be empty).
    let Some(v) = headers
        .get(header::IF_MATCH)
        .filter(|v| !v.as_bytes().trim_ascii().is_empty())
    else {
        return Ok(None);
    };
    // ETags compare as opaque strings (RFC 9110 strong comparison): only
    // the exact spelling the server sent names a version, so `"01"` is not `"1"`.
    v.to_str()
        .ok()
        .and_then(|s| {
            let tag = s.trim().strip_prefix('"')?.strip_suffix('"')?;
            tag.parse::<u32>().ok().filter(|n| n.to_string() == tag)
        })
        .map(Some)
        .ok_or_else(|| {
            Problem::new(
                StatusCode::PRECONDITION_FAILED,
                "precondition_failed",
                "If-Match does not name a version of this record (use the ETag)",
            )
        })
}

/// `POST /api/v1/records/{firm_id}/{collection}`: create (201, ETag).
pub async fn create(
    State(shared): State<Arc<AppState>>,
    Authz(auth): Authz<perm::RecordsWrite>,
    Path((_, collection)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Problem> {
    let ApiJson(body) = ApiJson::<Value>::parse(&headers, &body)?;
    let key = idempotency_key(&headers)?;
    let w = shared
        .records
        .clone()
        .create(auth, collection, body, key)
        .await?;
    Ok(written(w, StatusCode::CREATED))
}

/// `GET /api/v1/records/{firm_id}/{collection}?after=ID&limit=N&<field>=<value>`
pub async fn list(
    State(shared): State<Arc<AppState>>,
    Authz(auth): Authz<perm::RecordsRead>,
    Path((_, collection)): Path<(String, String)>,
    ApiQuery(mut q): ApiQuery<HashMap<String, String>>,
) -> Result<Json<RecordPage>, Problem> {
    let after = q.remove("after").unwrap_or_default();
    let limit = match q.remove("limit") {
        None => 100,
        Some(l) => {
            super::api::Count::parse(&l)
                .ok_or_else(|| {
                    Problem::new(
                        StatusCode::BAD_REQUEST,
                        "invalid_query",
                        "limit must be a whole number from 1 to 9223372036854775807",
                    )
                })?
                .0
        }
    };
    if q.len() > 1 {
        return Err(Problem::new(
            StatusCode::BAD_REQUEST,
            "invalid_query",
            "filter on at most one indexed field (parameters: after, limit, and one indexed field)",
        ));
    }
    let filter = q.into_iter().next();
    let svc = shared.records.clone();
    Ok(Json(
        blocking(move || svc.list_records(&auth, &collection, &after, limit, filter)).await?,
    ))
}

/// `GET /api/v1/records/{firm_id}/{collection}/{record_id}` (ETag).
pub async fn get(
    State(shared): State<Arc<AppState>>,
    Authz(auth): Authz<perm::RecordsRead>,
    Path((_, collection, id)): Path<(String, String, String)>,
) -> Result<Response, Problem> {
    let view = shared.records.clone().get(auth, collection, id).await?;
    let etag = view.etag();
    let mut resp = Json(view).into_response();
    if let Ok(v) = HeaderValue::from_str(&etag) {
        resp.headers_mut().insert(header::ETAG, v);
    }
    Ok(resp)
}

/// `PUT /api/v1/records/{firm_id}/{collection}/{record_id}`: replace; needs
/// `If-Match` (428 without, 412 when stale).
pub async fn replace(
    State(shared): State<Arc<AppState>>,
    Authz(auth): Authz<perm::RecordsWrite>,
    Path((_, collection, id)): Path<(String, String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Problem> {
    let ApiJson(body) = ApiJson::<Value>::parse(&headers, &body)?;
    let m = if_match(&headers)?;
    let svc = shared.records.clone();
    let w = blocking(move || svc.update_record(&auth, &collection, &id, body, m, false)).await?;
    Ok(written(w, StatusCode::OK))
}

/// `PATCH /api/v1/records/{firm_id}/{collection}/{record_id}`: a JSON merge
/// patch (RFC 7396; `application/merge-patch+json` or `application/json`);
/// needs `If-Match`.
pub async fn patch(
    State(shared): State<Arc<AppState>>,
    Authz(auth): Authz<perm::RecordsWrite>,
    Path((_, collection, id)): Path<(String, String, String)>,
    mut headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Problem> {
    let merge = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| {
            ct.split(';').next().unwrap_or("").trim() == "application/merge-patch+json"
        });
    if merge {
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
    }
    let ApiJson(body) = ApiJson::<Value>::parse(&headers, &body)?;
    let m = if_match(&headers)?;
    let svc = shared.records.clone();
    let w = blocking(move || svc.update_record(&auth, &collection, &id, body, m, true)).await?;
    Ok(written(w, StatusCode::OK))
}

/// `DELETE /api/v1/records/{firm_id}/{collection}/{record_id}` (204;
/// `If-Match` optional).
pub async fn delete(
    State(shared): State<Arc<AppState>>,
    Authz(auth): Authz<perm::RecordsDelete>,
    Path((_, collection, id)): Path<(String, String, String)>,
    headers: HeaderMap,
) -> Result<StatusCode, Problem> {
    let m = if_match(&headers)?;
    let svc = shared.records.clone();
    blocking(move || svc.delete_record(&auth, &collection, &id, m)).await?;
    Ok(StatusCode::NO_CONTENT)
}
