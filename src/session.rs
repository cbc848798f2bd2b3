//! Shopper sessions on the routes that need one. Each such route (or scope) wraps itself
//! in [`Sessions`], which verifies the signed cookie, creates a session when there is
//! none (within the new-sessions-per-IP limit), and hands the handler a [`Session`];
//! every other route never sees a cookie.

use std::{
    future::{ready, Ready},
    rc::Rc,
};

use actix_web::{
    body::{BoxBody, MessageBody},
    dev::{forward_ready, Payload, Service, ServiceRequest, ServiceResponse, Transform},
    http::{header, StatusCode},
    web, FromRequest, HttpMessage as _, HttpRequest, ResponseError as _,
};
use futures_util::future::LocalBoxFuture;
use surge_actors::validated::SessionId;

use crate::{
    error::{error_response, ApiError},
    session_cookie::COOKIE,
    state::AppState,
};

/// The caller's session, put in request extensions by [`Sessions`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    /// The random id the cookie carries.
    pub id: SessionId,
    /// Created by this request: nothing of it exists in PostgreSQL yet.
    pub fresh: bool,
}

/// What a cookie whose signature fails gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BadCookie {
    /// 400 `invalid_session`, clearing the cookie so that the browser starts afresh.
    Refuse,
    /// A fresh session, set in the response.
    Replace,
}

/// Middleware of the routes that belong to a shopper's session.
#[derive(Debug, Clone, Copy)]
pub struct Sessions {
    bad_cookie: BadCookie,
}

impl Sessions {
    /// For the API: an invalid cookie is refused with 400 and cleared, so the shopper
    /// learns that the cart it names is not theirs instead of silently losing it.
    pub fn api() -> Self {
        Self {
            bad_cookie: BadCookie::Refuse,
        }
    }

    /// For the WebSocket handshake: a browser ignores cookies on a refused handshake,
    /// so a stale cookie (say, after a key change) gets a fresh session in the upgrade
    /// response instead.
    pub fn socket() -> Self {
        Self {
            bad_cookie: BadCookie::Replace,
        }
    }
}

impl<S, B> Transform<S, ServiceRequest> for Sessions
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = actix_web::Error> + 'static,
    B: MessageBody + 'static,
{
    type Response = ServiceResponse<BoxBody>;
    type Error = actix_web::Error;
    type Transform = SessionService<S>;
    type InitError = ();
    type Future = Ready<Result<Self::Transform, Self::InitError>>;

    fn new_transform(&self, service: S) -> Self::Future {
        ready(Ok(SessionService {
            service: Rc::new(service),
            bad_cookie: self.bad_cookie,
        }))
    }
}

/// [`Sessions`] around one route or scope.
pub struct SessionService<S> {
    service: Rc<S>,
    bad_cookie: BadCookie,
}

impl<S, B> Service<ServiceRequest> for SessionService<S>
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = actix_web::Error> + 'static,
    B: MessageBody + 'static,
{
    type Response = ServiceResponse<BoxBody>;
    type Error = actix_web::Error;
    type Future = LocalBoxFuture<'static, Result<Self::Response, Self::Error>>;

    forward_ready!(service);

    fn call(&self, req: ServiceRequest) -> Self::Future {
        let service = Rc::clone(&self.service);
        let bad_cookie = self.bad_cookie;
        Box::pin(async move {
            let Some(state) = req.app_data::<web::Data<AppState>>().cloned() else {
                return Err(ApiError::Internal(anyhow::anyhow!("no session signer")).into());
            };
            let signer = &state.sessions;
            let (id, fresh) = match req.cookie(COOKIE) {
                None => (SessionId::random(), true),
                Some(c) => match (signer.verify(c.value()), bad_cookie) {
                    (Some(id), _) => (id, false),
                    (None, BadCookie::Replace) => (SessionId::random(), true),
                    (None, BadCookie::Refuse) => {
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
            };
            if fresh {
                let ip = state.rate_limits.proxies().client_of(req.request());
                if let Err(refusal) = state.rate_limits.new_session(ip) {
                    let resp = ApiError::from(refusal).error_response();
                    return Ok(req.into_response(resp));
                }
            }
            let cookie = fresh.then(|| signer.cookie(signer.sign(&id)));
            req.extensions_mut().insert(Session { id, fresh });
            let mut res = service.call(req).await?.map_into_boxed_body();
            if let Some(cookie) = cookie {
                if let Ok(value) = header::HeaderValue::from_str(&cookie.to_string()) {
                    res.headers_mut().append(header::SET_COOKIE, value);
                }
            }
            Ok(res)
        })
    }
}

impl FromRequest for Session {
    type Error = ApiError;
    type Future = Ready<Result<Self, Self::Error>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        ready(req.extensions().get::<Session>().cloned().ok_or_else(|| {
            ApiError::Internal(anyhow::anyhow!(
                "session middleware missing on {}",
                req.path()
            ))
        }))
    }
}
