//! The media types the endpoints read (issue 13 point 5): a JSON endpoint
//! takes `Content-Type: application/json` (parameters such as `charset`
//! allowed) and refuses anything else, a missing header included, with 415
//! UNSUPPORTED_MEDIA_TYPE and the usual error body, before reading the body.
//! A commit also takes `application/octet-stream` (an upload).
//!
//! Why: a body sent as a form or as text is a client bug; accepting it hides
//! the bug and makes the request's meaning depend on guessing.

use axum::extract::Request;
use axum::http::{header, HeaderMap};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::ApiError;
use crate::error::WorkerError;

const JSON: &str = "application/json";
const UPLOAD: &str = "application/octet-stream";

/// The request's media type (before any `;` parameter), lower-cased; None
/// when the header is missing or not text.
fn media_type(headers: &HeaderMap) -> Option<String> {
    let v = headers.get(header::CONTENT_TYPE)?.to_str().ok()?;
    Some(
        v.split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase(),
    )
}

/// Ok when the request's media type is one of `accepted`, else the 415
/// error naming what came and what to send.
fn check(req: &Request, accepted: &[&str]) -> Result<(), WorkerError> {
    if crate::mutants::active(crate::mutants::Mutant::MediaTypeUnchecked) {
        return Ok(());
    }
    let got = media_type(req.headers());
    if got.as_deref().is_some_and(|t| accepted.contains(&t)) {
        return Ok(());
    }
    let got = got.map_or_else(
        || "no Content-Type".to_string(),
        |t| format!("Content-Type `{t}`"),
    );
    Err(WorkerError::UnsupportedMediaType {
        message: format!(
            "{} {} takes {}, got {got}; nothing was done. Send the body with Content-Type: {JSON}",
            req.method(),
            req.uri().path(),
            accepted.join(" or "),
        ),
    })
}

/// Route layer of the JSON endpoints.
pub async fn json_only(req: Request, next: Next) -> Response {
    match check(&req, &[JSON]) {
        Ok(()) => next.run(req).await,
        Err(e) => ApiError(e).into_response(),
    }
}

/// Route layer of commit: a JSON body, or a model upload.
pub async fn json_or_upload(req: Request, next: Next) -> Response {
    match check(&req, &[JSON, UPLOAD]) {
        Ok(()) => next.run(req).await,
        Err(e) => ApiError(e).into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;

    fn req(ct: Option<&str>) -> Request {
        let mut b = Request::builder().method("POST").uri("/worker/plan");
        if let Some(ct) = ct {
            b = b.header(header::CONTENT_TYPE, ct);
        }
        b.body(Body::empty()).unwrap()
    }

    #[test]
    fn json_with_any_parameters_and_case_is_accepted() {
        for ct in [
            "application/json",
            "application/json; charset=utf-8",
            "Application/JSON",
            " application/json ;charset=UTF-8",
        ] {
            assert!(check(&req(Some(ct)), &[JSON]).is_ok(), "{ct}");
        }
    }

    #[test]
    fn anything_else_is_415_naming_what_came() {
        for (ct, named) in [
            (None, "no Content-Type"),
            (Some("text/plain"), "`text/plain`"),
            (
                Some("application/x-www-form-urlencoded"),
                "`application/x-www-form-urlencoded`",
            ),
            (Some("application/json-seq"), "`application/json-seq`"),
            (
                Some("application/octet-stream"),
                "`application/octet-stream`",
            ),
        ] {
            let e = check(&req(ct), &[JSON]).unwrap_err();
            assert_eq!((e.code(), e.http_status()), ("UNSUPPORTED_MEDIA_TYPE", 415));
            assert!(e.message().contains(named), "{}", e.message());
            assert!(e.message().contains("POST /worker/plan"), "{}", e.message());
        }
        assert!(check(&req(Some("application/octet-stream")), &[JSON, UPLOAD]).is_ok());
    }
}
