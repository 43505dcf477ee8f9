//! Both ends of a mesh connection in memory, with certificates made by
//! the authority: who is accepted, who is refused, and why.

use std::time::{Duration, SystemTime};

use rustls::{ClientConnection, ServerConnection};

use super::*;
use crate::authority::{self, Issuer, Validity};
use crate::leaf::Credentials;

const DAY: Duration = Duration::from_secs(24 * 3600);

struct Mesh {
    anchors: TrustAnchors,
    anchor_pem: String,
    issuer: Issuer,
}

fn mesh() -> Mesh {
    let g = authority::generate("cluster.local", 10 * DAY, 5 * DAY).unwrap();
    Mesh {
        anchors: TrustAnchors::from_pem(&g.anchor_cert).unwrap(),
        anchor_pem: g.anchor_cert,
        issuer: Issuer::from_pem(&g.issuer_cert, &g.issuer_key).unwrap(),
    }
}

fn id(name: &str) -> SpiffeId {
    SpiffeId::resolve(name, "cluster.local").unwrap()
}

fn store(issuer: &Issuer, name: &str, validity: Validity) -> Arc<CredentialStore> {
    let (chain, key) = issuer.issue(&id(name), validity).unwrap();
    let store = Arc::new(CredentialStore::default());
    store.set(Credentials::from_pem(&chain, &key).unwrap());
    store
}

fn valid_now() -> Validity {
    Validity::starting(SystemTime::now(), DAY)
}

/// Which end refused the handshake, and why.
#[derive(Debug)]
enum Refused {
    ByClient(rustls::Error),
    ByServer(rustls::Error),
}

/// Runs a handshake between `client` and `server` in memory, then one
/// byte from client to server (which is when a TLS 1.3 client learns that
/// the server refused its certificate).
fn handshake(client: ClientConfig, server: ServerConfig) -> Result<ServerConnection, Refused> {
    let mut c =
        ClientConnection::new(Arc::new(client), ServerName::try_from("orders").unwrap()).unwrap();
    let mut s = ServerConnection::new(Arc::new(server)).unwrap();
    std::io::Write::write_all(&mut c.writer(), b"x").unwrap();
    for _ in 0..20 {
        let mut wire = Vec::new();
        while c.wants_write() {
            c.write_tls(&mut wire).unwrap();
        }
        if !wire.is_empty() {
            s.read_tls(&mut wire.as_slice()).unwrap();
            s.process_new_packets().map_err(Refused::ByServer)?;
        }
        let mut wire = Vec::new();
        while s.wants_write() {
            s.write_tls(&mut wire).unwrap();
        }
        if !wire.is_empty() {
            c.read_tls(&mut wire.as_slice()).unwrap();
            c.process_new_packets().map_err(Refused::ByClient)?;
        }
        let mut byte = [0u8; 1];
        if !s.is_handshaking() && std::io::Read::read(&mut s.reader(), &mut byte).is_ok() {
            return Ok(s);
        }
    }
    panic!("the handshake did not finish");
}

fn server(m: &Mesh, own: Arc<CredentialStore>) -> ServerConfig {
    server_config(&m.anchors, own, ClientAuth::Required, &[ALPN_H2]).unwrap()
}

#[test]
fn two_sidecars_of_one_mesh_know_each_other() {
    let m = mesh();
    let client = client_config(
        &m.anchors,
        id("orders"),
        store(&m.issuer, "frontend", valid_now()),
    );
    let s = handshake(client, server(&m, store(&m.issuer, "orders", valid_now()))).unwrap();
    assert_eq!(s.alpn_protocol(), Some(ALPN_H2));
    assert_eq!(
        peer_identity(s.peer_certificates()),
        Some(id("frontend")),
        "the server learns who called"
    );
    assert_eq!(s.protocol_version(), Some(rustls::ProtocolVersion::TLSv1_3));
}

