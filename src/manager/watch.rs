//! The app watcher (docs/DESIGN.md §7): one watcher over the app's directory tree
//! whose changes, debounced into one batch, drive a rolling restart.
//!
//! Each directory gets its own (non-recursive) inotify watch, so that
//! ignored trees — `node_modules`, dot directories such as `.git`, the
//! socket dir — cost no watches at all; directories created later are
//! watched as they appear. Editor temp and swap files are ignored too, and
//! so is what the app's `.gitignore` and `.ignore` files name (read at
//! start, with git's rules, by the `ignore` crate) and `--ignore` globs;
//! `--watch` globs narrow the watch to what they match, reaching into
//! ignored trees too.
//! Raw events go through a bounded channel to an async task that collects
//! everything arriving within [`DEBOUNCE`] of the first event into one batch.

use std::collections::BTreeSet;
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ignore::gitignore::{Gitignore, GitignoreBuilder};
use notify::event::{EventKind, ModifyKind};
use notify::{RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::warn;

/// How long after a first change the batch closes.
pub const DEBOUNCE: Duration = Duration::from_millis(200);

/// Raw events waiting for the debouncer; past this, events are dropped (a
/// batch is already pending, so nothing is lost but detail).
const RAW_CAPACITY: usize = 4096;

/// Which paths under the app's directory are not the app's code.
#[derive(Debug, Clone)]
pub struct Filter {
    root: PathBuf,
    skip: Vec<PathBuf>,
    /// The app's `.gitignore` and `.ignore` files, deepest last.
    vcs: Vec<Gitignore>,
    /// `--ignore`: never a change.
    ignore: Gitignore,
    /// `--watch`: the only changes, and the directories on the way to them.
    watch: Option<(Gitignore, Vec<PathBuf>)>,
}

/// `--watch` and `--ignore` globs (git's syntax, relative to the app's
/// directory), or why one is not a glob.
pub fn globs(root: &Path, globs: &[String]) -> Result<Gitignore, String> {
    let mut builder = GitignoreBuilder::new(root);
    for glob in globs {
        builder
            .add_line(None, glob)
            .map_err(|e| format!("'{glob}' is not a glob: {e}"))?;
    }
    builder.build().map_err(|e| e.to_string())
}

impl Filter {
    /// Watches `root`, skipping the trees in `skip` that lie inside it (the
    /// socket dir, when it is in the app's directory).
    pub fn new(root: &Path, skip: &[&Path]) -> Filter {
        let mut filter = Filter {
            root: root.to_path_buf(),
            skip: skip
                .iter()
                .filter(|p| p.starts_with(root) && **p != root)
                .map(|p| p.to_path_buf())
                .collect(),
            vcs: Vec::new(),
            ignore: Gitignore::empty(),
            watch: None,
        };
        filter.vcs = filter.ignore_files(root);
        filter
    }

    /// With `--watch` and `--ignore` globs (checked by [`globs`] before).
    pub fn with_globs(mut self, watch: &[String], ignore: &[String]) -> Result<Filter, String> {
        self.ignore = globs(&self.root, ignore)?;
        if !watch.is_empty() {
            // Where each glob's literal part leads: those directories are
            // walked even if ignored (`dist/**` reaches into `dist`).
            let leads = watch
                .iter()
                .map(|g| {
                    let g = g.trim_start_matches('/');
                    let literal = &g[..g.find(['*', '?', '[', '{']).unwrap_or(g.len())];
                    self.root.join(&literal[..literal.rfind('/').unwrap_or(0)])
                })
                .collect();
            self.watch = Some((globs(&self.root, watch)?, leads));
        }
        Ok(self)
    }

    /// The `.gitignore` and `.ignore` files at and below `dir`, in
    /// directories the defaults do not ignore.
    fn ignore_files(&self, dir: &Path) -> Vec<Gitignore> {
        let mut found = Vec::new();
        for name in [".gitignore", ".ignore"] {
            let file = dir.join(name);
            if file.is_file() {
                let (matcher, error) = Gitignore::new(&file);
                if let Some(e) = error {
                    warn!("{}: {e}", file.display());
                }
                found.push(matcher);
            }
        }
        if let Ok(entries) = std::fs::read_dir(dir) {
            for entry in entries.flatten() {
                let path = entry.path();
                if entry.file_type().is_ok_and(|t| t.is_dir()) && !self.by_default(&path) {
                    found.extend(self.ignore_files(&path));
                }
            }
        }
        found
    }

    /// Whether a change at `path` is not a change to the app.
    pub fn ignored(&self, path: &Path) -> bool {
        if self.skip.iter().any(|s| path.starts_with(s)) || !path.starts_with(&self.root) {
            return true;
        }
        let dir = path.is_dir();
        if self
            .ignore
            .matched_path_or_any_parents(path, dir)
            .is_ignore()
        {
            return true;
        }
        let by_rules = || {
            self.by_default(path)
                || self
                    .vcs
                    .iter()
                    .rev()
                    .filter(|g| path.starts_with(g.path()))
                    .map(|g| g.matched_path_or_any_parents(path, dir))
                    .find(|m| !m.is_none())
                    .is_some_and(|m| m.is_ignore())
        };
        match &self.watch {
            None => by_rules(),
            Some((watch, leads)) => {
                let watched = watch.matched_path_or_any_parents(path, dir).is_ignore();
                let on_the_way = dir
                    && leads
                        .iter()
                        .any(|l| l.starts_with(path) || (path.starts_with(l) && l != &self.root));
                !(watched || on_the_way || (dir && !by_rules()))
            }
        }
    }

    /// The built-in rules: dot names, output directories, editor and
    /// output files.
    fn by_default(&self, path: &Path) -> bool {
        let Ok(relative) = path.strip_prefix(&self.root) else {
            return true;
        };
        let ignored_part = relative.components().any(|c| match c {
            Component::Normal(name) => {
                let name = name.to_string_lossy();
                name.starts_with('.') || OUTPUT_DIRS.contains(&name.as_ref())
            }
            _ => false,
        });
        ignored_part
            || path.file_name().is_some_and(|n| {
                let name = n.to_string_lossy();
                is_editor_file(&name) || is_output_file(&name)
            })
    }
}

/// Directories that hold what apps and their tools write, not their code:
/// dependencies, logs, temp files, caches, coverage. (Not `dist` or
/// `build`: an app may run from them.)
const OUTPUT_DIRS: [&str; 8] = [
    "node_modules",
    "__pycache__",
    "log",
    "logs",
    "tmp",
    "coverage",
    "target",
    "venv",
];

/// Files apps and tools write as they run: logs, bytecode, databases,
/// sockets and pid files (the server's own, when its socket dir is the app
/// dir).
fn is_output_file(name: &str) -> bool {
    const SUFFIXES: [&str; 7] = [".log", ".pyc", ".pyo", ".db", ".pid", ".sock", "-journal"];
    SUFFIXES.iter().any(|s| name.ends_with(s)) || name.contains(".sqlite") || name.contains(".db-")
}

/// Temp, swap and backup files editors write next to the real ones.
fn is_editor_file(name: &str) -> bool {
    const SUFFIXES: [&str; 8] = [
        "~",
        ".swp",
        ".swo",
        ".swx",
        ".swpx",
        ".tmp",
        ".kate-swp",
        ".crswap",
    ];
    name == "4913" // vim's write test
        || (name.starts_with('#') && name.ends_with('#'))
        || SUFFIXES.iter().any(|s| name.ends_with(s))
}

/// A running watcher; dropping it stops the watching.
pub struct Watch {
    _watcher: Arc<Mutex<RecommendedWatcher>>,
}

/// Starts watching `filter`'s root. Each debounced batch of changed paths
/// arrives on the returned receiver.
pub fn start(filter: Filter) -> Result<(Watch, mpsc::Receiver<Vec<PathBuf>>), String> {
    let (raw_tx, raw_rx) = mpsc::channel::<notify::Event>(RAW_CAPACITY);
    let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if let Ok(event) = event {
            let _ = raw_tx.try_send(event);
        }
    })
    .map_err(|e| format!("cannot watch {}: {e}", filter.root.display()))?;
    let watcher = Arc::new(Mutex::new(watcher));
    let root = filter.root.clone();
    watch_tree(&watcher, &filter, &root)
        .map_err(|e| format!("cannot watch {}: {e}", root.display()))?;
    let (batch_tx, batch_rx) = mpsc::channel(16);
    tokio::spawn(debounce(raw_rx, watcher.clone(), filter, batch_tx));
    Ok((Watch { _watcher: watcher }, batch_rx))
}

