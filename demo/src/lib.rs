//! The demo shop and the orchestration behind `remora-control demo`: a
//! control plane, five shop services each behind its own `remora-proxy`,
//! steady traffic, and the mesh's own numbers once a second.
#![forbid(unsafe_code)]

mod children;
mod client;
mod run;
pub mod shop;
mod stats;
mod traffic;

pub use run::{run, DemoOptions};
