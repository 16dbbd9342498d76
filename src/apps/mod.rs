//! What an app is and how it is found (docs/DESIGN.md §2, §6).
//!
//! [`App::resolve`] turns the `<app-path>` argument into an [`App`]: a module
//! run by Bun or Node through the [`LOADER`], a command app (any executable
//! serving HTTP on `$RIP_SOCKET`), or a built-in app served by the worker
//! itself ([`builtin`]).

pub mod builtin;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// The module loader the workers run under Bun or Node: it serves the worker
/// socket, answers `/ready` and the busy guard, and does module hot reload.
pub const LOADER: &str = include_str!("loader.mjs");

/// Entry files probed in an app directory, in order; then an executable `app`.
const ENTRIES: [&str; 4] = ["index.rip", "index.ts", "index.js", "index.mjs"];

/// Where the environment comes from (a closure, so tests can fake it).
pub type Env<'a> = &'a dyn Fn(&str) -> Option<String>;

#[derive(Debug, Clone, PartialEq)]
pub struct App {
    /// The base name of the app's directory (or the built-in's name).
    pub name: String,
    /// Where the app runs (its working directory).
    pub dir: PathBuf,
    pub kind: AppKind,
}

#[derive(Debug, Clone, PartialEq)]
pub enum AppKind {
    Module { entry: PathBuf, runtime: Runtime },
    Command { program: PathBuf },
    Builtin(builtin::Builtin),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuntimeKind {
    Bun,
    Node,
}

impl RuntimeKind {
    pub fn name(self) -> &'static str {
        match self {
            RuntimeKind::Bun => "bun",
            RuntimeKind::Node => "node",
        }
    }
}

/// A JavaScript runtime found on this machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Runtime {
    pub kind: RuntimeKind,
    pub path: PathBuf,
}

