//! The connection to the Kubernetes API server (`--kubernetes`), found as
//! kubectl finds it: `--kubeconfig`, else `$KUBECONFIG` or
//! `~/.kube/config`, else the pod's own service account (in a pod, the
//! API server of `KUBERNETES_SERVICE_HOST` with the mounted token and CA).

use std::path::Path;

use anyhow::Context as _;
use kube::config::{KubeConfigOptions, Kubeconfig};

/// A client of the API server; it renews a projected service-account token
/// as the kubelet rotates it.
pub async fn connect(kubeconfig: Option<&Path>) -> anyhow::Result<kube::Client> {
    let config = match kubeconfig {
        Some(path) => {
            let file = Kubeconfig::read_from(path)
                .with_context(|| format!("cannot read --kubeconfig {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(file, &KubeConfigOptions::default())
                .await
                .with_context(|| format!("--kubeconfig {}: no usable context", path.display()))?
        }
        None => kube::Config::infer().await.context(
            "--kubernetes: cannot find the API server: no kubeconfig ($KUBECONFIG, ~/.kube/config) and not in a pod (KUBERNETES_SERVICE_HOST and the service-account token); give --kubeconfig",
        )?,
    };
    let url = config.cluster_url.clone();
    let client = kube::Client::try_from(config)
        .with_context(|| format!("cannot make a client of the Kubernetes API server {url}"))?;
    tracing::info!(api_server = %url, "kubernetes: using the API server");
    Ok(client)
}
