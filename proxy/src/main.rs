//! `remora-proxy`: parse flags → set up logs → run until a signal → drain.
// One allowed use: configuring the allocator.
#![deny(unsafe_code)]

use clap::Parser;
use remora_proxy::config::{Cli, Command};

/// glibc's allocator keeps what a burst of connections allocated long
/// after they close (90% of it, benches/load/memory.sh); mimalloc,
/// purging at once, gives it back.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `mi_option_purge_delay` in mimalloc 3's `mi_option_t`, which the
/// bindings do not name; the test below checks it against its default.
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// mimalloc purges freed pages after a delay, and only when it next
/// allocates: a proxy that goes quiet after a burst would keep what the
/// burst freed until its next busy moment. Purged at once, memory returns
/// as connections close, for the same CPU per request
/// (benches/load/compare.sh).
#[allow(unsafe_code)]
fn purge_freed_memory_at_once() {
    // SAFETY: sets a process-wide allocator option, which takes any
    // number; called first thing in `main`, before any other thread.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, 0) }
}

fn main() -> std::process::ExitCode {
    purge_freed_memory_at_once();
    let config = match Cli::parse() {
        Cli {
            command: Some(Command::WaitReady(args)),
            ..
        } => return remora_proxy::wait_ready::run(&args),
        Cli {
            command: Some(Command::Init(args)),
            ..
        } => return remora_proxy::init::run(&args),
        Cli { config, .. } => config,
    };
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

#[cfg(test)]
mod tests {
    #[test]
    #[allow(unsafe_code)]
    fn the_purge_delay_option_is_the_one_set() {
        // SAFETY: reads and sets a process-wide allocator option.
        let (default, set) = unsafe {
            let default = libmimalloc_sys::mi_option_get(super::MI_OPTION_PURGE_DELAY);
            super::purge_freed_memory_at_once();
            let set = libmimalloc_sys::mi_option_get(super::MI_OPTION_PURGE_DELAY);
            (default, set)
        };
        // mimalloc 3's default purge delay, in milliseconds.
        assert_eq!(default, 1000);
        assert_eq!(set, 0);
    }
}
