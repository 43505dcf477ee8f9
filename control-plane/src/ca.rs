//! The mesh's certificate authority, in the control plane: which bearer
//! token grants which identity (`--tokens`, then, with `--kubernetes`,
//! Kubernetes' TokenReview), the issuer that signs (given with
//! `--issuer-cert`/`--issuer-key`, or a development CA made in
//! `--data-dir`), and the signing of a proxy's CSR for the identity its
//! token grants.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use remora_api::identity::CONTROL_PLANE_IDENTITY;
use remora_api::locate::{locate, Segment};
use remora_api::{ConfigError, Problem, SpiffeId};
use remora_certs::authority::{self, Issuer, Validity};
use remora_certs::leaf::Credentials;
use remora_certs::pem;
use remora_certs::verify::TrustAnchors;
use sha2::{Digest, Sha256};

use crate::tokenreview::{ReviewError, TokenReviewer};

/// The files of a development CA in `--data-dir`, as `remora-certs init`
/// names them.
const DEV_ANCHOR_CERT: &str = "ca.crt";
const DEV_ANCHOR_KEY: &str = "ca.key";
const DEV_ISSUER_CERT: &str = "issuer.crt";
const DEV_ISSUER_KEY: &str = "issuer.key";
/// A development CA's validity: long enough not to matter on a laptop.
const DEV_ANCHOR_VALIDITY: Duration = Duration::from_secs(365 * 24 * 3600);
const DEV_ISSUER_VALIDITY: Duration = Duration::from_secs(365 * 24 * 3600);

/// Where the issuer comes from.
#[derive(Clone, Debug)]
pub enum IssuerSource {
    Files {
        cert: PathBuf,
        key: PathBuf,
        anchors: PathBuf,
    },
    /// A development CA in this directory, made on first start.
    Development(PathBuf),
}

impl IssuerSource {
    /// From the three flags: all of them, or none (a development CA in
    /// `data_dir`).
    pub fn from_flags(
        cert: Option<PathBuf>,
        key: Option<PathBuf>,
        anchors: Option<PathBuf>,
        data_dir: &Path,
    ) -> anyhow::Result<IssuerSource> {
        match (cert, key, anchors) {
            (Some(cert), Some(key), Some(anchors)) => {
                Ok(IssuerSource::Files { cert, key, anchors })
            }
            (None, None, None) => Ok(IssuerSource::Development(data_dir.to_path_buf())),
            (cert, key, anchors) => {
                let missing: Vec<&str> = [
                    ("--issuer-cert", cert.is_none()),
                    ("--issuer-key", key.is_none()),
                    ("--trust-anchors", anchors.is_none()),
                ]
                .into_iter()
                .filter_map(|(flag, missing)| missing.then_some(flag))
                .collect();
                anyhow::bail!(
                    "give --issuer-cert, --issuer-key and --trust-anchors together (missing: {}), or none of them for a development CA in --data-dir",
                    missing.join(", ")
                )
            }
        }
    }
}

/// Tokens, hashed, and the identity each grants, as `tokens.yaml` writes
/// them. The tokens themselves are never stored.
#[derive(Clone, Debug, Default)]
pub struct Tokens {
    /// SHA-256 of a token → the identity it grants.
    grants: Vec<([u8; 32], SpiffeId)>,
}