/// Watches `dir` and every directory below it that is not ignored.
fn watch_tree(
    watcher: &Mutex<RecommendedWatcher>,
    filter: &Filter,
    dir: &Path,
) -> notify::Result<()> {
    if dir != filter.root && filter.ignored(dir) {
        return Ok(());
    }
    watcher
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .watch(dir, RecursiveMode::NonRecursive)?;
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            // file_type() does not follow symlinks: linked trees are not walked.
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                watch_tree(watcher, filter, &entry.path())?;
            }
        }
    }
    Ok(())
}

async fn debounce(
    mut raw: mpsc::Receiver<notify::Event>,
    watcher: Arc<Mutex<RecommendedWatcher>>,
    filter: Filter,
    batches: mpsc::Sender<Vec<PathBuf>>,
) {
    while let Some(first) = raw.recv().await {
        let mut batch = Batch::default();
        batch.absorb(first, &watcher, &filter);
        if batch.changed.is_empty() {
            continue;
        }
        let deadline = Instant::now() + DEBOUNCE;
        loop {
            tokio::select! {
                event = raw.recv() => match event {
                    Some(event) => batch.absorb(event, &watcher, &filter),
                    None => break,
                },
                _ = tokio::time::sleep_until(deadline) => break,
            }
        }
        let changed = batch.close();
        if !changed.is_empty() && batches.send(changed).await.is_err() {
            return;
        }
    }
}

