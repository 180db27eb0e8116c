//! Durable state files: the robot ID, the owners and the last known place.
//!
//! A robot loses power without warning, so every state file (robot ID, owners,
//! last known place) is replaced atomically: write a temporary file in the same
//! directory, fsync it, rename it over the old one, then fsync the directory so
//! the rename itself survives a power cut. A reader therefore always sees either
//! the complete old file or the complete new one.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

pub mod owners;
pub mod replay;

/// Failure to write or read a state file; always names the file.
#[derive(Debug, thiserror::Error)]
pub enum StateFileError {
    /// The file could not be written. Check that the state directory exists
    /// and is writable by the robotd user (systemd's `StateDirectory=` does this).
    #[error("cannot write state file {path}: {cause}")]
    Write { path: PathBuf, cause: io::Error },
    /// The file exists but could not be read.
    #[error("cannot read state file {path}: {cause}")]
    Read { path: PathBuf, cause: io::Error },
    /// The file was read but its contents are not valid. robotd never resets a
    /// corrupt file silently: move it away (or restore a backup) and restart.
    #[error("state file {path} is corrupt ({detail}); move it away or restore a backup, robotd will not overwrite it")]
    Corrupt { path: PathBuf, detail: String },
}

/// The directory of `path` and a hidden temporary name beside it,
/// `.{name}.{suffix}`: in the same directory, so a rename or link is atomic.
fn temp_beside<'p>(path: &'p Path, suffix: &str) -> io::Result<(&'p Path, PathBuf)> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let file_name = path.file_name().ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no file name"))?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(file_name);
    tmp_name.push(format!(".{suffix}"));
    Ok((dir, dir.join(tmp_name)))
}