impl App {
    /// Resolves `arg` (`builtin:<name>`, a directory, or a file) with the
    /// `--runtime` choice (`auto`, `bun` or `node`).
    pub fn resolve(arg: &str, runtime: &str, env: Env) -> Result<App, String> {
        if !matches!(runtime, "auto" | "bun" | "node") {
            return Err(format!("--runtime={runtime}: expected auto, bun or node"));
        }
        if let Some(name) = arg.strip_prefix("builtin:") {
            let builtin = builtin::Builtin::from_name(name).ok_or_else(|| {
                format!(
                    "unknown built-in app '{arg}' (built-ins: {})",
                    builtin::Builtin::NAMES.join(", ")
                )
            })?;
            let dir = std::env::current_dir().map_err(|e| format!("current directory: {e}"))?;
            return Ok(App {
                name: name.to_string(),
                dir,
                kind: AppKind::Builtin(builtin),
            });
        }
        let given = Path::new(arg);
        let meta = fs::metadata(given).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => format!("app path '{arg}' does not exist"),
            _ => format!("app path '{arg}': {e}"),
        })?;
        let path = fs::canonicalize(given).map_err(|e| format!("app path '{arg}': {e}"))?;
        let (dir, entry) = if meta.is_dir() {
            let entry = probe_entry(&path).ok_or_else(|| {
                let app = path.join("app");
                if app.is_file() {
                    format!("{} is not executable (chmod +x it)", app.display())
                } else {
                    format!(
                        "no app entry in {}: looked for {}, and an executable 'app'",
                        path.display(),
                        ENTRIES.join(", ")
                    )
                }
            })?;
            (path, entry)
        } else {
            let dir = path
                .parent()
                .map(Path::to_path_buf)
                .ok_or_else(|| format!("app path '{arg}' has no directory"))?;
            (dir, path)
        };
        let name = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "app".to_string());
        let kind = match module_extension(&entry) {
            Some(ext) => AppKind::Module {
                runtime: find_runtime(&entry, ext, runtime, env)?,
                entry,
            },
            None if is_executable(&entry) => AppKind::Command { program: entry },
            None => {
                return Err(format!(
                    "{} is neither a module (.rip .ts .js .mjs) nor an executable",
                    entry.display()
                ))
            }
        };
        Ok(App { name, dir, kind })
    }

    /// The app as resolved, for the roles (see [`App::from_resolved`]): its
    /// kind, name, directory and runtime binary.
    pub fn resolved_args(&self) -> Vec<String> {
        let kind = match &self.kind {
            AppKind::Module { .. } => "module",
            AppKind::Command { .. } => "command",
            AppKind::Builtin(_) => "builtin",
        };
        let mut args = vec![
            format!("--app-kind={kind}"),
            format!("--app-name={}", self.name),
            format!("--app-dir={}", self.dir.display()),
        ];
        if let AppKind::Module { runtime, .. } = &self.kind {
            args.push(format!("--app-runtime={}", runtime.path.display()));
        }
        args
    }

    /// The app the front resolved, rebuilt from [`App::resolved_args`], the
    /// `<app-path>` argument and the `--runtime` kind — without looking at
    /// the filesystem again: a role never fails because a file moved for a
    /// moment (an editor's atomic save) after the start.
    pub fn from_resolved(
        kind: &str,
        name: &str,
        dir: &Path,
        arg: &str,
        runtime: &str,
        runtime_path: Option<&Path>,
    ) -> Result<App, String> {
        let kind = match kind {
            "builtin" => {
                let builtin = arg
                    .strip_prefix("builtin:")
                    .and_then(builtin::Builtin::from_name)
                    .ok_or_else(|| format!("--app-kind=builtin with app '{arg}'"))?;
                AppKind::Builtin(builtin)
            }
            "command" => AppKind::Command {
                program: PathBuf::from(arg),
            },
            "module" => {
                let kind = match runtime {
                    "bun" => RuntimeKind::Bun,
                    "node" => RuntimeKind::Node,
                    other => return Err(format!("--app-kind=module with --runtime={other}")),
                };
                let path = runtime_path
                    .ok_or("--app-kind=module without --app-runtime")?
                    .to_path_buf();
                AppKind::Module {
                    entry: PathBuf::from(arg),
                    runtime: Runtime { kind, path },
                }
            }
            other => {
                return Err(format!(
                    "--app-kind={other}: expected module, command or builtin"
                ))
            }
        };
        Ok(App {
            name: name.to_string(),
            dir: dir.to_path_buf(),
            kind,
        })
    }

    /// The `<app-path>` argument that resolves to this app again.
    pub fn arg(&self) -> String {
        match &self.kind {
            AppKind::Module { entry, .. } => entry.display().to_string(),
            AppKind::Command { program } => program.display().to_string(),
            AppKind::Builtin(b) => format!("builtin:{}", b.name()),
        }
    }

    /// The `--runtime` value that resolves to this app's runtime again.
    pub fn runtime_arg(&self) -> &'static str {
        match &self.kind {
            AppKind::Module { runtime, .. } => runtime.kind.name(),
            _ => "auto",
        }
    }

    /// A short description for the start-up line, e.g. `index.js under node`.
    pub fn describe(&self) -> String {
        match &self.kind {
            AppKind::Module { entry, runtime } => format!(
                "{} under {}",
                entry.file_name().unwrap_or_default().to_string_lossy(),
                runtime.kind.name()
            ),
            AppKind::Command { program } => format!(
                "command {}",
                program.file_name().unwrap_or_default().to_string_lossy()
            ),
            AppKind::Builtin(b) => format!("builtin:{}", b.name()),
        }
    }
}

fn probe_entry(dir: &Path) -> Option<PathBuf> {
    ENTRIES
        .iter()
        .map(|name| dir.join(name))
        .find(|p| p.is_file())
        .or_else(|| Some(dir.join("app")).filter(|p| p.is_file() && is_executable(p)))
}

fn module_extension(path: &Path) -> Option<&str> {
    let ext = path.extension()?.to_str()?;
    matches!(ext, "rip" | "ts" | "js" | "mjs").then_some(ext)
}

