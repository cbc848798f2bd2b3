//! Planning one Journal batch, without IO: given the rows the batch locked, decide
//! which writes are valid and what they change. The Journal then writes the plan with
//! set-based SQL, so a batch of any size costs a fixed number of statements.

use std::collections::{BTreeMap, HashMap, HashSet};

use uuid::Uuid;

use crate::{
    campaign::Closed,
    money::{Currency, Money},
    ports::{JournalError, PlaceOrder, Rejection, SetLine, WriteOp, WriteOutcome},
    stock::{Delta, GrantOutcome},
};

/// Rows a batch read under lock before planning.
#[derive(Debug, Default, Clone)]
pub struct Locked {
    /// `inventory.available` per SKU (missing: unknown SKU).
    pub available: HashMap<String, i64>,
    /// This node's `stock_leases.quantity` per SKU.
    pub lease: HashMap<String, i64>,
    /// This node's `stock_leases.epoch` per SKU (fencing).
    pub lease_epoch: HashMap<String, i64>,
    /// Epoch for lease rows this batch creates (read from the sequence only for
    /// batches with grants).
    pub new_epoch: i64,
    /// Other nodes' free leased units per SKU, `(fresh heartbeat, lapsed heartbeat)`;
    /// read only for batches with grants.
    pub others: HashMap<String, (i64, i64)>,
    /// `carts.version` per cart.
    pub carts: HashMap<Uuid, i64>,
    /// `reservations.quantity` per (cart, SKU).
    pub reservations: HashMap<(Uuid, String), i64>,
    /// The committed unit price of each SKU the batch sells ([`priced_skus`]), read
    /// under lock so that no catalog write commits between the check and the batch.
    /// Missing: the variant is retired or unknown. A campaign's sale price, when there
    /// is one, is what the lock step puts here instead of the variant's.
    pub prices: HashMap<String, Money>,
    /// The priced SKUs whose campaign window is not open at the commit's `now()`.
    pub closed: HashMap<String, Closed>,
    /// For each SKU ordered in a live campaign with a per-customer limit: the campaign
    /// and its limit.
    pub limited: HashMap<String, (Uuid, i64)>,
    /// Units each customer of the batch's orders has ordered per limited campaign
    /// (`campaign_customers`, locked); missing: none yet.
    pub customer_units: HashMap<(Uuid, String), i64>,
    /// The (session, Idempotency-Key) pairs of the batch's orders that already name an
    /// order ([`order_keys`]), read under the carts' locks: an order under a used key
    /// is refused as stale, so a checkout that skipped its replay lookup can never
    /// make a second order.
    pub used_keys: HashSet<(String, String)>,
}

/// A reservation row to write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReservationRow {
    /// Units.
    pub quantity: i64,
    /// Expiry, Unix milliseconds.
    pub expires_at_ms: i64,
    /// Unit price.
    pub unit_price_minor: i64,
    /// Currency.
    pub currency: Currency,
}

/// What a batch writes, and the answer for each op.
#[derive(Debug, Default)]
pub struct Plan {
    /// One result per op, in order.
    pub results: Vec<Result<WriteOutcome, JournalError>>,
    /// Net movement per SKU.
    pub inventory: BTreeMap<String, Delta>,
    /// Net change of this node's lease row per SKU.
    pub lease: BTreeMap<String, i64>,
    /// SKUs for which this node already had a lease row when the batch began.
    pub lease_rows: HashSet<String>,
    /// Epoch written on the lease rows this batch creates.
    pub new_epoch: i64,
    /// Final reservation state per (cart, SKU): `None` deletes the row.
    pub reservations: BTreeMap<(Uuid, String), Option<ReservationRow>>,
    /// New version per cart.
    pub cart_versions: BTreeMap<Uuid, i64>,
    /// Indices of the `PlaceOrder` ops that go through.
    pub orders: Vec<usize>,
    /// New units ordered per (campaign, customer), for the rows the orders change.
    pub customer_units: BTreeMap<(Uuid, String), i64>,
    /// What each placed order counted against a limit: (order, key, units), so a
    /// cancellation gives exactly those units back.
    pub order_units: Vec<(Uuid, CustomerKey, i64)>,
}

/// A limited campaign and one customer of it.
pub type CustomerKey = (Uuid, String);

