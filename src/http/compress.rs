//! Response compression ([`Compress`]): actix-web's negotiation and encoder, spent only
//! where compressing pays.
//!
//! actix-web's own `Compress` parses each answer's content type and wraps its body
//! whether or not the client asked for compression, and gzips a 379-byte product
//! document, whose deflate state alone costs about fifteen times the rest of the
//! answer, to save a few hundred bytes. This one steps aside when the request has no
//! `Accept-Encoding`, and leaves bodies under [`MIN_COMPRESS_BYTES`] as they are (as
//! nginx's `gzip_min_length` does); otherwise it negotiates and encodes exactly as
//! actix-web does, a `406` for a request that refuses every encoding included.
//!
//! A body that is already in memory and shared (a list page or a storefront asset,
//! which their handlers keep and hand out again) is compressed once per worker thread
//! and encoding, and the compressed bytes handed out again ([`compressed_once`]).

use std::{
    cell::RefCell,
    future::{ready, Future, Ready},
    io::Write as _,
    pin::Pin,
    task::{ready as ready_poll, Context, Poll},
};

use actix_http::encoding::Encoder;
use actix_web::{
    body::{BodySize, BoxBody, EitherBody, MessageBody},
    dev::{Service, ServiceRequest, ServiceResponse, Transform},
    http::{
        header::{self, AcceptEncoding, ContentEncoding, Encoding, HeaderValue},
        StatusCode,
    },
    web::Bytes,
    Error, HttpMessage as _, HttpResponse,
};

/// Smallest body worth compressing, in bytes: below it, the encoder's set-up costs more
/// than the bytes it saves.
pub const MIN_COMPRESS_BYTES: u64 = 1024;

/// The encodings offered, in actix-web's order of preference (its `compress-gzip`
/// feature: gzip and deflate; identity always).
const SUPPORTED: [Encoding; 3] = [Encoding::identity(), Encoding::gzip(), Encoding::deflate()];

/// What a `406` names as acceptable.
const SUPPORTED_NAMES: &str = "gzip, deflate";

/// Compresses answers for clients that ask, when the body is large enough to gain.
#[derive(Debug, Clone, Copy, Default)]
pub struct Compress;

impl<S, B> Transform<S, ServiceRequest> for Compress
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = Error>,
    B: MessageBody,
{
    type Response = ServiceResponse<EitherBody<Encoder<B>>>;
    type Error = Error;
    type Transform = CompressService<S>;
    type InitError = ();
    type Future = Ready<Result<Self::Transform, Self::InitError>>;

    fn new_transform(&self, service: S) -> Self::Future {
        ready(Ok(CompressService { service }))
    }
}

/// [`Compress`] around a service.
pub struct CompressService<S> {
    service: S,
}

/// The encoding to use for a request's `Accept-Encoding`: `None` when it asks for
/// nothing in particular, `Err` when it refuses everything offered.
type Negotiated = Result<Option<ContentEncoding>, ()>;

/// [`Negotiated`] for a request's `Accept-Encoding`.
fn negotiate(accept: Option<AcceptEncoding>) -> Negotiated {
    let Some(accept) = accept else {
        return Ok(None);
    };
    match accept.negotiate(SUPPORTED.iter()) {
        Some(Encoding::Known(ContentEncoding::Identity)) => Ok(None),
        Some(Encoding::Known(encoding)) => Ok(Some(encoding)),
        // Every offered encoding is a known one.
        Some(Encoding::Unknown(_)) => Ok(None),
        None => Err(()),
    }
}

/// `Accept-Encoding` values a worker thread keeps with their outcome; past this many,
/// the oldest goes.
const NEGOTIATED_ENTRIES: usize = 8;

/// Longest `Accept-Encoding` value kept: a browser's is a few dozen bytes.
const MAX_NEGOTIATED_LEN: usize = 128;

thread_local! {
    static NEGOTIATED: RefCell<Vec<(HeaderValue, Negotiated)>> =
        const { RefCell::new(Vec::new()) };
}

