//! A shopper's cart without IO: lines, version and reservation expiries.

use std::collections::BTreeMap;

use serde::Serialize;
use thiserror::Error;
use uuid::Uuid;

use crate::money::{self, Money, MoneyError};

/// Bounds on what one cart may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CartLimits {
    /// Largest quantity of one line.
    pub max_line_quantity: i64,
    /// Most lines in one cart.
    pub max_lines: usize,
    /// How long a reservation holds its units, in milliseconds.
    pub reservation_ttl_ms: i64,
    /// A checkout refuses lines that expire sooner than this, in milliseconds, so that
    /// an expiry never races a checkout.
    pub checkout_margin_ms: i64,
}

impl CartLimits {
    /// Most lines in one cart: enough for any shopper, small enough that one cart's
    /// batch stays small.
    pub const MAX_LINES: usize = 50;
}

/// Why a cart change or checkout was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum CartError {
    /// The quantity is outside 1..=max.
    #[error("quantity must be from 1 to {max}")]
    QuantityOutOfRange {
        /// The configured maximum.
        max: i64,
    },
    /// The cart already has the most lines allowed.
    #[error("a cart holds at most {max} lines")]
    TooManyLines {
        /// The configured maximum.
        max: usize,
    },
    /// Checkout of an empty cart.
    #[error("the cart is empty")]
    Empty,
    /// These lines' reservations have expired (or are about to).
    #[error("reservations expired for: {}", .0.join(", "))]
    Expired(Vec<String>),
    /// The total cannot be computed.
    #[error(transparent)]
    Money(#[from] MoneyError),
}

/// One line and the reservation that backs it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CartLine {
    /// The SKU.
    pub sku: String,
    /// Units reserved.
    pub quantity: i64,
    /// Price of one unit when reserved.
    pub unit_price: Money,
    /// When the reservation lapses, in Unix milliseconds.
    pub expires_at_ms: i64,
}

/// A cart; `version` rises with every durable change, so a stale copy can be detected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cart {
    /// Cart id.
    pub id: Uuid,
    /// Version of the last durable change.
    pub version: i64,
    /// Lines by SKU.
    pub lines: BTreeMap<String, CartLine>,
}

/// The rules of a line whose SKU is in a live campaign.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CampaignLine {
    /// The campaign.
    pub campaign_id: Uuid,
    /// Units one customer may have across `skus`, if limited.
    pub per_customer_limit: Option<i64>,
    /// Every SKU of the campaign.
    pub skus: Vec<String>,
    /// How long one hold lasts from the line's first reservation; never extended, so
    /// a shopper cannot keep scarce units from others by setting the line again.
    pub hold_ms: i64,
}

impl CampaignLine {
    /// Units `sku` may have in `cart` within the limit: the limit less the cart's
    /// other lines of the campaign. `None`: no limit.
    pub fn allowance(&self, cart: &Cart, sku: &str) -> Option<i64> {
        let others: i64 = self
            .skus
            .iter()
            .filter(|s| s.as_str() != sku)
            .map(|s| cart.quantity_of(s))
            .sum();
        self.per_customer_limit.map(|l| (l - others).max(0))
    }

    /// When the line's hold ends if set at `now_ms`: its first reservation's expiry
    /// when it has one, or `hold_ms` from now.
    pub fn expires_at_ms(&self, cart: &Cart, sku: &str, now_ms: i64) -> i64 {
        cart.lines
            .get(sku)
            .map_or(now_ms + self.hold_ms, |l| l.expires_at_ms)
    }
}

impl Cart {
    /// An empty cart.
    pub fn new(id: Uuid, version: i64) -> Self {
        Self {
            id,
            version,
            lines: BTreeMap::new(),
        }
    }

    /// Units of `sku` in the cart.
    pub fn quantity_of(&self, sku: &str) -> i64 {
        self.lines.get(sku).map_or(0, |l| l.quantity)
    }

    /// Checks a new quantity for a line and returns the change in reserved units.
    pub fn plan_set(
        &self,
        sku: &str,
        quantity: i64,
        limits: &CartLimits,
    ) -> Result<i64, CartError> {
        if !(1..=limits.max_line_quantity).contains(&quantity) {
            return Err(CartError::QuantityOutOfRange {
                max: limits.max_line_quantity,
            });
        }
        if !self.lines.contains_key(sku) && self.lines.len() >= limits.max_lines {
            return Err(CartError::TooManyLines {
                max: limits.max_lines,
            });
        }
        Ok(quantity - self.quantity_of(sku))
    }

    /// Records a durable change of a line (quantity 0 removes it) and bumps the version.
    pub fn apply_set(&mut self, sku: &str, quantity: i64, unit_price: Money, expires_at_ms: i64) {
        if quantity == 0 {
            self.lines.remove(sku);
        } else {
            self.lines.insert(
                sku.to_owned(),
                CartLine {
                    sku: sku.to_owned(),
                    quantity,
                    unit_price,
                    expires_at_ms,
                },
            );
        }
        self.version += 1;
    }

