//! An order's lifecycle: the statuses it can have and the moves between them.

use std::{fmt, str::FromStr};

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Where an order stands. Stored and sent as its snake_case name, the same text the
/// database's CHECK constraint allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum OrderStatus {
    /// Committed at checkout; nothing paid yet.
    Placed,
    /// Payment received.
    Paid,
    /// Handed to the carrier.
    Shipped,
    /// Received by the shopper.
    Delivered,
    /// Called off before it shipped.
    Cancelled,
}

/// A status name that is not one of [`OrderStatus::ALL`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub struct UnknownStatus;

impl fmt::Display for UnknownStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("status must be one of ")?;
        for (i, s) in OrderStatus::ALL.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            f.write_str(s.as_str())?;
        }
        Ok(())
    }
}

impl OrderStatus {
    /// Every status, in lifecycle order.
    pub const ALL: [Self; 5] = [
        Self::Placed,
        Self::Paid,
        Self::Shipped,
        Self::Delivered,
        Self::Cancelled,
    ];

    /// The status's name, as stored and sent.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Placed => "placed",
            Self::Paid => "paid",
            Self::Shipped => "shipped",
            Self::Delivered => "delivered",
            Self::Cancelled => "cancelled",
        }
    }

    /// The status with this exact name.
    pub fn parse(name: &str) -> Result<Self, UnknownStatus> {
        Self::ALL
            .into_iter()
            .find(|s| s.as_str() == name)
            .ok_or(UnknownStatus)
    }

    /// Whether an order may move from `self` to `next`: placed → paid → shipped →
    /// delivered, and cancelled from placed or paid. Not enforced yet; the admin route
    /// still sets any status.
    pub fn can_become(self, next: Self) -> bool {
        use OrderStatus::{Cancelled, Delivered, Paid, Placed, Shipped};
        matches!(
            (self, next),
            (Placed, Paid) | (Paid, Shipped) | (Shipped, Delivered) | (Placed | Paid, Cancelled)
        )
    }
}

impl fmt::Display for OrderStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for OrderStatus {
    type Err = UnknownStatus;

    fn from_str(name: &str) -> Result<Self, UnknownStatus> {
        Self::parse(name)
    }
}

#[cfg(test)]
mod tests {
    use super::OrderStatus::{self, Cancelled, Delivered, Paid, Placed, Shipped};
    use super::UnknownStatus;

    #[test]
    fn names_round_trip() {
        for s in OrderStatus::ALL {
            assert_eq!(OrderStatus::parse(s.as_str()), Ok(s));
            assert_eq!(s.to_string().parse::<OrderStatus>(), Ok(s));
        }
        for bad in ["", "Placed", "refunded", " paid"] {
            assert_eq!(OrderStatus::parse(bad), Err(UnknownStatus), "{bad:?}");
        }
        use serde::de::{value::Error as DeError, IntoDeserializer as _};
        use serde::Deserialize as _;
        let paid = OrderStatus::deserialize("paid".into_deserializer()).map_err(|e: DeError| e);
        assert_eq!(paid, Ok(Paid));
        assert_eq!(
            UnknownStatus.to_string(),
            "status must be one of placed, paid, shipped, delivered, cancelled"
        );
    }

    #[test]
    fn the_lifecycle_moves_forward_or_cancels_before_shipping() {
        let allowed = [
            (Placed, Paid),
            (Paid, Shipped),
            (Shipped, Delivered),
            (Placed, Cancelled),
            (Paid, Cancelled),
        ];
        for from in OrderStatus::ALL {
            for to in OrderStatus::ALL {
                assert_eq!(
                    from.can_become(to),
                    allowed.contains(&(from, to)),
                    "{from} -> {to}"
                );
            }
        }
    }
}
