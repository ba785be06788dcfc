//! The workspace: where its root is, where its database lives, and how a filesystem path given
//! on the command line becomes a workspace-relative lease key.

use std::path::{Component, Path, PathBuf};

use super::error::{CliError, CliResult};
use super::GlobalArgs;
use crate::database::Database;
use crate::path::LeasePath;

/// The folder under the root that holds the database by default.
pub const STATE_DIR: &str = ".leasehold";

/// The database file name inside [`STATE_DIR`].
pub const DATABASE_FILE: &str = "leases.db";

/// A workspace as seen from the current directory.
#[derive(Debug, Clone)]
pub struct Workspace {
    /// The root, canonical.
    pub root: PathBuf,
    /// The current directory, canonical.
    pub cwd: PathBuf,
    /// The database: a SQLite file, or a PostgreSQL URL given with `--db`.
    pub database: Database,
}

impl Workspace {
    /// Finds the root (`--root`, else the nearest ancestor of the current directory holding
    /// `.leasehold/` or `.git/`, else the current directory) and the database (`--db`, a
    /// file relative to the current directory or a `postgres://` URL, else
    /// `<root>/.leasehold/leases.db`).
    pub fn discover(global: &GlobalArgs) -> CliResult<Workspace> {
        let cwd = std::env::current_dir()
            .and_then(|dir| dir.canonicalize())
            .map_err(|e| CliError::internal(format!("cannot read the current directory: {e}")))?;
        let root = match &global.root {
            Some(dir) => {
                let root = dir.canonicalize().map_err(|e| {
                    CliError::usage("root", format!("{}: {e}", dir.display()))
                        .with_help("--root (or LEASEHOLD_ROOT) must name an existing directory")
                })?;
                if !root.is_dir() {
                    return Err(CliError::usage(
                        "root",
                        format!("{} is not a directory", dir.display()),
                    ));
                }
                root
            }
            None => find_root(&cwd),
        };
        let database = match global.db.as_deref().map(Database::parse) {
            Some(Database::Sqlite(file)) => Database::Sqlite(cwd.join(file)),
            Some(server) => server,
            None => Database::Sqlite(root.join(STATE_DIR).join(DATABASE_FILE)),
        };
        Ok(Workspace {
            root,
            cwd,
            database,
        })
    }

    /// The lease key for `arg`, a filesystem path relative to the current directory (or
    /// absolute). A path ending in `/`, or naming an existing directory, is a folder key.
    /// Paths outside the root, and the root itself, are refused.
    pub fn lease_key(&self, arg: &str) -> CliResult<String> {
        if arg.is_empty() {
            return Err(CliError::usage("path", "a path is empty"));
        }
        // `Path::components` drops a trailing `.`, so look at the text itself.
        let names_folder =
            arg.ends_with('/') || matches!(arg.rsplit('/').next(), Some(".") | Some(".."));
        let joined = self.cwd.join(arg);
        let resolved = resolve(&lexical_normal(&joined));
        let relative = resolved.strip_prefix(&self.root).map_err(|_| {
            CliError::usage(
                "path",
                format!("{arg:?} is outside the workspace root {}", self.root.display()),
            )
            .with_help("lease paths inside the workspace, or point --root (LEASEHOLD_ROOT) at the right one")
        })?;
        let mut key = String::new();
        for part in relative.components() {
            let name = part
                .as_os_str()
                .to_str()
                .ok_or_else(|| CliError::usage("path", format!("{arg:?} is not valid UTF-8")))?;
            if !key.is_empty() {
                key.push('/');
            }
            key.push_str(name);
        }
        if key.is_empty() {
            return Err(CliError::usage(
                "path",
                format!("{arg:?} names the workspace root; lease a folder or file inside it"),
            ));
        }
        if names_folder || resolved.is_dir() {
            key.push('/');
        }
        Ok(LeasePath::parse(&key)?.as_str().to_string())
    }

    /// [`Workspace::lease_key`] for each of `args`.
    pub fn lease_keys(&self, args: &[String]) -> CliResult<Vec<String>> {
        args.iter().map(|arg| self.lease_key(arg)).collect()
    }
}

/// The nearest ancestor of `cwd` (itself included) holding `.leasehold/` or `.git`, else `cwd`.
fn find_root(cwd: &Path) -> PathBuf {
    cwd.ancestors()
        .find(|dir| dir.join(STATE_DIR).is_dir() || dir.join(".git").exists())
        .unwrap_or(cwd)
        .to_path_buf()
}

/// `path` without `.` components, each `..` removing the component before it.
fn lexical_normal(path: &Path) -> PathBuf {
    let mut normal = PathBuf::new();
    for part in path.components() {
        match part {
            Component::CurDir => {}
            Component::ParentDir => {
                normal.pop();
            }
            other => normal.push(other.as_os_str()),
        }
    }
    normal
}

/// `path` with its longest existing prefix canonicalized (symlinks resolved), so that a key does
/// not depend on which name was used to reach a directory. The rest is kept as written.
fn resolve(path: &Path) -> PathBuf {
    let mut existing = path;
    let mut rest: Vec<&std::ffi::OsStr> = Vec::new();
    loop {
        if let Ok(canonical) = existing.canonicalize() {
            let mut resolved = canonical;
            resolved.extend(rest.iter().rev());
            return resolved;
        }
        match (existing.parent(), existing.file_name()) {
            (Some(parent), Some(name)) => {
                rest.push(name);
                existing = parent;
            }
            _ => return path.to_path_buf(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lexical_normal_drops_dots() {
        assert_eq!(
            lexical_normal(Path::new("/a/./b/../c")),
            PathBuf::from("/a/c")
        );
        assert_eq!(lexical_normal(Path::new("/../a")), PathBuf::from("/a"));
    }
}