    /// Lines whose reservation has lapsed at `now_ms`.
    pub fn expired(&self, now_ms: i64) -> Vec<String> {
        self.lines
            .values()
            .filter(|l| l.expires_at_ms <= now_ms)
            .map(|l| l.sku.clone())
            .collect()
    }

    /// The earliest expiry, to schedule the next timer.
    pub fn next_expiry(&self) -> Option<i64> {
        self.lines.values().map(|l| l.expires_at_ms).min()
    }

    /// Sum of all lines.
    pub fn total(&self) -> Result<Option<Money>, MoneyError> {
        let mut amounts = Vec::with_capacity(self.lines.len());
        for l in self.lines.values() {
            amounts.push(l.unit_price.times(l.quantity)?);
        }
        money::sum(amounts)
    }

    /// Whether the cart can be turned into an order at `now_ms`.
    pub fn check_checkout(&self, now_ms: i64, limits: &CartLimits) -> Result<Money, CartError> {
        if self.lines.is_empty() {
            return Err(CartError::Empty);
        }
        let expired = self.expired(now_ms + limits.checkout_margin_ms);
        if !expired.is_empty() {
            return Err(CartError::Expired(expired));
        }
        self.total()?.ok_or(CartError::Empty)
    }

    /// Empties the cart after a checkout.
    pub fn clear(&mut self) {
        self.lines.clear();
        self.version += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Guards against a re-set line extending a campaign hold, and against a cart
    /// holding more of a campaign than one customer may buy.
    #[test]
    fn a_campaign_line_keeps_its_first_expiry_and_counts_the_other_lines() {
        let eur = Money::new(100, crate::money::Currency::parse("EUR").expect("valid"));
        let rule = CampaignLine {
            campaign_id: Uuid::nil(),
            per_customer_limit: Some(3),
            skus: vec!["A".into(), "B".into()],
            hold_ms: 1_000,
        };
        let mut cart = Cart::new(Uuid::nil(), 0);
        assert_eq!(rule.expires_at_ms(&cart, "A", 50), 1_050);
        cart.apply_set("A", 1, eur, 1_050);
        cart.apply_set("B", 2, eur, 900);
        assert_eq!(rule.expires_at_ms(&cart, "A", 700), 1_050, "not extended");
        assert_eq!(rule.allowance(&cart, "A"), Some(1));
        assert_eq!(rule.allowance(&cart, "B"), Some(2));
        let unlimited = CampaignLine {
            per_customer_limit: None,
            ..rule
        };
        assert_eq!(unlimited.allowance(&cart, "A"), None);
    }
    use crate::money::Currency;

    fn limits() -> CartLimits {
        CartLimits {
            max_line_quantity: 10,
            max_lines: CartLimits::MAX_LINES,
            reservation_ttl_ms: 15 * 60 * 1000,
            checkout_margin_ms: 1000,
        }
    }

    fn eur(minor: i64) -> Money {
        Money::new(minor, Currency::parse("EUR").expect("valid"))
    }

    #[test]
    fn plan_set_bounds_quantity_and_lines() {
        let limits = CartLimits {
            max_lines: 1,
            ..limits()
        };
        let mut cart = Cart::new(Uuid::nil(), 0);
        assert_eq!(
            cart.plan_set("A", 0, &limits),
            Err(CartError::QuantityOutOfRange { max: 10 })
        );
        assert_eq!(
            cart.plan_set("A", 11, &limits),
            Err(CartError::QuantityOutOfRange { max: 10 })
        );
        assert_eq!(cart.plan_set("A", 3, &limits), Ok(3));
        cart.apply_set("A", 3, eur(100), 1000);
        assert_eq!(cart.plan_set("A", 1, &limits), Ok(-2));
        assert_eq!(
            cart.plan_set("B", 1, &limits),
            Err(CartError::TooManyLines { max: 1 })
        );
        assert_eq!(cart.version, 1);
    }

    #[test]
    fn checkout_refuses_lines_about_to_expire() {
        let limits = limits();
        let mut cart = Cart::new(Uuid::nil(), 0);
        assert_eq!(cart.check_checkout(0, &limits), Err(CartError::Empty));
        cart.apply_set("A", 2, eur(150), 10_000);
        cart.apply_set("B", 1, eur(100), 100_000);
        assert_eq!(cart.check_checkout(0, &limits), Ok(eur(400)));
        assert_eq!(
            cart.check_checkout(9_500, &limits),
            Err(CartError::Expired(vec!["A".into()]))
        );
        assert_eq!(cart.next_expiry(), Some(10_000));
        assert_eq!(cart.expired(10_000), vec!["A".to_owned()]);
    }
}
