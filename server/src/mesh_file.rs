//! A `mesh.yaml` on disk, watched for changes (also through the symlink
//! swap a mounted Kubernetes ConfigMap makes) and published parsed, with
//! what became of the latest edit. The control plane serves it; a
//! standalone proxy runs on it. A file that is bad, empty, deleted or
//! unreadable never replaces the last good one.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use notify::event::{AccessKind, AccessMode, EventKind, ModifyKind};
use notify::{RecursiveMode, Watcher};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use remora_api::{ConfigError, Mesh, Note};
use tokio::sync::{mpsc, watch};

use crate::metrics::ResultLabels;

/// The last good version of the file, and what became of the latest
/// attempt to replace it.
#[derive(Clone, Debug)]
pub struct LoadedMesh {
    /// The file's path, as given.
    pub source: String,
    /// 1 for the first good version, one more for each good edit.
    pub version: u64,
    pub loaded_at: SystemTime,
    /// The last rejected edit's problems (or why the file could not be
    /// read), until a good edit replaces them.
    pub last_error: Option<String>,
    pub mesh: Arc<Mesh>,
}

/// After an event that leaves the file whole (a writer closed it, or a
/// new one was renamed into place, as a ConfigMap update does), this much
/// quiet before reading it: long enough to take the rest of a burst of
/// events as one change.
const SETTLED_QUIET: Duration = Duration::from_millis(5);
/// After an event that may come from a write still in progress, this much
/// quiet before reading, so that a half-written file is not read.
const WRITING_QUIET: Duration = Duration::from_millis(50);
/// A file that keeps changing is read at least this often.
const MAX_SETTLE: Duration = Duration::from_secs(1);
/// Re-read even without a file event, in case one was missed.
const RESCAN: Duration = Duration::from_secs(5);

