//! `mixed`: every request drawn by weight from browsing (as `browse`), cart changes
//! (as `cart`) and checkouts (reserve one unit, then check out with a fresh key).

use std::{rc::Rc, sync::Arc, time::Instant};

use serde_json::json;

use crate::{
    browse::Plan,
    cart::{self, Shopper},
    catalog,
    cli::MixedArgs,
    harness,
    http::{self, ClientOptions},
    report::{Recorder, Report, Section},
    session::Session,
    util::{rss_kib, Rng},
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

/// Runs the blend for the duration.
pub async fn run(args: MixedArgs) -> anyhow::Result<Report> {
    let c = &args.common;
    let total = args.browse + args.cart + args.checkout;
    anyhow::ensure!(total > 0, "the weights add up to 0");
    let bases = c.base_strings()?;
    let probe = http::client(&ClientOptions {
        timeout: c.timeout,
        connections: 4,
        source: None,
    });
    let cat = catalog::fetch(&probe, &bases[0], 20).await?;
    anyhow::ensure!(
        !cat.skus.is_empty(),
        "no SKU with 20+ units in stock at {}",
        bases[0]
    );
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
    let rss_before = c.server_pid.and_then(|p| rss_kib(p).ok());
    let started = Instant::now();
    let deadline = started + c.duration;
    let (threads, concurrency, timeout) = (c.threads, c.concurrency, c.timeout);
    let (w_browse, w_cart) = (args.browse, args.cart);
    let results = harness::run(threads, move |t| {
        let (skus, bases, plan) = (skus.clone(), bases.clone(), plan.clone());
        async move {
            let (workers, client) = harness::thread_client(concurrency, threads, t, timeout);
            let tasks = (0..workers).map(|w| {
                let (skus, plan, client) = (skus.clone(), plan.clone(), client.clone());
                let base: Rc<str> = Rc::from(harness::base_for(&bases, threads, t, w));
                async move {
                    let mut rec = Recorder::default();
                    let mut rng = Rng::new((t * 100_000 + w) as u64);
                    let mut shopper = Shopper {
                        session: Session::new(client.clone(), base.clone()),
                        lines: Vec::new(),
                    };
                    for _ in 0..10_000_000u64 {
                        if Instant::now() >= deadline {
                            break;
                        }
                        let roll = rng.below(total as usize) as u32;
                        if roll < w_browse {
                            let (label, path) = plan.next(&mut rng);
                            match http::get(&client, &format!("{base}{path}")).await {
                                Ok(r) => rec.reply(label, &r, r.status == 200),
                                Err(f) => rec.failure(label, &f),
                            }
                        } else if roll < w_browse + w_cart {
                            shopper.step(&skus, &mut rec, &mut rng).await;
                        } else {
                            checkout(&mut shopper, &skus, &mut rec, &mut rng).await;
                        }
                    }
                    let ended = Instant::now();
                    shopper.empty(&mut rec).await;
                    (rec, ended)
                }
            });
            futures_util::future::join_all(tasks).await
        }
    })
    .await?;
    let rss_after = c.server_pid.and_then(|p| rss_kib(p).ok());
    let (rec, load_end) = harness::merge_timed(results, deadline);
    let elapsed = load_end.duration_since(started);
    let mut report = Report::new(
        "mixed",
        json!({
            "common": c.json(),
            "weights": { "browse": args.browse, "cart": args.cart, "checkout": args.checkout },
        }),
    );
    report.figure_int("orders", rec.counter("orders"));
    report.rss(rss_before, rss_after);
    report.sections.push(Section {
        name: "surge".into(),
        elapsed,
        recorder: rec,
    });
    report.check_errors(c.strict);
    Ok(report)
}
