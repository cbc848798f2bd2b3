//! Strings that have passed their rules: SKUs, slugs, session ids and email addresses.
//!
//! Each is checked once, where it enters (a path, a body, a cookie, a frame), and then
//! travels as its own type, so code further in neither re-checks a `String` nor forgets
//! to. Deserializing one runs the same check.

use std::{fmt, str::FromStr};

use serde::{de, Deserialize, Deserializer, Serialize, Serializer};
use thiserror::Error;

/// Defines a string newtype whose every value satisfies `$valid`.
macro_rules! validated_string {
    ($(#[$meta:meta])* $name:ident, $error:ident, $valid:path) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(String);

        impl $name {
            /// Checks `raw` against the rules, exactly as given (nothing is trimmed).
            pub fn parse(raw: &str) -> Result<Self, $error> {
                if $valid(raw) {
                    Ok(Self(raw.to_owned()))
                } else {
                    Err($error)
                }
            }

            /// The value as text.
            pub fn as_str(&self) -> &str {
                &self.0
            }

            /// The value as an owned `String`, without a copy.
            pub fn into_string(self) -> String {
                self.0
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl FromStr for $name {
            type Err = $error;

            fn from_str(raw: &str) -> Result<Self, $error> {
                Self::parse(raw)
            }
        }

        impl TryFrom<String> for $name {
            type Error = $error;

            fn try_from(raw: String) -> Result<Self, $error> {
                if $valid(&raw) {
                    Ok(Self(raw))
                } else {
                    Err($error)
                }
            }
        }

        impl From<$name> for String {
            fn from(value: $name) -> String {
                value.0
            }
        }

        impl PartialEq<str> for $name {
            fn eq(&self, other: &str) -> bool {
                self.0 == other
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                Self::try_from(String::deserialize(d)?).map_err(de::Error::custom)
            }
        }
    };
}

/// Why a string is not a SKU.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[error("a SKU is 1-64 ASCII letters, digits, '.', '-' or '_', starting with a letter or digit")]
pub struct SkuError;

/// Why a string is not a slug.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[error("a slug is 1-128 lowercase letters, digits or dashes, not starting with a dash")]
pub struct SlugError;

/// Why a string is not a session id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[error("a session id is 32 lowercase hexadecimal digits")]
pub struct SessionIdError;

/// Why a string is not an email address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[error("email is not a valid address")]
pub struct EmailError;

validated_string!(
    /// A stock-keeping unit: it names a variant in URLs, stock messages and SQL, so it
    /// is kept to characters that need no escaping anywhere.
    Sku,
    SkuError,
    is_sku
);

validated_string!(
    /// A product's URL key, also the catalog's sort key and its cursors' content.
    Slug,
    SlugError,
    is_slug
);

validated_string!(
    /// A shopper's session: the random id inside the signed cookie. Its fixed shape lets
    /// a cookie be refused before its signature is even computed.
    SessionId,
    SessionIdError,
    is_session_id
);

validated_string!(
    /// A plausible contact address: one `@`, a dotted domain, no spaces, at most 254
    /// characters. Deliverability is the mail system's business, not ours.
    Email,
    EmailError,
    is_email
);

impl Email {
    /// The customer behind the address, for per-customer limits: trimmed, lower-cased,
    /// with a `+tag` dropped from the local part, so `A@x.io`, `a@x.io` and
    /// `a+1@x.io` are one shopper and a tag cannot buy past a limit.
    pub fn customer(&self) -> String {
        let lower = self.0.trim().to_lowercase();
        match lower.rsplit_once('@') {
            Some((local, domain)) => {
                let local = local.split_once('+').map_or(local, |(l, _)| l);
                format!("{local}@{domain}")
            }
            None => lower,
        }
    }
}

impl SessionId {
    /// A new random session id (122 random bits).
    pub fn random() -> Self {
        Self(uuid::Uuid::new_v4().simple().to_string())
    }
}

fn is_sku(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.as_bytes()[0].is_ascii_alphanumeric()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-' || b == b'_')
}

fn is_slug(s: &str) -> bool {
    (1..=128).contains(&s.len())
        && !s.starts_with('-')
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

fn is_session_id(s: &str) -> bool {
    s.len() == 32
        && s.bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
}

fn is_email(s: &str) -> bool {
    let Some((local, domain)) = s.split_once('@') else {
        return false;
    };
    s.len() <= 254
        && !local.is_empty()
        && local.len() <= 64
        && domain.contains('.')
        && !domain.starts_with('.')
        && !domain.ends_with('.')
        && !domain.contains('@')
        && s.chars()
            .all(|c| c.is_ascii_graphic() || (!c.is_ascii() && !c.is_control()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slug_and_sku_rules() {
        assert!(Slug::parse("linen-shirt-2").is_ok());
        assert!(Slug::parse("-x").is_err());
        assert!(Slug::parse("Linen").is_err());
        assert!(Slug::parse("").is_err());
        assert!(Sku::parse("LS-001_M.blk").is_ok());
        assert!(Sku::parse("-LS").is_err());
        assert!(Sku::parse("a b").is_err());
        assert!(Sku::parse(&"x".repeat(65)).is_err());
        assert!(Sku::parse(&"x".repeat(64)).is_ok());
    }

    #[test]
    fn email_rules() {
        for good in ["a@b.co", "first.last+tag@shop.example.com"] {
            assert!(Email::parse(good).is_ok(), "{good}");
        }
        for bad in [
            "", "a", "a@b", "@b.co", "a@.co", "a@b.", "a b@c.de", "a@b@c.de", "a@b.co\n",
        ] {
            assert_eq!(Email::parse(bad), Err(EmailError), "{bad:?}");
        }
    }

    /// Guards against one shopper passing a per-customer limit by varying the case,
    /// padding or `+tag` of their address.
    #[test]
    fn one_customer_behind_many_spellings() {
        let customer = |s: &str| Email::parse(s).expect("valid").customer();
        for same in ["A@x.io", "a@x.io", "a+1@x.io", "A+Sale+2@X.IO"] {
            assert_eq!(customer(same), "a@x.io", "{same}");
        }
        assert_ne!(customer("b@x.io"), customer("a@x.io"));
        assert_eq!(
            customer("first.last+t@shop.example.com"),
            "first.last@shop.example.com"
        );
    }

    #[test]
    fn session_ids() {
        let id = SessionId::random();
        assert_eq!(SessionId::parse(id.as_str()), Ok(id.clone()));
        assert_ne!(SessionId::random(), id);
        for bad in [
            "",
            "0123456789abcdef0123456789abcde",
            "0123456789ABCDEF0123456789ABCDEF",
            "0123456789abcdef0123456789abcdeg",
            "../etc",
        ] {
            assert!(SessionId::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn deserializing_checks_the_rules_too() {
        use serde::de::{value::Error as DeError, IntoDeserializer as _};
        let sku = Sku::deserialize("A-1".into_deserializer()).map_err(|e: DeError| e);
        assert_eq!(sku, Ok(Sku("A-1".into())));
        let err = Sku::deserialize("a b".into_deserializer()).map_err(|e: DeError| e);
        assert!(err.is_err_and(|e| e.to_string().contains("a SKU is")));
        let email = Email::deserialize("a@b".into_deserializer()).map_err(|e: DeError| e);
        assert!(email.is_err());
        assert_eq!("A-1".parse::<Sku>(), Sku::try_from("A-1".to_owned()));
    }
}
