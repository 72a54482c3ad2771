//! The command line: `raregen <command>`; every command reads the same configuration.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{CommandFactory, Parser, Subcommand};

use crate::cmd::{load_test, serve, status, unstick, wallet};
use crate::config::{LogFormat, Mode, Settings};
use crate::{store, telemetry};

#[derive(Debug, Parser)]
#[command(
    name = "raregen",
    version,
    about = "High-volume Bitcoin transaction publisher"
)]
pub struct Cli {
    /// Configuration file layered over the defaults (also RAREGEN_CONFIG).
    #[arg(long, global = true, value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// Log format: text or json (overrides log.format).
    #[arg(long, global = true, value_name = "FORMAT", value_parser = parse_log_format)]
    pub log_format: Option<LogFormat>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Apply the embedded database migrations (idempotent).
    Migrate,
    /// Run the HTTP API and the pipeline until SIGINT/SIGTERM; applies migrations first.
    Serve {
        /// batch or single (overrides `mode`).
        #[arg(long, value_enum)]
        mode: Option<Mode>,
    },
    /// The pool's wallet: address, import, split, balance.
    #[command(subcommand)]
    Wallet(WalletCommand),
    /// Queue depth by status, the last batches, the UTXO pool, the oldest stuck job.
    Status {
        /// Print JSON instead of tables.
        #[arg(long)]
        json: bool,
    },
    /// Submit N jobs through the HTTP API, follow them until sent or failed, and report
    /// throughput and latency. Exits non-zero if any job failed or the timeout passed.
    LoadTest(load_test::LoadTest),
    /// Print shell completions for bash, zsh, fish, elvish or powershell, e.g.
    /// `raregen completions bash > /etc/bash_completion.d/raregen`.
    Completions {
        /// The shell to complete in.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the manual pages (roff), e.g. `raregen man | man -l -`.
    Man,
    /// Re-broadcast the stored transactions of jobs stuck in `sending` (never re-signs).
    Unstick {
        /// Only jobs sending for longer than this (humantime).
        #[arg(long, default_value = "2m", value_parser = humantime::parse_duration)]
        older_than: std::time::Duration,
        /// At most this many jobs.
        #[arg(long, default_value_t = 10_000)]
        limit: u32,
    },
}

#[derive(Debug, Subcommand)]
pub enum WalletCommand {
    /// Print the pool's receive address (one line, nothing else).
    Address,
    /// Print a fresh WIF private key for chain.network (for throwaway wallets).
    New,
    /// Add outpoints paying the pool's address to the pool (asks the node about each).
    Import {
        /// Outpoints as TXID:VOUT.
        #[arg(required = true, value_name = "TXID:VOUT")]
        outpoints: Vec<String>,
    },
    /// Split the largest pool UTXO into N outputs of SATS each (plus change).
    Split {
        /// How many outputs of SATS each.
        #[arg(long, value_name = "N")]
        outputs: u32,
        /// The value of each output, in satoshis.
        #[arg(long, value_name = "SATS")]
        amount: u64,
    },
    /// Regtest only: mine blocks to the pool's address and import the matured coinbases.
    Mine {
        /// Blocks to mine. The default, 450, is what a fresh regtest chain needs: a
        /// coinbase matures after 100 more blocks, and bcoin's regtest activates SegWit
        /// (which P2WPKH coins need) only at height 432; below it the node refuses every
        /// spend of the pool (no-witness-yet). Says so when the chain is still below.
        #[arg(long, default_value_t = 450)]
        blocks: u32,
        /// Import at most this many matured coinbases.
        #[arg(long, default_value_t = 10)]
        import_max: usize,
    },
    /// Pool summary: available, reserved, dirty counts and sats.
    Balance {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

fn parse_log_format(s: &str) -> Result<LogFormat, String> {
    match s {
        "text" => Ok(LogFormat::Text),
        "json" => Ok(LogFormat::Json),
        _ => Err("expected text or json".into()),
    }
}

/// Parses the arguments, runs the command, and turns errors into one line on stderr.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("raregen: {}", one_line(&e));
            ExitCode::FAILURE
        }
    }
}