impl Tokens {
    /// Reads `path`: a map from identity (`NAME`, `NAME.NAMESPACE` or a
    /// `spiffe://` URI) to the SHA-256 of its token, in hex. Every problem,
    /// each at its line and column.
    pub fn read(path: &Path, trust_domain: &str) -> Result<Tokens, ConfigError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError::unreadable(&file, format!("cannot read the tokens: {e}")))?;
        Tokens::parse(&file, &text, trust_domain)
    }

    pub fn parse(file: &str, text: &str, trust_domain: &str) -> Result<Tokens, ConfigError> {
        let map: BTreeMap<String, String> = match serde_yaml::from_str(text) {
            Ok(m) => m,
            Err(_) if text.trim().is_empty() => BTreeMap::new(),
            Err(e) => {
                return Err(ConfigError {
                    problems: vec![remora_api::load::serde_problem(file, &e)],
                })
            }
        };
        let mut problems = Vec::new();
        let mut grants = Vec::new();
        for (name, hash) in &map {
            let problem = |message: String| Problem {
                file: file.to_string(),
                position: locate(text, &[Segment::Key(name.clone())]),
                key: name.clone(),
                message,
            };
            let identity = match SpiffeId::resolve(name, trust_domain) {
                Ok(id) if id.trust_domain() == trust_domain => id,
                Ok(id) => {
                    problems.push(problem(format!(
                        "{id} is not of this mesh's trust domain {trust_domain}"
                    )));
                    continue;
                }
                Err(e) => {
                    problems.push(problem(e.reason));
                    continue;
                }
            };
            match parse_sha256(hash) {
                Some(digest) => grants.push((digest, identity)),
                None => problems.push(problem(
                    "the token's SHA-256 must be 64 hex digits (as `printf %s TOKEN | sha256sum` prints it)".into(),
                )),
            }
        }
        if problems.is_empty() {
            Ok(Tokens { grants })
        } else {
            Err(ConfigError { problems })
        }
    }

    /// The identity `token` grants. Every grant is compared, in constant
    /// time, so how long this takes says nothing about the token.
    pub fn identity_of(&self, token: &str) -> Option<&SpiffeId> {
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let mut found = None;
        for (hash, identity) in &self.grants {
            let same = hash
                .iter()
                .zip(digest.iter())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0;
            if same {
                found = Some(identity);
            }
        }
        found
    }

    pub fn len(&self) -> usize {
        self.grants.len()
    }

    pub fn is_empty(&self) -> bool {
        self.grants.is_empty()
    }
}