/// The changes collected in one debounce window.
#[derive(Default)]
struct Batch {
    changed: BTreeSet<PathBuf>,
    /// Paths created in this window: one that is gone again at the end was
    /// a temp file of an atomic save (`sed -i`, editors), not app code.
    created: BTreeSet<PathBuf>,
}

impl Batch {
    /// Adds the app paths an event changed, and watches new directories.
    fn absorb(
        &mut self,
        event: notify::Event,
        watcher: &Mutex<RecommendedWatcher>,
        filter: &Filter,
    ) {
        match event.kind {
            EventKind::Access(_) | EventKind::Modify(ModifyKind::Metadata(_)) => return,
            _ => {}
        }
        for path in event.paths {
            if filter.ignored(&path) {
                continue;
            }
            let appeared = matches!(
                event.kind,
                EventKind::Create(_) | EventKind::Modify(ModifyKind::Name(_))
            );
            if appeared && path.is_dir() {
                if let Err(e) = watch_tree(watcher, filter, &path) {
                    warn!("cannot watch {}: {e}", path.display());
                }
            }
            if matches!(event.kind, EventKind::Create(_)) {
                self.created.insert(path.clone());
            }
            self.changed.insert(path);
        }
    }

    fn close(self) -> Vec<PathBuf> {
        let created = self.created;
        self.changed
            .into_iter()
            .filter(|p| !created.contains(p) || p.exists())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_is_not_app_code_is_ignored() {
        // The socket dir counts only inside the app's directory.
        let filter = Filter::new(
            Path::new("/srv/app"),
            &[
                Path::new("/srv/app/run"),
                Path::new("/srv"),
                Path::new("/srv/app"),
            ],
        );
        for kept in [
            "/srv/app/index.js",
            "/srv/app/lib/db.ts",
            "/srv/app/views/page.html",
        ] {
            assert!(!filter.ignored(Path::new(kept)), "{kept}");
        }
        for ignored in [
            "/srv/app/.git/HEAD",
            "/srv/app/.env",
            "/srv/app/node_modules/x/index.js",
            "/srv/app/lib/node_modules/y.js",
            "/srv/app/run/rip_server2_app.0.sock",
            "/srv/app/index.js~",
            "/srv/app/.index.js.swp",
            "/srv/app/lib/db.ts.swp",
            "/srv/app/4913",
            "/srv/app/#index.js#",
            "/srv/app/index.js.tmp",
            "/elsewhere/file.js",
            // What apps and tools write as they run.
            "/srv/app/visits.log",
            "/srv/app/logs/today.txt",
            "/srv/app/tmp/upload-1",
            "/srv/app/__pycache__/app.cpython-311.pyc",
            "/srv/app/lib/util.pyc",
            "/srv/app/data.sqlite3",
            "/srv/app/data.sqlite3-wal",
            "/srv/app/app.db",
            "/srv/app/app.db-journal",
            "/srv/app/coverage/lcov.info",
            "/srv/app/rip_server2_app.ctl.sock",
            "/srv/app/rip_server2_app.pid",
        ] {
            assert!(filter.ignored(Path::new(ignored)), "{ignored}");
        }
    }

    /// Issue 13: the app's `.gitignore` and `.ignore` (nested ones too, `!`
    /// included), `--ignore`, and `--watch` reaching into ignored trees.
    #[test]
    fn gitignore_ignore_files_and_globs_are_honoured() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().canonicalize().expect("canonical");
        for d in ["dist", "lib/gen", "uploads", "node_modules/x"] {
            std::fs::create_dir_all(root.join(d)).expect("mkdir");
        }
        std::fs::write(root.join(".gitignore"), "dist/\n*.csv\n/uploads\n").expect("write");
        std::fs::write(root.join(".ignore"), "notes.md\n").expect("write");
        std::fs::write(root.join("lib/.gitignore"), "gen/\n!keep.csv\n").expect("write");
        // A .gitignore in an ignored tree is not read.
        std::fs::write(root.join("node_modules/x/.gitignore"), "*.js\n").expect("write");
        let at = |p: &str| root.join(p);
        let filter = Filter::new(&root, &[]);
        for kept in [
            "index.js",
            "lib/db.js",
            "lib/keep.csv",
            "README.md",
            "lib/notes.txt",
        ] {
            assert!(!filter.ignored(&at(kept)), "{kept}");
        }
        for ignored in [
            "dist/app.js",
            "dist",
            "data.csv",
            "lib/data.csv",
            "uploads/a.png",
            "notes.md",
            "lib/gen/x.js",
            "node_modules/x/index.js",
        ] {
            assert!(filter.ignored(&at(ignored)), "{ignored}");
        }
        let filter = Filter::new(&root, &[])
            .with_globs(&[], &["*.md".into(), "lib/".into()])
            .expect("globs");
        assert!(filter.ignored(&at("README.md")) && filter.ignored(&at("lib/db.js")));
        assert!(!filter.ignored(&at("index.js")));
        // --watch: only what matches, even in an ignored tree; --ignore wins.
        let filter = Filter::new(&root, &[])
            .with_globs(&["dist/**".into(), "*.ts".into()], &["dist/skip.js".into()])
            .expect("globs");
        for kept in ["dist", "dist/app.js", "lib/a.ts", "index.ts", "lib"] {
            assert!(!filter.ignored(&at(kept)), "{kept}");
        }
        for ignored in [
            "index.js",
            "lib/db.js",
            "dist/skip.js",
            "node_modules/x",
            "uploads",
        ] {
            assert!(filter.ignored(&at(ignored)), "{ignored}");
        }
        assert!(globs(&root, &["a{b".into()]).is_err());
    }

