//! The file source: a standalone proxy's `mesh.yaml`, watched by
//! [`remora_server::mesh_file`] and published as this proxy's [`MeshView`].

use std::path::Path;
use std::sync::Arc;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use remora_api::ConfigError;
use remora_server::mesh_file::{self, LoadedMesh};
use remora_server::metrics::ResultLabels;
use tokio::sync::watch;

use super::MeshView;

/// Reads `path` (which must be good now) and keeps the view current.
pub fn watch_file(
    path: &Path,
    reloads: &Family<ResultLabels, Counter>,
) -> Result<watch::Receiver<Arc<MeshView>>, ConfigError> {
    let mut file = mesh_file::watch_file(path, reloads)?;
    let first = view_of(&file.borrow_and_update());
    let (tx, rx) = watch::channel(first);
    tokio::spawn(async move {
        loop {
            tokio::select! {
                changed = file.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    tx.send_replace(view_of(&file.borrow_and_update()));
                }
                _ = tx.closed() => return,
            }
        }
    });
    Ok(rx)
}

fn view_of(loaded: &LoadedMesh) -> Arc<MeshView> {
    Arc::new(MeshView {
        source: loaded.source.clone(),
        version: loaded.version,
        loaded_at: loaded.loaded_at,
        last_error: loaded.last_error.clone(),
        mesh: loaded.mesh.clone(),
        ..MeshView::default()
    })
}
