//! Responses: [`Response`] is `http::Response<Payload>`, and these functions make the usual
//! ones.
//!
//! ```
//! use greenhub_http::response;
//! use http::StatusCode;
//!
//! let hello = response::text("Hello, World!");
//! assert_eq!(hello.headers()["content-type"], "text/plain; charset=utf-8");
//! let data = response::json(&serde_json::json!({"message": "Hello, World!"}));
//! assert_eq!(data.status(), StatusCode::OK);
//! let missing = response::status(StatusCode::NOT_FOUND);
//! assert_eq!(missing.status(), 404);
//! ```

use std::io::Read;
use std::path::Path;

use http::StatusCode;
use http::header::{CONTENT_TYPE, HeaderValue};

use crate::body::Payload;

/// A response: status, headers and a [`Payload`].
pub type Response = http::Response<Payload>;

const TEXT: HeaderValue = HeaderValue::from_static("text/plain; charset=utf-8");
const JSON: HeaderValue = HeaderValue::from_static("application/json");

/// `200 OK` with a plain-text body.
pub fn text(body: impl Into<Payload>) -> Response {
    text_status(StatusCode::OK, body)
}

/// A plain-text body with `status`.
pub fn text_status(status: StatusCode, body: impl Into<Payload>) -> Response {
    with_type(status, TEXT, body.into())
}

/// `200 OK` with `value` as JSON; `500` if it cannot be serialized.
pub fn json<T: serde::Serialize + ?Sized>(value: &T) -> Response {
    match serde_json::to_vec(value) {
        Ok(body) => with_type(StatusCode::OK, JSON, body.into()),
        Err(e) => text_status(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("the response could not be written as JSON: {e}\n"),
        ),
    }
}

/// `status` with its reason phrase as a plain-text body (`404 Not Found`).
pub fn status(status: StatusCode) -> Response {
    let body = format!(
        "{} {}\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or("")
    );
    text_status(status, body)
}

/// `200 OK` with `content_type` and what `reader` gives, sent chunked.
pub fn stream(content_type: &str, reader: impl Read + Send + 'static) -> Response {
    let mut r = with_type(StatusCode::OK, TEXT, Payload::Stream(Box::new(reader)));
    set_type(&mut r, content_type);
    r
}

/// `200 OK` with a file's contents and `content_type`, read off the worker threads. Opening
/// the file is also done off them.
pub fn file(path: impl AsRef<Path>, content_type: &str) -> std::io::Result<Response> {
    let path = path.as_ref().to_owned();
    let (file, len) = greenhub_tpool::execute(move || {
        let file = std::fs::File::open(&path)?;
        let len = file.metadata()?.len();
        Ok::<_, std::io::Error>((file, len))
    })
    .map_err(std::io::Error::other)??;
    let mut r = with_type(StatusCode::OK, TEXT, Payload::File { file, len });
    set_type(&mut r, content_type);
    Ok(r)
}

fn with_type(status: StatusCode, content_type: HeaderValue, payload: Payload) -> Response {
    let mut r = http::Response::new(payload);
    *r.status_mut() = status;
    r.headers_mut().insert(CONTENT_TYPE, content_type);
    r
}

fn set_type(r: &mut Response, content_type: &str) {
    if let Ok(v) = HeaderValue::from_str(content_type) {
        r.headers_mut().insert(CONTENT_TYPE, v);
    }
}
