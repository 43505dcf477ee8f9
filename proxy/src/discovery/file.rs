//! The file source: a `mesh.yaml` on disk, watched for changes (also
//! through the symlink swap a mounted Kubernetes ConfigMap makes). Used by
//! a standalone proxy and by the control plane.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use notify::event::{AccessKind, AccessMode, EventKind};
use notify::{RecursiveMode, Watcher};
use prometheus_client::metrics::counter::Counter;
use remora_api::ConfigError;
use tokio::sync::{mpsc, watch};

use prometheus_client::metrics::family::Family;

use super::MeshView;
use crate::metrics::ResultLabels;

/// Changes arriving this close together are read once.
const DEBOUNCE: Duration = Duration::from_millis(50);
/// Re-read even without a file event, in case one was missed.
const RESCAN: Duration = Duration::from_secs(5);

/// Reads `path` (which must be good now) and keeps the view current,
/// counting each reload's result in `reloads`.
pub fn watch_file(
    path: &Path,
    reloads: &Family<ResultLabels, Counter>,
) -> Result<watch::Receiver<Arc<MeshView>>, ConfigError> {
    // Watch before the first read, so no edit made after it is missed.
    let (events_tx, events) = mpsc::unbounded_channel();
    let watcher = watch_dir(path, events_tx);
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mesh = remora_api::read_mesh(path)?;
    let view = MeshView {
        source: path.display().to_string(),
        version: 1,
        loaded_at: SystemTime::now(),
        last_error: None,
        mesh: Arc::new(mesh),
        ..MeshView::default()
    };
    let (tx, rx) = watch::channel(Arc::new(view));
    let reloads = Reloads {
        ok: reloads.get_or_create_owned(&ResultLabels { result: "ok" }),
        error: reloads.get_or_create_owned(&ResultLabels { result: "error" }),
    };
    tokio::spawn(follow(
        path.to_path_buf(),
        text,
        tx,
        reloads,
        events,
        watcher,
    ));
    Ok(rx)
}

struct Reloads {
    ok: Counter,
    error: Counter,
}

/// Sends an event whenever something in `path`'s directory changes. The
/// directory, not the file: editors and ConfigMaps replace the file (or a
/// symlink above it) rather than write into it.
fn watch_dir(path: &Path, events: mpsc::UnboundedSender<()>) -> Option<notify::RecommendedWatcher> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .to_path_buf();
    let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if event.is_ok_and(|e| is_change(&e.kind)) {
            let _ = events.send(());
        }
    })
    .and_then(|mut w| w.watch(&dir, RecursiveMode::NonRecursive).map(|_| w));
    match watcher {
        Ok(w) => Some(w),
        Err(e) => {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot watch the config's directory; re-reading it every {RESCAN:?}");
            None
        }
    }
}

/// Whether an event may have changed the file. Opening and reading it do
/// not, and must not count: reading the file after each event would
/// otherwise trigger the next read, forever.
fn is_change(kind: &EventKind) -> bool {
    match kind {
        EventKind::Access(access) => *access == AccessKind::Close(AccessMode::Write),
        _ => true,
    }
}

async fn follow(
    path: PathBuf,
    mut last_text: String,
    tx: watch::Sender<Arc<MeshView>>,
    reloads: Reloads,
    mut events: mpsc::UnboundedReceiver<()>,
    _watcher: Option<notify::RecommendedWatcher>,
) {
    loop {
        tokio::select! {
            event = events.recv() => {
                if event.is_none() {
                    // The watcher is gone; fall back to rescans only.
                    tokio::time::sleep(RESCAN).await;
                }
                tokio::time::sleep(DEBOUNCE).await;
                while events.try_recv().is_ok() {}
            }
            _ = tokio::time::sleep(RESCAN) => {}
            _ = tx.closed() => return,
        }
        let text = match tokio::fs::read_to_string(&path).await {
            Ok(t) => t,
            Err(e) => {
                // Mid-swap, or deleted: keep serving what we have.
                tracing::debug!(path = %path.display(), error = %e, "config unreadable; keeping the last good one");
                continue;
            }
        };
        if text == last_text {
            continue;
        }
        last_text = text;
        match remora_api::parse_mesh(&path.display().to_string(), &last_text) {
            Ok(mesh) => {
                reloads.ok.inc();
                let version = tx.borrow().version + 1;
                tracing::info!(path = %path.display(), version, "config reloaded");
                tx.send_replace(Arc::new(MeshView {
                    source: path.display().to_string(),
                    version,
                    loaded_at: SystemTime::now(),
                    last_error: None,
                    mesh: Arc::new(mesh),
                    ..MeshView::default()
                }));
            }
            Err(e) => {
                reloads.error.inc();
                tracing::error!(path = %path.display(), problems = %e, "config rejected; the last good config keeps serving");
                tx.send_modify(|view| {
                    let mut v = (**view).clone();
                    v.last_error = Some(e.to_string());
                    *view = Arc::new(v);
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use notify::event::{CreateKind, ModifyKind, RenameMode};

    #[test]
    fn reading_the_file_is_not_a_change_but_writing_it_is() {
        assert!(!is_change(&EventKind::Access(AccessKind::Open(
            AccessMode::Any
        ))));
        assert!(!is_change(&EventKind::Access(AccessKind::Close(
            AccessMode::Read
        ))));
        assert!(is_change(&EventKind::Access(AccessKind::Close(
            AccessMode::Write
        ))));
        assert!(is_change(&EventKind::Modify(ModifyKind::Name(
            RenameMode::To
        ))));
        assert!(is_change(&EventKind::Create(CreateKind::File)));
    }
}
