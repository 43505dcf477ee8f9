//! Identities for tests: bearer tokens, the `tokens.yaml` that grants
//! them, and the token files sidecars read.

use std::path::Path;

use sha2::{Digest, Sha256};

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
