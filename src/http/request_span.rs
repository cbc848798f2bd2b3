//! The root span of each request: a request id, the method, the path and, at the end,
//! the status. Lean on purpose: it is built for every request, and a flash sale makes
//! tens of thousands of them a second, most of them expected `409`s that need no log
//! line. Server errors are logged where they happen (`ApiError`).

use std::cell::Cell;

use actix_web::{dev::ServiceRequest, http::header::HeaderValue, http::StatusCode};
use tracing::Span;
use uuid::Uuid;

/// A request's id: a random (version 4) UUID, formatted once for both the
/// `x-request-id` header and the span.
///
/// Its 122 random bits come from a generator of the worker thread, seeded from the OS
/// once per thread, instead of one `getrandom` system call per request. It is unique
/// for correlating logs, not a secret: nothing may trust it.
#[derive(Clone, Copy)]
pub struct RequestId([u8; 36]);

impl RequestId {
    /// A fresh id.
    pub fn generate() -> Self {
        thread_local! {
            static STATE: Cell<u64> = Cell::new({
                let (a, b) = Uuid::new_v4().as_u64_pair();
                a ^ b.rotate_left(32)
            });
        }
        let (hi, lo) = STATE.with(|s| (splitmix64(s), splitmix64(s)));
        let mut bytes = [0u8; 16];
        bytes[..8].copy_from_slice(&hi.to_le_bytes());
        bytes[8..].copy_from_slice(&lo.to_le_bytes());
        Self::from_uuid(uuid::Builder::from_random_bytes(bytes).into_uuid())
    }

    fn from_uuid(id: Uuid) -> Self {
        let mut text = [0u8; 36];
        id.hyphenated().encode_lower(&mut text);
        Self(text)
    }

    /// The hyphenated lower-case form, as `Uuid`'s `Display` writes it.
    pub fn as_str(&self) -> &str {
        // Always ASCII: written by `encode_lower`.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }

    /// The `x-request-id` header value.
    pub fn header_value(&self) -> Option<HeaderValue> {
        HeaderValue::from_bytes(&self.0).ok()
    }
}

/// SplitMix64: a bijection of a counter, so one thread never repeats an output.
fn splitmix64(state: &Cell<u64>) -> u64 {
    let s = state.get().wrapping_add(0x9E37_79B9_7F4A_7C15);
    state.set(s);
    let mut z = s;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The span of `request`, before it is routed (so a `HEAD` shows as `HEAD`). Disabled,
/// and next to free, when `info` is off for this module.
///
/// Its values are plain strings rather than `Display` values: the log formatter writes
/// a string without a formatting call (`telemetry::PlainFields`), and this span is
/// formatted for every request.
pub fn start(request: &ServiceRequest, id: &RequestId) -> Span {
    tracing::info_span!(
        "request",
        request_id = id.as_str(),
        method = request.method().as_str(),
        path = request.path(),
        status = tracing::field::Empty,
    )
}

/// Records the status the request ended with, for what is logged while its body
/// streams (a socket's actor). An answer with a body of known size logs nothing after
/// this point, so its span is closed instead, unrecorded.
pub fn end(span: &mut Span, status: StatusCode, streamed: bool) {
    if streamed {
        span.record("status", status.as_u16());
    } else {
        *span = Span::none();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_id_is_the_uuid_as_uuid_formats_it() {
        for _ in 0..1000 {
            let id = RequestId::generate();
            let parsed = Uuid::parse_str(id.as_str()).expect("a UUID");
            assert_eq!(parsed.get_version_num(), 4);
            assert_eq!(parsed.get_variant(), uuid::Variant::RFC4122);
            assert_eq!(parsed.to_string(), id.as_str());
            let header = id.header_value().expect("a header value");
            assert_eq!(header.to_str().ok(), Some(id.as_str()));
        }
        let fixed = Uuid::parse_str("0f1e2d3c-4b5a-4978-8695-a4b3c2d1e0ff").expect("a UUID");
        assert_eq!(RequestId::from_uuid(fixed).as_str(), fixed.to_string());
    }

    #[test]
    fn request_ids_do_not_repeat() {
        let mut seen = std::collections::HashSet::new();
        for _ in 0..100_000 {
            assert!(seen.insert(RequestId::generate().as_str().to_owned()));
        }
        let other = std::thread::spawn(|| RequestId::generate().as_str().to_owned())
            .join()
            .expect("thread");
        assert!(!seen.contains(&other));
    }
}