    #[tokio::test]
    async fn a_burst_of_changes_is_one_batch_and_ignored_trees_are_not_watched() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().canonicalize().expect("canonical");
        std::fs::create_dir_all(root.join("node_modules/pkg")).expect("mkdir");
        std::fs::create_dir_all(root.join("lib")).expect("mkdir");
        let (_watch, mut batches) = start(Filter::new(&root, &[])).expect("watch");
        std::fs::write(root.join("node_modules/pkg/index.js"), "x").expect("write");
        std::fs::write(root.join(".hidden"), "x").expect("write");
        for i in 0..10 {
            std::fs::write(root.join("lib/a.js"), format!("{i}")).expect("write");
        }
        // An atomic save: a temp file renamed over the real one.
        std::fs::write(root.join("lib/sedX1y2Z3"), "new").expect("write");
        std::fs::rename(root.join("lib/sedX1y2Z3"), root.join("lib/b.js")).expect("rename");
        std::fs::write(root.join("index.js"), "y").expect("write");
        let batch = tokio::time::timeout(Duration::from_secs(5), batches.recv())
            .await
            .expect("a batch")
            .expect("open");
        assert!(batch.contains(&root.join("lib/a.js")), "{batch:?}");
        assert!(batch.contains(&root.join("index.js")), "{batch:?}");
        assert!(batch.contains(&root.join("lib/b.js")), "{batch:?}");
        assert!(!batch.contains(&root.join("lib/sedX1y2Z3")), "{batch:?}");
        assert!(batch.iter().all(|p| !filter_hit(&root, p)), "{batch:?}");
        // Nothing else is pending: the burst was one batch.
        let more = tokio::time::timeout(DEBOUNCE * 2, batches.recv()).await;
        assert!(more.is_err(), "a second batch: {more:?}");
        // A directory made later is watched too.
        std::fs::create_dir(root.join("routes")).expect("mkdir");
        let _ = tokio::time::timeout(Duration::from_secs(5), batches.recv()).await;
        std::fs::write(root.join("routes/new.js"), "z").expect("write");
        let batch = tokio::time::timeout(Duration::from_secs(5), batches.recv())
            .await
            .expect("a batch for the new directory")
            .expect("open");
        assert!(batch.contains(&root.join("routes/new.js")), "{batch:?}");
    }

    fn filter_hit(root: &Path, path: &Path) -> bool {
        path.strip_prefix(root)
            .expect("under root")
            .components()
            .any(|c| {
                c.as_os_str() == "node_modules" || c.as_os_str().to_string_lossy().starts_with('.')
            })
    }
}
