//! A shopper: one base URL (node) at a time and a one-cookie jar holding the signed
//! `surge_session` cookie the server sets on the first cart request.

use std::rc::Rc;

use actix_web::web::Bytes;
use awc::http::{header, Method};

use crate::http::{self, Failure, Reply};

/// Name of Surge's session cookie.
pub const COOKIE: &str = "surge_session";

/// A shopper session.
pub struct Session {
    client: awc::Client,
    base: Rc<str>,
    cookie: Option<String>,
}

/// What a `Set-Cookie` header means for the jar.
#[derive(Debug, PartialEq, Eq)]
pub enum CookieChange {
    /// Keep this `name=value` pair.
    Set(String),
    /// The server removed the cookie.
    Clear,
}

/// Reads one `Set-Cookie` value; `None` when it is about another cookie.
pub fn parse_set_cookie(value: &str) -> Option<CookieChange> {
    let mut parts = value.split(';').map(str::trim);
    let (name, val) = parts.next()?.split_once('=')?;
    if name != COOKIE {
        return None;
    }
    let removed = val.is_empty()
        || parts.any(|attr| {
            let lower = attr.to_ascii_lowercase();
            lower == "max-age=0" || lower.starts_with("max-age=-")
        });
    Some(if removed {
        CookieChange::Clear
    } else {
        CookieChange::Set(format!("{COOKIE}={val}"))
    })
}

impl Session {
    /// A fresh session (no cookie yet) talking to `base`.
    pub fn new(client: awc::Client, base: Rc<str>) -> Self {
        Self {
            client,
            base,
            cookie: None,
        }
    }

    /// A session that already has its cookie (`name=value`), e.g. from a warm-up.
    pub fn with_cookie(client: awc::Client, base: Rc<str>, cookie: Option<String>) -> Self {
        Self {
            client,
            base,
            cookie,
        }
    }

    /// The `name=value` cookie pair, once the server set one.
    pub fn cookie(&self) -> Option<&str> {
        self.cookie.as_deref()
    }

    /// The base URL it talks to.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// Moves the session to another node (the cookie goes along).
    pub fn set_base(&mut self, base: Rc<str>) {
        self.base = base;
    }

    /// Forgets the cookie: the next request starts a new session.
    pub fn reset(&mut self) {
        self.cookie = None;
    }

    fn request(&self, method: Method, path: &str) -> awc::ClientRequest {
        let mut req = self
            .client
            .request(method, format!("{}{}", self.base, path));
        if let Some(c) = &self.cookie {
            req = req.insert_header((header::COOKIE, c.as_str()));
        }
        req
    }

    fn absorb(&mut self, reply: &Reply) {
        for v in &reply.set_cookies {
            match parse_set_cookie(v) {
                Some(CookieChange::Set(c)) => self.cookie = Some(c),
                Some(CookieChange::Clear) => self.cookie = None,
                None => {}
            }
        }
    }

    async fn call(
        &mut self,
        req: awc::ClientRequest,
        body: Option<Bytes>,
    ) -> Result<Reply, Failure> {
        let reply = http::send(req, body).await?;
        self.absorb(&reply);
        Ok(reply)
    }

    /// `GET {base}{path}` with the session cookie.
    pub async fn get(&mut self, path: &str) -> Result<Reply, Failure> {
        let req = self.request(Method::GET, path);
        self.call(req, None).await
    }

    /// `POST {base}{path}` with no body and the session cookie.
    pub async fn post(&mut self, path: &str) -> Result<Reply, Failure> {
        let req = self.request(Method::POST, path);
        self.call(req, None).await
    }

    /// `PUT /api/cart/items/{sku}` with `{"quantity": q}`.
    pub async fn put_item(&mut self, sku: &str, quantity: i64) -> Result<Reply, Failure> {
        let req = self
            .request(Method::PUT, &format!("/api/cart/items/{sku}"))
            .insert_header((header::CONTENT_TYPE, "application/json"));
        let body = Bytes::from(format!("{{\"quantity\":{quantity}}}"));
        self.call(req, Some(body)).await
    }

    /// `DELETE /api/cart/items/{sku}`.
    pub async fn delete_item(&mut self, sku: &str) -> Result<Reply, Failure> {
        let req = self.request(Method::DELETE, &format!("/api/cart/items/{sku}"));
        self.call(req, None).await
    }

    /// `POST /api/checkout` with an `Idempotency-Key` and an email.
    pub async fn checkout(&mut self, key: &str, email: &str) -> Result<Reply, Failure> {
        let req = self
            .request(Method::POST, "/api/checkout")
            .insert_header((header::CONTENT_TYPE, "application/json"))
            .insert_header(("idempotency-key", key));
        let body = serde_json::json!({ "email": email }).to_string();
        self.call(req, Some(Bytes::from(body))).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_cookie_parsing() {
        assert_eq!(
            parse_set_cookie("surge_session=abc.def; Path=/; HttpOnly; SameSite=Lax"),
            Some(CookieChange::Set("surge_session=abc.def".into()))
        );
        assert_eq!(
            parse_set_cookie(
                "surge_session=; Path=/; Max-Age=0; Expires=Thu, 01 Jan 1970 00:00:00 GMT"
            ),
            Some(CookieChange::Clear)
        );
        assert_eq!(
            parse_set_cookie("surge_session=x; Max-Age=0"),
            Some(CookieChange::Clear)
        );
        assert_eq!(parse_set_cookie("other=1; Path=/"), None);
        assert_eq!(parse_set_cookie("garbage"), None);
    }
}