fn is_executable(path: &Path) -> bool {
    fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Picks the runtime for a module: Bun for `.rip`/`.ts` (required), and for
/// `.js`/`.mjs` Bun when installed, else Node — unless `--runtime` says.
fn find_runtime(entry: &Path, ext: &str, choice: &str, env: Env) -> Result<Runtime, String> {
    let needs_bun = matches!(ext, "rip" | "ts");
    let file = entry.display();
    if needs_bun && choice == "node" {
        return Err(format!(
            "{file} needs Bun (.{ext}), but --runtime=node was given"
        ));
    }
    let bun = || {
        lookup("bun", env).map(|path| Runtime {
            kind: RuntimeKind::Bun,
            path,
        })
    };
    let node = || {
        lookup("node", env).map(|path| Runtime {
            kind: RuntimeKind::Node,
            path,
        })
    };
    let found = match choice {
        "bun" => bun(),
        "node" => node(),
        _ if needs_bun => bun(),
        _ => bun().or_else(node),
    };
    found.ok_or_else(|| match (choice, needs_bun) {
        ("node", _) => format!("{file} needs Node.js, which was not found on PATH: install Node.js"),
        ("bun", _) | (_, true) => format!(
            "{file} needs Bun, which was not found on PATH: install it with 'npm install -g bun' (or see https://bun.sh)"
        ),
        _ => format!(
            "{file} needs a JavaScript runtime and none was found on PATH: install Bun ('npm install -g bun') or Node.js"
        ),
    })
}

/// Finds an executable on `$PATH` (and Bun in its default install place).
fn lookup(program: &str, env: Env) -> Option<PathBuf> {
    let path = env("PATH").unwrap_or_default();
    let mut candidates: Vec<PathBuf> = std::env::split_paths(&path)
        .filter(|dir| !dir.as_os_str().is_empty())
        .map(|dir| dir.join(program))
        .collect();
    if program == "bun" {
        if let Some(home) = env("HOME") {
            candidates.push(Path::new(&home).join(".bun/bin/bun"));
        }
    }
    candidates.into_iter().find(|p| is_executable(p))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env_with_path(path: String) -> impl Fn(&str) -> Option<String> {
        move |key: &str| (key == "PATH").then(|| path.clone())
    }

    fn write_exec(path: &Path) {
        fs::write(path, "#!/bin/sh\n").expect("write");
        fs::set_permissions(path, fs::Permissions::from_mode(0o755)).expect("chmod");
    }

    #[test]
    fn directory_entries_are_probed_in_order() {
        let dir = tempfile::tempdir().expect("tempdir");
        let bin = tempfile::tempdir().expect("tempdir");
        write_exec(&bin.path().join("node"));
        let env = env_with_path(bin.path().display().to_string());
        fs::write(dir.path().join("index.mjs"), "").expect("write");
        fs::write(dir.path().join("index.js"), "").expect("write");
        let app = App::resolve(&dir.path().display().to_string(), "auto", &env).expect("app");
        match &app.kind {
            AppKind::Module { entry, runtime } => {
                assert!(entry.ends_with("index.js"));
                assert_eq!(runtime.kind, RuntimeKind::Node);
            }
            other => panic!("expected a module, got {other:?}"),
        }
        // The argument it prints resolves to the same app.
        assert_eq!(App::resolve(&app.arg(), app.runtime_arg(), &env), Ok(app));
    }

    #[test]
    fn typescript_needs_bun() {
        let dir = tempfile::tempdir().expect("tempdir");
        fs::write(dir.path().join("index.ts"), "").expect("write");
        let empty = env_with_path(String::new());
        let err = App::resolve(&dir.path().display().to_string(), "auto", &empty).unwrap_err();
        assert!(
            err.contains("needs Bun") && err.contains("npm install -g bun"),
            "{err}"
        );
    }

    #[test]
    fn executables_are_command_apps() {
        let dir = tempfile::tempdir().expect("tempdir");
        write_exec(&dir.path().join("app"));
        let empty = env_with_path(String::new());
        let app = App::resolve(&dir.path().display().to_string(), "auto", &empty).expect("app");
        assert!(matches!(app.kind, AppKind::Command { .. }));
        let name = dir.path().file_name().expect("name").to_string_lossy();
        assert_eq!(app.name, name);
    }

    #[test]
    fn missing_and_empty_apps_are_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        let empty = env_with_path(String::new());
        let err = App::resolve(&dir.path().display().to_string(), "auto", &empty).unwrap_err();
        assert!(err.contains("no app entry"), "{err}");
        let err = App::resolve("/no/such/app", "auto", &empty).unwrap_err();
        assert!(err.contains("does not exist"), "{err}");
        // An `app` that is not executable is said to be just that.
        std::fs::write(dir.path().join("app"), "#!/bin/sh\n").expect("write");
        let err = App::resolve(&dir.path().display().to_string(), "auto", &empty).unwrap_err();
        assert!(
            err.ends_with("/app is not executable (chmod +x it)"),
            "{err}"
        );
    }
}
