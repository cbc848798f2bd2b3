//! `mixed`: every request drawn by weight from browsing (as `browse`), cart changes
//! (as `cart`) and checkouts (reserve one unit, then check out with a fresh key).

use std::{rc::Rc, sync::Arc};

use serde_json::json;

use crate::{
    cart::{self, Shopper},
    catalog,
    cli::MixedArgs,
    harness::{self, Load, Worker},
    pages::Plan,
    report::{Recorder, Report, Section},
    util::Rng,
};

/// Label of checkouts.
pub const CHECKOUT: &str = "POST /api/checkout";

async fn checkout(
    shopper: &mut Shopper,
    skus: &[(String, i64)],
    rec: &mut Recorder,
    rng: &mut Rng,
) {
    if shopper.lines.is_empty() {
        let Some((sku, _)) = rng.pick(skus) else {
            return;
        };
        match shopper.session.put_item(sku, 1).await {
            Ok(r) => {
                rec.reply(cart::PUT, &r, cart::expected(&r));
                if r.status != 200 {
                    return;
                }
                shopper.lines.push((sku.clone(), 1));
            }
            Err(f) => {
                rec.failure(cart::PUT, &f);
                return;
            }
        }
    }
    let key = uuid::Uuid::from_u64_pair(rng.next_u64(), rng.next_u64()).to_string();
    match shopper
        .session
        .checkout(&key, "mixed@loadtest.example")
        .await
    {
        Ok(r) => {
            rec.reply(CHECKOUT, &r, matches!(r.status, 201 | 409 | 429));
            if r.status == 201 {
                rec.count("orders", 1);
                shopper.lines.clear();
                shopper.session.reset();
            } else if r.status == 409 {
                // Expired or empty: start over with a new cart.
                shopper.lines.clear();
                shopper.session.reset();
            }
        }
        Err(f) => rec.failure(CHECKOUT, &f),
    }
}

/// How the blend is drawn: a roll below `browse` reads a page, below `browse + cart`
/// changes the cart, below `total` checks out.
#[derive(Debug, Clone, Copy)]
struct Weights {
    browse: u32,
    cart: u32,
    total: u32,
}

/// A shopper who browses, changes the cart and checks out, by weight.
struct Blend {
    shopper: Shopper,
    client: awc::Client,
    base: Rc<str>,
    plan: Arc<Plan>,
    skus: Arc<Vec<(String, i64)>>,
    weights: Weights,
}

impl Worker for Blend {
    async fn step(&mut self, rec: &mut Recorder, rng: &mut Rng) {
        let w = self.weights;
        let roll = rng.below(w.total as usize) as u32;
        if roll < w.browse {
            self.plan.visit(&self.client, &self.base, rec, rng).await;
        } else if roll < w.browse + w.cart {
            self.shopper.step(&self.skus, rec, rng).await;
        } else {
            checkout(&mut self.shopper, &self.skus, rec, rng).await;
        }
    }

    async fn finish(&mut self, rec: &mut Recorder) {
        self.shopper.empty(rec).await;
    }
}

/// Runs the blend for the duration.
pub async fn run(args: MixedArgs) -> anyhow::Result<Report> {
    let c = &args.common;
    let weights = Weights {
        browse: args.browse,
        cart: args.cart,
        total: args.browse + args.cart + args.checkout,
    };
    anyhow::ensure!(weights.total > 0, "the weights add up to 0");
    let bases = c.base_strings()?;
    let cat = catalog::read(&bases[0], c.timeout, 20).await?;
    let plan = Arc::new(Plan::new(&cat, 50));
    let skus = Arc::new(cat.skus);
    println!(
        "mixed: browse {} / cart {} / checkout {}; {} sessions at a time over {} for {:.1} s",
        args.browse,
        args.cart,
        args.checkout,
        c.concurrency,
        bases.join(", "),
        c.duration.as_secs_f64()
    );
    let rss_before = c.server_rss();
    let load = Load::start(bases, c);
    let (rec, load_end) = harness::timed(&load, move |slot| Blend {
        client: slot.client.clone(),
        base: slot.base.clone(),
        shopper: Shopper::new(slot),
        plan: plan.clone(),
        skus: skus.clone(),
        weights,
    })
    .await?;
    let rss_after = c.server_rss();
    let elapsed = load_end.duration_since(load.started);
    let mut report = Report::new(
        "mixed",
        json!({
            "common": c.json(),
            "weights": { "browse": args.browse, "cart": args.cart, "checkout": args.checkout },
        }),
    );
    report.figure_int("orders", rec.counter("orders"));
    report.rss(rss_before, rss_after);
    Ok(report.conclude([Section::new("surge", elapsed, rec)], c.strict))
}
