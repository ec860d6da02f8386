//! Request and response heads: parsing them (httparse) within limits, and the framing of the
//! body that follows (RFC 9112, section 6).

use http::header::{CONNECTION, CONTENT_LENGTH, EXPECT, HOST, TRANSFER_ENCODING};
use std::mem::MaybeUninit;

use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri, Version};

/// What a request head may hold.
#[derive(Clone, Copy, Debug)]
pub(crate) struct HeadLimits {
    /// The request line (method, target, version), in bytes.
    pub line: usize,
    /// The whole head, request line and header fields, in bytes.
    pub head: usize,
    /// Header fields.
    pub fields: usize,
}

/// Why a request head was refused: each with the status the server answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum HeadError {
    /// 414: the request line is longer than its limit.
    LineTooLong,
    /// 431: the head is larger than its limit, or has too many fields.
    TooLarge,
    /// 400: not HTTP.
    Malformed(&'static str),
    /// 505: an HTTP version other than 1.0 and 1.1.
    Version,
    /// 501: a transfer coding other than chunked.
    Coding,
}

impl HeadError {
    pub(crate) fn status(self) -> StatusCode {
        match self {
            HeadError::LineTooLong => StatusCode::URI_TOO_LONG,
            HeadError::TooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            HeadError::Malformed(_) => StatusCode::BAD_REQUEST,
            HeadError::Version => StatusCode::HTTP_VERSION_NOT_SUPPORTED,
            HeadError::Coding => StatusCode::NOT_IMPLEMENTED,
        }
    }

    pub(crate) fn reason(self) -> &'static str {
        match self {
            HeadError::LineTooLong => "the request line is too long",
            HeadError::TooLarge => "the request head is too large or has too many fields",
            HeadError::Malformed(why) => why,
            HeadError::Version => "only HTTP/1.0 and HTTP/1.1 are served",
            HeadError::Coding => "only the chunked transfer coding is supported",
        }
    }
}

/// How a message's body is delimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Framing {
    /// No body.
    Empty,
    /// `Content-Length` bytes.
    Length(u64),
    /// Chunked transfer coding.
    Chunked,
    /// Until the connection closes (responses only).
    Close,
}

/// A parsed request head.
#[derive(Debug)]
pub(crate) struct RequestHead {
    pub method: Method,
    pub uri: Uri,
    pub version: Version,
    pub headers: HeaderMap,
    pub framing: Framing,
    /// `Expect: 100-continue`.
    pub expects_continue: bool,
    /// The client asked to keep the connection (1.1 unless `close`; 1.0 with `keep-alive`).
    pub keep_alive: bool,
}

/// The most header fields a head may have, whatever the limits say: the parser's slots live
/// on the stack.
pub(crate) const MAX_FIELDS: usize = 128;

/// Parses a request head at the start of `buf`: `Ok(None)` while it is incomplete (and
/// within limits), otherwise the head and its length in bytes.
pub(crate) fn parse_request(
    buf: &[u8],
    limits: &HeadLimits,
) -> Result<Option<(RequestHead, usize)>, HeadError> {
    // Blank lines before a request are to be ignored (RFC 9112, section 2.2).
    let skip = buf
        .iter()
        .take_while(|b| **b == b'\r' || **b == b'\n')
        .count();
    let buf = &buf[skip..];
    match memchr_newline(buf) {
        Some(at) if at > limits.line => return Err(HeadError::LineTooLong),
        None if buf.len() > limits.line => return Err(HeadError::LineTooLong),
        _ => {}
    }
    let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_FIELDS];
    let slots = &mut slots[..limits.fields.min(MAX_FIELDS)];
    let mut req = httparse::Request::new(&mut []);
    let status = req
        .parse_with_uninit_headers(buf, slots)
        .map_err(|e| match e {
            httparse::Error::TooManyHeaders => HeadError::TooLarge,
            httparse::Error::Version => HeadError::Version,
            httparse::Error::Token => HeadError::Malformed("malformed request: bad token"),
            httparse::Error::HeaderName => {
                HeadError::Malformed("malformed request: bad header name")
            }
            httparse::Error::HeaderValue => {
                HeadError::Malformed("malformed request: bad header value")
            }
            httparse::Error::NewLine => HeadError::Malformed("malformed request: bad line ending"),
            httparse::Error::Status => HeadError::Malformed("malformed request"),
        })?;
    let len = match status {
        httparse::Status::Partial => {
            if buf.len() > limits.head {
                return Err(HeadError::TooLarge);
            }
            return Ok(None);
        }
        httparse::Status::Complete(len) => len,
    };
    if len > limits.head {
        return Err(HeadError::TooLarge);
    }
    let version = match req.version {
        Some(0) => Version::HTTP_10,
        Some(1) => Version::HTTP_11,
        _ => return Err(HeadError::Version),
    };
    let method = Method::from_bytes(req.method.unwrap_or("").as_bytes())
        .map_err(|_| HeadError::Malformed("malformed request: bad method"))?;
    let target = req.path.unwrap_or("");
    let uri: Uri = target
        .parse()
        .map_err(|_| HeadError::Malformed("malformed request: bad request target"))?;
    let headers = header_map(req.headers, "malformed request: bad header")?;
    let framing = request_framing(&headers, version)?;
    if version == Version::HTTP_11 && !headers.contains_key(HOST) {
        return Err(HeadError::Malformed(
            "an HTTP/1.1 request needs a Host header",
        ));
    }
    let expects_continue = version == Version::HTTP_11
        && headers
            .get(EXPECT)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    let keep_alive = match version {
        Version::HTTP_11 => !has_token(&headers, CONNECTION, "close"),
        _ => has_token(&headers, CONNECTION, "keep-alive"),
    };
    Ok(Some((
        RequestHead {
            method,
            uri,
            version,
            headers,
            framing,
            expects_continue,
            keep_alive,
        },
        len + skip,
    )))
}