/// The (campaign, customer) keys a batch's orders count against, sorted (the order
/// their rows are locked in), given each SKU's limited campaign.
pub fn customer_keys(
    ops: &[WriteOp],
    limited: &HashMap<String, (Uuid, i64)>,
) -> Vec<(Uuid, String)> {
    let mut out: Vec<(Uuid, String)> = ops
        .iter()
        .filter_map(|op| match op {
            WriteOp::PlaceOrder(o) => Some(o),
            _ => None,
        })
        .flat_map(|o| {
            o.lines
                .iter()
                .filter_map(|l| limited.get(&l.sku).map(|(c, _)| (*c, o.customer.clone())))
        })
        .collect();
    out.sort();
    out.dedup();
    out
}

/// The (session, Idempotency-Key) pair of each of the batch's orders.
pub fn order_keys(ops: &[WriteOp]) -> Vec<(&str, &str)> {
    ops.iter()
        .filter_map(|op| match op {
            WriteOp::PlaceOrder(o) => Some((o.session_id.as_str(), o.idempotency_key.as_str())),
            _ => None,
        })
        .collect()
}

/// Every SKU of the batch's orders, sorted.
pub fn ordered_skus(ops: &[WriteOp]) -> Vec<String> {
    let mut out: Vec<String> = ops
        .iter()
        .filter_map(|op| match op {
            WriteOp::PlaceOrder(o) => Some(o.lines.iter().map(|l| l.sku.clone())),
            _ => None,
        })
        .flatten()
        .collect();
    out.sort();
    out.dedup();
    out
}

/// Refuses an order that takes its customer past a campaign's limit, and otherwise
/// counts its units: the new total and the order's units per (campaign, customer).
fn check_limits(
    locked: &Locked,
    o: &PlaceOrder,
) -> Result<Vec<(CustomerKey, i64, i64)>, Rejection> {
    let mut per_campaign: BTreeMap<Uuid, (i64, i64)> = BTreeMap::new();
    for l in &o.lines {
        if let Some((campaign, limit)) = locked.limited.get(&l.sku) {
            per_campaign.entry(*campaign).or_insert((*limit, 0)).1 += l.quantity;
        }
    }
    let mut totals = Vec::new();
    for (campaign, (limit, units)) in per_campaign {
        let key = (campaign, o.customer.clone());
        let used = locked.customer_units.get(&key).copied().unwrap_or(0);
        if used + units > limit {
            return Err(Rejection::LimitExceeded {
                campaign_id: campaign,
                remaining: (limit - used).max(0),
            });
        }
        totals.push((key, used + units, units));
    }
    Ok(totals)
}

/// Every SKU a batch touches, sorted (the order rows are locked in, to avoid deadlocks).
pub fn skus(ops: &[WriteOp]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for op in ops {
        match op {
            WriteOp::Grant { sku, .. } | WriteOp::ReturnLease { sku, .. } => out.push(sku.clone()),
            WriteOp::SetLine(l) => out.push(l.sku.clone()),
            WriteOp::PlaceOrder(o) => out.extend(o.lines.iter().map(|l| l.sku.clone())),
        }
    }
    out.sort();
    out.dedup();
    out
}

/// The SKUs whose committed price the batch checks, sorted: lines that keep or take
/// units, and every line of an order. A release (quantity 0) is never priced, so a
/// shopper can always let go of a line, whatever its price has become.
pub fn priced_skus(ops: &[WriteOp]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for op in ops {
        match op {
            WriteOp::SetLine(l) if l.quantity > 0 => out.push(l.sku.clone()),
            WriteOp::PlaceOrder(o) => out.extend(o.lines.iter().map(|l| l.sku.clone())),
            _ => {}
        }
    }
    out.sort();
    out.dedup();
    out
}

/// Refuses a unit price other than the committed one: no node charges a price its
/// catalog has not caught up with.
fn check_price(locked: &Locked, sku: &str, price: Money) -> Result<(), Rejection> {
    match locked.prices.get(sku) {
        None => Err(Rejection::NotForSale {
            sku: sku.to_owned(),
        }),
        Some(committed) if *committed != price => Err(Rejection::PriceChanged {
            sku: sku.to_owned(),
            price_minor: committed.minor,
            currency: committed.currency,
        }),
        Some(_) => Ok(()),
    }
}

