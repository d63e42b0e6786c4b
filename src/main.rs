use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = strata::cli::Cli::parse();
    let daemon = matches!(cli.command, strata::cli::Command::Run);
    strata::telemetry::init(if daemon { "info" } else { "warn" });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(strata::cli::run(cli))
}
