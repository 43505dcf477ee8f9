//! `remora-control`: parse the command line, then serve, check or run the demo.
#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;
use remora_control::config::{Cli, Command, ServeArgs};

/// A push answers thousands of held polls at once and takes as many new
/// ones, each allocating and freeing a little; mimalloc's per-thread free
/// lists cost the control plane about a fifth less CPU per push than
/// glibc's allocator (benches/README.md, the push benchmark).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Check { file }) => remora_control::check::run(&file),
        Some(Command::Serve(args)) => serve(*args),
        Some(Command::Inject(settings)) => remora_control::inject::run(&settings),
        Some(Command::Demo(options)) => match remora_demo::run(options) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("remora-control demo: {e:#}");
                ExitCode::FAILURE
            }
        },
        None => serve(cli.serve),
    }
}

fn serve(args: ServeArgs) -> ExitCode {
    if let Err(e) = remora_server::logs::init(args.log_format, &args.log_level) {
        eprintln!("remora-control: {e}");
        return ExitCode::from(2);
    }
    // This thread is the first of the API's (see `threads`); the others
    // start with the API.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("building the tokio runtime");
    match runtime.block_on(remora_control::serve::run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "remora-control failed");
            eprintln!("remora-control: {e:#}");
            ExitCode::FAILURE
        }
    }
}
