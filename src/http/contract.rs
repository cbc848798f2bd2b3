//! The constraints the API enforces, written once: the handlers validate with these
//! constants and patterns, and [`constraints`] writes the same values into
//! `/openapi.json`, so the description and the validation cannot part.
//!
//! A request that breaks one of them is refused with `400`; a request that meets them
//! all but contradicts itself (two variants in different currencies, a window that
//! ends before it starts) with `422`, which no schema can express.

use std::{collections::BTreeMap, sync::OnceLock};

use regex_lite::Regex;
use serde::{de, Deserialize, Deserializer};
use serde_json::{json, Value};
use surge_actors::{campaign::MAX_TIMESTAMP_MS, validated::Email};

use super::{admin, products};
use crate::{
    error::ApiError,
    openapi::{Constraint, Target},
    ws::protocol::SKU_PATTERN,
};

/// What [`surge_actors::validated::Slug::parse`] accepts; a test holds the two together.
pub const SLUG_PATTERN: &str = "^[a-z0-9][a-z0-9-]{0,127}$";

/// A product cursor: a slug (the last one of the previous page), or empty for none.
pub const CURSOR_PATTERN: &str = "^([a-z0-9][a-z0-9-]{0,127})?$";

/// A display name: no control characters, and at least one character that is not a
/// space.
pub const NAME_PATTERN: &str = "^[^\\x00-\\x1f\\x7f]*[^\\x00-\\x20\\x7f][^\\x00-\\x1f\\x7f]*$";

/// Longest display name, in characters.
pub const MAX_NAME_CHARS: usize = 200;

/// Free text that PostgreSQL can store: anything but NUL.
pub const TEXT_PATTERN: &str = "^[^\\x00]*$";

/// A shopper's email as checkout takes it: visible ASCII, one `@`, at most 64
/// characters before it, and a domain with an inner dot, with spaces around it allowed
/// (a pasted address often has them; they are dropped). [`Email::parse`] accepts all of
/// these once the spaces are gone (and normalizes them); the pattern is the narrower
/// rule, so it is the one the API states and checks.
pub const EMAIL_PATTERN: &str =
    "^ *[!-?A-~]{1,64}@[!-\\-/-?A-~][!-?A-~]*\\.[!-?A-~]*[!-\\-/-?A-~] *$";

/// Longest email, in characters.
pub const MAX_EMAIL_CHARS: usize = 254;

/// An `Idempotency-Key`: 1 to 255 visible ASCII characters.
pub const IDEMPOTENCY_KEY_PATTERN: &str = "^[!-~]{1,255}$";

/// Largest positive value of an `INTEGER` column (limits, holds, admission rates).
pub const MAX_INT: i64 = i32::MAX as i64;

