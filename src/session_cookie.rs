//! Signed session cookies. The cookie carries a random session id and an HMAC-SHA256
//! of it under `SURGE_SESSION_KEY`, so a client cannot forge or alter one; the server
//! keeps no session table.
//!
//! `SURGE_SESSION_KEY` may list several keys: the first signs new cookies and every one
//! of them verifies, so a key can be rotated (new key first, old one after it, until
//! the old cookies are gone) without logging every shopper out.

use actix_web::cookie::{Cookie, SameSite};
use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine as _};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use surge_actors::validated::SessionId;

/// Name of the session cookie.
pub const COOKIE: &str = "surge_session";

/// Signs and verifies session cookies.
pub struct SessionSigner {
    /// The signing key first, then the keys that only verify; never empty. Each is an
    /// HMAC with its key already absorbed (the inner and outer pads hashed once, here),
    /// cloned per cookie: half the hashing of keying it afresh every request.
    keys: Vec<Hmac<Sha256>>,
    secure: bool,
}

impl SessionSigner {
    /// A signer whose first key signs and all of whose keys verify; with no key, a
    /// random one (sessions then end with the process).
    pub fn new(keys: Vec<Vec<u8>>, secure: bool) -> Self {
        let keys = if keys.is_empty() {
            let a = uuid::Uuid::new_v4();
            let b = uuid::Uuid::new_v4();
            vec![[a.as_bytes().as_slice(), b.as_bytes().as_slice()].concat()]
        } else {
            keys
        };
        let keys = keys.iter().map(|k| Self::keyed(k)).collect();
        Self { keys, secure }
    }

    fn keyed(key: &[u8]) -> Hmac<Sha256> {
        // HMAC takes keys of any length.
        <Hmac<Sha256> as Mac>::new_from_slice(key)
            .unwrap_or_else(|_| unreachable!("HMAC accepts any key length"))
    }

    fn mac(key: &Hmac<Sha256>, id: &SessionId) -> Hmac<Sha256> {
        let mut mac = key.clone();
        mac.update(id.as_str().as_bytes());
        mac
    }

    /// The cookie value for a session id, signed with the first key.
    pub fn sign(&self, id: &SessionId) -> String {
        let mac = match self.keys.first() {
            Some(key) => Self::mac(key, id),
            None => Self::mac(&Self::keyed(&[]), id),
        };
        let tag = mac.finalize().into_bytes();
        format!("{id}.{}", URL_SAFE_NO_PAD.encode(tag))
    }

    /// The session id of a cookie value, if its signature holds under any of the keys
    /// (each checked in constant time).
    pub fn verify(&self, value: &str) -> Option<SessionId> {
        let (id, tag) = value.split_once('.')?;
        let id = SessionId::parse(id).ok()?;
        let tag = URL_SAFE_NO_PAD.decode(tag).ok()?;
        self.keys
            .iter()
            .any(|key| Self::mac(key, &id).verify_slice(&tag).is_ok())
            .then_some(id)
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
        let s = SessionSigner::new(vec![b"k".repeat(32)], false);
        let id = SessionId::random();
        let value = s.sign(&id);
        assert_eq!(s.verify(&value), Some(id.clone()));
        let other = SessionSigner::new(vec![b"x".repeat(32)], false);
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

    /// Guards the keyed HMACs made once per signer: a tag is exactly HMAC-SHA256 of the
    /// session id under the key, as keying the HMAC afresh for each cookie gives.
    #[test]
    fn a_tag_is_the_hmac_of_the_id_under_the_key() {
        let key = b"k".repeat(32);
        let s = SessionSigner::new(vec![key.clone()], false);
        for _ in 0..3 {
            let id = SessionId::random();
            let mut fresh = <Hmac<Sha256> as Mac>::new_from_slice(&key).expect("any length");
            fresh.update(id.as_str().as_bytes());
            let expected = URL_SAFE_NO_PAD.encode(fresh.finalize().into_bytes());
            assert_eq!(s.sign(&id), format!("{id}.{expected}"));
        }
    }

    /// Guards against a key rotation that logs every shopper out (an old key no longer
    /// verifying) or that keeps signing with the retiring key.
    #[test]
    fn the_first_key_signs_and_every_key_verifies() {
        let (old, new) = (b"o".repeat(32), b"n".repeat(32));
        let before = SessionSigner::new(vec![old.clone()], false);
        let id = SessionId::random();
        let old_cookie = before.sign(&id);
        let rotated = SessionSigner::new(vec![new.clone(), old], false);
        assert_eq!(rotated.verify(&old_cookie), Some(id.clone()), "old cookie");
        let new_cookie = rotated.sign(&id);
        assert_ne!(new_cookie, old_cookie, "signed with the new key");
        let only_new = SessionSigner::new(vec![new], false);
        assert_eq!(only_new.verify(&new_cookie), Some(id.clone()));
        assert_eq!(only_new.verify(&old_cookie), None, "the old key is retired");
        assert_eq!(before.verify(&new_cookie), None);
    }
}
