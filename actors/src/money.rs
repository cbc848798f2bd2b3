//! Integer money: minor units plus an ISO 4217 currency, never a float.

use std::fmt;

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Why a money operation was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum MoneyError {
    /// The result does not fit in 64 bits.
    #[error("amount overflows")]
    Overflow,
    /// Two amounts in different currencies were combined.
    #[error("cannot combine {0} and {1}")]
    CurrencyMismatch(String, String),
    /// A currency code is not three uppercase letters.
    #[error("invalid currency code")]
    InvalidCurrency,
}

/// A three-letter ISO 4217 code, validated once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Currency([u8; 3]);

impl Currency {
    /// Parses `EUR`-style codes.
    pub fn parse(code: &str) -> Result<Self, MoneyError> {
        let b = code.trim().as_bytes();
        if b.len() == 3 && b.iter().all(u8::is_ascii_uppercase) {
            Ok(Self([b[0], b[1], b[2]]))
        } else {
            Err(MoneyError::InvalidCurrency)
        }
    }

    /// The code as text.
    pub fn as_str(&self) -> &str {
        // Only ASCII uppercase letters are ever stored.
        std::str::from_utf8(&self.0).unwrap_or("XXX")
    }
}

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for Currency {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Currency {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// An amount of money.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Money {
    /// Amount in minor units (cents for EUR).
    pub minor: i64,
    /// Currency of the amount.
    pub currency: Currency,
}

impl Money {
    /// Builds an amount.
    pub fn new(minor: i64, currency: Currency) -> Self {
        Self { minor, currency }
    }

    /// Sum of two amounts in the same currency.
    pub fn checked_add(self, other: Money) -> Result<Money, MoneyError> {
        if self.currency != other.currency {
            return Err(MoneyError::CurrencyMismatch(
                self.currency.to_string(),
                other.currency.to_string(),
            ));
        }
        let minor = self
            .minor
            .checked_add(other.minor)
            .ok_or(MoneyError::Overflow)?;
        Ok(Money::new(minor, self.currency))
    }

    /// This amount times a quantity.
    pub fn times(self, quantity: i64) -> Result<Money, MoneyError> {
        let minor = self
            .minor
            .checked_mul(quantity)
            .ok_or(MoneyError::Overflow)?;
        Ok(Money::new(minor, self.currency))
    }
}

/// Sum of amounts; `None` for an empty list.
pub fn sum(amounts: impl IntoIterator<Item = Money>) -> Result<Option<Money>, MoneyError> {
    let mut total: Option<Money> = None;
    for m in amounts {
        total = Some(match total {
            None => m,
            Some(t) => t.checked_add(m)?,
        });
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn eur() -> Currency {
        Currency::parse("EUR").expect("valid")
    }

    #[test]
    fn currency_codes() {
        assert!(Currency::parse("EUR").is_ok());
        for bad in ["eur", "EU", "EURO", "E1R", ""] {
            assert_eq!(
                Currency::parse(bad),
                Err(MoneyError::InvalidCurrency),
                "{bad}"
            );
        }
    }

    #[test]
    fn mixing_currencies_is_refused() {
        let usd = Currency::parse("USD").expect("valid");
        let err = Money::new(1, eur()).checked_add(Money::new(1, usd));
        assert!(matches!(err, Err(MoneyError::CurrencyMismatch(..))));
    }

    #[test]
    fn overflow_is_an_error_not_a_wrap() {
        assert_eq!(
            Money::new(i64::MAX, eur()).times(2),
            Err(MoneyError::Overflow)
        );
        assert_eq!(
            Money::new(i64::MAX, eur()).checked_add(Money::new(1, eur())),
            Err(MoneyError::Overflow)
        );
    }

    proptest! {
        #[test]
        fn sum_of_lines_equals_integer_arithmetic(lines in proptest::collection::vec((0i64..1_000_000, 1i64..100), 0..20)) {
            let amounts: Vec<Money> = lines.iter().map(|(p, q)| Money::new(*p, eur()).times(*q).expect("fits")).collect();
            let expected: i64 = lines.iter().map(|(p, q)| p * q).sum();
            let total = sum(amounts).expect("same currency");
            prop_assert_eq!(total.map_or(0, |m| m.minor), expected);
        }
    }
}
