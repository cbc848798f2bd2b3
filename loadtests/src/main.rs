//! `surge-loadtest`: the load-test instrument for Surge. See `loadtests/README.md`.
//!
//! Exit codes: 0 when every correctness check passed, 1 when one failed (the report
//! says which), 2 when the run could not be carried out (bad arguments, no server).

mod admin;
mod browse;
mod campaign;
mod cart;
mod catalog;
mod ceiling;
mod cli;
mod db;
mod fanout;
mod flash_sale;
mod harness;
mod http;
mod mixed;
mod pages;
mod report;
mod session;
mod util;

use std::{process::ExitCode, time::Duration};

use clap::Parser as _;

use crate::cli::{Cli, Command};

fn main() -> ExitCode {
    let cli = Cli::parse();
    // A hard stop well past any planned end, whatever the servers do.
    let planned = match &cli.command {
        Command::Browse(a) => a.common.duration * 2,
        Command::Cart(a) => a.common.duration + a.ceiling_db_duration,
        Command::FlashSale(a) => a.common.duration + a.ceiling_db_duration,
        Command::Campaign(a) => a.starts_in() + a.common.duration,
        other => other.common().duration,
    };
    harness::watchdog(planned * 2 + Duration::from_secs(180));
    let outcome = actix_web::rt::System::new().block_on(dispatch(cli.command));
    match outcome {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("surge-loadtest: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// Runs the command; `Ok(false)` when a correctness check failed.
async fn dispatch(command: Command) -> anyhow::Result<bool> {
    let path = command.common().report.clone();
    let report = match command {
        Command::Browse(a) => browse::run(a).await?,
        Command::Cart(a) => cart::run(a).await?,
        Command::FlashSale(a) => flash_sale::run(a).await?,
        Command::Fanout(a) => fanout::run(a).await?,
        Command::Campaign(a) => campaign::run(a).await?,
        Command::Mixed(a) => mixed::run(a).await?,
        Command::CeilingHttp(a) => ceiling::http_main(a).await?,
        Command::CeilingDb(a) => ceiling::db_main(a).await?,
        Command::CeilingServe(a) => ceiling::serve_main(a).await?,
    };
    report.finish(path.as_deref())?;
    Ok(report.passed())
}
