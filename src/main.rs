#![forbid(unsafe_code)]
//! `nixuv`: parses the command line and dispatches (the runners are in `nixuv::commands`).

use std::process::ExitCode;

use clap::Parser;
use nixuv::cli::{Cli, Command};
use nixuv::commands;

// The admission path allocates many small JSON values; mimalloc halves their cost against glibc malloc
// (see docs/performance.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let _flush_at_exit = commands::init_logging(cli.log_format, matches!(cli.command, Command::Serve(_)));
    let result = match cli.command {
        Command::Serve(a) => commands::serve(*a),
        Command::Preview(a) => Ok(commands::preview(a)),
        Command::Materialize => Ok(commands::materialize()),
        Command::Publish(a) => Ok(commands::publish(a)),
        Command::Gc(a) => commands::gc(a),
        Command::Certs(a) => commands::certs(a),
        Command::Check(a) => Ok(commands::check(a)),
        Command::Envs(a) => commands::envs(a),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "nixuv failed");
            eprintln!("nixuv: error: {e:#}");
            ExitCode::from(1)
        }
    }
}