/// [`negotiate`] for `req`, remembered per worker thread by the exact header value.
///
/// Every browser request carries `Accept-Encoding`, almost always one of a handful of
/// values, and actix-web parses it into a sorted list on every request: about 5,500
/// instructions, a sixth of a product answer. A value seen before costs a comparison.
/// Requests with several `Accept-Encoding` lines, or a long value, are negotiated afresh
/// every time.
fn negotiated(req: &ServiceRequest) -> Negotiated {
    let mut values = req.headers().get_all(header::ACCEPT_ENCODING);
    let Some(value) = values.next() else {
        return Ok(None);
    };
    let fresh = || negotiate(req.get_header::<AcceptEncoding>());
    if values.next().is_some() || value.len() > MAX_NEGOTIATED_LEN {
        return fresh();
    }
    let known = NEGOTIATED.with_borrow(|entries| {
        entries
            .iter()
            .find(|(v, _)| v.as_bytes() == value.as_bytes())
            .map(|(_, outcome)| *outcome)
    });
    if let Some(outcome) = known {
        return outcome;
    }
    let outcome = fresh();
    // A copy: the request's value shares the connection's read buffer.
    if let Ok(kept) = HeaderValue::from_bytes(value.as_bytes()) {
        NEGOTIATED.with_borrow_mut(|entries| {
            if entries.len() >= NEGOTIATED_ENTRIES {
                drop(entries.remove(0));
            }
            entries.push((kept, outcome));
        });
    }
    outcome
}

/// Whether `body` under `content_type` is worth compressing: large enough, and not an
/// image (but SVG) or a video, which are compressed already (actix-web's predicate).
fn worth_compressing(size: BodySize, content_type: Option<&HeaderValue>) -> bool {
    let large = match size {
        BodySize::None => false,
        BodySize::Sized(n) => n >= MIN_COMPRESS_BYTES,
        BodySize::Stream => true,
    };
    // The content type is parsed only for a body large enough to matter.
    large
        && content_type
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<mime::Mime>().ok())
            .is_none_or(|m| match m.type_() {
                mime::IMAGE => m.subtype() == mime::SVG,
                mime::VIDEO => false,
                _ => true,
            })
}

impl<S, B> Service<ServiceRequest> for CompressService<S>
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = Error>,
    B: MessageBody,
{
    type Response = ServiceResponse<EitherBody<Encoder<B>>>;
    type Error = Error;
    type Future = CompressFuture<S::Future>;

    actix_web::dev::forward_ready!(service);

    fn call(&self, req: ServiceRequest) -> Self::Future {
        match negotiated(&req) {
            Ok(encoding) => CompressFuture::Called {
                fut: self.service.call(req),
                encoding,
            },
            Err(()) => {
                let mut res = HttpResponse::with_body(StatusCode::NOT_ACCEPTABLE, SUPPORTED_NAMES);
                res.headers_mut()
                    .insert(header::VARY, HeaderValue::from_static("accept-encoding"));
                CompressFuture::Refused {
                    res: Some(req.into_response(res.map_into_boxed_body())),
                }
            }
        }
    }
}

pin_project_lite::pin_project! {
    /// The routed request, then its body encoded when that pays.
    #[project = CompressProj]
    pub enum CompressFuture<F> {
        /// The request went on.
        Called {
            #[pin]
            fut: F,
            encoding: Option<ContentEncoding>,
        },
        /// The request refused every encoding: a `406`.
        Refused {
            res: Option<ServiceResponse>,
        },
    }
}

