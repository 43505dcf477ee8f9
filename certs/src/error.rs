//! The one error of this crate: what went wrong, and with which input.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write {}: {source}", path.display())]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    /// Input that is not what it should be: bad PEM, a CSR that does not
    /// parse, a certificate without an identity. Says which input.
    #[error("{what}: {reason}")]
    Invalid { what: String, reason: String },
    /// rcgen could not make or sign a certificate.
    #[error("cannot make {what}: {source}")]
    Generate {
        what: &'static str,
        source: rcgen::Error,
    },
}

impl Error {
    pub fn invalid(what: impl Into<String>, reason: impl std::fmt::Display) -> Error {
        Error::Invalid {
            what: what.into(),
            reason: reason.to_string(),
        }
    }

    pub(crate) fn generate(what: &'static str) -> impl FnOnce(rcgen::Error) -> Error {
        move |source| Error::Generate { what, source }
    }
}