fn parse_sha256(hex: &str) -> Option<[u8; 32]> {
    let hex = hex.trim();
    if hex.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// The control plane's CA.
pub struct Authority {
    issuer: Issuer,
    /// What the mesh trusts: the API checks its clients against them.
    pub anchors: TrustAnchors,
    tokens: Tokens,
    /// With `--kubernetes`: what checks the tokens `tokens` does not grant.
    reviewer: Option<TokenReviewer>,
    ttl: Duration,
}

/// Why a certificate was refused: the status to answer, and the reason.
#[derive(Debug, PartialEq, Eq)]
pub enum Refusal {
    /// No token, or one that grants nothing: `401`.
    Unauthorized(String),
    /// A CSR that cannot be signed: `400`.
    BadRequest(String),
    /// The token could not be checked now (the Kubernetes API server did
    /// not answer): `503`, and the proxy tries again.
    Unavailable(String),
}

impl Authority {
    /// The issuer from `source` (a development CA is made on first use,
    /// and said so loudly), and the tokens.
    pub fn load(
        source: &IssuerSource,
        tokens: Tokens,
        ttl: Duration,
        trust_domain: &str,
    ) -> anyhow::Result<Authority> {
        let (issuer, anchors) = match source {
            IssuerSource::Files { cert, key, anchors } => (
                Issuer::from_pem(&pem::read(cert)?, &pem::read(key)?)?,
                TrustAnchors::from_pem(&pem::read(anchors)?)?,
            ),
            IssuerSource::Development(dir) => (
                development_issuer(dir, trust_domain)?,
                TrustAnchors::from_pem(&pem::read(&development_anchors(dir))?)?,
            ),
        };
        if issuer.info().not_after < SystemTime::now() + ttl {
            tracing::warn!(
                not_after = %humantime::format_rfc3339_seconds(issuer.info().not_after),
                "the issuer expires within --cert-ttl: certificates will be cut short; rotate it"
            );
        }
        Ok(Authority {
            issuer,
            anchors,
            tokens,
            reviewer: None,
            ttl,
        })
    }

    /// Checks the tokens that `--tokens` does not grant with `reviewer`.
    pub fn reviewing(mut self, reviewer: TokenReviewer) -> Self {
        self.reviewer = Some(reviewer);
        self
    }

    /// A certificate of the control plane's own identity, for its API.
    pub fn own_credentials(&self, trust_domain: &str) -> anyhow::Result<Credentials> {
        let identity = SpiffeId::resolve(CONTROL_PLANE_IDENTITY, trust_domain)?;
        let (chain, key) = self
            .issuer
            .issue(&identity, Validity::starting(SystemTime::now(), self.ttl))?;
        Ok(Credentials::from_pem(&chain, &key)?)
    }

    /// The identity `bearer` grants: the one `--tokens` gives it, else,
    /// with `--kubernetes`, its service account's, if Kubernetes vouches
    /// for it.
    pub async fn identify(&self, bearer: Option<&str>) -> Result<SpiffeId, Refusal> {
        let token = bearer.ok_or_else(|| {
            Refusal::Unauthorized("no bearer token: send Authorization: Bearer TOKEN".into())
        })?;
        if let Some(identity) = self.tokens.identity_of(token) {
            return Ok(identity.clone());
        }
        let Some(reviewer) = &self.reviewer else {
            return Err(Refusal::Unauthorized(
                "the token grants no identity (it is not in --tokens)".into(),
            ));
        };
        reviewer.review(token).await.map_err(|e| match e {
            ReviewError::Refused(reason) => Refusal::Unauthorized(reason),
            ReviewError::Unavailable(reason) => Refusal::Unavailable(reason),
        })
    }

    /// Signs `csr_pem` for `identity`, valid for `--cert-ttl` from now;
    /// the chain as PEM.
    pub fn sign(&self, identity: &SpiffeId, csr_pem: &str) -> Result<String, Refusal> {
        self.issuer
            .sign_csr(
                csr_pem,
                identity,
                Validity::starting(SystemTime::now(), self.ttl),
            )
            .map_err(|e| Refusal::BadRequest(e.to_string()))
    }
}

/// The development CA in `dir`: read when it is there, made when not.
fn development_issuer(dir: &Path, trust_domain: &str) -> anyhow::Result<Issuer> {
    let (cert, key) = (dir.join(DEV_ISSUER_CERT), dir.join(DEV_ISSUER_KEY));
    if !cert.exists() {
        std::fs::create_dir_all(dir)
            .map_err(|e| anyhow::anyhow!("cannot make --data-dir {}: {e}", dir.display()))?;
        let made = authority::generate(trust_domain, DEV_ANCHOR_VALIDITY, DEV_ISSUER_VALIDITY)?;
        pem::write(&dir.join(DEV_ANCHOR_CERT), &made.anchor_cert, false)?;
        pem::write(&dir.join(DEV_ANCHOR_KEY), &made.anchor_key, true)?;
        pem::write(&cert, &made.issuer_cert, false)?;
        pem::write(&key, &made.issuer_key, true)?;
    }
    tracing::warn!(
        dir = %dir.display(),
        trust_anchors = %dir.join(DEV_ANCHOR_CERT).display(),
        "identity: a DEVELOPMENT certificate authority, its keys on this disk; for production give --issuer-cert, --issuer-key and --trust-anchors (remora-certs init makes them)"
    );
    Ok(Issuer::from_pem(&pem::read(&cert)?, &pem::read(&key)?)?)
}

/// The path of a development CA's trust anchor in `dir`, for proxies'
/// `--trust-anchors`.
pub fn development_anchors(dir: &Path) -> PathBuf {
    dir.join(DEV_ANCHOR_CERT)
}

#[cfg(test)]
mod tests {
    use super::*;

    const HASH_OF_SECRET: &str = "2bb80d537b1da3e38bd30361aa855686bde0eacd7162fef6a25fe97bf527a25b";

    #[test]
    fn tokens_grant_identities_by_their_hash() {
        let text = format!(
            "frontend: {HASH_OF_SECRET}\n\"spiffe://cluster.local/job/x\": \"{}\"\n",
            "00".repeat(32)
        );
        let tokens = Tokens::parse("tokens.yaml", &text, "cluster.local").unwrap();
        assert_eq!(tokens.len(), 2);
        assert_eq!(
            tokens.identity_of("secret").map(SpiffeId::as_str),
            Some("spiffe://cluster.local/ns/default/sa/frontend")
        );
        assert_eq!(tokens.identity_of("Secret"), None);
        assert_eq!(tokens.identity_of(""), None);
    }

    #[test]
    fn bad_tokens_files_name_each_problem_at_its_place() {
        let text = format!("frontend: abc\n\"Bad Name\": {HASH_OF_SECRET}\n\"spiffe://other/x\": {HASH_OF_SECRET}\n");
        let e = Tokens::parse("tokens.yaml", &text, "cluster.local").unwrap_err();
        let problems: Vec<String> = e.problems.iter().map(ToString::to_string).collect();
        assert_eq!(problems.len(), 3, "{problems:?}");
        assert!(
            problems.iter().any(|p| p.starts_with(
                "tokens.yaml:1:1: frontend: the token's SHA-256 must be 64 hex digits"
            )),
            "{problems:?}"
        );
        assert!(
            problems
                .iter()
                .any(|p| p.starts_with("tokens.yaml:2:1: Bad Name: ")),
            "{problems:?}"
        );
        assert!(
            problems
                .iter()
                .any(|p| p.contains("not of this mesh's trust domain")),
            "{problems:?}"
        );
        let e = Tokens::parse("tokens.yaml", "[1, 2]", "cluster.local").unwrap_err();
        assert!(e.to_string().starts_with("tokens.yaml:"), "{e}");
    }

    #[test]
    fn the_issuer_flags_go_together() {
        let dir = Path::new("data");
        assert!(matches!(
            IssuerSource::from_flags(None, None, None, dir).unwrap(),
            IssuerSource::Development(d) if d == dir
        ));
        let e = IssuerSource::from_flags(Some("c".into()), None, None, dir).unwrap_err();
        assert!(
            e.to_string()
                .contains("missing: --issuer-key, --trust-anchors"),
            "{e}"
        );
    }

    #[tokio::test]
    async fn a_development_ca_is_made_once_and_signs_what_tokens_grant() {
        let dir = tempfile::tempdir().unwrap();
        let tokens = Tokens::parse(
            "t",
            &format!("frontend: {HASH_OF_SECRET}\n"),
            "cluster.local",
        )
        .unwrap();
        let source = IssuerSource::Development(dir.path().join("ca"));
        let ca = Authority::load(
            &source,
            tokens.clone(),
            Duration::from_secs(3600),
            "cluster.local",
        )
        .unwrap();
        let anchor = std::fs::read_to_string(development_anchors(&dir.path().join("ca"))).unwrap();
        // A second start finds the same CA.
        Authority::load(&source, tokens, Duration::from_secs(3600), "cluster.local").unwrap();
        assert_eq!(
            std::fs::read_to_string(development_anchors(&dir.path().join("ca"))).unwrap(),
            anchor
        );

        let request = remora_certs::leaf::new_request().unwrap();
        assert!(matches!(
            ca.identify(None).await,
            Err(Refusal::Unauthorized(_))
        ));
        assert!(matches!(
            ca.identify(Some("wrong")).await,
            Err(Refusal::Unauthorized(r)) if r.contains("not in --tokens")
        ));
        let identity = ca.identify(Some("secret")).await.unwrap();
        assert!(
            matches!(ca.sign(&identity, "junk"), Err(Refusal::BadRequest(r)) if r.contains("CSR"))
        );
        let chain = ca.sign(&identity, &request.csr_pem).unwrap();
        assert_eq!(
            identity.as_str(),
            "spiffe://cluster.local/ns/default/sa/frontend"
        );
        let credentials = request.complete(&chain).unwrap();
        assert_eq!(credentials.identity, identity);
        let life = credentials.leaf.lifetime();
        assert!(
            life >= Duration::from_secs(3600) && life <= Duration::from_secs(3700),
            "{life:?}"
        );
    }
}
