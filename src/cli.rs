//! The `surge` command line: serve, migrate, seed and check.

use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};

use crate::{
    config::{ConfigError, DatabaseArgs, LogFormat, ServeArgs},
    server::{self, Application},
    store::{check, migrate, seed, Db},
    telemetry,
};

/// Surge: a real-time commerce server.
#[derive(Debug, Parser)]
#[command(name = "surge", version, about)]
pub struct Cli {
    /// Log format: human (default) or json.
    #[arg(
        long,
        env = "SURGE_LOG_FORMAT",
        value_name = "SURGE_LOG_FORMAT",
        value_enum,
        default_value = "human",
        global = true
    )]
    pub log_format: LogFormat,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Migrate, load the catalog and serve HTTP until SIGTERM or SIGINT.
    Serve(Box<ServeArgs>),
    /// Apply pending migrations and exit.
    Migrate(DatabaseArgs),
    /// Load data.
    Seed {
        /// Load the demo fashion store (idempotent).
        #[arg(long, required = true)]
        demo: bool,
        #[command(flatten)]
        db: DatabaseArgs,
    },
    /// Check stock conservation for every SKU; exits 1 when any SKU is off.
    Check(DatabaseArgs),
}

/// Entry point of the binary: parses, runs, and maps failures to an exit code.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) if !err.use_stderr() => {
            // --help and --version.
            let _ = err.print();
            return ExitCode::SUCCESS;
        }
        Err(err) => {
            let rendered = err.render().to_string();
            let first = rendered.lines().next().unwrap_or("invalid arguments");
            eprintln!("{first}");
            return ExitCode::from(2);
        }
    };
    telemetry::init_tracing(cli.log_format);
    let result = actix_web::rt::System::new().block_on(run(cli.command));
    match result {
        Ok(code) => code,
        Err(err) => {
            if let Some(config) = err.downcast_ref::<ConfigError>() {
                eprintln!("error: {config}");
                return ExitCode::from(2);
            }
            tracing::error!(error = format!("{err:#}"), "surge failed");
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Serve(args) => {
            let cfg = args.validate()?;
            if cfg.session_key.is_none() {
                tracing::warn!("SURGE_SESSION_KEY is not set: using a random key; sessions end when this process does");
            }
            let app = Application::build(cfg).await?;
            app.run_until_stopped(server::wait_for_signal()).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Migrate(args) => {
            let db = Db::new(&args.validate()?)?;
            let mut client = db.primary.get().await.context("connecting to PostgreSQL")?;
            let report = migrate::run(&mut client).await?;
            println!("migrations applied: {}", report.applied_migrations().len());
            Ok(ExitCode::SUCCESS)
        }
        Command::Seed { demo: _, db } => {
            let db = Db::new(&db.validate()?)?;
            let mut client = db.primary.get().await.context("connecting to PostgreSQL")?;
            let (products, skus) = seed::seed_demo(&mut client).await?;
            println!("demo store ready: {products} products, {skus} SKUs");
            Ok(ExitCode::SUCCESS)
        }
        Command::Check(args) => {
            let db = Db::new(&args.validate()?)?;
            let client = db.primary.get().await.context("connecting to PostgreSQL")?;
            let skus = check::sku_count(&**client).await?;
            let violations = check::violations(&**client).await?;
            for v in &violations {
                println!("VIOLATION {v}");
            }
            println!("stock check: {skus} SKUs, {} violations", violations.len());
            Ok(if violations.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    use super::Cli;

    /// Variables read outside clap (by the log filter).
    const NOT_FLAGS: &[&str] = &["SURGE_LOG"];

    /// The rows of the README's configuration table, by the variables they name.
    fn readme_rows() -> Vec<(Vec<String>, String)> {
        let readme = include_str!("../README.md");
        let table = readme
            .split("## Configuration")
            .nth(1)
            .and_then(|s| s.split("\n## ").next())
            .unwrap_or_default();
        table
            .lines()
            .filter(|l| l.starts_with("| `"))
            .map(|l| {
                let first = l.split('|').nth(1).unwrap_or_default();
                let vars = first
                    .split('`')
                    .skip(1)
                    .step_by(2)
                    .map(str::to_owned)
                    .collect();
                (vars, l.to_owned())
            })
            .collect()
    }

    /// Every variable of `surge serve`, with its default as clap states it.
    fn flags() -> Vec<(String, Vec<String>)> {
        let mut cmd = Cli::command();
        cmd.build();
        let serve = cmd
            .find_subcommand("serve")
            .expect("serve subcommand")
            .clone();
        serve
            .get_arguments()
            .filter_map(|a| {
                let env = a.get_env()?.to_string_lossy().into_owned();
                let defaults = a
                    .get_default_values()
                    .iter()
                    .map(|v| v.to_string_lossy().into_owned())
                    .collect();
                Some((env, defaults))
            })
            .collect()
    }

    #[test]
    fn readme_lists_every_variable_with_its_default() {
        let rows = readme_rows();
        assert!(!rows.is_empty(), "README has no configuration table");
        for (env, defaults) in flags() {
            let row = rows
                .iter()
                .find(|(vars, _)| vars.contains(&env))
                .map(|(_, row)| row)
                .unwrap_or_else(|| panic!("README's configuration table lacks {env}"));
            let default_cell = row.split('|').nth(2).unwrap_or_default();
            for d in defaults.iter().filter(|d| !d.is_empty()) {
                assert!(
                    default_cell.contains(&format!("`{d}`")),
                    "README gives {env} a default other than `{d}`: {row}"
                );
            }
        }
    }

    #[test]
    fn readme_documents_no_variable_that_does_not_exist() {
        let known: Vec<String> = flags().into_iter().map(|(env, _)| env).collect();
        for (vars, row) in readme_rows() {
            for var in vars {
                assert!(
                    known.contains(&var) || NOT_FLAGS.contains(&var.as_str()),
                    "README documents {var}, which surge does not read: {row}"
                );
            }
        }
    }
}