/// Reads `path` (which must be good now) and keeps what it publishes
/// current, counting each reload's result in `reloads`.
pub fn watch_file(
    path: &Path,
    reloads: &Family<ResultLabels, Counter>,
) -> Result<watch::Receiver<Arc<LoadedMesh>>, ConfigError> {
    // Watch before the first read, so no edit made after it is missed.
    let (events_tx, events) = mpsc::unbounded_channel();
    let watcher = watch_dir(path, events_tx);
    let source = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| unreadable(&source, &e.to_string()))?;
    let checked = remora_api::parse_mesh_with_notes(&source, &text)?;
    warn_of(&checked.notes);
    let view = LoadedMesh {
        source,
        version: 1,
        loaded_at: SystemTime::now(),
        last_error: None,
        mesh: Arc::new(checked.mesh),
    };
    let (tx, rx) = watch::channel(Arc::new(view));
    let reloads = Reloads {
        ok: reloads.get_or_create_owned(&ResultLabels { result: "ok" }),
        error: reloads.get_or_create_owned(&ResultLabels { result: "error" }),
    };
    tokio::spawn(follow(
        path.to_path_buf(),
        Ok(text),
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

/// What a read of the file found: its text, or why it could not be read.
type Read = Result<String, String>;

async fn read(path: &Path) -> Read {
    tokio::fs::read_to_string(path)
        .await
        .map_err(|e| e.to_string())
}

fn unreadable(source: &str, reason: &str) -> ConfigError {
    ConfigError::unreadable(source, format!("cannot read the file: {reason}"))
}

/// Whether a read may have caught a writer in the middle of replacing
/// the file the hard way, by deleting or truncating it first: the file is
/// missing, or empty.
fn in_between(read: &Read) -> bool {
    read.as_ref().map_or(true, String::is_empty)
}

/// A note does not stop a load, but it names a setting that takes no
/// effect: said once for each version of the file that is loaded.
fn warn_of(notes: &[Note]) {
    for note in notes {
        tracing::warn!(%note, "config note: the file is loaded all the same");
    }
}

/// What an event in the config's directory says of the file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Change {
    /// Whatever changed is whole now: read it once the burst is over.
    Settled,
    /// Something is being written: wait for it to finish.
    Writing,
}

impl Change {
    /// Whether `kind` may have changed the file, and how. Opening and
    /// reading it do not, and must not count: reading the file after each
    /// event would otherwise trigger the next read, forever.
    fn of(kind: &EventKind) -> Option<Change> {
        match kind {
            EventKind::Access(AccessKind::Close(AccessMode::Write))
            | EventKind::Modify(ModifyKind::Name(_))
            | EventKind::Remove(_) => Some(Change::Settled),
            EventKind::Access(_) => None,
            _ => Some(Change::Writing),
        }
    }

    /// How long no further event must come before the file is read.
    fn quiet(self) -> Duration {
        match self {
            Change::Settled => SETTLED_QUIET,
            Change::Writing => WRITING_QUIET,
        }
    }
}

/// Sends an event whenever something in `path`'s directory changes. The
/// directory, not the file: editors and ConfigMaps replace the file (or a
/// symlink above it) rather than write into it.
fn watch_dir(
    path: &Path,
    events: mpsc::UnboundedSender<Change>,
) -> Option<notify::RecommendedWatcher> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .to_path_buf();
    let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if let Some(change) = event.ok().and_then(|e| Change::of(&e.kind)) {
            let _ = events.send(change);
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

/// Waits until the burst of events that `first` began is over: no event
/// for as long as the latest one asks (see [`Change::quiet`]), or
/// [`MAX_SETTLE`] in all.
async fn settle(first: Change, events: &mut mpsc::UnboundedReceiver<Change>) {
    let began = tokio::time::Instant::now();
    let mut latest = first;
    while began.elapsed() < MAX_SETTLE {
        match tokio::time::timeout(latest.quiet(), events.recv()).await {
            Ok(Some(next)) => latest = next,
            // Quiet for long enough, or the watcher is gone.
            Ok(None) | Err(_) => return,
        }
    }
}

/// Reads the file after each burst of events (and each [`RESCAN`]) and
/// publishes what became of it: a new version when it is good and
/// changed, the last good one with `last_error` set when it is bad,
/// empty, missing or unreadable. Each distinct failure is logged and
/// counted once, however many rescans see it again.
async fn follow(
    path: PathBuf,
    mut last: Read,
    tx: watch::Sender<Arc<LoadedMesh>>,
    reloads: Reloads,
    mut events: mpsc::UnboundedReceiver<Change>,
    _watcher: Option<notify::RecommendedWatcher>,
) {
    let source = path.display().to_string();
    loop {
        tokio::select! {
            event = events.recv() => match event {
                Some(change) => settle(change, &mut events).await,
                // The watcher is gone; fall back to rescans only.
                None => tokio::time::sleep(RESCAN).await,
            },
            _ = tokio::time::sleep(RESCAN) => {}
            _ = tx.closed() => return,
        }
        let mut now = read(&path).await;
        if now == last {
            continue;
        }
        if in_between(&now) {
            // Give such a writer the time a write in progress gets before
            // the file is taken as missing or empty.
            tokio::time::sleep(WRITING_QUIET).await;
            now = read(&path).await;
            if now == last {
                continue;
            }
        }
        last = now;
        let parsed = match &last {
            Ok(text) => remora_api::parse_mesh_with_notes(&source, text),
            Err(reason) => Err(unreadable(&source, reason)),
        };
        match parsed {
            Ok(checked) => {
                reloads.ok.inc();
                warn_of(&checked.notes);
                let (version, had) = {
                    let current = tx.borrow();
                    (current.version + 1, current.mesh.services.len())
                };
                let services = checked.mesh.services.len();
                if services == 0 && had > 0 {
                    tracing::warn!(path = %source, version, had, "config reloaded with no services, as it says (`{}`)", remora_api::load::EMPTY_MESH);
                } else {
                    tracing::info!(path = %source, version, services, "config reloaded");
                }
                tx.send_replace(Arc::new(LoadedMesh {
                    source: source.clone(),
                    version,
                    loaded_at: SystemTime::now(),
                    last_error: None,
                    mesh: Arc::new(checked.mesh),
                }));
            }
            Err(e) => {
                reloads.error.inc();
                tracing::error!(path = %source, problems = %e, "config rejected; the last good config keeps serving");
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
    use notify::event::{CreateKind, DataChange, RemoveKind, RenameMode};

    #[test]
    fn reading_the_file_is_not_a_change_but_writing_it_is() {
        let of = |kind| Change::of(&kind);
        assert_eq!(
            of(EventKind::Access(AccessKind::Open(AccessMode::Any))),
            None
        );
        assert_eq!(
            of(EventKind::Access(AccessKind::Close(AccessMode::Read))),
            None
        );
        assert_eq!(
            of(EventKind::Create(CreateKind::File)),
            Some(Change::Writing)
        );
        assert_eq!(
            of(EventKind::Modify(ModifyKind::Data(DataChange::Any))),
            Some(Change::Writing)
        );
    }

    #[test]
    fn a_closed_or_renamed_file_is_whole() {
        let of = |kind| Change::of(&kind);
        assert_eq!(
            of(EventKind::Access(AccessKind::Close(AccessMode::Write))),
            Some(Change::Settled)
        );
        assert_eq!(
            of(EventKind::Modify(ModifyKind::Name(RenameMode::To))),
            Some(Change::Settled)
        );
        assert_eq!(
            of(EventKind::Remove(RemoveKind::File)),
            Some(Change::Settled)
        );
        assert!(Change::Settled.quiet() < Change::Writing.quiet());
    }

    #[test]
    fn a_missing_or_empty_file_is_looked_at_again() {
        assert!(in_between(&Err("No such file or directory".into())));
        assert!(in_between(&Ok(String::new())));
        assert!(!in_between(&Ok("# only a comment\n".into())));
    }

    /// A directory of its own under the system's temporary one, removed
    /// when dropped.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(name: &str) -> TempDir {
            let dir = std::env::temp_dir()
                .join(format!("remora-mesh-file-{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            TempDir(dir)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// The next view published, within a bound far above the watcher's.
    async fn next(view: &mut watch::Receiver<Arc<LoadedMesh>>) -> Arc<LoadedMesh> {
        tokio::time::timeout(Duration::from_secs(10), view.changed())
            .await
            .expect("a view within 10s")
            .expect("the watcher is alive");
        view.borrow_and_update().clone()
    }

    fn count(reloads: &Family<ResultLabels, Counter>, result: &'static str) -> u64 {
        reloads.get_or_create(&ResultLabels { result }).get()
    }

    #[tokio::test]
    async fn an_emptied_or_deleted_file_keeps_the_last_good_mesh_until_a_good_one_comes() {
        let dir = TempDir::new("emptied");
        let path = dir.0.join("mesh.yaml");
        let source = path.display().to_string();
        std::fs::write(&path, "services:\n  orders: {}\n").unwrap();
        let reloads = Family::default();
        let mut view = watch_file(&path, &reloads).unwrap();

        let truncate = || drop(std::fs::File::create(&path).unwrap());
        let comment_out = || std::fs::write(&path, "# services:\n#   orders: {}\n").unwrap();
        let delete = || std::fs::remove_file(&path).unwrap();
        let rejections: [(&dyn Fn(), &str); 3] = [
            (&truncate, "the file holds no mesh"),
            (&comment_out, "the file holds no mesh"),
            (&delete, "cannot read the file: No such file or directory"),
        ];
        for (i, (change, problem)) in rejections.iter().enumerate() {
            change();
            let now = next(&mut view).await;
            let error = now.last_error.as_deref().unwrap_or_default();
            assert!(
                error.starts_with(&format!("{source}: {problem}")),
                "{error}"
            );
            assert_eq!(now.version, 1, "{error}");
            assert!(now.mesh.services.contains_key("orders"), "{error}");
            assert_eq!(count(&reloads, "error"), i as u64 + 1);
        }

        std::fs::write(&path, "services:\n  users: {}\n").unwrap();
        let now = next(&mut view).await;
        assert_eq!((now.version, now.last_error.as_deref()), (2, None));
        assert!(now.mesh.services.contains_key("users"));

        // Only the explicit form empties the mesh.
        std::fs::write(&path, remora_api::load::EMPTY_MESH).unwrap();
        let now = next(&mut view).await;
        assert_eq!((now.version, now.last_error.as_deref()), (3, None));
        assert!(now.mesh.services.is_empty());
        assert_eq!((count(&reloads, "ok"), count(&reloads, "error")), (2, 3));
    }

    #[tokio::test(start_paused = true)]
    async fn a_burst_settles_on_its_last_event() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        // A write in progress, then its close: the close's short quiet
        // ends the burst, not the write's long one.
        tx.send(Change::Settled).unwrap();
        let began = tokio::time::Instant::now();
        let settling = tokio::spawn(async move {
            settle(Change::Writing, &mut rx).await;
            began.elapsed()
        });
        let waited = settling.await.unwrap();
        assert_eq!(waited, SETTLED_QUIET);
    }

    #[tokio::test(start_paused = true)]
    async fn a_file_that_never_stops_changing_is_still_read() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let feeding = tokio::spawn(async move {
            while tx.send(Change::Writing).is_ok() {
                tokio::time::sleep(WRITING_QUIET / 2).await;
            }
        });
        let began = tokio::time::Instant::now();
        settle(Change::Writing, &mut rx).await;
        let waited = began.elapsed();
        assert!(
            (MAX_SETTLE..MAX_SETTLE + WRITING_QUIET).contains(&waited),
            "{waited:?}"
        );
        feeding.abort();
    }
}