/// `outer: cause: root cause`, on one line. A cause whose text the line already holds
/// is left out: many errors (sqlx's, `std::io`'s inside ours) print their source in their
/// own message, and the chain would otherwise say it twice.
fn one_line(e: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        let text = text.split_whitespace().collect::<Vec<_>>().join(" ");
        if text.is_empty() || line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line
}

pub fn run(cli: Cli) -> anyhow::Result<()> {
    match print_docs(&cli.command) {
        Ok(true) => return Ok(()),
        Ok(false) => {}
        // `raregen man | head`: the reader has seen enough.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(()),
        Err(e) => return Err(e.into()),
    }
    let mut settings = Settings::load(cli.config.as_deref())?;
    if let Some(format) = cli.log_format {
        settings.log.format = format;
    }
    telemetry::init(settings.log.format, &settings.log.level);
    let system = actix::System::new();
    system.block_on(async move {
        match cli.command {
            Command::Migrate => {
                let pool = store::connect_or_create(&settings.database).await?;
                if let store::batch_worker::Found::BatchWorker(seed) =
                    store::batch_worker::inspect(&pool).await?
                {
                    // The UTXOs of RareGen's batch worker carry no script: they are the
                    // key's coins.
                    let key = crate::chain::WalletKey::from_settings(&settings).context(
                        "this database holds the seed's schema; adopting it needs the wallet \
                         key the seed used (its UTXOs are that key's coins)",
                    )?;
                    let adopted =
                        store::batch_worker::adopt(&pool, &seed, key.script_pubkey().as_bytes())
                            .await?;
                    println!(
                        "adopted the seed's database at {} — {adopted}; the seed's tables are \
                         kept in schema {} (drop it once satisfied)",
                        settings.database.redacted_url(),
                        store::batch_worker::ASIDE_SCHEMA
                    );
                    return Ok(());
                }
                store::migrate(&pool).await?;
                println!("migrations applied to {}", settings.database.redacted_url());
                Ok(())
            }
            Command::Serve { mode } => {
                if let Some(mode) = mode {
                    settings.mode = mode;
                }
                serve::run(settings).await
            }
            Command::Status { json } => status::run(&settings, json).await,
            Command::LoadTest(opts) => load_test::run(&settings, opts).await,
            Command::Unstick { older_than, limit } => {
                unstick::run(settings, older_than, limit).await
            }
            Command::Wallet(command) => wallet::run(settings, command).await,
            Command::Completions { .. } | Command::Man => unreachable!("answered before"),
        }
    })
}

/// `raregen completions SHELL` and `raregen man`: printed from the command line's own
/// definition, without configuration.
fn print_docs(command: &Command) -> std::io::Result<bool> {
    let mut cli = Cli::command();
    match command {
        Command::Completions { shell } => {
            clap_complete::generate(*shell, &mut cli, "raregen", &mut std::io::stdout());
            Ok(true)
        }
        Command::Man => {
            let mut out = std::io::stdout();
            clap_mangen::Man::new(cli.clone()).render(&mut out)?;
            // Each command's own page after the summary, as `raregen-<command>(1)`.
            for sub in cli.get_subcommands() {
                let title = format!("raregen-{}", sub.get_name());
                clap_mangen::Man::new(sub.clone())
                    .title(title)
                    .render(&mut out)?;
            }
            Ok(true)
        }
        _ => Ok(false),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every flag and argument of every command says what it is for.
    #[test]
    fn every_argument_has_help() {
        fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
            let path = format!("{path} {}", cmd.get_name());
            if cmd.get_about().is_none() && !path.ends_with(" help") {
                missing.push(format!("{path} (the command)"));
            }
            for arg in cmd.get_arguments() {
                let id = arg.get_id().as_str();
                if matches!(id, "help" | "version") {
                    continue;
                }
                if arg.get_help().is_none() && arg.get_long_help().is_none() {
                    missing.push(format!("{path} {id}"));
                }
            }
            for sub in cmd.get_subcommands() {
                walk(sub, &path, missing);
            }
        }
        let mut missing = Vec::new();
        walk(&Cli::command(), "", &mut missing);
        assert!(missing.is_empty(), "no help text: {missing:?}");
    }
}
