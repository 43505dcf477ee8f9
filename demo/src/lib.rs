//! The demo shop and the orchestration behind `remora-control demo`.
#![forbid(unsafe_code)]
