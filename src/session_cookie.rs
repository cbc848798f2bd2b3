//! Signed session cookies. The cookie carries a random session id and an HMAC-SHA256
//! of it under `SURGE_SESSION_KEY`, so a client cannot forge or alter one; the server
//! keeps no session table.

use actix_web::cookie::{Cookie, SameSite};
use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine as _};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use surge_actors::validated::SessionId;

/// Name of the session cookie.
pub const COOKIE: &str = "surge_session";

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

    fn mac(&self, id: &SessionId) -> Hmac<Sha256> {
        // HMAC takes keys of any length.
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.key)
            .unwrap_or_else(|_| unreachable!("HMAC accepts any key length"));
        mac.update(id.as_str().as_bytes());
        mac
    }

    /// The cookie value for a session id.
    pub fn sign(&self, id: &SessionId) -> String {
        let tag = self.mac(id).finalize().into_bytes();
        format!("{id}.{}", URL_SAFE_NO_PAD.encode(tag))
    }

    /// The session id of a cookie value, if the signature holds (checked in constant time).
    pub fn verify(&self, value: &str) -> Option<SessionId> {
        let (id, tag) = value.split_once('.')?;
        let id = SessionId::parse(id).ok()?;
        let tag = URL_SAFE_NO_PAD.decode(tag).ok()?;
        self.mac(&id).verify_slice(&tag).ok()?;
        Some(id)
    }

    /// The session cookie with this value and the site's attributes.
    pub fn cookie(&self, value: String) -> Cookie<'static> {
        Cookie::build(COOKIE, value)
            .path("/")
            .http_only(true)
            .same_site(SameSite::Lax)
            .secure(self.secure)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_hold_and_tampering_fails() {
        let s = SessionSigner::new(Some(b"k".repeat(32)), false);
        let id = SessionId::random();
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
        assert_eq!(s.verify(id.as_str()), None, "no tag");
        assert_eq!(s.verify("../etc.x"), None);
    }
}