fn header_map(fields: &[httparse::Header<'_>], bad: &'static str) -> Result<HeaderMap, HeadError> {
    let mut headers = HeaderMap::with_capacity(fields.len());
    for h in fields {
        let name =
            HeaderName::from_bytes(h.name.as_bytes()).map_err(|_| HeadError::Malformed(bad))?;
        let value = HeaderValue::from_bytes(h.value).map_err(|_| HeadError::Malformed(bad))?;
        headers.append(name, value);
    }
    Ok(headers)
}

fn memchr_newline(buf: &[u8]) -> Option<usize> {
    buf.iter().position(|b| *b == b'\n')
}

/// Appends one header field line.
pub(crate) fn write_field(out: &mut Vec<u8>, name: &HeaderName, value: &HeaderValue) {
    out.extend_from_slice(name.as_str().as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(value.as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// Whether a comma-separated header (such as `Connection`) lists `token`.
pub(crate) fn has_token(headers: &HeaderMap, name: HeaderName, token: &str) -> bool {
    headers.get_all(name).iter().any(|v| {
        v.to_str()
            .is_ok_and(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    })
}

/// The request body's framing: chunked (the last coding must be chunked, and no other is
/// supported), a length (every `Content-Length` the same number), or none. Both together
/// are refused: a proxy and the server could disagree on where the request ends.
fn request_framing(headers: &HeaderMap, version: Version) -> Result<Framing, HeadError> {
    let mut codings = Vec::new();
    for v in headers.get_all(TRANSFER_ENCODING) {
        let s = v
            .to_str()
            .map_err(|_| HeadError::Malformed("malformed Transfer-Encoding"))?;
        codings.extend(
            s.split(',')
                .map(|t| t.trim().to_ascii_lowercase())
                .filter(|t| !t.is_empty()),
        );
    }
    let lengths = headers.get_all(CONTENT_LENGTH);
    if headers.contains_key(TRANSFER_ENCODING) && codings.is_empty() {
        return Err(HeadError::Malformed("an empty Transfer-Encoding"));
    }
    if !codings.is_empty() {
        if version == Version::HTTP_10 {
            return Err(HeadError::Malformed(
                "Transfer-Encoding in an HTTP/1.0 request",
            ));
        }
        if lengths.iter().next().is_some() {
            return Err(HeadError::Malformed(
                "both Transfer-Encoding and Content-Length",
            ));
        }
        if codings.last().map(String::as_str) != Some("chunked") {
            return Err(HeadError::Coding);
        }
        if codings.len() > 1 {
            return Err(HeadError::Coding);
        }
        return Ok(Framing::Chunked);
    }
    let mut length: Option<u64> = None;
    for v in lengths {
        for part in v.as_bytes().split(|b| *b == b',') {
            let part = part.trim_ascii();
            if part.is_empty() || !part.iter().all(u8::is_ascii_digit) || part.len() > 19 {
                return Err(HeadError::Malformed("malformed Content-Length"));
            }
            let n: u64 = std::str::from_utf8(part)
                .ok()
                .and_then(|s| s.parse().ok())
                .ok_or(HeadError::Malformed("malformed Content-Length"))?;
            match length {
                Some(l) if l != n => {
                    return Err(HeadError::Malformed("conflicting Content-Length values"));
                }
                _ => length = Some(n),
            }
        }
    }
    Ok(match length {
        Some(0) | None => Framing::Empty,
        Some(n) => Framing::Length(n),
    })
}

/// A parsed response head (for the client).
#[derive(Debug)]
pub(crate) struct ResponseHead {
    pub status: StatusCode,
    pub version: Version,
    pub headers: HeaderMap,
    pub framing: Framing,
    /// The server keeps the connection open after this response.
    pub keep_alive: bool,
}

/// Parses a response head to a request with `method`: `Ok(None)` while incomplete.
pub(crate) fn parse_response(
    buf: &[u8],
    method: &Method,
    limits: &HeadLimits,
) -> Result<Option<(ResponseHead, usize)>, HeadError> {
    let mut slots = [httparse::EMPTY_HEADER; MAX_FIELDS];
    let mut res = httparse::Response::new(&mut slots[..limits.fields.min(MAX_FIELDS)]);
    let status = res.parse(buf).map_err(|e| match e {
        httparse::Error::TooManyHeaders => HeadError::TooLarge,
        httparse::Error::Version => HeadError::Version,
        _ => HeadError::Malformed("malformed response head"),
    })?;
    let len = match status {
        httparse::Status::Partial if buf.len() > limits.head => return Err(HeadError::TooLarge),
        httparse::Status::Partial => return Ok(None),
        httparse::Status::Complete(len) => len,
    };
    let version = match res.version {
        Some(0) => Version::HTTP_10,
        Some(1) => Version::HTTP_11,
        _ => return Err(HeadError::Version),
    };
    let status = StatusCode::from_u16(res.code.unwrap_or(0))
        .map_err(|_| HeadError::Malformed("malformed response status"))?;
    let headers = header_map(res.headers, "malformed response header")?;
    let bodiless = method == Method::HEAD
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    let framing = if bodiless {
        Framing::Empty
    } else if headers.contains_key(TRANSFER_ENCODING) {
        if has_token(&headers, TRANSFER_ENCODING, "chunked") {
            Framing::Chunked
        } else {
            Framing::Close
        }
    } else {
        match headers.get(CONTENT_LENGTH) {
            Some(v) => {
                let n = v
                    .to_str()
                    .ok()
                    .and_then(|s| s.trim().parse::<u64>().ok())
                    .ok_or(HeadError::Malformed("malformed response Content-Length"))?;
                if n == 0 {
                    Framing::Empty
                } else {
                    Framing::Length(n)
                }
            }
            None => Framing::Close,
        }
    };
    let keep_alive = framing != Framing::Close
        && match version {
            Version::HTTP_11 => !has_token(&headers, CONNECTION, "close"),
            _ => has_token(&headers, CONNECTION, "keep-alive"),
        };
    Ok(Some((
        ResponseHead {
            status,
            version,
            headers,
            framing,
            keep_alive,
        },
        len,
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: HeadLimits = HeadLimits {
        line: 64,
        head: 256,
        fields: 8,
    };

    fn parse(buf: &[u8]) -> Result<Option<(RequestHead, usize)>, HeadError> {
        parse_request(buf, &LIMITS)
    }

    #[test]
    fn framing_follows_rfc_9112_and_refuses_ambiguity() {
        let (h, len) = parse(b"GET /a?b=1 HTTP/1.1\r\nHost: x\r\n\r\nrest")
            .unwrap()
            .unwrap();
        assert_eq!((h.framing, len, h.keep_alive), (Framing::Empty, 32, true));
        assert_eq!(h.uri.path(), "/a");
        let (h, _) = parse(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5, 5\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(h.framing, Framing::Length(5));
        let (h, _) = parse(b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(h.framing, Framing::Chunked);
        let (h, _) = parse(b"\r\nGET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n")
            .unwrap()
            .unwrap();
        assert!(h.keep_alive);
        for (bad, status) in [
            (&b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n"[..], 400),
            (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n", 400),
            (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999999999999\r\n\r\n", 400),
            (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n", 400),
            (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", 501),
            (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n", 501),
            (b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
            (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding:\r\nContent-Length: 3\r\n\r\n", 400),
            (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: ,\r\n\r\n", 400),
            (b"GET / HTTP/1.1\r\n\r\n", 400),
            (b"GET / HTTP/2.0\r\nHost: x\r\n\r\n", 505),
            (b"G\x01T / HTTP/1.1\r\nHost: x\r\n\r\n", 400),
        ] {
            let err = parse(bad).unwrap_err();
            assert_eq!(err.status().as_u16(), status, "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn limits_give_414_and_431_even_before_the_head_is_complete() {
        let long_line = format!("GET /{} HTTP/1.1\r\n", "a".repeat(100));
        assert_eq!(
            parse(long_line.as_bytes()).unwrap_err(),
            HeadError::LineTooLong
        );
        // No newline yet, but already longer than a request line may be.
        assert_eq!(parse(&[b'a'; 65]).unwrap_err(), HeadError::LineTooLong);
        let big = format!("GET / HTTP/1.1\r\nHost: x\r\nX: {}\r\n", "v".repeat(300));
        assert_eq!(parse(big.as_bytes()).unwrap_err(), HeadError::TooLarge);
        let many: String = (0..9).map(|i| format!("X{i}: v\r\n")).collect();
        let many = format!("GET / HTTP/1.1\r\nHost: x\r\n{many}\r\n");
        assert_eq!(parse(many.as_bytes()).unwrap_err(), HeadError::TooLarge);
        assert!(parse(b"GET / HTTP/1.1\r\nHost: x\r\n").unwrap().is_none());
    }
}
