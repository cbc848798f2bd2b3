//! What a reaper pass gives back, without IO.
//!
//! A node that stops heartbeating leaves its lease rows behind (units it held but had
//! not handed out). Reservations can outlive their TTL too, whoever holds the cart: a
//! dead node, a restarted process under the same id, an evicted actor, a cart whose
//! load failed. The reaper reads those rows under the inventory lock, [`plan`] decides
//! which of them go back to `available` and what that moves per SKU, and the store
//! deletes exactly those rows and applies the movement.
//!
//! A reservation goes back once it has been expired for longer than the grace, with no
//! regard to its owner's liveness: a live cart actor normally expires its own lines
//! first, and if the reaper wins, the cart's version has moved, so the actor's next
//! write is refused as stale and it reloads instead of returning the units twice.

use std::{
    collections::{BTreeMap, BTreeSet},
    time::Duration,
};

use uuid::Uuid;

use crate::stock::Delta;

/// Which rows a pass takes back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope<'a> {
    /// Expired leases (their node stopped renewing them), and reservations expired for
    /// longer than the grace, whoever owns their cart.
    Dead {
        /// Reservations are reaped this long after they expire, so that a live owner's
        /// own expiry normally comes first.
        grace: Duration,
    },
    /// Every lease of this node: run at startup, before this node leases anything, to
    /// recover what a previous process with the same id left behind (the store also
    /// disowns that id's carts, whose reservations then lapse like any other).
    Own(&'a str),
}

/// A `stock_leases` row, read under lock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseRow {
    /// The node holding it.
    pub node_id: String,
    /// The SKU.
    pub sku: String,
    /// Units held.
    pub quantity: i64,
    /// When the node last renewed it plus the lease TTL, Unix milliseconds.
    pub expires_at_ms: i64,
}

/// A `reservations` row, read under lock, with its cart's session (whose sockets hear
/// of the expiry).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeldReservation {
    /// The cart.
    pub cart_id: Uuid,
    /// The session owning the cart.
    pub session_id: String,
    /// The SKU.
    pub sku: String,
    /// Units held.
    pub quantity: i64,
    /// Expiry, Unix milliseconds.
    pub expires_at_ms: i64,
}

/// A reservation the reaper released, so that its session's sockets can be told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lapsed {
    /// The session owning the cart.
    pub session_id: String,
    /// The SKU.
    pub sku: String,
    /// Units released.
    pub quantity: i64,
}

/// What one pass takes back.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Reaping {
    /// Lease rows to delete, as (node, SKU).
    pub leases: Vec<(String, String)>,
    /// Reservation rows to delete, as (cart, SKU).
    pub reservations: Vec<(Uuid, String)>,
    /// The same reservations, by session, for the shoppers' sockets.
    pub lapsed: Vec<Lapsed>,
    /// Carts that lose a reservation: their version rises, so that whoever holds a copy
    /// must reload before writing.
    pub carts: BTreeSet<Uuid>,
    /// Net movement per SKU.
    pub inventory: BTreeMap<String, Delta>,
    /// Units that came from leases.
    pub lease_units: i64,
    /// Units that came from reservations.
    pub reservation_units: i64,
}

impl Reaping {
    /// Whether the pass finds nothing to take back.
    pub fn is_empty(&self) -> bool {
        self.leases.is_empty() && self.reservations.is_empty()
    }
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// Decides, at PostgreSQL's time `now_ms`, which of the rows read under lock go back to
/// `available`, and what that moves per SKU.
pub fn plan(
    scope: Scope<'_>,
    now_ms: i64,
    leases: &[LeaseRow],
    reservations: &[HeldReservation],
) -> Reaping {
    let mut out = Reaping::default();
    for lease in leases {
        let gone = match scope {
            Scope::Dead { .. } => lease.expires_at_ms < now_ms,
            Scope::Own(node) => lease.node_id == node,
        };
        if gone {
            out.leases.push((lease.node_id.clone(), lease.sku.clone()));
            out.lease_units += lease.quantity;
            let d = out.inventory.entry(lease.sku.clone()).or_default();
            *d = d.plus(Delta::give_back(lease.quantity));
        }
    }
    if let Scope::Dead { grace, .. } = scope {
        let due = now_ms.saturating_sub(millis(grace));
        for r in reservations {
            if r.expires_at_ms < due {
                out.reservations.push((r.cart_id, r.sku.clone()));
                out.lapsed.push(Lapsed {
                    session_id: r.session_id.clone(),
                    sku: r.sku.clone(),
                    quantity: r.quantity,
                });
                out.carts.insert(r.cart_id);
                out.reservation_units += r.quantity;
                let d = out.inventory.entry(r.sku.clone()).or_default();
                *d = d.plus(Delta::reap_reservation(r.quantity));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEAD: Scope<'static> = Scope::Dead {
        grace: Duration::from_millis(10),
    };

    fn lease(node: &str, quantity: i64, expires_at_ms: i64) -> LeaseRow {
        LeaseRow {
            node_id: node.into(),
            sku: "A".into(),
            quantity,
            expires_at_ms,
        }
    }

    fn held(cart: u128, expires_at_ms: i64) -> HeldReservation {
        HeldReservation {
            cart_id: Uuid::from_u128(cart),
            session_id: format!("s{cart}"),
            sku: "A".into(),
            quantity: 2,
            expires_at_ms,
        }
    }

    #[test]
    fn only_expired_leases_go_back() {
        let r = plan(DEAD, 1000, &[lease("a", 3, 999), lease("b", 5, 1000)], &[]);
        assert_eq!(r.leases, vec![("a".to_owned(), "A".to_owned())]);
        assert_eq!(r.inventory["A"], Delta::give_back(3));
        assert_eq!(r.lease_units, 3);
    }

    #[test]
    fn a_restart_takes_back_every_lease_of_its_own_id() {
        let r = plan(
            Scope::Own("a"),
            1000,
            &[lease("a", 3, 5000), lease("b", 5, 0)],
            &[held(1, 0)],
        );
        assert_eq!(r.leases, vec![("a".to_owned(), "A".to_owned())]);
        assert!(
            r.reservations.is_empty(),
            "reservations wait for the dead scope"
        );
        assert_eq!(r.inventory["A"], Delta::give_back(3));
    }

    /// Guards against stock lost to a reservation whose owner still heartbeats (a
    /// restart under the same id, an evicted actor, a failed load): past the grace it
    /// goes back whoever owns the cart.
    #[test]
    fn reservations_go_back_after_the_grace_whoever_owns_them() {
        let rows = [
            held(1, 989), // past the grace
            held(2, 990), // not yet past the grace
            held(3, 100), // long past, whatever the owner's liveness
            held(3, 100), // a second line of the same cart
        ];
        let r = plan(DEAD, 1000, &[], &rows);
        assert_eq!(r.reservation_units, 6);
        assert_eq!(
            r.carts,
            BTreeSet::from([Uuid::from_u128(1), Uuid::from_u128(3)])
        );
        assert_eq!(r.inventory["A"], Delta::reap_reservation(6));
        assert!(r.inventory["A"].is_balanced());
        let sessions: Vec<&str> = r.lapsed.iter().map(|l| l.session_id.as_str()).collect();
        assert_eq!(
            sessions,
            ["s1", "s3", "s3"],
            "each session hears of its lines"
        );
        assert_eq!(r.lapsed.iter().map(|l| l.quantity).sum::<i64>(), 6);
    }
}
