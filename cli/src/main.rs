//! `anykv`: the command-line tool of anykv.
//!
//! Reads, writes, lists, watches and deletes keys, runs a command under a
//! lock or while elected leader, and follows an election, on any store
//! `anykv::open` accepts (`--url` or `ANYKV_URL`). See `anykv --help` and
//! the crate's README for commands, exit codes and the JSON format.

mod args;
mod child;
mod connect;
mod exit;
mod kv;
mod output;
mod recipes;
mod run;
mod signals;

use std::process::ExitCode;
use std::time::Duration;

use clap::{CommandFactory, Parser};

use crate::args::{Cli, Command};
use crate::connect::Target;
use crate::exit::{CliError, FAILURE};
use crate::output::Output;
use crate::signals::Signals;

/// How long the CLI waits for its store handle to close (ending its
/// session) before it exits anyway; the session then expires by itself.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// Prints a warning to stderr.
pub(crate) fn warn(message: &str) {
    eprintln!("anykv: warning: {message}");
}

/// Prints a progress note to stderr.
pub(crate) fn info(message: &str) {
    eprintln!("anykv: {message}");
}

fn main() -> ExitCode {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if args.get(1).is_some_and(|a| a == child::EXEC_MODE) {
        return child::exec_main(&args[2..]);
    }
    // rediss:// needs a process-wide TLS crypto provider; an error means
    // one is installed already.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = Cli::parse();
    // Single-threaded: see the `child` module on the death signal.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("anykv: cannot start the async runtime: {e}");
            return ExitCode::from(FAILURE);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            if !error.message.is_empty() {
                eprintln!("anykv: {}", error.message);
            }
            ExitCode::from(error.code)
        }
    }
}

async fn run(cli: Cli) -> Result<(), CliError> {
    let out = Output { json: cli.json };
    if let Command::Completions { shell } = &cli.command {
        let mut script = Vec::new();
        clap_complete::generate(*shell, &mut Cli::command(), "anykv", &mut script);
        return out.write(&script);
    }
    let target = Target::from_arg(cli.url)?;
    let store = target.open().await?;
    let result = match &cli.command {
        Command::Get { key, raw } => kv::get(&store, &target, out, key, *raw).await,
        Command::Put(put) => kv::put(&store, &target, out, put).await,
        Command::Rm {
            key,
            recursive,
            if_version,
        } => kv::rm(&store, &target, out, key, *recursive, *if_version).await,
        Command::Ls { prefix } => kv::ls(&store, &target, out, prefix).await,
        Command::Watch { key } => {
            let mut signals = Signals::new()?;
            kv::watch(&store, &target, out, key, &mut signals).await
        }
        Command::WatchTree { prefix } => {
            let mut signals = Signals::new()?;
            kv::watch_tree(&store, &target, out, prefix, &mut signals).await
        }
        Command::Lock { id, try_only, run } => {
            let mut signals = Signals::new()?;
            let id = id.clone().unwrap_or_else(run::default_id);
            run::lock(&store, &target, id, *try_only, run, &mut signals).await
        }
        Command::Elect { id, once, run } => {
            let mut signals = Signals::new()?;
            let id = id.clone().unwrap_or_else(run::default_id);
            run::elect(&store, &target, id, *once, run, &mut signals).await
        }
        Command::Follow { key } => {
            let mut signals = Signals::new()?;
            run::follow(&store, &target, out, key, &mut signals).await
        }
        Command::Members {
            service,
            prefix,
            watch,
        } => {
            let mut signals = Signals::new()?;
            recipes::members(&store, &target, out, prefix, service, *watch, &mut signals).await
        }
        Command::Queue(command) => {
            let mut signals = Signals::new()?;
            recipes::queue(&store, &target, out, command, &mut signals).await
        }
        Command::Completions { .. } => Ok(()),
    };
    // End the session now (its ephemeral keys and locks go at once) rather
    // than leaving it to expire.
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, store.close()).await;
    result
}
