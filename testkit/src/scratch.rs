//! [`ScratchDir`]: a test's own directory (a gateway's data directory, say),
//! removed when the test passes and kept when it fails, so a run of the
//! suite leaves no data behind and a failure leaves its files for a look.

use std::ops::Deref;
use std::path::{Path, PathBuf};

/// A fresh, empty directory named `<name>-<random>` under a base directory
/// (a test's `CARGO_TARGET_TMPDIR`). Dropped while the thread is unwinding
/// from a panic it is kept, and its path printed; otherwise it is removed
/// with everything in it.
pub struct ScratchDir(Option<tempfile::TempDir>);

impl ScratchDir {
    /// Creates it under `base` (made first if missing).
    ///
    /// # Panics
    /// If the directory cannot be made: a test cannot go on without it.
    pub fn new_in(base: impl AsRef<Path>, name: &str) -> Self {
        let base = base.as_ref();
        std::fs::create_dir_all(base).unwrap_or_else(|e| panic!("{}: {e}", base.display()));
        let dir = tempfile::Builder::new()
            .prefix(&format!("{name}-"))
            .tempdir_in(base)
            .unwrap_or_else(|e| panic!("a scratch directory in {}: {e}", base.display()));
        Self(Some(dir))
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        self.0.as_ref().expect("present until dropped").path()
    }

    /// Its path, owned.
    pub fn to_path_buf(&self) -> PathBuf {
        self.path().to_path_buf()
    }
}

impl Deref for ScratchDir {
    type Target = Path;
    fn deref(&self) -> &Path {
        self.path()
    }
}

impl AsRef<Path> for ScratchDir {
    fn as_ref(&self) -> &Path {
        self.path()
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let Some(dir) = self.0.take() else { return };
        if std::thread::panicking() {
            let kept = dir.keep();
            eprintln!("kept for a look: {}", kept.display());
        }
        // Otherwise `dir` drops here and removes the tree.
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> PathBuf {
        std::env::temp_dir()
    }

    #[test]
    fn a_passing_test_leaves_nothing_behind() {
        let dir = ScratchDir::new_in(base(), "pass");
        std::fs::create_dir_all(dir.join("shard-0")).unwrap();
        std::fs::write(dir.join("shard-0/log"), b"bytes").unwrap();
        let path = dir.to_path_buf();
        assert!(path.starts_with(base()) && path.exists());
        drop(dir);
        assert!(!path.exists(), "removed with its files");
    }

    #[test]
    fn a_failing_test_keeps_its_files() {
        let path = std::panic::catch_unwind(|| {
            let dir = ScratchDir::new_in(base(), "fail");
            std::fs::write(dir.join("log"), b"bytes").unwrap();
            std::panic::panic_any(dir.to_path_buf());
        })
        .unwrap_err()
        .downcast::<PathBuf>()
        .unwrap();
        assert!(path.join("log").exists(), "kept for a look");
        std::fs::remove_dir_all(*path).unwrap();
    }

    #[test]
    fn two_dirs_of_one_name_are_apart() {
        let (a, b) = (
            ScratchDir::new_in(base(), "same"),
            ScratchDir::new_in(base(), "same"),
        );
        assert_ne!(a.path(), b.path());
    }
}