fn regex(cell: &'static OnceLock<Regex>, pattern: &str) -> &'static Regex {
    cell.get_or_init(|| Regex::new(pattern).unwrap_or_else(|e| unreachable!("{pattern}: {e}")))
}

/// Whether `name` is a display name ([`NAME_PATTERN`], at most [`MAX_NAME_CHARS`]).
pub fn is_name(name: &str) -> bool {
    static RE: OnceLock<Regex> = OnceLock::new();
    name.chars().count() <= MAX_NAME_CHARS && regex(&RE, NAME_PATTERN).is_match(name)
}

/// Whether `text` can be stored ([`TEXT_PATTERN`]).
pub fn is_text(text: &str) -> bool {
    !text.contains('\0')
}

/// The checkout email, checked against [`EMAIL_PATTERN`] as sent (so that what the
/// description refuses is refused), without the spaces around it.
pub fn checkout_email(raw: &str) -> Result<Email, ApiError> {
    static RE: OnceLock<Regex> = OnceLock::new();
    if raw.chars().count() > MAX_EMAIL_CHARS || !regex(&RE, EMAIL_PATTERN).is_match(raw) {
        return Err(ApiError::bad_request(
            "invalid_email",
            "email must be visible ASCII, name@domain.tld, at most 254 characters",
        ));
    }
    Ok(Email::parse(raw.trim_matches(' '))?)
}

/// Every constraint of the description, from the constants the handlers use.
pub fn constraints(max_line_quantity: i64) -> Vec<Constraint> {
    let sku = json!({"pattern": SKU_PATTERN, "minLength": 1, "maxLength": 64});
    let slug = json!({"pattern": SLUG_PATTERN, "minLength": 1, "maxLength": 128});
    let uuid = json!({"format": "uuid"});
    let name = json!({"pattern": NAME_PATTERN, "minLength": 1, "maxLength": MAX_NAME_CHARS});
    let positive_int = json!({"minimum": 1, "maximum": MAX_INT});
    let timestamp = json!({"minimum": 0, "maximum": MAX_TIMESTAMP_MS});
    let prop = |schema, property, facets: Value| Constraint {
        target: Target::Property(schema, property),
        facets,
    };
    let param = |path, method, name, facets: Value| Constraint {
        target: Target::Param(path, method, name),
        facets,
    };
    vec![
        param(
            "/api/products",
            "get",
            "q",
            json!({"maxLength": products::MAX_QUERY_CHARS}),
        ),
        param(
            "/api/products",
            "get",
            "limit",
            json!({"minimum": 1, "maximum": products::MAX_LIMIT, "type": "integer",
                   "default": products::DEFAULT_LIMIT}),
        ),
        param(
            "/api/products",
            "get",
            "cursor",
            json!({"pattern": CURSOR_PATTERN, "maxLength": 128}),
        ),
        param("/api/products/{slug}", "get", "slug", slug.clone()),
        param("/api/campaigns/{id}", "get", "id", uuid.clone()),
        param("/api/campaigns/{id}/queue", "get", "id", uuid.clone()),
        param("/api/campaigns/{id}/queue", "post", "id", uuid.clone()),
        param("/api/cart/items/{sku}", "put", "sku", sku.clone()),
        param("/api/cart/items/{sku}", "delete", "sku", sku.clone()),
        param(
            "/api/checkout",
            "post",
            "Idempotency-Key",
            json!({"pattern": IDEMPOTENCY_KEY_PATTERN, "minLength": 1, "maxLength": 255}),
        ),
        param("/api/orders/{id}", "get", "id", uuid.clone()),
        param(
            "/api/admin/inventory/{sku}/restock",
            "post",
            "sku",
            sku.clone(),
        ),
        param("/api/admin/orders/{id}/status", "post", "id", uuid.clone()),
        param("/api/admin/campaigns/{id}/report", "get", "id", uuid),
        prop(
            "QuantityBody",
            "quantity",
            json!({"minimum": 1, "maximum": max_line_quantity}),
        ),
        prop(
            "CheckoutBody",
            "email",
            json!({"pattern": EMAIL_PATTERN, "maxLength": MAX_EMAIL_CHARS}),
        ),
        prop("ProductUpsert", "slug", slug.clone()),
        prop("ProductUpsert", "name", name.clone()),
        prop(
            "ProductUpsert",
            "description",
            json!({"pattern": TEXT_PATTERN, "maxLength": admin::MAX_DESCRIPTION_CHARS}),
        ),
        prop(
            "ProductUpsert",
            "variants",
            json!({"minItems": 1, "maxItems": admin::MAX_VARIANTS}),
        ),
        prop("VariantUpsert", "sku", sku.clone()),
        prop(
            "VariantUpsert",
            "attributes",
            json!({
                "maxProperties": admin::MAX_ATTRIBUTES,
                "propertyNames": {"minLength": 1, "maxLength": admin::MAX_ATTRIBUTE_NAME_CHARS,
                                  "pattern": TEXT_PATTERN},
                "additionalProperties": {"type": "string", "pattern": TEXT_PATTERN,
                                         "maxLength": admin::MAX_ATTRIBUTE_VALUE_CHARS},
            }),
        ),
        prop(
            "VariantUpsert",
            "price_minor",
            json!({"minimum": 0, "maximum": admin::MAX_PRICE_MINOR}),
        ),
        prop(
            "VariantUpsert",
            "currency",
            json!({"pattern": "^[A-Z]{3}$"}),
        ),
        prop(
            "VariantUpsert",
            "stock",
            json!({"minimum": 0, "maximum": admin::MAX_STOCK}),
        ),
        prop(
            "Restock",
            "quantity",
            json!({"minimum": 1, "maximum": admin::MAX_RESTOCK}),
        ),
        prop(
            "StatusChange",
            "status",
            json!({"enum": surge_actors::order::OrderStatus::ALL.map(|s| s.as_str())}),
        ),
        prop("CampaignBody", "name", name),
        prop(
            "CampaignBody",
            "skus",
            json!({"minItems": 1, "items": sku.clone()}),
        ),
        prop("CampaignBody", "product_slug", slug),
        prop("CampaignBody", "starts_at_ms", timestamp.clone()),
        prop("CampaignBody", "ends_at_ms", timestamp),
        prop(
            "CampaignBody",
            "sale_price_minor",
            json!({"propertyNames": sku, "additionalProperties": {"type": "integer", "minimum": 1,
                   "format": "int64"}}),
        ),
        prop("CampaignBody", "per_customer_limit", positive_int.clone()),
        prop("CampaignBody", "hold_secs", positive_int.clone()),
        prop("CampaignQueueBody", "admit_per_second", positive_int),
    ]
}

/// An integer of a JSON body as JSON Schema counts them: `2` and `2.0` alike (a
/// number with no fraction is an integer there), so a client whose JSON library writes
/// every number as a float is not refused for it. For `#[serde(deserialize_with)]`.
pub fn int<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
    JsonInt::deserialize(d).map(|n| n.0)
}

