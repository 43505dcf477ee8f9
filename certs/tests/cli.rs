//! The `remora-certs` binary: `init`, `issue` and `inspect` on real
//! files, with OpenSSL as the outside judge of what they wrote.

use std::path::Path;
use std::process::{Command, Output};

fn certs(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_remora-certs"))
        .args(args)
        .output()
        .expect("running remora-certs")
}

fn ok(out: Output) -> String {
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn failed(out: Output) -> String {
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn path(dir: &Path, name: &str) -> String {
    dir.join(name).display().to_string()
}

/// OpenSSL's verdict on `leaf` for `purpose`, when OpenSSL is installed
/// (CI installs it); `None` without it.
fn openssl_verify(ca: &Path, leaf: &str, purpose: &str) -> Option<String> {
    let out = Command::new("openssl")
        .args(["verify", "-CAfile"])
        .arg(ca.join("ca.crt"))
        .arg("-untrusted")
        .arg(ca.join("issuer.crt"))
        .args(["-purpose", purpose, leaf])
        .output();
    match out {
        Ok(out) => Some(
            String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr),
        ),
        Err(_) if std::env::var_os("CI").is_none() => {
            eprintln!("openssl is not installed: the outside check is skipped");
            None
        }
        Err(e) => panic!("openssl is required under CI: {e}"),
    }
}

#[test]
fn init_then_issue_makes_a_chain_that_openssl_accepts() {
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca");
    let out = ok(certs(&[
        "init",
        "--trust-domain",
        "example.org",
        "--out",
        &ca.display().to_string(),
    ]));
    assert!(out.contains("trust domain example.org"), "{out}");
    for file in ["ca.crt", "ca.key", "issuer.crt", "issuer.key"] {
        assert!(ca.join(file).exists(), "{file}");
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(ca.join("issuer.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "keys are the owner's alone");
    }
    let (crt, key) = (
        path(dir.path(), "orders.crt"),
        path(dir.path(), "orders.key"),
    );
    let out = ok(certs(&[
        "issue",
        "--identity",
        "orders.shop",
        "--trust-domain",
        "example.org",
        "--ca-dir",
        &ca.display().to_string(),
        "--out-cert",
        &crt,
        "--out-key",
        &key,
    ]));
    assert!(
        out.starts_with("spiffe://example.org/ns/shop/sa/orders: wrote"),
        "{out}"
    );

    let shown = ok(certs(&["inspect", &crt]));
    assert!(
        shown.contains("SPIFFE id:   spiffe://example.org/ns/shop/sa/orders"),
        "{shown}"
    );
    assert!(
        shown.contains("certificate 1 of 2")
            && shown.contains("chain:       signed by certificate 2"),
        "{shown}"
    );
    assert!(shown.contains("validity:    valid now"), "{shown}");
    let anchor = ok(certs(&["inspect", &path(&ca, "ca.crt")]));
    assert!(
        anchor.contains("self-signed (a trust anchor)")
            && anchor.contains("CA:          yes, path length 1"),
        "{anchor}"
    );

    for purpose in ["sslserver", "sslclient"] {
        if let Some(verdict) = openssl_verify(&ca, &crt, purpose) {
            assert!(verdict.contains(": OK"), "{purpose}: {verdict}");
        }
    }
}

#[test]
fn certificates_outside_their_validity_are_shown_as_such() {
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca");
    ok(certs(&["init", "--out", &ca.display().to_string()]));
    for (not_before, shown) in [
        ("2020-01-01T00:00:00Z", "EXPIRED"),
        ("2099-01-01T00:00:00Z", "NOT VALID YET"),
    ] {
        let (crt, key) = (path(dir.path(), "x.crt"), path(dir.path(), "x.key"));
        ok(certs(&[
            "issue",
            "--identity",
            "x",
            "--ca-dir",
            &ca.display().to_string(),
            "--not-before",
            not_before,
            "--valid-for",
            "1h",
            "--out-cert",
            &crt,
            "--out-key",
            &key,
        ]));
        let out = ok(certs(&["inspect", &crt]));
        assert!(out.contains(&format!("validity:    {shown}")), "{out}");
        if let Some(verdict) = openssl_verify(&ca, &crt, "sslserver") {
            assert!(!verdict.contains(": OK"), "{verdict}");
        }
    }
}

#[test]
fn bad_input_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca");
    let ca_dir = ca.display().to_string();
    ok(certs(&["init", "--out", &ca_dir]));
    let again = failed(certs(&["init", "--out", &ca_dir]));
    assert!(
        again.contains("ca.crt: is already there; give --force"),
        "{again}"
    );
    ok(certs(&["init", "--out", &ca_dir, "--force"]));

    let out = failed(certs(&[
        "init",
        "--out",
        &path(dir.path(), "other"),
        "--trust-domain",
        "Not_Lower",
    ]));
    assert!(out.contains("the trust domain"), "{out}");
    let (crt, key) = (path(dir.path(), "x.crt"), path(dir.path(), "x.key"));
    let out = failed(certs(&[
        "issue",
        "--identity",
        "Bad Name",
        "--ca-dir",
        &ca_dir,
        "--out-cert",
        &crt,
        "--out-key",
        &key,
    ]));
    assert!(
        out.contains("--identity: \"Bad Name\" is not an identity"),
        "{out}"
    );
    let out = failed(certs(&[
        "issue",
        "--identity",
        "x",
        "--ca-dir",
        &path(dir.path(), "missing"),
        "--out-cert",
        &crt,
        "--out-key",
        &key,
    ]));
    assert!(
        out.contains("cannot read") && out.contains("issuer.crt"),
        "{out}"
    );

    std::fs::write(dir.path().join("junk.pem"), "not pem").unwrap();
    let out = failed(certs(&["inspect", &path(dir.path(), "junk.pem")]));
    assert!(
        out.contains("junk.pem: holds no CERTIFICATE block"),
        "{out}"
    );
}
