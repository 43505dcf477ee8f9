//! `remora-shop`: one service of the demo shop, run behind a sidecar by
//! `remora-control demo`.
#![forbid(unsafe_code)]

use clap::Parser;
use remora_demo::shop::{self, ShopArgs};

fn main() -> std::process::ExitCode {
    let args = ShopArgs::parse();
    let role = args.role.name();
    // A small service: one thread is plenty.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("building the tokio runtime");
    match runtime.block_on(shop::serve(args)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("remora-shop ({role}): {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