impl<F, B> Future for CompressFuture<F>
where
    F: Future<Output = Result<ServiceResponse<B>, Error>>,
    B: MessageBody,
{
    type Output = Result<ServiceResponse<EitherBody<Encoder<B>>>, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            CompressProj::Called { fut, encoding } => {
                let res = ready_poll!(fut.poll(cx))?;
                let encoding = *encoding;
                Poll::Ready(Ok(res.map_body(move |head, body| {
                    let encoding = encoding.filter(|_| {
                        worth_compressing(body.size(), head.headers.get(header::CONTENT_TYPE))
                    });
                    let Some(encoding) = encoding else {
                        return EitherBody::left(Encoder::response(
                            ContentEncoding::Identity,
                            head,
                            body,
                        ));
                    };
                    if head.headers.contains_key(header::CONTENT_ENCODING) {
                        // Encoded by its handler already: the encoder leaves it be.
                        return EitherBody::left(Encoder::response(encoding, head, body));
                    }
                    let bytes = match body.try_into_bytes() {
                        Ok(bytes) => bytes,
                        Err(body) => {
                            return EitherBody::left(Encoder::response(encoding, head, body))
                        }
                    };
                    // Shared: someone keeps these bytes to hand out again.
                    let once = (!bytes.is_unique())
                        .then(|| compressed_once(&bytes, encoding))
                        .flatten();
                    if let Some(compressed) = once {
                        mark_encoded(head, encoding);
                        return EitherBody::right(BoxBody::new(compressed));
                    }
                    EitherBody::right(BoxBody::new(Encoder::response(encoding, head, bytes)))
                })))
            }
            CompressProj::Refused { res } => match res.take() {
                Some(res) => Poll::Ready(Ok(res.map_into_right_body())),
                None => Poll::Pending,
            },
        }
    }
}

/// The headers of a body compressed with `encoding`, as actix-http's encoder sets them.
fn mark_encoded(head: &mut actix_web::dev::ResponseHead, encoding: ContentEncoding) {
    head.headers.insert(
        header::CONTENT_ENCODING,
        HeaderValue::from_static(encoding.as_str()),
    );
    head.headers
        .append(header::VARY, HeaderValue::from_static("accept-encoding"));
}

/// Shared bodies compressed by this worker thread; past this many, the oldest goes.
const COMPRESSED_ENTRIES: usize = 32;

/// Largest shared body compressed on the worker thread rather than streamed through
/// the encoder, which moves large chunks to a blocking thread.
const MAX_COMPRESSED_ONCE: usize = 256 * 1024;

/// One shared body and its compressed form. Holding `original` keeps its buffer alive,
/// so no other body can take its address while the entry lasts: the same address and
/// length is the same, unchangeable, bytes.
struct Compressed {
    original: Bytes,
    encoding: ContentEncoding,
    compressed: Bytes,
}

thread_local! {
    static COMPRESSED: RefCell<Vec<Compressed>> = const { RefCell::new(Vec::new()) };
}

/// `body` compressed with `encoding`, from this thread's entries or compressed now and
/// kept; `None` when it is too large to compress here or the encoding is not one of
/// ours.
fn compressed_once(body: &Bytes, encoding: ContentEncoding) -> Option<Bytes> {
    if body.len() > MAX_COMPRESSED_ONCE {
        return None;
    }
    let same = |c: &Compressed| {
        c.encoding == encoding
            && c.original.as_ptr() == body.as_ptr()
            && c.original.len() == body.len()
    };
    let hit = COMPRESSED.with_borrow(|entries| {
        entries
            .iter()
            .find(|c| same(c))
            .map(|c| c.compressed.clone())
    });
    if hit.is_some() {
        return hit;
    }
    let compressed = Bytes::from(compress(body, encoding)?);
    COMPRESSED.with_borrow_mut(|entries| {
        if entries.len() >= COMPRESSED_ENTRIES {
            entries.remove(0);
        }
        entries.push(Compressed {
            original: body.clone(),
            encoding,
            compressed: compressed.clone(),
        });
    });
    Some(compressed)
}