/// [`int`] of an optional field (with `#[serde(default)]`).
pub fn int_opt<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    Option::<JsonInt>::deserialize(d).map(|n| n.map(|n| n.0))
}

/// [`int`] of every value of a map.
pub fn int_map<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<String, i64>, D::Error> {
    BTreeMap::<String, JsonInt>::deserialize(d)
        .map(|m| m.into_iter().map(|(k, v)| (k, v.0)).collect())
}

/// An `i64` that also reads from an integral float.
struct JsonInt(i64);

impl<'de> Deserialize<'de> for JsonInt {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl de::Visitor<'_> for Visitor {
            type Value = JsonInt;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an integer")
            }

            fn visit_i64<E: de::Error>(self, v: i64) -> Result<JsonInt, E> {
                Ok(JsonInt(v))
            }

            fn visit_u64<E: de::Error>(self, v: u64) -> Result<JsonInt, E> {
                i64::try_from(v)
                    .map(JsonInt)
                    .map_err(|_| E::invalid_value(de::Unexpected::Unsigned(v), &self))
            }

            fn visit_f64<E: de::Error>(self, v: f64) -> Result<JsonInt, E> {
                // -2^63 ..= 2^63 - 1024: every f64 in this range converts exactly.
                const LIMIT: f64 = 9_223_372_036_854_775_808.0;
                if v.fract() == 0.0 && (-LIMIT..LIMIT).contains(&v) {
                    #[allow(clippy::cast_possible_truncation)]
                    Ok(JsonInt(v as i64))
                } else {
                    Err(E::invalid_type(de::Unexpected::Float(v), &self))
                }
            }
        }
        d.deserialize_any(Visitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use surge_actors::validated::Slug;

    /// Guards against the slug pattern of the description and the slug rule of the
    /// server drifting apart.
    #[test]
    fn the_slug_pattern_is_slug_parse() {
        let re = Regex::new(SLUG_PATTERN).expect("valid");
        let long = "a".repeat(128);
        let too_long = "a".repeat(129);
        for s in [
            "a", "a-b", "0", "tee-2", &long, &too_long, "", "-a", "A", "a_b", "a b", "é", "a-",
            "a--b",
        ] {
            assert_eq!(re.is_match(s), Slug::parse(s).is_ok(), "{s:?}");
        }
    }

    /// Guards against a name the description allows being refused, or one it refuses
    /// being stored.
    #[test]
    fn names_and_emails_follow_their_patterns() {
        assert!(is_name("Tee"));
        assert!(is_name(" Tee "));
        assert!(is_name("Grün ✓"));
        assert!(!is_name(""));
        assert!(!is_name("   "));
        assert!(!is_name("a\nb"));
        assert!(!is_name("a\0"));
        assert!(!is_name(&"x".repeat(201)));
        assert!(is_name(&"é".repeat(200)), "characters, not bytes");
        for ok in [
            "a@b.c",
            "first.last+tag@example.co.uk",
            "x@a.b.c",
            " a@b.c  ",
        ] {
            assert!(checkout_email(ok).is_ok(), "{ok}");
        }
        for bad in [
            "", "a", "a@b", "@b.c", "a@.b", "a@b.", "a@@b.c", "\ta@b.c", "a@b.c\n", "  ",
            "a b@c.d", "ü@b.c",
        ] {
            assert!(checkout_email(bad).is_err(), "{bad:?}");
        }
        assert!(checkout_email(&format!("{}@b.c", "a".repeat(65))).is_err());
    }

    /// Guards against refusing `2.0` where the description says integer (JSON Schema
    /// counts it as one), and against accepting a fraction or an overflow.
    #[test]
    fn integral_floats_are_integers() {
        #[derive(Deserialize)]
        struct B {
            #[serde(deserialize_with = "int")]
            n: i64,
            #[serde(default, deserialize_with = "int_opt")]
            o: Option<i64>,
            #[serde(default, deserialize_with = "int_map")]
            m: BTreeMap<String, i64>,
        }
        let b: B = serde_json::from_str(r#"{"n": 4.0, "o": -2e3, "m": {"a": 1.0, "b": 2}}"#)
            .expect("integral floats");
        assert_eq!((b.n, b.o, b.m["a"], b.m["b"]), (4, Some(-2000), 1, 2));
        let b: B = serde_json::from_str(r#"{"n": 9223372036854775807, "o": null}"#).expect("max");
        assert_eq!((b.n, b.o), (i64::MAX, None));
        for bad in [
            r#"{"n": 1.5}"#,
            r#"{"n": "7"}"#,
            r#"{"n": 1e19}"#,
            r#"{"n": 9223372036854775808}"#,
            r#"{"n": 1, "o": 0.5}"#,
            r#"{"n": 1, "m": {"a": 0.1}}"#,
        ] {
            assert!(serde_json::from_str::<B>(bad).is_err(), "{bad}");
        }
    }
}
