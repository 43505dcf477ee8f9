//! `remora-certs`: make a mesh's trust anchor and issuer, issue a
//! certificate for an identity, and read certificates.
#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::SystemTime;

use clap::{Args, Parser, Subcommand};
use remora_api::HumanDuration;
use remora_certs::authority::{self, Issuer, Validity};
use remora_certs::{inspect, pem, Error, SpiffeId};

/// The files `init` writes, as the control plane's flags expect them.
const ANCHOR_CERT: &str = "ca.crt";
const ANCHOR_KEY: &str = "ca.key";
const ISSUER_CERT: &str = "issuer.crt";
const ISSUER_KEY: &str = "issuer.key";

#[derive(Debug, Parser)]
#[command(
    name = "remora-certs",
    version,
    about = "remora's identities: trust anchors, issuers and SPIFFE certificates"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Make a trust anchor (ca.crt, ca.key) and an issuer it signs
    /// (issuer.crt, issuer.key) in DIR, ECDSA P-256.
    Init(InitArgs),
    /// Issue a certificate and key for an identity, signed by the issuer.
    Issue(IssueArgs),
    /// Print what each certificate of a PEM file says, and whether each is
    /// signed by the next.
    Inspect {
        /// A PEM file of one certificate or a chain.
        file: PathBuf,
    },
}

#[derive(Debug, Args)]
struct InitArgs {
    /// The mesh's SPIFFE trust domain, as in mesh.yaml.
    #[arg(long, env = "REMORA_TRUST_DOMAIN", default_value = remora_api::DEFAULT_TRUST_DOMAIN)]
    trust_domain: String,
    /// The directory to write to (made if missing).
    #[arg(long, env = "REMORA_OUT")]
    out: PathBuf,
    /// How long the trust anchor is valid.
    #[arg(long, env = "REMORA_ANCHOR_VALID_FOR", default_value = "10years")]
    anchor_valid_for: HumanDuration,
    /// How long the issuer is valid; rotate it before then.
    #[arg(long, env = "REMORA_ISSUER_VALID_FOR", default_value = "1year")]
    issuer_valid_for: HumanDuration,
    /// Replace files that are already there.
    #[arg(long)]
    force: bool,
}

#[derive(Debug, Args)]
struct IssueArgs {
    /// Whom the certificate names: NAME, NAME.NAMESPACE or a spiffe:// URI.
    #[arg(long)]
    identity: String,
    #[arg(long, env = "REMORA_TRUST_DOMAIN", default_value = remora_api::DEFAULT_TRUST_DOMAIN)]
    trust_domain: String,
    /// The directory `init` wrote (its issuer.crt and issuer.key sign).
    #[arg(long, env = "REMORA_CA_DIR")]
    ca_dir: PathBuf,
    /// How long the certificate is valid.
    #[arg(long, default_value = "24h")]
    valid_for: HumanDuration,
    /// When the certificate becomes valid (RFC 3339, e.g.
    /// 2030-01-01T00:00:00Z); ten seconds ago when not given.
    #[arg(long, value_parser = humantime::parse_rfc3339_weak)]
    not_before: Option<SystemTime>,
    /// Where to write the chain (the certificate, then the issuer's).
    #[arg(long)]
    out_cert: PathBuf,
    /// Where to write the key (readable by its owner only).
    #[arg(long)]
    out_key: PathBuf,
}

fn main() -> ExitCode {
    let result = match Cli::parse().command {
        Command::Init(args) => init(&args),
        Command::Issue(args) => issue(&args),
        Command::Inspect { file } => inspect_file(&file),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("remora-certs: {e}");
            ExitCode::FAILURE
        }
    }
}

fn init(args: &InitArgs) -> Result<(), Error> {
    std::fs::create_dir_all(&args.out).map_err(|source| Error::Write {
        path: args.out.clone(),
        source,
    })?;
    let paths = [ANCHOR_CERT, ANCHOR_KEY, ISSUER_CERT, ISSUER_KEY].map(|f| args.out.join(f));
    if !args.force {
        if let Some(existing) = paths.iter().find(|p| p.exists()) {
            return Err(Error::invalid(
                existing.display().to_string(),
                "is already there; give --force to replace it (and every certificate it signed)",
            ));
        }
    }
    let made = authority::generate(
        &args.trust_domain,
        args.anchor_valid_for.get(),
        args.issuer_valid_for.get(),
    )?;
    let [anchor_cert, anchor_key, issuer_cert, issuer_key] = &paths;
    pem::write(anchor_cert, &made.anchor_cert, false)?;
    pem::write(anchor_key, &made.anchor_key, true)?;
    pem::write(issuer_cert, &made.issuer_cert, false)?;
    pem::write(issuer_key, &made.issuer_key, true)?;
    println!(
        "trust domain {}: wrote {}",
        args.trust_domain,
        paths
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!(
        "keep {ANCHOR_KEY} offline: only a new issuer needs it; the control plane takes {ANCHOR_CERT} (--trust-anchors), {ISSUER_CERT} and {ISSUER_KEY}"
    );
    Ok(())
}

fn issue(args: &IssueArgs) -> Result<(), Error> {
    let identity = SpiffeId::resolve(&args.identity, &args.trust_domain)
        .map_err(|e| Error::invalid("--identity", e))?;
    let issuer = Issuer::from_pem(
        &pem::read(&args.ca_dir.join(ISSUER_CERT))?,
        &pem::read(&args.ca_dir.join(ISSUER_KEY))?,
    )?;
    let validity = match args.not_before {
        Some(not_before) => Validity {
            not_before,
            not_after: not_before + args.valid_for.get(),
        },
        None => Validity::starting(SystemTime::now(), args.valid_for.get()),
    };
    let (chain, key) = issuer.issue(&identity, validity)?;
    pem::write(&args.out_cert, &chain, false)?;
    pem::write(&args.out_key, &key, true)?;
    println!(
        "{identity}: wrote {} and {}",
        args.out_cert.display(),
        args.out_key.display()
    );
    Ok(())
}

fn inspect_file(file: &Path) -> Result<(), Error> {
    let certs = pem::certificates(&pem::read(file)?, &file.display().to_string())?;
    let now = SystemTime::now();
    for (i, cert) in certs.iter().enumerate() {
        let info = inspect::inspect(cert)?;
        println!("certificate {} of {}", i + 1, certs.len());
        println!("{info}");
        let state = if info.is_valid_at(now) {
            "valid now"
        } else if now < info.not_before {
            "NOT VALID YET"
        } else {
            "EXPIRED"
        };
        println!("validity:    {state}");
        match certs.get(i + 1) {
            Some(next) => println!(
                "chain:       {} by certificate {}",
                if inspect::is_signed_by(cert, next)? {
                    "signed"
                } else {
                    "NOT SIGNED"
                },
                i + 2
            ),
            None if inspect::is_signed_by(cert, cert)? => {
                println!("chain:       self-signed (a trust anchor)")
            }
            None => println!("chain:       its issuer is not in this file"),
        }
        println!();
    }
    Ok(())
}