/// A line that keeps units is priced; a release is not.
fn check_line_price(locked: &Locked, l: &SetLine) -> Result<(), Rejection> {
    if l.quantity == 0 {
        return Ok(());
    }
    if let Some(closed) = locked.closed.get(&l.sku) {
        return Err(Rejection::CampaignClosed {
            sku: l.sku.clone(),
            closed: *closed,
        });
    }
    check_price(locked, &l.sku, Money::new(l.unit_price_minor, l.currency))
}

/// Every cart a batch touches, sorted.
pub fn carts(ops: &[WriteOp]) -> Vec<Uuid> {
    let mut out: Vec<Uuid> = ops
        .iter()
        .filter_map(|op| match op {
            WriteOp::SetLine(l) => Some(l.cart_id),
            WriteOp::PlaceOrder(o) => Some(o.cart_id),
            _ => None,
        })
        .collect();
    out.sort();
    out.dedup();
    out
}

fn rejected(why: Rejection) -> Result<WriteOutcome, JournalError> {
    Err(JournalError::Rejected(why))
}

fn unknown(sku: &str) -> Rejection {
    Rejection::UnknownSku {
        sku: sku.to_owned(),
    }
}

/// Plans `ops` in order against `locked`; each op sees the effect of the ones before it.
pub fn plan(ops: &[WriteOp], mut locked: Locked) -> Plan {
    let mut p = Plan {
        lease_rows: locked.lease.keys().cloned().collect(),
        new_epoch: locked.new_epoch,
        ..Plan::default()
    };
    for (i, op) in ops.iter().enumerate() {
        let result = match op {
            WriteOp::Grant { sku, want } => grant(&mut p, &mut locked, sku, *want),
            WriteOp::ReturnLease { sku, quantity } => {
                return_lease(&mut p, &mut locked, sku, *quantity)
            }
            WriteOp::SetLine(l) => {
                if !locked.available.contains_key(&l.sku) {
                    rejected(unknown(&l.sku))
                } else if locked.carts.get(&l.cart_id) != Some(&l.version) {
                    Err(JournalError::Stale)
                } else {
                    let key = (l.cart_id, l.sku.clone());
                    let current = locked.reservations.get(&key).copied().unwrap_or(0);
                    let d = l.quantity - l.prev_quantity;
                    let lease = locked.lease.get(&l.sku).copied();
                    let epoch = locked.lease_epoch.get(&l.sku).copied();
                    if current != l.prev_quantity {
                        Err(JournalError::Stale)
                    } else if l.quantity < 0 {
                        rejected(Rejection::NegativeQuantity {
                            sku: l.sku.clone(),
                            quantity: l.quantity,
                        })
                    } else if d > 0 && (lease.is_none() || epoch != l.lease_epoch) {
                        rejected(Rejection::LeaseLost { sku: l.sku.clone() })
                    } else if let Err(why) = check_line_price(&locked, l) {
                        rejected(why)
                    } else if d > lease.unwrap_or(0) {
                        rejected(Rejection::LeaseShort {
                            sku: l.sku.clone(),
                            units: d,
                            lease: lease.unwrap_or(0),
                        })
                    } else {
                        let (delta, lease_change) = if d >= 0 {
                            (Delta::reserve(d), -d)
                        } else if lease.is_some() {
                            (Delta::unreserve(-d), -d)
                        } else {
                            // The lease row was reaped: released units go back to
                            // PostgreSQL rather than into a row memory does not know.
                            (Delta::reap_reservation(-d), 0)
                        };
                        move_units(&mut p, &mut locked, &l.sku, delta, lease_change);
                        let row = (l.quantity > 0).then_some(ReservationRow {
                            quantity: l.quantity,
                            expires_at_ms: l.expires_at_ms,
                            unit_price_minor: l.unit_price_minor,
                            currency: l.currency,
                        });
                        if l.quantity > 0 {
                            locked.reservations.insert(key.clone(), l.quantity);
                        } else {
                            locked.reservations.remove(&key);
                        }
                        p.reservations.insert(key, row);
                        bump(&mut p, &mut locked, l.cart_id);
                        Ok(WriteOutcome::Done)
                    }
                }
            }
            WriteOp::PlaceOrder(o) => place_order(&mut p, &mut locked, o).map(|()| {
                p.orders.push(i);
                WriteOutcome::Done
            }),
        };
        p.results.push(result);
    }
    p
}