/// Atomically replace `path` with `contents`, created with permission `mode`
/// (e.g. `0o600` for files holding keys).
pub fn write_durable(path: &Path, contents: &[u8], mode: u32) -> Result<(), StateFileError> {
    let err = |cause| StateFileError::Write { path: path.to_path_buf(), cause };
    let (dir, tmp) = temp_beside(path, &format!("tmp.{}", std::process::id())).map_err(err)?;
    let result = (|| {
        let mut f = OpenOptions::new().write(true).create(true).truncate(true).mode(mode).open(&tmp)?;
        f.write_all(contents)?;
        f.sync_all()?;
        drop(f);
        fs::rename(&tmp, path)?;
        File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.map_err(err)
}

/// Create `path` with `contents` (mode `mode`) only if it does not exist yet,
/// durably and atomically: `Ok(true)` when this call created it, `Ok(false)`
/// when it already existed (its contents are left alone).
///
/// The complete file is written and fsynced under a temporary name, then
/// published with `link(2)`, which fails if the name exists. So when several
/// processes race to make the same file (the daemon and `robotd id` on a
/// fresh state directory), exactly one wins and every other reads the
/// winner's complete file; nobody replaces it as a `rename(2)` would.
pub fn create_durable_new(path: &Path, contents: &[u8], mode: u32) -> Result<bool, StateFileError> {
    let err = |cause| StateFileError::Write { path: path.to_path_buf(), cause };
    // Unique per call, not only per process: threads may race too.
    let unique = format!("new.{}.{:016x}", std::process::id(), rand::random::<u64>());
    let (dir, tmp) = temp_beside(path, &unique).map_err(err)?;
    let result = (|| {
        let mut f = OpenOptions::new().write(true).create_new(true).mode(mode).open(&tmp)?;
        f.write_all(contents)?;
        f.sync_all()?;
        drop(f);
        let created = match fs::hard_link(&tmp, path) {
            Ok(()) => true,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => false,
            Err(e) => return Err(e),
        };
        fs::remove_file(&tmp)?;
        File::open(dir)?.sync_all()?;
        Ok(created)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.map_err(err)
}

/// Read a state file; `Ok(None)` when it does not exist yet.
pub fn read_optional(path: &Path) -> Result<Option<Vec<u8>>, StateFileError> {
    match fs::read(path) {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(cause) => Err(StateFileError::Read { path: path.to_path_buf(), cause }),
    }
}

/// Where the robot's state files live, as the pure core and the navigator
/// see it: a small synchronous port, so a write is known to be durable
/// before the robot says "paired" or moves, and tests can use memory
/// ([`MemStore`]) instead of a directory ([`DirStore`]). Names are plain file
/// names (`owners.json`), never paths.
pub trait StateStore: Send + std::fmt::Debug {
    /// The file's contents; `Ok(None)` when it does not exist.
    fn read(&self, name: &str) -> Result<Option<Vec<u8>>, StateFileError>;
    /// Replace the file durably, created with permission `mode`.
    fn write(&mut self, name: &str, contents: &[u8], mode: u32) -> Result<(), StateFileError>;
    /// Remove the file; a missing file is not an error.
    fn remove(&mut self, name: &str) -> Result<(), StateFileError>;
    /// Where the file is (for messages and `robotd pair`'s PNG path).
    fn path(&self, name: &str) -> PathBuf;
    /// Another handle on the same files.
    fn boxed_clone(&self) -> Box<dyn StateStore>;
}

/// State files in a directory, written with [`write_durable`].
#[derive(Debug, Clone)]
pub struct DirStore {
    dir: PathBuf,
}

impl DirStore {
    /// State files under `dir` (which must exist).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        DirStore { dir: dir.into() }
    }
}

impl StateStore for DirStore {
    fn read(&self, name: &str) -> Result<Option<Vec<u8>>, StateFileError> {
        read_optional(&self.dir.join(name))
    }
    fn write(&mut self, name: &str, contents: &[u8], mode: u32) -> Result<(), StateFileError> {
        write_durable(&self.dir.join(name), contents, mode)
    }
    fn remove(&mut self, name: &str) -> Result<(), StateFileError> {
        let path = self.dir.join(name);
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(cause) => Err(StateFileError::Write { path, cause }),
        }
    }
    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
    fn boxed_clone(&self) -> Box<dyn StateStore> {
        Box::new(self.clone())
    }
}

/// State files in memory, for tests of the core: clones share the files, so
/// a test keeps one to look inside and to make writes fail.
#[derive(Debug, Clone, Default)]
pub struct MemStore {
    inner: std::sync::Arc<std::sync::Mutex<MemFiles>>,
}

#[derive(Debug, Default)]
struct MemFiles {
    files: std::collections::BTreeMap<String, Vec<u8>>,
    fail_writes: bool,
}

impl MemStore {
    /// A file's contents, if it exists.
    pub fn get(&self, name: &str) -> Option<Vec<u8>> {
        self.inner.lock().expect("memstore lock").files.get(name).cloned()
    }
    /// Make every later write fail (as a full or read-only disk would).
    pub fn fail_writes(&self, fail: bool) {
        self.inner.lock().expect("memstore lock").fail_writes = fail;
    }
}

impl StateStore for MemStore {
    fn read(&self, name: &str) -> Result<Option<Vec<u8>>, StateFileError> {
        Ok(self.get(name))
    }
    fn write(&mut self, name: &str, contents: &[u8], _mode: u32) -> Result<(), StateFileError> {
        let mut m = self.inner.lock().expect("memstore lock");
        if m.fail_writes {
            let cause = io::Error::new(io::ErrorKind::StorageFull, "no space left on device (test)");
            return Err(StateFileError::Write { path: self.path(name), cause });
        }
        m.files.insert(name.to_owned(), contents.to_vec());
        Ok(())
    }
    fn remove(&mut self, name: &str) -> Result<(), StateFileError> {
        self.inner.lock().expect("memstore lock").files.remove(name);
        Ok(())
    }
    fn path(&self, name: &str) -> PathBuf {
        PathBuf::from("(memory)").join(name)
    }
    fn boxed_clone(&self) -> Box<dyn StateStore> {
        Box::new(self.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn replaces_contents_with_mode_and_leaves_no_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("owners.json");
        write_durable(&p, b"one", 0o600).unwrap();
        write_durable(&p, b"two", 0o600).unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two");
        assert_eq!(fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o600);
        let names: Vec<_> = fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, vec![std::ffi::OsString::from("owners.json")]);
    }

    #[test]
    fn create_new_never_replaces_and_leaves_no_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("robot-id");
        assert!(create_durable_new(&p, b"first", 0o644).unwrap());
        assert!(!create_durable_new(&p, b"second", 0o644).unwrap());
        assert_eq!(fs::read(&p).unwrap(), b"first");
        let names: Vec<_> = fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, vec![std::ffi::OsString::from("robot-id")]);
    }

    #[test]
    fn missing_file_reads_as_none_and_unwritable_dir_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        assert!(read_optional(&dir.path().join("nope")).unwrap().is_none());
        let bad = dir.path().join("no/such/dir/file");
        let e = write_durable(&bad, b"x", 0o600).unwrap_err();
        assert!(e.to_string().contains("no/such/dir/file"), "{e}");
    }
}
