//! Asking the control plane to sign this proxy's CSR. Over TLS this takes
//! a connection of its own, without a client certificate: it is how a
//! proxy gets its first one, before the shared connection can be made.

use bytes::Bytes;
use http::{Method, StatusCode};

use super::connection::{connect, request, send_on};
use super::error::ControlError;
use super::{Shared, REQUEST_TIMEOUT};

const CSR_CONTENT_TYPE: &str = "application/pkcs10";

/// Asks the control plane to sign `csr_pem` for the identity `token`
/// grants: its status and body (the chain, or why not).
pub(super) async fn request_certificate(
    shared: &Shared,
    token: &str,
    csr_pem: &str,
) -> Result<(StatusCode, Bytes), ControlError> {
    let uri = format!("{}/v1/certificate", shared.base);
    let body = Bytes::from(csr_pem.to_string());
    let Some(tls) = &shared.tls else {
        return shared
            .exchange_with(
                Method::POST,
                &uri,
                Some(CSR_CONTENT_TYPE),
                Some(token),
                body,
                REQUEST_TIMEOUT,
            )
            .await;
    };
    let authority = shared.base.trim_start_matches("https://");
    let (mut sender, connection) = connect(authority, Some((&tls.bootstrap, &tls.server_name)))
        .await
        .map_err(|source| ControlError::Connect {
            uri: uri.clone(),
            source,
        })?;
    tokio::spawn(connection);
    let request = request(
        Method::POST,
        &uri,
        Some(CSR_CONTENT_TYPE),
        Some(token),
        body,
    )?;
    send_on(&mut sender, request, REQUEST_TIMEOUT).await
}
