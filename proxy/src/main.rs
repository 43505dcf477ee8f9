//! `remora-proxy`: parse flags → set up logs → run until a signal → drain.
#![forbid(unsafe_code)]

use clap::Parser;
use remora_proxy::config::Config;

fn main() -> std::process::ExitCode {
    let config = Config::parse();
    let log_level = match remora_server::logs::init(config.log_format, &config.log_level) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("remora-proxy: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    // A sidecar shares its pod with the app: one thread by default, where
    // every wakeup stays on the thread that made it; more only when asked.
    let runtime = match config.threads.get() {
        1 => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build(),
        n => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(n)
            .enable_all()
            .build(),
    }
    .expect("building the tokio runtime");
    match runtime.block_on(remora_proxy::app::run(config, log_level)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "remora-proxy failed");
            eprintln!("remora-proxy: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