/// `bytes` encoded as actix-http's encoder encodes them (fast level; deflate is zlib).
fn compress(bytes: &[u8], encoding: ContentEncoding) -> Option<Vec<u8>> {
    let level = flate2::Compression::fast();
    let out = Vec::with_capacity(bytes.len() / 4 + 64);
    match encoding {
        ContentEncoding::Gzip => {
            let mut e = flate2::write::GzEncoder::new(out, level);
            e.write_all(bytes).ok()?;
            e.finish().ok()
        }
        ContentEncoding::Deflate => {
            let mut e = flate2::write::ZlibEncoder::new(out, level);
            e.write_all(bytes).ok()?;
            e.finish().ok()
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use actix_web::{test, web, App};

    use super::*;

    const SMALL: &str = "{\"small\":true}";

    fn large() -> String {
        "{\"items\":[".to_owned() + &"{\"slug\":\"tee\"},".repeat(200) + "{}]}"
    }

    async fn get(accept: Option<&str>, path: &str) -> (StatusCode, Option<String>, Vec<u8>) {
        let app = test::init_service(
            App::new()
                .route(
                    "/small",
                    web::get().to(|| async {
                        HttpResponse::Ok()
                            .content_type("application/json")
                            .body(SMALL)
                    }),
                )
                .route(
                    "/large",
                    web::get().to(|| async {
                        HttpResponse::Ok()
                            .content_type("application/json")
                            .body(large())
                    }),
                )
                .route(
                    "/png",
                    web::get().to(|| async {
                        HttpResponse::Ok().content_type("image/png").body(large())
                    }),
                )
                .wrap(Compress),
        )
        .await;
        let mut req = test::TestRequest::get().uri(path);
        if let Some(accept) = accept {
            req = req.insert_header((header::ACCEPT_ENCODING, accept));
        }
        let res = test::call_service(&app, req.to_request()).await;
        let status = res.status();
        let encoding = res
            .headers()
            .get(header::CONTENT_ENCODING)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let body = test::read_body(res).await.to_vec();
        (status, encoding, body)
    }

    fn gunzip(bytes: &[u8]) -> String {
        use std::io::Read as _;
        let mut out = String::new();
        flate2::read::GzDecoder::new(bytes)
            .read_to_string(&mut out)
            .expect("gzip");
        out
    }

    /// Guards what clients see: a large body is compressed when asked for, exactly as
    /// actix-web's middleware compresses it, and never otherwise.
    #[actix_web::test]
    async fn large_bodies_are_compressed_when_asked_and_only_then() {
        let (status, encoding, body) = get(Some("gzip, deflate, br"), "/large").await;
        assert_eq!(status, 200);
        assert_eq!(encoding.as_deref(), Some("gzip"));
        assert_eq!(gunzip(&body), large());
        let (_, encoding, body) = get(None, "/large").await;
        assert_eq!(encoding, None);
        assert_eq!(body, large().as_bytes());
        let (_, encoding, _) = get(Some("identity"), "/large").await;
        assert_eq!(encoding, None);
        let (_, encoding, _) = get(Some("gzip"), "/png").await;
        assert_eq!(encoding, None, "images are compressed already");
    }

    /// Guards the remembered negotiation: every value, the first time and again, and
    /// once more after enough others pushed it out, gets what parsing it afresh gets; a
    /// request with two `Accept-Encoding` lines is negotiated over both.
    #[actix_web::test]
    async fn a_remembered_negotiation_is_the_fresh_one() {
        let values = [
            "gzip, deflate, br",
            "gzip, deflate, br, zstd",
            "gzip",
            "br",
            "identity",
            "identity;q=0",
            "*;q=0",
            "identity;q=0, *;q=0",
            "gzip;q=0, deflate;q=0.5",
            "deflate;q=0.5, gzip;q=0.4",
            "*",
            "",
            "nonsense;;q=x",
            "GZIP",
        ];
        let fresh = |values: &[&str]| {
            let mut req = test::TestRequest::default();
            for v in values {
                req = req.append_header((header::ACCEPT_ENCODING, *v));
            }
            let req = req.to_srv_request();
            (
                negotiate(req.get_header::<AcceptEncoding>()),
                negotiated(&req),
            )
        };
        for _ in 0..3 {
            for v in values {
                let (expected, remembered) = fresh(&[v]);
                assert_eq!(remembered, expected, "{v:?}");
            }
        }
        let (expected, both) = fresh(&["identity;q=0", "gzip"]);
        assert_eq!(both, expected);
        assert_eq!(both, Ok(Some(ContentEncoding::Gzip)));
        assert_eq!(fresh(&["*;q=0"]).1, Err(()));
        let none = test::TestRequest::default().to_srv_request();
        assert_eq!(negotiated(&none), Ok(None));
    }

    /// Guards against paying the encoder's set-up for a body it cannot shrink.
    #[actix_web::test]
    async fn small_bodies_are_sent_as_they_are() {
        let (status, encoding, body) = get(Some("gzip"), "/small").await;
        assert_eq!(status, 200);
        assert_eq!(encoding, None);
        assert_eq!(body, SMALL.as_bytes());
    }

    /// Guards the compressed-once path: a shared body is compressed once per encoding
    /// and reads back the same every time; another body at another address, even with
    /// the same bytes, is never served another's compression.
    #[actix_web::test]
    async fn a_shared_body_is_compressed_once_and_reads_back_the_same() {
        let body = Bytes::from(large());
        let first = compressed_once(&body, ContentEncoding::Gzip).expect("gzip");
        let again = compressed_once(&body.clone(), ContentEncoding::Gzip).expect("gzip");
        assert_eq!(first.as_ptr(), again.as_ptr(), "compressed once");
        assert_eq!(gunzip(&first), large());
        let deflated = compressed_once(&body, ContentEncoding::Deflate).expect("deflate");
        assert_ne!(deflated, first);
        let mut out = String::new();
        std::io::Read::read_to_string(&mut flate2::read::ZlibDecoder::new(&deflated[..]), &mut out)
            .expect("zlib");
        assert_eq!(out, large());
        let other = Bytes::from(large().replace("tee", "cap"));
        let other_gz = compressed_once(&other, ContentEncoding::Gzip).expect("gzip");
        assert_eq!(gunzip(&other_gz), large().replace("tee", "cap"));
        assert_eq!(compressed_once(&body, ContentEncoding::Brotli), None);
        let huge = Bytes::from(vec![b'a'; MAX_COMPRESSED_ONCE + 1]);
        assert_eq!(compressed_once(&huge, ContentEncoding::Gzip), None);
    }

    /// A handler's shared body (a cached page) goes out compressed with the encoder's
    /// headers, the same through the compressed-once path as through the encoder.
    #[actix_web::test]
    async fn a_shared_body_goes_out_compressed_like_any_other() {
        thread_local! {
            static PAGE: Bytes = Bytes::from(large());
        }
        let app = test::init_service(
            App::new()
                .route(
                    "/shared",
                    web::get().to(|| async {
                        HttpResponse::Ok()
                            .content_type("application/json")
                            .body(PAGE.with(Bytes::clone))
                    }),
                )
                .wrap(Compress),
        )
        .await;
        for _ in 0..2 {
            let req = test::TestRequest::get()
                .uri("/shared")
                .insert_header((header::ACCEPT_ENCODING, "gzip"))
                .to_request();
            let res = test::call_service(&app, req).await;
            assert_eq!(res.status(), 200);
            let h = |name| {
                res.headers()
                    .get(name)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned)
            };
            assert_eq!(h(header::CONTENT_ENCODING).as_deref(), Some("gzip"));
            assert_eq!(h(header::VARY).as_deref(), Some("accept-encoding"));
            assert_eq!(gunzip(&test::read_body(res).await), large());
        }
    }

    /// A request that refuses every encoding offered gets actix-web's `406`.
    #[actix_web::test]
    async fn refusing_every_encoding_is_not_acceptable() {
        let (status, _, body) = get(Some("identity;q=0, *;q=0"), "/small").await;
        assert_eq!(status, StatusCode::NOT_ACCEPTABLE);
        assert_eq!(body, SUPPORTED_NAMES.as_bytes());
    }
}
