//! Entry points for the fuzz targets into this module's private request
//! parsing (see `crate::fuzzing`). Built only with the `fuzzing` feature.

use std::collections::HashMap;
use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use axum::body::Bytes;
use axum::extract::FromRequestParts;
use axum::http::{HeaderMap, HeaderValue, header};
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::api::{ApiJson, ApiQuery, ProfilePatch};
use super::audit::{ConsistencyQuery, InclusionQuery, PageQuery, utc};
use super::keys::MintBody;
use super::secrets::ValueBody;
use super::sessions::{
    CodeBody, CurrentPasswordBody, EnrolConfirmBody, EnrolStartBody, PasswordBody, ReauthBody,
    SignInBody,
};
use super::users::{InviteBody, UpdateBody};
use crate::records::schema::Schema;

fn json<T: DeserializeOwned>(headers: &HeaderMap, body: &Bytes) -> bool {
    ApiJson::<T>::parse(headers, body).is_ok()
}

/// `<selector byte><content type>\n<body>`: the body parsed as the request
/// body the selector names, through [`ApiJson::parse`].
pub(crate) fn api_json(data: &[u8]) {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let (ct, body) = match rest.iter().position(|&b| b == b'\n') {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => (rest, &[][..]),
    };
    let mut headers = HeaderMap::new();
    if let Ok(v) = HeaderValue::from_bytes(ct) {
        headers.insert(header::CONTENT_TYPE, v);
    }
    let body = Bytes::copy_from_slice(body);
    match selector % 14 {
        0 => {
            // A body the number check and the parser accept is stored as
            // written: writing it back out passes the check again.
            if let Ok(ApiJson(v)) = ApiJson::<Value>::parse(&headers, &body) {
                let again = serde_json::to_vec(&v).unwrap_or_default();
                assert!(
                    super::numbers::check(&again).is_ok(),
                    "an accepted body no longer passes the number check once re-encoded"
                );
            }
        }
        1 => {
            if let Ok(ApiJson(s)) = ApiJson::<Schema>::parse(&headers, &body) {
                let _ = s.check();
            }
        }
        2 => _ = json::<MintBody>(&headers, &body),
        3 => _ = json::<SignInBody>(&headers, &body),
        4 => _ = json::<EnrolStartBody>(&headers, &body),
        5 => _ = json::<EnrolConfirmBody>(&headers, &body),
        6 => _ = json::<PasswordBody>(&headers, &body),
        7 => _ = json::<CurrentPasswordBody>(&headers, &body),
        8 => _ = json::<CodeBody>(&headers, &body),
        9 => _ = json::<InviteBody>(&headers, &body),
        10 => _ = json::<UpdateBody>(&headers, &body),
        11 => _ = json::<ValueBody>(&headers, &body),
        12 => _ = json::<ReauthBody>(&headers, &body),
        _ => _ = json::<ProfilePatch>(&headers, &body),
    }
}

/// Polls a future that never waits (the query extractor) to its end.
fn ready<F: Future>(f: F) -> Option<F::Output> {
    let mut f = pin!(f);
    match f.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(v) => Some(v),
        Poll::Pending => None,
    }
}

fn query<T: DeserializeOwned>(q: &str) -> Option<T> {
    let req = axum::http::Request::builder()
        .uri(format!("/q?{q}"))
        .body(())
        .ok()?;
    let (mut parts, ()) = req.into_parts();
    ready(ApiQuery::<T>::from_request_parts(&mut parts, &()))?
        .ok()
        .map(|ApiQuery(v)| v)
}

/// A query string, through [`ApiQuery`] into each query type the API
/// takes; the audit list's time bounds also go through their conversion.
pub(crate) fn api_query(data: &[u8]) {
    let Ok(q) = std::str::from_utf8(data) else {
        return;
    };
    let _ = query::<PageQuery>(q);
    let _ = query::<InclusionQuery>(q);
    let _ = query::<ConsistencyQuery>(q);
    if let Some(mut m) = query::<HashMap<String, String>>(q) {
        let _ = utc("since", m.remove("since"));
        let _ = utc("until", m.remove("until"));
    }
    // The time conversion on its own, for inputs no URI would carry.
    let _ = utc("since", Some(q.to_owned()));
}
