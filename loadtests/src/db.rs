//! PostgreSQL access of the instrument: the stock invariant check (Surge's own
//! `surge::store::check`) and the accounting row of one SKU.

use std::net::IpAddr;

use anyhow::Context as _;
use tokio_postgres::{config::Host, NoTls};

/// Checks that every host of a PostgreSQL URL is on this machine (127.0.0.0/8,
/// `localhost`, `::1` or a Unix socket): the instrument loads nothing else.
pub fn check_local(url: &str) -> anyhow::Result<()> {
    let cfg: tokio_postgres::Config = url
        .parse()
        .with_context(|| format!("{} is not a PostgreSQL URL", redact(url)))?;
    for host in cfg.get_hosts() {
        if let Host::Tcp(name) = host {
            let local = name.eq_ignore_ascii_case("localhost")
                || name.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback());
            anyhow::ensure!(
                local,
                "{}: the load generator only talks to a PostgreSQL on this machine",
                redact(url)
            );
        }
    }
    Ok(())
}

/// Connects without TLS (the servers are on this machine); the connection task runs
/// on the current actix runtime.
pub async fn connect(url: &str) -> anyhow::Result<tokio_postgres::Client> {
    check_local(url)?;
    let (client, conn) = tokio_postgres::connect(url, NoTls)
        .await
        .with_context(|| format!("connecting to PostgreSQL at {}", redact(url)))?;
    actix_web::rt::spawn(async move {
        if let Err(e) = conn.await {
            eprintln!("postgres connection ended: {e}");
        }
    });
    Ok(client)
}

/// The URL without a password, for messages.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let userinfo = &url[s + 3..at];
            match userinfo.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..s + 3], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

/// The stock buckets of one SKU.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stock {
    /// Units ever stocked.
    pub total: i64,
    /// Free in PostgreSQL.
    pub available: i64,
    /// Held by nodes.
    pub leased: i64,
    /// Held by carts.
    pub reserved: i64,
    /// Sold.
    pub sold: i64,
    /// Units in `order_lines` for the SKU.
    pub order_line_units: i64,
    /// Orders with a line of the SKU.
    pub orders: i64,
}

/// The `inventory` row of `sku` and what `order_lines` say about it.
pub async fn stock(client: &tokio_postgres::Client, sku: &str) -> anyhow::Result<Stock> {
    let row = client
        .query_opt(
            "SELECT total, available, leased, reserved, sold FROM inventory WHERE sku = $1",
            &[&sku],
        )
        .await
        .context("reading the inventory row")?
        .with_context(|| format!("no inventory row for {sku}"))?;
    let lines = client
        .query_one(
            "SELECT COALESCE(SUM(quantity), 0)::bigint, COUNT(DISTINCT order_id)::bigint
               FROM order_lines WHERE sku = $1",
            &[&sku],
        )
        .await
        .context("counting order lines")?;
    Ok(Stock {
        total: row.get(0),
        available: row.get(1),
        leased: row.get(2),
        reserved: row.get(3),
        sold: row.get(4),
        order_line_units: lines.get(0),
        orders: lines.get(1),
    })
}

/// Units of `sku` per order email (orders not cancelled), for the per-customer audit.
pub async fn units_by_email(
    client: &tokio_postgres::Client,
    sku: &str,
) -> anyhow::Result<Vec<(String, i64)>> {
    let rows = client
        .query(
            "SELECT o.email, SUM(l.quantity)::bigint
               FROM order_lines l
               JOIN orders o ON o.id = l.order_id AND o.created_at = l.created_at
              WHERE l.sku = $1 AND o.status <> 'cancelled'
              GROUP BY o.email",
            &[&sku],
        )
        .await
        .context("summing units per order email")?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

/// When the first and the last order with a line of `sku` committed, Unix ms.
pub async fn order_span_ms(
    client: &tokio_postgres::Client,
    sku: &str,
) -> anyhow::Result<Option<(f64, f64)>> {
    let row = client
        .query_one(
            "SELECT (EXTRACT(EPOCH FROM MIN(created_at)) * 1000)::float8,
                    (EXTRACT(EPOCH FROM MAX(created_at)) * 1000)::float8
               FROM order_lines WHERE sku = $1",
            &[&sku],
        )
        .await
        .context("reading when the orders committed")?;
    let (first, last): (Option<f64>, Option<f64>) = (row.get(0), row.get(1));
    Ok(first.zip(last))
}

/// The stored slot of every session in a campaign's waiting room.
pub async fn queue_slots(
    client: &tokio_postgres::Client,
    campaign: &str,
) -> anyhow::Result<std::collections::HashMap<String, i64>> {
    let id = uuid::Uuid::parse_str(campaign).context("the campaign id is not a UUID")?;
    let rows = client
        .query(
            "SELECT session_id, slot FROM queue_entries WHERE campaign_id = $1",
            &[&id],
        )
        .await
        .context("reading the queue's slots")?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

/// Every violation of the stock invariant, as `surge check` finds them.
pub async fn violations(client: &tokio_postgres::Client) -> anyhow::Result<Vec<String>> {
    Ok(surge::store::check::violations(client)
        .await?
        .iter()
        .map(ToString::to_string)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::redact;

    #[test]
    fn only_local_databases() {
        assert!(super::check_local("postgres://postgres@127.0.0.1:5432/x").is_ok());
        assert!(super::check_local("postgres://postgres@localhost/x").is_ok());
        assert!(super::check_local("host=/run/postgresql user=postgres").is_ok());
        assert!(super::check_local("postgres://postgres@10.1.2.3/x").is_err());
        assert!(super::check_local("postgres://postgres@db.example.com/x").is_err());
    }

    #[test]
    fn passwords_are_hidden() {
        assert_eq!(
            redact("postgres://u:secret@127.0.0.1/db"),
            "postgres://u:***@127.0.0.1/db"
        );
        assert_eq!(
            redact("postgres://postgres@127.0.0.1:5432/x"),
            "postgres://postgres@127.0.0.1:5432/x"
        );
    }
}
