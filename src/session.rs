//! Signed session cookies. The cookie carries a random session id and an HMAC-SHA256
//! of it under `SURGE_SESSION_KEY`, so a client cannot forge or alter one; the server
//! keeps no session table.

use actix_web::{
    body::{BoxBody, MessageBody},
    cookie::{Cookie, SameSite},
    dev::{ServiceRequest, ServiceResponse},
    http::{header, StatusCode},
    middleware::Next,
    web, HttpMessage as _,
};
use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine as _};
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::{error::error_response, state::AppState};

/// Name of the session cookie.
pub const COOKIE: &str = "surge_session";

/// The caller's session, put in request extensions by [`attach`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    /// Random id (32 hex characters).
    pub id: String,
    /// Created by this request: nothing of it exists in PostgreSQL yet.
    pub fresh: bool,
}

/// Signs and verifies session cookies.
pub struct SessionSigner {
    key: Vec<u8>,
    secure: bool,
}

impl SessionSigner {
    /// A signer with `key`, or a random key (sessions then end with the process).
    pub fn new(key: Option<Vec<u8>>, secure: bool) -> Self {
        let key = key.unwrap_or_else(|| {
            let a = uuid::Uuid::new_v4();
            let b = uuid::Uuid::new_v4();
            [a.as_bytes().as_slice(), b.as_bytes().as_slice()].concat()
        });
        Self { key, secure }
    }

    fn mac(&self, id: &str) -> Hmac<Sha256> {
        // HMAC takes keys of any length.
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.key)
            .unwrap_or_else(|_| unreachable!("HMAC accepts any key length"));
        mac.update(id.as_bytes());
        mac
    }

    /// The cookie value for a session id.
    pub fn sign(&self, id: &str) -> String {
        let tag = self.mac(id).finalize().into_bytes();
        format!("{id}.{}", URL_SAFE_NO_PAD.encode(tag))
    }

    /// The session id of a cookie value, if the signature holds (checked in constant time).
    pub fn verify(&self, value: &str) -> Option<String> {
        let (id, tag) = value.split_once('.')?;
        if id.len() != 32
            || !id
                .bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        {
            return None;
        }
        let tag = URL_SAFE_NO_PAD.decode(tag).ok()?;
        self.mac(id).verify_slice(&tag).ok()?;
        Some(id.to_owned())
    }

    fn cookie(&self, value: String) -> Cookie<'static> {
        Cookie::build(COOKIE, value)
            .path("/")
            .http_only(true)
            .same_site(SameSite::Lax)
            .secure(self.secure)
            .finish()
    }
}

/// Paths that belong to a shopper's session.
fn needs_session(path: &str) -> bool {
    path.starts_with("/api/cart")
        || path.starts_with("/api/checkout")
        || path.starts_with("/api/orders")
        || path == "/ws"
}

/// Middleware: verifies the session cookie, creates a session when there is none, and
/// refuses an invalid cookie with 400 (clearing it, so the browser starts afresh).
pub async fn attach(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    if !needs_session(req.path()) {
        return Ok(next.call(req).await?.map_into_boxed_body());
    }
    let Some(state) = req.app_data::<web::Data<AppState>>().cloned() else {
        return Ok(next.call(req).await?.map_into_boxed_body());
    };
    let signer = &state.sessions;
    let (id, fresh) = match req.cookie(COOKIE) {
        Some(c) => match signer.verify(c.value()) {
            Some(id) => (id, false),
            // A browser ignores cookies on a refused WebSocket handshake, so a socket
            // with a stale cookie (say, after a key change) starts a fresh session in
            // its upgrade response instead; the API still refuses such a cookie.
            None if req.path() == "/ws" => (uuid::Uuid::new_v4().simple().to_string(), true),
            None => {
                let mut resp = error_response(
                    StatusCode::BAD_REQUEST,
                    "invalid_session",
                    "the session cookie is not valid; it has been cleared, retry",
                );
                let mut gone = signer.cookie(String::new());
                gone.make_removal();
                let _ = resp.add_cookie(&gone);
                return Ok(req.into_response(resp));
            }
        },
        None => (uuid::Uuid::new_v4().simple().to_string(), true),
    };
    req.extensions_mut().insert(Session {
        id: id.clone(),
        fresh,
    });
    let mut res = next.call(req).await?.map_into_boxed_body();
    if fresh {
        let cookie = signer.cookie(signer.sign(&id));
        if let Ok(value) = header::HeaderValue::from_str(&cookie.to_string()) {
            res.headers_mut().append(header::SET_COOKIE, value);
        }
    }
    Ok(res)
}

impl actix_web::FromRequest for Session {
    type Error = crate::error::ApiError;
    type Future = std::future::Ready<Result<Self, Self::Error>>;

    fn from_request(req: &actix_web::HttpRequest, _: &mut actix_web::dev::Payload) -> Self::Future {
        std::future::ready(req.extensions().get::<Session>().cloned().ok_or_else(|| {
            crate::error::ApiError::Internal(anyhow::anyhow!("session middleware missing"))
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_hold_and_tampering_fails() {
        let s = SessionSigner::new(Some(b"k".repeat(32)), false);
        let id = uuid::Uuid::new_v4().simple().to_string();
        let value = s.sign(&id);
        assert_eq!(s.verify(&value), Some(id.clone()));
        let other = SessionSigner::new(Some(b"x".repeat(32)), false);
        assert_eq!(other.verify(&value), None, "another key");
        let mut altered = value.clone().into_bytes();
        altered[0] = if altered[0] == b'a' { b'b' } else { b'a' };
        assert_eq!(
            s.verify(std::str::from_utf8(&altered).expect("ascii")),
            None,
            "altered id"
        );
        assert_eq!(s.verify(&format!("{id}.AAAA")), None, "forged tag");
        assert_eq!(s.verify(&id), None, "no tag");
        assert_eq!(s.verify("../etc.x"), None);
    }
}
