//! The browse generator: which catalog pages a reader asks for, and readers driving
//! it at a set of base URLs. `browse` points it at Surge, the HTTP ceiling at the bare
//! server, `mixed` uses it for its browsing share; one generator keeps them comparable.

use std::{rc::Rc, sync::Arc};

use crate::{
    catalog::{encode, Catalog},
    harness::{self, Load, Slot, Worker},
    http,
    report::{Recorder, Section},
    util::Rng,
};

/// Label of list-page requests.
pub const LIST: &str = "GET /api/products";
/// Label of product-page requests.
pub const PRODUCT: &str = "GET /api/products/{slug}";

/// What the browse generator picks from.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Product slugs.
    pub slugs: Vec<String>,
    /// List cursors.
    pub cursors: Vec<String>,
    /// Search words.
    pub words: Vec<String>,
    /// Percent of list-page requests.
    pub list_percent: u32,
}

impl Plan {
    /// A plan from a fetched catalog.
    pub fn new(cat: &Catalog, list_percent: u32) -> Self {
        Self {
            slugs: cat.slugs.clone(),
            cursors: cat.cursors.clone(),
            words: cat.words.clone(),
            list_percent,
        }
    }

    /// The next request: its label and path.
    pub fn next(&self, rng: &mut Rng) -> (&'static str, String) {
        if self.slugs.is_empty() || rng.percent(self.list_percent) {
            let path = match rng.below(3) {
                0 => match rng.pick(&self.cursors) {
                    Some(c) => format!("/api/products?limit=24&cursor={}", encode(c)),
                    None => "/api/products?limit=24".to_owned(),
                },
                1 => match rng.pick(&self.words) {
                    Some(w) => format!("/api/products?limit=24&q={}", encode(w)),
                    None => "/api/products?limit=24".to_owned(),
                },
                _ => "/api/products?limit=24".to_owned(),
            };
            (LIST, path)
        } else {
            let slug = rng.pick(&self.slugs).map(String::as_str).unwrap_or("");
            (PRODUCT, format!("/api/products/{slug}"))
        }
    }

    /// Reads the next page from `base` and records the answer.
    pub async fn visit(&self, client: &awc::Client, base: &str, rec: &mut Recorder, rng: &mut Rng) {
        let (label, path) = self.next(rng);
        match http::get(client, &format!("{base}{path}")).await {
            Ok(r) => rec.reply(label, &r, r.status == 200),
            Err(f) => rec.failure(label, &f),
        }
    }
}

/// A worker that only reads pages.
struct Reader {
    plan: Arc<Plan>,
    client: awc::Client,
    base: Rc<str>,
}

impl Worker for Reader {
    async fn step(&mut self, rec: &mut Recorder, rng: &mut Rng) {
        self.plan.visit(&self.client, &self.base, rec, rng).await;
    }
}

/// Drives the load's URLs with readers until its deadline, as the section `name`.
pub async fn drive(name: &str, load: &Load, plan: Arc<Plan>) -> anyhow::Result<Section> {
    let (recorder, _) = harness::timed(load, move |slot: Slot| Reader {
        plan: plan.clone(),
        client: slot.client,
        base: slot.base,
    })
    .await?;
    Ok(Section::new(name, load.started.elapsed(), recorder))
}
