//! The mesh file source: follows the view that
//! [`remora_server::mesh_file::watch_file`] keeps (debounced file events,
//! ConfigMap symlink swaps, periodic rescans, the last good config kept on a
//! bad edit) and applies each new good config to the state.

use std::sync::Arc;

use remora_server::mesh_file::LoadedMesh;
use tokio::sync::watch;

use crate::state::State;

/// Applies every new good version of the file until the watcher ends.
pub async fn follow(mut view: watch::Receiver<Arc<LoadedMesh>>, state: Arc<State>) {
    let mut version = view.borrow().version;
    while view.changed().await.is_ok() {
        let current = view.borrow_and_update().clone();
        // A rejected edit republishes the same version with its error set.
        if current.version == version {
            continue;
        }
        version = current.version;
        let changed = state.set_mesh(current.mesh.clone());
        tracing::info!(
            source = %current.source,
            services = current.mesh.services.len(),
            views_changed = changed,
            "mesh applied"
        );
    }
}
