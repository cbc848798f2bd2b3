//! The OpenAPI description. Its paths are collected from the routes as they are
//! registered (see `http::routes`); this adds the title, the tags, the shared schemas,
//! the admin token and session cookie schemes, the limits that come from this node's
//! settings, and the links between operations. The same document tells the router
//! which methods each path serves (`405` with `Allow` for the others).

use actix_web::web::Bytes;
use serde_json::{json, Value};
use utoipa::{
    openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme},
    Modify, OpenApi,
};

use crate::{error, session_cookie::COOKIE};

/// What every document starts from.
#[derive(OpenApi)]
#[openapi(
    info(title = "Surge", description = "Real-time commerce server: catalog, carts, checkout and live stock."),
    components(schemas(error::ErrorBody, error::ErrorDetail)),
    modifiers(&SecuritySchemes),
    tags(
        (name = "catalog", description = "Products and live availability"),
        (name = "cart", description = "Cart, checkout, orders and campaign queues (signed session cookie)"),
        (name = "admin", description = "Catalog and stock management (bearer token)"),
        (name = "ops", description = "Health, readiness, metrics"),
    )
)]
struct Base;

/// The name of the session cookie's scheme in `components.securitySchemes`.
pub const SESSION_SCHEME: &str = "session_cookie";

struct SecuritySchemes;

impl Modify for SecuritySchemes {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "admin_token",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
        components.add_security_scheme(
            SESSION_SCHEME,
            SecurityScheme::ApiKey(ApiKey::Cookie(ApiKeyValue::with_description(
                COOKIE,
                "Signed session id (HMAC-SHA256 under SURGE_SESSION_KEY), HttpOnly, \
                 SameSite=Lax. Optional: a request without it gets a new session in \
                 `Set-Cookie`; a forged or altered one is refused with 400 \
                 `invalid_session` and cleared.",
            ))),
        );
    }
}

/// A link from an operation's answer to an operation it leads to:
/// `(path, method, status, link name, target operationId, parameters)`.
type Link = (
    &'static str,
    &'static str,
    &'static str,
    &'static str,
    &'static str,
    &'static [(&'static str, &'static str)],
);

/// The links of the document.
const LINKS: &[Link] = &[
    // No link from the product list: a search may match nothing, and a link whose
    // value is absent is an error to a stateful client. A product's page is reached
    // from the admin upsert's answer instead.
    (
        "/api/products/{slug}",
        "get",
        "200",
        "PutItem",
        "put_item",
        &[("sku", "$response.body#/variants/0/sku")],
    ),
    (
        "/api/cart/items/{sku}",
        "put",
        "200",
        "Checkout",
        "checkout",
        &[],
    ),
    (
        "/api/checkout",
        "post",
        "201",
        "GetOrder",
        "get_order",
        &[("id", "$response.body#/id")],
    ),
    (
        "/api/cart/items/{sku}",
        "put",
        "200",
        "GetCart",
        "get_cart",
        &[],
    ),
    (
        "/api/cart/items/{sku}",
        "put",
        "200",
        "DeleteItem",
        "delete_item",
        &[("sku", "$request.path.sku")],
    ),
    (
        "/api/admin/products",
        "post",
        "201",
        "GetProduct",
        "get_product",
        &[("slug", "$response.body#/slug")],
    ),
    (
        "/api/admin/campaigns",
        "post",
        "201",
        "GetCampaign",
        "get_campaign",
        &[("id", "$response.body#/id")],
    ),
    (
        "/api/admin/campaigns",
        "post",
        "201",
        "GetCampaignReport",
        "campaign_report",
        &[("id", "$response.body#/id")],
    ),
];

