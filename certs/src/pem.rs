//! PEM in and out: certificates and keys read from text or files, each
//! error naming what was read.

use std::path::Path;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::Error;

/// Every certificate in `pem`, in order; an error when there is none.
pub fn certificates(pem: &str, what: &str) -> Result<Vec<CertificateDer<'static>>, Error> {
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| Error::invalid(what, format!("not PEM certificates: {e}")))?;
    if certs.is_empty() {
        return Err(Error::invalid(what, "holds no CERTIFICATE block"));
    }
    Ok(certs)
}

/// The one private key in `pem` (PKCS#8, SEC1 or PKCS#1).
pub fn private_key(pem: &str, what: &str) -> Result<PrivateKeyDer<'static>, Error> {
    PrivateKeyDer::from_pem_slice(pem.as_bytes())
        .map_err(|e| Error::invalid(what, format!("holds no private key: {e}")))
}

pub fn read(path: &Path) -> Result<String, Error> {
    std::fs::read_to_string(path).map_err(|source| Error::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// Writes `contents` to `path`; `private` files are readable by their
/// owner only.
pub fn write(path: &Path, contents: &str, private: bool) -> Result<(), Error> {
    let error = |source| Error::Write {
        path: path.to_path_buf(),
        source,
    };
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(if private { 0o600 } else { 0o644 });
    }
    let mut file = options.open(path).map_err(error)?;
    std::io::Write::write_all(&mut file, contents.as_bytes()).map_err(error)
}
