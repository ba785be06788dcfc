//! Lease keys: normalised, workspace-relative paths, and how two of them overlap.
//!
//! A key is a relative path with `/` separators, no `.` or `..` components and no empty
//! components. A key ending in `/` is a folder: it covers every key that starts with it.

use std::fmt;

use crate::error::LeaseError;

/// The longest key accepted, in bytes.
pub const MAX_PATH_BYTES: usize = 4096;

/// A normalised lease key.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LeasePath {
    key: String,
}

impl LeasePath {
    /// Normalises `input` (`./src//a/../b.rs` becomes `src/b.rs`; a trailing `/` makes a folder).
    ///
    /// Refused: empty input, absolute paths, a `..` that climbs above the root, NUL or other
    /// control characters, more than [`MAX_PATH_BYTES`] bytes, and paths naming the root itself.
    pub fn parse(input: &str) -> Result<LeasePath, LeaseError> {
        let invalid = |why: &str| LeaseError::invalid("path", format!("{input:?}: {why}"));
        if input.is_empty() {
            return Err(LeaseError::invalid("path", "a path is empty"));
        }
        if input.len() > MAX_PATH_BYTES {
            return Err(LeaseError::invalid(
                "path",
                format!(
                    "a path is {} bytes long; the limit is {MAX_PATH_BYTES}",
                    input.len()
                ),
            ));
        }
        if input.chars().any(char::is_control) {
            return Err(invalid("contains a NUL or control character"));
        }
        if input.starts_with('/') {
            return Err(invalid("must be relative to the workspace root"));
        }
        let mut parts: Vec<&str> = Vec::new();
        let mut is_folder = input.ends_with('/');
        for part in input.split('/') {
            match part {
                "" => {}
                "." => is_folder = true,
                ".." => {
                    if parts.pop().is_none() {
                        return Err(invalid("climbs above the workspace root"));
                    }
                    is_folder = true;
                }
                name => {
                    parts.push(name);
                    is_folder = input.ends_with('/');
                }
            }
        }
        // A trailing "." or ".." names a directory; anything after it decides otherwise.
        if let Some(last) = input.rsplit('/').next() {
            if last == "." || last == ".." {
                is_folder = true;
            }
        }
        if parts.is_empty() {
            return Err(invalid(
                "names the workspace root; lease a folder or file inside it",
            ));
        }
        let mut key = parts.join("/");
        if is_folder {
            key.push('/');
        }
        Ok(LeasePath { key })
    }

    /// The normalised key, as stored.
    pub fn as_str(&self) -> &str {
        &self.key
    }

    /// Whether this key is a folder (ends with `/`).
    pub fn is_folder(&self) -> bool {
        self.key.ends_with('/')
    }

    /// The folders above this key, outermost first: `a/b/c.rs` has `a/` and `a/b/`.
    pub fn ancestors(&self) -> Vec<String> {
        let trimmed = self.key.trim_end_matches('/');
        trimmed
            .match_indices('/')
            .map(|(i, _)| trimmed[..=i].to_string())
            .collect()
    }

    /// For a folder, the half-open key range `[start, end)` holding it and everything below it.
    /// `/` is followed by `0` in byte order, so `a/` .. `a0` is exactly the keys starting `a/`.
    pub fn descendant_range(&self) -> Option<(String, String)> {
        if !self.is_folder() {
            return None;
        }
        let mut end = self.key[..self.key.len() - 1].to_string();
        end.push('0');
        Some((self.key.clone(), end))
    }

    /// Whether two keys cover a common file: equal, or one is a folder above the other.
    pub fn overlaps(&self, other: &LeasePath) -> bool {
        self.key == other.key
            || (self.is_folder() && other.key.starts_with(&self.key))
            || (other.is_folder() && self.key.starts_with(&other.key))
    }

    /// Whether this key covers `other`: equal, or this is a folder above it.
    pub fn covers(&self, other: &LeasePath) -> bool {
        self.key == other.key || (self.is_folder() && other.key.starts_with(&self.key))
    }

    /// Rebuilds a key read back from storage, where it was stored already normalised.
    pub fn from_stored(key: String) -> LeasePath {
        LeasePath { key }
    }
}

impl fmt::Display for LeasePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(input: &str) -> String {
        LeasePath::parse(input).unwrap().as_str().to_string()
    }

    #[test]
    fn normalises_dots_and_repeated_separators() {
        assert_eq!(key("./src//a/../b.rs"), "src/b.rs");
        assert_eq!(key("src/"), "src/");
        assert_eq!(key("src/lib/.."), "src/");
        assert_eq!(key("src/."), "src/");
        assert_eq!(key("a/./b"), "a/b");
    }

    #[test]
    fn refuses_bad_paths() {
        for bad in [
            "",
            "..",
            "a/../..",
            "/etc/passwd",
            "a\0b",
            "a\nb",
            ".",
            "./",
            "a/..",
        ] {
            let err = LeasePath::parse(bad).unwrap_err();
            assert_eq!(err.code(), "invalid_input", "{bad:?}");
        }
        let long = "a".repeat(MAX_PATH_BYTES + 1);
        assert!(LeasePath::parse(&long).is_err());
        assert!(LeasePath::parse(&"a".repeat(MAX_PATH_BYTES)).is_ok());
    }

    #[test]
    fn overlap_follows_folders() {
        let p = |s| LeasePath::parse(s).unwrap();
        assert!(p("src/").overlaps(&p("src/a.rs")));
        assert!(p("src/a.rs").overlaps(&p("src/")));
        assert!(!p("src/").overlaps(&p("srcx/a.rs")));
        assert!(!p("src").overlaps(&p("src/a.rs")));
        assert!(p("src/").overlaps(&p("src/deep/")));
        assert_eq!(p("a/b/c.rs").ancestors(), vec!["a/", "a/b/"]);
        assert_eq!(p("a/b/").ancestors(), vec!["a/"]);
        assert_eq!(
            p("a/b/").descendant_range(),
            Some(("a/b/".to_string(), "a/b0".to_string()))
        );
    }
}