#[test]
fn a_server_of_another_identity_is_refused() {
    let m = mesh();
    let client = client_config(
        &m.anchors,
        id("orders"),
        store(&m.issuer, "frontend", valid_now()),
    );
    let impostor = store(&m.issuer, "billing", valid_now());
    match handshake(client, server(&m, impostor)) {
        Err(Refused::ByClient(e)) => {
            let text = e.to_string();
            assert!(
                text.contains("billing") && text.contains("orders"),
                "{text}"
            );
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn certificates_of_a_foreign_ca_are_refused_both_ways() {
    let (m, foreign) = (mesh(), mesh());
    // A server of another mesh.
    let client = client_config(
        &m.anchors,
        id("orders"),
        store(&m.issuer, "frontend", valid_now()),
    );
    let outsider = store(&foreign.issuer, "orders", valid_now());
    // Both meshes name their CAs alike: the chain is refused on its
    // signatures, not on its names.
    let untrusted = |e: &rustls::Error| {
        matches!(
            e,
            rustls::Error::InvalidCertificate(
                CertificateError::UnknownIssuer | CertificateError::BadSignature
            )
        )
    };
    match handshake(client, server(&m, outsider)) {
        Err(Refused::ByClient(e)) => assert!(untrusted(&e), "{e:?}"),
        other => panic!("{other:?}"),
    }
    // A client of another mesh.
    let client = client_config(
        &m.anchors,
        id("orders"),
        store(&foreign.issuer, "frontend", valid_now()),
    );
    match handshake(client, server(&m, store(&m.issuer, "orders", valid_now()))) {
        Err(Refused::ByServer(e)) => assert!(untrusted(&e), "{e:?}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn expired_and_not_yet_valid_certificates_are_refused() {
    let m = mesh();
    let now = SystemTime::now();
    let expired = Validity {
        not_before: now - 2 * DAY,
        not_after: now - DAY,
    };
    let future = Validity {
        not_before: now + DAY,
        not_after: now + 2 * DAY,
    };
    for (validity, expected) in [(expired, "expired"), (future, "not valid yet")] {
        let client = client_config(
            &m.anchors,
            id("orders"),
            store(&m.issuer, "frontend", valid_now()),
        );
        match handshake(client, server(&m, store(&m.issuer, "orders", validity))) {
            Err(Refused::ByClient(e @ rustls::Error::InvalidCertificate(_))) => {
                assert!(e.to_string().contains(expected), "{e}")
            }
            other => panic!("{other:?}"),
        }
    }
}

#[test]
fn a_client_without_a_certificate_is_refused_unless_optional() {
    let m = mesh();
    let anonymous = Arc::new(CredentialStore::default());
    let orders = store(&m.issuer, "orders", valid_now());
    let client = client_config(&m.anchors, id("orders"), anonymous.clone());
    assert!(matches!(
        handshake(client, server(&m, orders.clone())),
        Err(Refused::ByServer(rustls::Error::NoCertificatesPresented))
    ));
    let client = client_config(&m.anchors, id("orders"), anonymous);
    let optional = server_config(&m.anchors, orders, ClientAuth::Optional, &[ALPN_H2]).unwrap();
    let s = handshake(client, optional).unwrap();
    assert_eq!(peer_identity(s.peer_certificates()), None);
}

#[test]
fn a_bundle_of_two_anchors_trusts_both_during_a_rotation() {
    let (old, new) = (mesh(), mesh());
    let both = TrustAnchors::from_pem(&(old.anchor_pem.clone() + &new.anchor_pem)).unwrap();
    assert_eq!(both.certs.len(), 2);
    for (client_issuer, server_issuer) in [(&old.issuer, &new.issuer), (&new.issuer, &old.issuer)] {
        let client = client_config(
            &both,
            id("orders"),
            store(client_issuer, "frontend", valid_now()),
        );
        let server = server_config(
            &both,
            store(server_issuer, "orders", valid_now()),
            ClientAuth::Required,
            &[ALPN_H2],
        )
        .unwrap();
        handshake(client, server).unwrap();
    }
}

#[test]
fn renewed_credentials_serve_the_next_handshake() {
    let m = mesh();
    let own = store(&m.issuer, "orders", valid_now());
    let before = own.get().unwrap().leaf.serial.clone();
    let (chain, key) = m.issuer.issue(&id("orders"), valid_now()).unwrap();
    own.set(Credentials::from_pem(&chain, &key).unwrap());
    assert_ne!(own.get().unwrap().leaf.serial, before);
    let client = client_config(
        &m.anchors,
        id("orders"),
        store(&m.issuer, "frontend", valid_now()),
    );
    handshake(client, server(&m, own)).unwrap();
}

#[test]
fn the_server_name_names_the_service_account() {
    let id = SpiffeId::resolve("orders.shop", "cluster.local").unwrap();
    assert_eq!(
        format!("{:?}", server_name(&id)),
        format!(
            "{:?}",
            ServerName::try_from("orders.shop.sa.cluster.local").unwrap()
        )
    );
    let other: SpiffeId = "spiffe://example.org/job/x".parse().unwrap();
    assert_eq!(
        format!("{:?}", server_name(&other)),
        format!("{:?}", ServerName::try_from("mesh.example.org").unwrap())
    );
}
