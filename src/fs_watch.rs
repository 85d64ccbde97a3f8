//! Directory watches that wake on what can change a file's content, not on reads.
//!
//! The inotify backend of `notify` also reports opens and read-only closes. bindgate answers a
//! wake-up by reading the watched files, so counting those events made every read wake the next
//! one: after the first outside write in a watched directory, the config file (or the identity
//! files, or a `path` source's directory) was re-read about ten times a second, for good.

use std::path::{Path, PathBuf};

use notify::event::{AccessKind, AccessMode};
use notify::{Event, EventKind, RecommendedWatcher};

/// Whether `event` can have changed what a reader of the directory sees: anything but an access,
/// except the close of a file opened for writing (a writer finished).
pub fn changes_content(event: &Event) -> bool {
    match event.kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) => false,
        _ => true,
    }
}

/// A watcher that calls `on_change` for each event that [`changes_content`]; the caller adds the
/// directories (non-recursively: a rename-save or a ConfigMap's `..data` swap happens in them).
pub fn content_watcher(
    on_change: impl Fn(&Event) + Send + 'static,
) -> notify::Result<RecommendedWatcher> {
    notify::recommended_watcher(move |res: notify::Result<Event>| {
        if let Ok(event) = res {
            if changes_content(&event) {
                on_change(&event);
            }
        }
    })
}

/// The directory holding `path` (`.` for a bare name).
pub fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
        _ => PathBuf::from("."),
    }
}

/// The directories to watch for what is read at `dir`: `dir` itself, and the directory holding
/// each symlink on the way to it. A checkout kept by git-sync is read through a `current`
/// symlink that is re-pointed at each revision: that swap happens beside `current`, and the
/// directory watched through it sees nothing.
pub fn dirs_for(dir: &Path) -> Vec<PathBuf> {
    let mut dirs = vec![dir.to_owned()];
    let mut prefix = PathBuf::new();
    for part in dir.components() {
        prefix.push(part);
        let is_link = std::fs::symlink_metadata(&prefix).is_ok_and(|m| m.file_type().is_symlink());
        if is_link {
            let holder = parent_dir(&prefix);
            if !dirs.contains(&holder) {
                dirs.push(holder);
            }
        }
    }
    dirs
}

#[cfg(test)]
mod tests {
    use super::*;
    use notify::Watcher;
    use std::time::Duration;

    /// Reading a watched file wakes nobody; a write next to it does. Before the filter, the reads
    /// below arrived as events ahead of the write's.
    #[test]
    fn reads_are_not_changes() {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("bindgate.yaml");
        std::fs::write(&config, "version: 1\n").unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let mut watcher = content_watcher(move |e| {
            let _ = tx.send(e.paths.clone());
        })
        .unwrap();
        watcher
            .watch(dir.path(), notify::RecursiveMode::NonRecursive)
            .unwrap();
        for _ in 0..3 {
            assert_eq!(std::fs::read_to_string(&config).unwrap(), "version: 1\n");
        }
        let marker = dir.path().join("written-after-the-reads");
        std::fs::write(&marker, "x").unwrap();
        // inotify delivers in order: everything before the marker's first event came from the reads.
        let mut before = Vec::new();
        loop {
            let paths = rx
                .recv_timeout(Duration::from_secs(30))
                .expect("the write's event never came");
            if paths.contains(&marker) {
                break;
            }
            before.push(paths);
        }
        assert!(before.is_empty(), "reads reported as changes: {before:?}");
    }

    #[test]
    fn symlinks_on_the_way_add_the_directories_holding_them() {
        let root = tempfile::tempdir().unwrap();
        let rev = root.path().join("rev-1");
        std::fs::create_dir_all(rev.join("conf")).unwrap();
        std::os::unix::fs::symlink("rev-1", root.path().join("current")).unwrap();
        let through = root.path().join("current").join("conf");
        assert_eq!(
            dirs_for(&through),
            vec![through.clone(), root.path().to_owned()]
        );
        assert_eq!(dirs_for(&rev.join("conf")), vec![rev.join("conf")]);
        assert_eq!(parent_dir(Path::new("bindgate.yaml")), PathBuf::from("."));
    }

    #[test]
    fn a_finished_write_counts_and_accesses_do_not() {
        use notify::event::{CreateKind, ModifyKind};
        let kind = |k| Event::new(k);
        assert!(changes_content(&kind(EventKind::Access(
            AccessKind::Close(AccessMode::Write)
        ))));
        assert!(changes_content(&kind(EventKind::Modify(ModifyKind::Any))));
        assert!(changes_content(&kind(EventKind::Create(CreateKind::File))));
        assert!(!changes_content(&kind(EventKind::Access(
            AccessKind::Open(AccessMode::Any)
        ))));
        assert!(!changes_content(&kind(EventKind::Access(
            AccessKind::Close(AccessMode::Read)
        ))));
    }
}