fn move_units(p: &mut Plan, locked: &mut Locked, sku: &str, d: Delta, lease_change: i64) {
    let entry = p.inventory.entry(sku.to_owned()).or_default();
    *entry = entry.plus(d);
    if let Some(a) = locked.available.get_mut(sku) {
        *a += d.available;
    }
    if lease_change != 0 {
        *p.lease.entry(sku.to_owned()).or_default() += lease_change;
        *locked.lease.entry(sku.to_owned()).or_default() += lease_change;
    }
}

fn bump(p: &mut Plan, locked: &mut Locked, cart: Uuid) {
    if let Some(v) = locked.carts.get_mut(&cart) {
        *v += 1;
        p.cart_versions.insert(cart, *v);
    }
}

fn grant(
    p: &mut Plan,
    locked: &mut Locked,
    sku: &str,
    want: i64,
) -> Result<WriteOutcome, JournalError> {
    let Some(&available) = locked.available.get(sku) else {
        return rejected(unknown(sku));
    };
    if want < 0 {
        return rejected(Rejection::NegativeGrant {
            sku: sku.to_owned(),
            want,
        });
    }
    let granted = want.min(available);
    if granted > 0 && !locked.lease.contains_key(sku) {
        locked.lease_epoch.insert(sku.to_owned(), locked.new_epoch);
    }
    move_units(p, locked, sku, Delta::grant(granted), granted);
    let (held_live, recovering) = locked.others.get(sku).copied().unwrap_or((0, 0));
    Ok(WriteOutcome::Granted(GrantOutcome {
        granted,
        remaining: available - granted,
        held_live,
        recovering,
        epoch: locked.lease_epoch.get(sku).copied(),
    }))
}

fn return_lease(
    p: &mut Plan,
    locked: &mut Locked,
    sku: &str,
    quantity: i64,
) -> Result<WriteOutcome, JournalError> {
    let lease = locked.lease.get(sku).copied().unwrap_or(0);
    if !locked.available.contains_key(sku) {
        return rejected(unknown(sku));
    }
    if quantity < 0 || quantity > lease {
        return rejected(Rejection::ReturnExceedsLease {
            sku: sku.to_owned(),
            quantity,
            lease,
        });
    }
    move_units(p, locked, sku, Delta::give_back(quantity), -quantity);
    Ok(WriteOutcome::Done)
}

