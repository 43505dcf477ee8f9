//! Identities for tests: bearer tokens, the `tokens.yaml` that grants
//! them, the token files sidecars read, and a mesh CA given to a control
//! plane as an operator gives it.

use std::path::Path;
use std::time::Duration;

use remora_certs::authority::{self, Generated, Issuer};
use sha2::{Digest, Sha256};

/// A mesh CA written to a directory, as `remora-certs init` would.
pub struct IssuerFiles {
    /// `--issuer-cert`, `--issuer-key` and `--trust-anchors`, with the
    /// paths of the files.
    pub flags: Vec<String>,
    /// The issuer's certificate, in PEM.
    pub issuer_cert: String,
    /// The issuer itself, for a test to play an operator with.
    pub issuer: Issuer,
}

/// Generates a CA of `cluster.local` and writes it in `dir`.
pub fn issuer_files(dir: &Path) -> IssuerFiles {
    let day = Duration::from_secs(86400);
    let Generated {
        anchor_cert,
        issuer_cert,
        issuer_key,
        ..
    } = authority::generate("cluster.local", day, day).expect("a CA");
    let write = |name: &str, text: &str| {
        let p = dir.join(name);
        std::fs::write(&p, text).expect("a CA file");
        p.display().to_string()
    };
    let flags = vec![
        "--issuer-cert".into(),
        write("issuer.crt", &issuer_cert),
        "--issuer-key".into(),
        write("issuer.key", &issuer_key),
        "--trust-anchors".into(),
        write("ca.crt", &anchor_cert),
    ];
    let issuer = Issuer::from_pem(&issuer_cert, &issuer_key).expect("the issuer");
    IssuerFiles {
        flags,
        issuer_cert,
        issuer,
    }
}

/// Writes in `dir` a token file for each `(identity, token)` and a
/// `tokens.yaml` granting each identity to the SHA-256 of its token, as the
/// control plane reads it; the path of `tokens.yaml`.
pub fn grant_tokens(dir: &Path, grants: &[(&str, &str)]) -> String {
    let mut yaml = String::new();
    for (identity, token) in grants {
        // With a newline, as an editor leaves it: the proxy trims it.
        std::fs::write(token_file(dir, identity), format!("{token}\n")).expect("a token file");
        let hash: String = Sha256::digest(token.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        yaml.push_str(&format!("{identity}: {hash}\n"));
    }
    let path = dir.join("tokens.yaml");
    std::fs::write(&path, yaml).expect("tokens.yaml");
    path.display().to_string()
}

/// The SPIFFE ID of a service account of the default namespace, as the
/// proxies name peers.
pub fn spiffe(identity: &str) -> String {
    format!("spiffe://cluster.local/ns/default/sa/{identity}")
}

/// The token file [`grant_tokens`] wrote for `identity`.
pub fn token_file(dir: &Path, identity: &str) -> String {
    dir.join(format!("{identity}.token")).display().to_string()
}
