//! `surge-loadtest`: the load-test instrument for Surge. See `loadtests/README.md`.
//!
//! Exit codes: 0 when every correctness check passed, 1 when one failed (the report
//! says which), 2 when the run could not be carried out (bad arguments, no server).

mod admin;
mod browse;
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
mod report;
mod session;
mod util;

use std::{process::ExitCode, time::Duration};

use clap::Parser as _;

use crate::cli::{Cli, Command, WaitReadyArgs};

fn main() -> ExitCode {
    let cli = Cli::parse();
    // A hard stop well past any planned end, whatever the servers do.
    let planned = match &cli.command {
        Command::Browse(a) => a.common.duration * 2,
        Command::Cart(a) => a.common.duration + a.ceiling_db_duration,
        Command::FlashSale(a) => a.common.duration + a.ceiling_db_duration,
        Command::Fanout(a) => a.common.duration,
        Command::Mixed(a) => a.common.duration,
        Command::CeilingHttp(a) => a.common.duration,
        Command::CeilingDb(a) => a.common.duration,
        Command::FreePort => Duration::ZERO,
        Command::WaitReady(a) => a.timeout,
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
    let (report, path) = match command {
        Command::Browse(a) => {
            let path = a.common.report.clone();
            (browse::run(a).await?, path)
        }
        Command::Cart(a) => {
            let path = a.common.report.clone();
            (cart::run(a).await?, path)
        }
        Command::FlashSale(a) => {
            let path = a.common.report.clone();
            (flash_sale::run(a).await?, path)
        }
        Command::Fanout(a) => {
            let path = a.common.report.clone();
            (fanout::run(a).await?, path)
        }
        Command::Mixed(a) => {
            let path = a.common.report.clone();
            (mixed::run(a).await?, path)
        }
        Command::CeilingHttp(a) => {
            let path = a.common.report.clone();
            (ceiling::http_main(a).await?, path)
        }
        Command::CeilingDb(a) => {
            let path = a.common.report.clone();
            (ceiling::db_main(a).await?, path)
        }
        Command::FreePort => {
            let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
            println!("{}", listener.local_addr()?.port());
            return Ok(true);
        }
        Command::WaitReady(a) => return wait_ready(a).await,
    };
    report.finish(path.as_deref())?;
    Ok(report.passed())
}

/// Polls `/readyz` until 200, the timeout, or the watched process exiting.
async fn wait_ready(a: WaitReadyArgs) -> anyhow::Result<bool> {
    let base = util::loopback_base_url(&a.url)?;
    let client = http::client(&http::ClientOptions {
        timeout: Duration::from_secs(2),
        connections: 1,
        source: None,
    });
    let deadline = std::time::Instant::now() + a.timeout;
    let mut last = String::from("no answer yet");
    while std::time::Instant::now() < deadline {
        if let Some(pid) = a.pid {
            anyhow::ensure!(
                std::path::Path::new(&format!("/proc/{pid}")).exists(),
                "process {pid} exited before {base}/readyz answered 200"
            );
        }
        match http::get(&client, &format!("{base}/readyz")).await {
            Ok(r) if r.status == 200 => return Ok(true),
            Ok(r) => last = format!("status {}", r.status),
            Err(f) => last = f.detail,
        }
        actix_web::rt::time::sleep(Duration::from_millis(200)).await;
    }
    anyhow::bail!(
        "{base}/readyz did not answer 200 within {:?} ({last})",
        a.timeout
    )
}