fn place_order(p: &mut Plan, locked: &mut Locked, o: &PlaceOrder) -> Result<(), JournalError> {
    if locked.carts.get(&o.cart_id) != Some(&o.version) {
        return Err(JournalError::Stale);
    }
    // A used key has its order already: the caller replays it, never makes another.
    let key = (o.session_id.clone(), o.idempotency_key.clone());
    if locked.used_keys.contains(&key) {
        return Err(JournalError::Stale);
    }
    // The order must be exactly the cart's reservations, no more and no less.
    let held: Vec<(&String, i64)> = locked
        .reservations
        .iter()
        .filter(|((c, _), _)| *c == o.cart_id)
        .map(|((_, s), q)| (s, *q))
        .collect();
    if held.len() != o.lines.len()
        || o.lines
            .iter()
            .any(|l| locked.reservations.get(&(o.cart_id, l.sku.clone())) != Some(&l.quantity))
    {
        return Err(JournalError::Stale);
    }
    // Each line is charged the committed price, or the order is refused as a whole.
    for l in &o.lines {
        check_price(locked, &l.sku, Money::new(l.unit_price_minor, o.currency))
            .map_err(JournalError::Rejected)?;
    }
    for (key, total, units) in check_limits(locked, o).map_err(JournalError::Rejected)? {
        locked.customer_units.insert(key.clone(), total);
        p.order_units.push((o.order_id, key.clone(), units));
        p.customer_units.insert(key, total);
    }
    for l in &o.lines {
        move_units(p, locked, &l.sku, Delta::sell(l.quantity), 0);
        let key = (o.cart_id, l.sku.clone());
        locked.reservations.remove(&key);
        p.reservations.insert(key, None);
    }
    bump(p, locked, o.cart_id);
    locked.used_keys.insert(key);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ports::OrderLine;

    fn cart() -> Uuid {
        Uuid::from_u128(7)
    }

    fn set_line(version: i64, quantity: i64, prev: i64) -> WriteOp {
        WriteOp::SetLine(SetLine {
            cart_id: cart(),
            version,
            sku: "A".into(),
            quantity,
            prev_quantity: prev,
            lease_epoch: Some(0),
            expires_at_ms: 1,
            unit_price_minor: 100,
            currency: Currency::parse("EUR").expect("valid"),
            create_for_session: None,
        })
    }

    fn eur(minor: i64) -> Money {
        Money::new(minor, Currency::parse("EUR").expect("valid"))
    }

    fn locked(available: i64) -> Locked {
        let mut l = Locked::default();
        l.available.insert("A".into(), available);
        l.carts.insert(cart(), 0);
        l.prices.insert("A".into(), eur(100));
        l
    }

    #[test]
    fn grants_take_what_is_left_in_order() {
        let ops = vec![
            WriteOp::Grant {
                sku: "A".into(),
                want: 3,
            },
            WriteOp::Grant {
                sku: "A".into(),
                want: 3,
            },
            WriteOp::Grant {
                sku: "B".into(),
                want: 1,
            },
        ];
        let p = plan(&ops, locked(4));
        assert_eq!(
            p.results[0],
            Ok(WriteOutcome::Granted(GrantOutcome {
                granted: 3,
                remaining: 1,
                epoch: Some(0),
                ..GrantOutcome::default()
            }))
        );
        assert_eq!(
            p.results[1],
            Ok(WriteOutcome::Granted(GrantOutcome {
                granted: 1,
                remaining: 0,
                epoch: Some(0),
                ..GrantOutcome::default()
            }))
        );
        assert_eq!(
            p.results[2],
            Err(JournalError::Rejected(Rejection::UnknownSku {
                sku: "B".into()
            }))
        );
        assert_eq!(p.inventory["A"], Delta::grant(4));
        assert_eq!(p.lease["A"], 4);
    }

    #[test]
    fn lines_move_units_between_lease_and_reservation() {
        let ops = vec![
            WriteOp::Grant {
                sku: "A".into(),
                want: 5,
            },
            set_line(0, 3, 0),
            set_line(1, 1, 3),
            set_line(2, 0, 1),
        ];
        let p = plan(&ops, locked(10));
        assert!(p.results.iter().all(Result::is_ok), "{:?}", p.results);
        assert_eq!(p.inventory["A"], Delta::grant(5));
        assert_eq!(p.lease["A"], 5);
        assert_eq!(p.reservations[&(cart(), "A".to_owned())], None);
        assert_eq!(p.cart_versions[&cart()], 3);
    }

    #[test]
    fn stale_versions_and_quantities_are_refused_without_effect() {
        let mut l = locked(10);
        l.lease.insert("A".into(), 5);
        let p = plan(&[set_line(1, 2, 0), set_line(0, 2, 1)], l);
        assert_eq!(
            p.results,
            vec![Err(JournalError::Stale), Err(JournalError::Stale)]
        );
        assert!(p.inventory.is_empty() && p.reservations.is_empty() && p.cart_versions.is_empty());
    }

    #[test]
    fn a_line_cannot_exceed_the_lease() {
        let mut l = locked(10);
        l.lease.insert("A".into(), 1);
        l.lease_epoch.insert("A".into(), 0);
        let p = plan(&[set_line(0, 2, 0)], l);
        assert_eq!(
            p.results[0],
            Err(JournalError::Rejected(Rejection::LeaseShort {
                sku: "A".into(),
                units: 2,
                lease: 1
            }))
        );
    }

    /// Guards against a frozen node selling from a lease the reaper took: its
    /// reserve names the old row's epoch and is refused, and a release goes back to
    /// PostgreSQL instead of into a row nobody knows.
    #[test]
    fn reserves_from_a_reaped_lease_are_refused() {
        let mut l = locked(10);
        l.lease.insert("A".into(), 5);
        l.lease_epoch.insert("A".into(), 9);
        let p = plan(&[set_line(0, 1, 0)], l);
        assert_eq!(
            p.results[0],
            Err(JournalError::Rejected(Rejection::LeaseLost {
                sku: "A".into()
            }))
        );
        let mut l = locked(10);
        l.reservations.insert((cart(), "A".into()), 2);
        let p = plan(&[set_line(0, 0, 2)], l);
        assert_eq!(p.results[0], Ok(WriteOutcome::Done));
        assert_eq!(p.inventory["A"], Delta::reap_reservation(2));
        assert!(p.lease.is_empty(), "no lease row is created by a release");
    }

    #[test]
    fn grants_report_what_others_hold_and_the_row_epoch() {
        let mut l = locked(2);
        l.new_epoch = 42;
        l.others.insert("A".into(), (5, 3));
        let grant = WriteOp::Grant {
            sku: "A".into(),
            want: 4,
        };
        let p = plan(&[grant], l);
        assert_eq!(
            p.results[0],
            Ok(WriteOutcome::Granted(GrantOutcome {
                granted: 2,
                remaining: 0,
                held_live: 5,
                recovering: 3,
                epoch: Some(42),
            }))
        );
    }

    #[test]
    fn an_order_must_match_the_reservations_exactly() {
        let order = |qty: i64| {
            WriteOp::PlaceOrder(PlaceOrder {
                order_id: Uuid::from_u128(1),
                cart_id: cart(),
                version: 0,
                session_id: "s".into(),
                customer: "a@x.io".into(),
                email: "a@b.c".into(),
                idempotency_key: "k".into(),
                lines: vec![OrderLine {
                    sku: "A".into(),
                    quantity: qty,
                    unit_price_minor: 100,
                }],
                total_minor: 100 * qty,
                currency: Currency::parse("EUR").expect("valid"),
            })
        };
        let mut l = locked(10);
        l.reservations.insert((cart(), "A".into()), 2);
        let p = plan(&[order(1)], l.clone());
        assert_eq!(p.results[0], Err(JournalError::Stale));
        let p = plan(&[order(2), order(2)], l);
        assert_eq!(p.results[0], Ok(WriteOutcome::Done));
        assert_eq!(
            p.results[1],
            Err(JournalError::Stale),
            "a second checkout of the same cart"
        );
        assert_eq!(p.inventory["A"], Delta::sell(2));
        assert_eq!(p.orders, vec![0]);
    }

    /// Guards the checkout that skips its replay lookup: an order under a key that
    /// already names an order is refused as stale and changes nothing, so the caller
    /// reloads and replays the first order instead of placing a second.
    #[test]
    fn an_order_under_a_used_key_is_stale_and_writes_nothing() {
        let mut l = locked(10);
        l.reservations.insert((cart(), "A".into()), 1);
        let fresh = plan(&[order(100)], l.clone());
        assert_eq!(fresh.results[0], Ok(WriteOutcome::Done));
        l.used_keys.insert(("s".into(), "k".into()));
        let p = plan(&[order(100)], l);
        assert_eq!(p.results[0], Err(JournalError::Stale));
        assert!(p.orders.is_empty() && p.inventory.is_empty() && p.cart_versions.is_empty());
        assert!(p.reservations.is_empty(), "the reservation stays");
    }

    fn order(price: i64) -> WriteOp {
        WriteOp::PlaceOrder(PlaceOrder {
            order_id: Uuid::from_u128(1),
            cart_id: cart(),
            version: 0,
            session_id: "s".into(),
            customer: "a@x.io".into(),
            email: "a@b.c".into(),
            idempotency_key: "k".into(),
            lines: vec![OrderLine {
                sku: "A".into(),
                quantity: 1,
                unit_price_minor: price,
            }],
            total_minor: price,
            currency: Currency::parse("EUR").expect("valid"),
        })
    }

    /// Guards against a customer ordering past a campaign's limit, within one batch or
    /// across batches: the second order is refused with what remains, and only the
    /// first counts.
    #[test]
    fn an_order_past_the_customer_limit_is_refused_with_what_remains() {
        let campaign = Uuid::from_u128(9);
        let mut l = locked(10);
        l.reservations.insert((cart(), "A".into()), 1);
        l.limited.insert("A".into(), (campaign, 2));
        l.customer_units.insert((campaign, "a@x.io".into()), 1);
        let p = plan(&[order(100)], l.clone());
        assert_eq!(p.results[0], Ok(WriteOutcome::Done));
        assert_eq!(p.customer_units[&(campaign, "a@x.io".into())], 2);
        assert_eq!(
            p.order_units,
            vec![(Uuid::from_u128(1), (campaign, "a@x.io".into()), 1)]
        );
        l.customer_units.insert((campaign, "a@x.io".into()), 2);
        let p = plan(&[order(100)], l);
        assert_eq!(
            p.results[0],
            Err(JournalError::Rejected(Rejection::LimitExceeded {
                campaign_id: campaign,
                remaining: 0
            }))
        );
        assert!(p.orders.is_empty() && p.customer_units.is_empty());
        assert!(p.reservations.is_empty(), "the reservation stays");
    }

    /// Guards against a node whose catalog missed a price change reserving at the old
    /// price: the line is refused with the committed price and changes nothing.
    #[test]
    fn a_line_at_a_stale_price_is_refused_with_the_committed_one() {
        let mut l = locked(10);
        l.lease.insert("A".into(), 5);
        l.lease_epoch.insert("A".into(), 0);
        l.prices.insert("A".into(), eur(150));
        let p = plan(&[set_line(0, 2, 0)], l.clone());
        assert_eq!(
            p.results[0],
            Err(JournalError::Rejected(Rejection::PriceChanged {
                sku: "A".into(),
                price_minor: 150,
                currency: Currency::parse("EUR").expect("valid"),
            }))
        );
        assert!(p.inventory.is_empty() && p.reservations.is_empty() && p.cart_versions.is_empty());

        // Another currency at the same number is another price.
        l.prices.insert(
            "A".into(),
            Money::new(100, Currency::parse("USD").expect("valid")),
        );
        assert!(matches!(
            plan(&[set_line(0, 2, 0)], l.clone()).results[0],
            Err(JournalError::Rejected(Rejection::PriceChanged { .. }))
        ));

        // A retired variant sells at no price.
        l.prices.clear();
        assert_eq!(
            plan(&[set_line(0, 2, 0)], l).results[0],
            Err(JournalError::Rejected(Rejection::NotForSale {
                sku: "A".into()
            }))
        );
    }

    /// Guards against a reserve slipping in before a campaign's start (or after its
    /// end) on a node whose clock runs ahead: the commit refuses it and writes nothing,
    /// while a release still goes through.
    #[test]
    fn a_line_of_a_closed_campaign_is_refused_and_a_release_is_not() {
        let mut l = locked(10);
        l.lease.insert("A".into(), 5);
        l.lease_epoch.insert("A".into(), 0);
        let closed = Closed::NotStarted { starts_at_ms: 42 };
        l.closed.insert("A".into(), closed);
        let p = plan(&[set_line(0, 2, 0)], l.clone());
        assert_eq!(
            p.results[0],
            Err(JournalError::Rejected(Rejection::CampaignClosed {
                sku: "A".into(),
                closed,
            }))
        );
        assert!(p.inventory.is_empty() && p.reservations.is_empty() && p.cart_versions.is_empty());
        l.reservations.insert((cart(), "A".into()), 2);
        let p = plan(&[set_line(0, 0, 2)], l);
        assert_eq!(p.results[0], Ok(WriteOutcome::Done));
    }

    /// Guards against a shopper being unable to let go of a line whose price moved:
    /// a release is never priced.
    #[test]
    fn a_release_goes_through_whatever_the_price() {
        let mut l = locked(10);
        l.reservations.insert((cart(), "A".into()), 2);
        l.lease.insert("A".into(), 0);
        l.lease_epoch.insert("A".into(), 0);
        l.prices.clear();
        let p = plan(&[set_line(0, 0, 2)], l);
        assert_eq!(p.results[0], Ok(WriteOutcome::Done));
        assert_eq!(p.inventory["A"], Delta::unreserve(2));
    }

    /// Guards against an order charging the price a line was reserved at when the
    /// committed price has moved since: the order is refused, nothing is sold, and the
    /// same order at the committed price goes through.
    #[test]
    fn an_order_at_a_stale_price_is_refused_and_sells_nothing() {
        let mut l = locked(10);
        l.reservations.insert((cart(), "A".into()), 1);
        l.prices.insert("A".into(), eur(120));
        let p = plan(&[order(100)], l.clone());
        assert_eq!(
            p.results[0],
            Err(JournalError::Rejected(Rejection::PriceChanged {
                sku: "A".into(),
                price_minor: 120,
                currency: Currency::parse("EUR").expect("valid"),
            }))
        );
        assert!(p.inventory.is_empty() && p.orders.is_empty() && p.cart_versions.is_empty());
        let p = plan(&[order(120)], l);
        assert_eq!(p.results[0], Ok(WriteOutcome::Done));
        assert_eq!(p.orders, vec![0]);
    }

    #[test]
    fn only_lines_that_keep_units_and_orders_are_priced() {
        let ops = vec![
            set_line(0, 0, 1),
            WriteOp::Grant {
                sku: "G".into(),
                want: 1,
            },
            order(100),
        ];
        assert_eq!(priced_skus(&ops), vec!["A".to_owned()]);
        assert!(priced_skus(&ops[..2]).is_empty());
    }
}