/// The HTTP methods an OpenAPI path item may name, as they are spelled there.
const METHODS: &[&str] = &[
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

/// Where a [`Constraint`] goes.
#[derive(Debug, Clone, Copy)]
pub enum Target {
    /// A property of a component schema: `(schema, property)`.
    Property(&'static str, &'static str),
    /// A parameter of an operation: `(path, method, name)`.
    Param(&'static str, &'static str, &'static str),
}

/// JSON Schema keywords (`pattern`, `minimum`, ...) merged into one schema of the
/// document.
#[derive(Debug, Clone)]
pub struct Constraint {
    /// The schema they go in.
    pub target: Target,
    /// The keywords, as a JSON object.
    pub facets: Value,
}

/// The document served at `/openapi.json`, encoded once.
pub struct ApiDocument {
    json: Bytes,
    /// Constraints whose schema the document lacks (none, unless a rename broke one).
    unapplied: Vec<String>,
    /// Each documented path, split into segments (`None` for a parameter), with the
    /// `Allow` value of its methods.
    methods: Vec<(Vec<Option<String>>, String)>,
}

impl ApiDocument {
    /// The base document with the paths and schemas collected from the routes, and the
    /// `constraints` the handlers enforce.
    pub fn new(collected: utoipa::openapi::OpenApi, constraints: &[Constraint]) -> Self {
        let mut doc = Base::openapi();
        doc.merge(collected);
        // A document of strings, numbers and maps always encodes.
        let mut doc = serde_json::to_value(&doc).unwrap_or_else(|_| json!({}));
        let unapplied = finish(&mut doc, constraints);
        let methods = allowed_methods(&doc);
        let json = serde_json::to_vec(&doc).unwrap_or_else(|_| b"{}".to_vec());
        Self {
            json: json.into(),
            unapplied,
            methods,
        }
    }

    /// The constraints that found no schema to go in, for a test to hold at zero.
    pub fn unapplied(&self) -> &[String] {
        &self.unapplied
    }

    /// The document as JSON (a cheap, shared copy).
    pub fn json(&self) -> Bytes {
        self.json.clone()
    }

    /// The `Allow` value of the documented path `path` matches, if any.
    pub fn allowed_methods(&self, path: &str) -> Option<String> {
        let segments: Vec<&str> = path.split('/').collect();
        self.methods
            .iter()
            .find(|(pattern, _)| {
                pattern.len() == segments.len()
                    && pattern.iter().zip(&segments).all(|(p, s)| match p {
                        Some(literal) => literal == s,
                        None => !s.is_empty(),
                    })
            })
            .map(|(_, allow)| allow.clone())
    }
}

/// What the collected document cannot say by itself: the constraints, the session
/// cookie of the shopper operations, and the links between operations.
fn finish(doc: &mut Value, constraints: &[Constraint]) -> Vec<String> {
    let mut unapplied = Vec::new();
    for c in constraints {
        let schema = match c.target {
            Target::Property(schema, property) => doc.pointer_mut(&format!(
                "/components/schemas/{}/properties/{}",
                escape(schema),
                escape(property)
            )),
            Target::Param(path, method, name) => doc
                .pointer_mut(&format!("/paths/{}/{method}/parameters", escape(path)))
                .and_then(Value::as_array_mut)
                .and_then(|params| params.iter_mut().find(|p| p["name"] == name))
                .and_then(|p| p.get_mut("schema")),
        };
        match schema {
            Some(schema) => merge(schema, &c.facets),
            None => unapplied.push(format!("{:?}", c.target)),
        }
    }
    // The shopper operations (tag `cart`) take the session cookie, or make one.
    if let Some(paths) = doc.get_mut("paths").and_then(Value::as_object_mut) {
        for item in paths.values_mut().filter_map(Value::as_object_mut) {
            for op in item.values_mut() {
                let shopper = op["tags"]
                    .as_array()
                    .is_some_and(|tags| tags.iter().any(|t| t == "cart"));
                if shopper {
                    op["security"] = json!([{}, {SESSION_SCHEME: []}]);
                }
            }
        }
    }
    for (path, method, status, name, target, parameters) in LINKS {
        let pointer = format!("/paths/{}/{method}/responses/{status}", escape(path));
        if let Some(response) = doc.pointer_mut(&pointer) {
            let parameters: serde_json::Map<String, Value> = parameters
                .iter()
                .map(|(k, v)| ((*k).to_owned(), json!(v)))
                .collect();
            response["links"][*name] = json!({
                "operationId": target,
                "parameters": parameters,
            });
        } else {
            unapplied.push(format!("link {name} of {method} {path} {status}"));
        }
    }
    unapplied
}

/// Merges the keywords of `facets` into `schema`, objects key by key.
fn merge(schema: &mut Value, facets: &Value) {
    match (schema, facets) {
        (Value::Object(schema), Value::Object(facets)) => {
            for (k, v) in facets {
                match schema.get_mut(k) {
                    Some(existing) if existing.is_object() && v.is_object() => merge(existing, v),
                    _ => {
                        schema.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        (schema, facets) => *schema = facets.clone(),
    }
}

/// A JSON pointer's escape of one key.
fn escape(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

/// Each documented path's segments and the `Allow` value of its methods (`HEAD` with
/// every `GET`).
fn allowed_methods(doc: &Value) -> Vec<(Vec<Option<String>>, String)> {
    let Some(paths) = doc["paths"].as_object() else {
        return Vec::new();
    };
    paths
        .iter()
        .map(|(path, item)| {
            let pattern = path
                .split('/')
                .map(|seg| (!seg.starts_with('{')).then(|| seg.to_owned()))
                .collect();
            let mut allow: Vec<String> = METHODS
                .iter()
                .filter(|m| item.get(**m).is_some())
                .map(|m| m.to_uppercase())
                .collect();
            if allow.iter().any(|m| m == "GET") && !allow.iter().any(|m| m == "HEAD") {
                allow.push("HEAD".to_owned());
            }
            (pattern, allow.join(", "))
        })
        .collect()
}
