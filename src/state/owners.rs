//! The owners store: the phones that paired with this robot, and their keys.
//!
//! Kept in `{state_dir}/owners.json`, a small human-readable, versioned file:
//!
//! ```json
//! {
//!   "version": 1,
//!   "owners": [
//!     {
//!       "id": "36940d0ece18aebf69d0ef6825534e24",
//!       "nickname": "Alice",
//!       "key": "a0369cd9bece6225fa9218e192b9d2f976f5e830a3dc8d76060f9ba004da8f0f",
//!       "paired_at_ms": 1764072000000
//!     }
//!   ]
//! }
//! ```
//!
//! Every change is written through [`crate::state::write_durable`] (temp file, fsync,
//! rename, fsync dir) with mode 0600 before the call returns, so a pairing the
//! phone was told succeeded survives a power cut, and a crash mid-write leaves
//! the complete old or the complete new file. The in-memory state changes only
//! once the write succeeded.
//!
//! A file that exists but cannot be read or understood is an error naming the
//! file, never a silent reset: resetting would lock every owner out, and
//! overwriting would destroy the evidence. Duplicate IDs and malformed keys
//! count as corrupt too. Unknown fields are rejected as well; any change to
//! the schema bumps `version`.
//!
//! One process writes the file: the daemon. `robotd owners` talks to it over
//! the control socket rather than editing the file, so there is no
//! cross-process locking here.

use std::collections::HashSet;
use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::state::{DirStore, StateFileError, StateStore};
use crate::wire::identity::ClientId;
use crate::wire::nickname;

/// Name of the owners file inside the state directory.
pub const OWNERS_FILE: &str = "owners.json";

/// The file format version this build reads and writes.
pub const FORMAT_VERSION: u32 = 1;

/// Permission bits of the owners file: it holds owner keys.
pub const OWNERS_FILE_MODE: u32 = 0o600;

/// Path of the owners file for a state directory.
pub fn owners_path(state_dir: &Path) -> PathBuf {
    state_dir.join(OWNERS_FILE)
}

/// A phone that paired with this robot.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Owner {
    /// The phone's client ID (`from` on its messages).
    pub id: ClientId,
    /// The name the phone gave at pairing, for `robotd owners` and logs.
    /// Sanitised by [`OwnerStore::add`] (see [`nickname::sanitize`]).
    pub nickname: String,
    /// The owner key `K` (see [`crate::wire::keys::owner_key`]); hex in the file.
    #[serde(with = "crate::wire::keys::hex_key")]
    pub key: [u8; 32],
    /// When pairing succeeded, unix milliseconds.
    pub paired_at_ms: u64,
}

/// Never prints the key, so owners can be logged and `{:?}`-formatted freely.
impl fmt::Debug for Owner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Owner")
            .field("id", &self.id)
            .field("nickname", &self.nickname)
            .field("key", &format_args!("<redacted>"))
            .field("paired_at_ms", &self.paired_at_ms)
            .finish()
    }
}

/// The on-disk shape.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct OwnersFile {
    version: u32,
    owners: Vec<Owner>,
}

/// Read first, on its own, so a file from a newer robotd is reported as such
/// rather than as whatever field the newer schema changed.
#[derive(Deserialize)]
struct VersionOnly {
    version: serde_json::Value,
}

/// The owners of this robot, backed by `owners.json` in a [`StateStore`].
pub struct OwnerStore {
    store: Box<dyn StateStore>,
    owners: Vec<Owner>,
}

impl fmt::Debug for OwnerStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OwnerStore").field("owners", &self.owners).finish_non_exhaustive()
    }
}

impl OwnerStore {
    /// Load `{state_dir}/owners.json`. A missing file means no owners yet.
    ///
    /// Also removes temporary files left by a write that was interrupted
    /// (`.owners.json.tmp.*`): they may hold keys of owners removed since.
    ///
    /// # Errors
    /// [`StateFileError::Read`] when the file exists but cannot be read;
    /// [`StateFileError::Corrupt`] when it is not valid JSON, has another
    /// `version`, unknown fields, a duplicate owner ID or a key that is not 64
    /// hex characters. Both name the file.
    pub fn load(state_dir: &Path) -> Result<Self, StateFileError> {
        remove_stale_temp_files(state_dir);
        let store = Self::open(Box::new(DirStore::new(state_dir)))?;
        warn_if_readable_by_others(&owners_path(state_dir));
        Ok(store)
    }

    /// Load the owners from any state store (the daemon's directory, or
    /// memory in the core's tests); errors as [`OwnerStore::load`].
    pub fn open(store: Box<dyn StateStore>) -> Result<Self, StateFileError> {
        let owners = match store.read(OWNERS_FILE)? {
            None => Vec::new(),
            Some(bytes) => {
                parse(&bytes).map_err(|detail| StateFileError::Corrupt { path: store.path(OWNERS_FILE), detail })?
            }
        };
        Ok(OwnerStore { store, owners })
    }

    /// The file this store reads and writes.
    pub fn path(&self) -> PathBuf {
        self.store.path(OWNERS_FILE)
    }

    /// All owners, in pairing order.
    pub fn list(&self) -> &[Owner] {
        &self.owners
    }

    /// True when nobody has paired (the robot then opens a pairing window at start).
    pub fn is_empty(&self) -> bool {
        self.owners.is_empty()
    }

    /// The owner with this ID, if any.
    pub fn get(&self, id: &ClientId) -> Option<&Owner> {
        self.owners.iter().find(|o| &o.id == id)
    }

    /// Add an owner, or replace the owner with the same ID (a phone pairing
    /// again gets a new key), and persist durably before returning. The
    /// nickname is sanitised first ([`nickname::sanitize`]).
    ///
    /// Returns `true` when an owner was replaced. On error nothing changes,
    /// in memory or on disk.
    pub fn add(&mut self, mut owner: Owner) -> Result<bool, StateFileError> {
        owner.nickname = nickname::sanitize(&owner.nickname);
        let mut next = self.owners.clone();
        let replaced = match next.iter_mut().find(|o| o.id == owner.id) {
            Some(slot) => {
                *slot = owner;
                true
            }
            None => {
                next.push(owner);
                false
            }
        };
        self.persist(next)?;
        Ok(replaced)
    }

    /// Remove an owner and persist durably before returning. Returns `false`
    /// (and writes nothing) when there was no such owner. On error nothing
    /// changes. Messages already in flight from that phone fail their MAC
    /// check from the next lookup on.
    pub fn remove(&mut self, id: &ClientId) -> Result<bool, StateFileError> {
        if self.get(id).is_none() {
            return Ok(false);
        }
        let next: Vec<Owner> = self.owners.iter().filter(|o| &o.id != id).cloned().collect();
        self.persist(next)?;
        Ok(true)
    }

    fn persist(&mut self, owners: Vec<Owner>) -> Result<(), StateFileError> {
        let file = OwnersFile { version: FORMAT_VERSION, owners };
        let mut bytes = serde_json::to_vec_pretty(&file).expect("owners serialise to JSON");
        bytes.push(b'\n');
        self.store.write(OWNERS_FILE, &bytes, OWNERS_FILE_MODE)?;
        self.owners = file.owners;
        Ok(())
    }
}

/// Parse and validate the file contents; the error is the `detail` of
/// [`StateFileError::Corrupt`] and never contains key material.
fn parse(bytes: &[u8]) -> Result<Vec<Owner>, String> {
    let header: VersionOnly = serde_json::from_slice(bytes).map_err(|e| format!("not an owners file: {e}"))?;
    if header.version != FORMAT_VERSION {
        return Err(format!("unsupported version {} (this robotd reads version {FORMAT_VERSION})", header.version));
    }
    let file: OwnersFile = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
    let mut seen = HashSet::new();
    let mut owners = file.owners;
    for owner in &mut owners {
        if !seen.insert(owner.id.clone()) {
            return Err(format!("owner {} is listed twice", owner.id));
        }
        // A hand-edited file must not smuggle escapes into terminals either.
        owner.nickname = nickname::sanitize(&owner.nickname);
    }
    Ok(owners)
}

/// Best effort: a stale temp file is harmless to correctness (it is never
/// read), so failing to remove one is not worth failing the start.
pub fn remove_stale_temp_files(state_dir: &Path) {
    let prefix = format!(".{OWNERS_FILE}.tmp.");
    let Ok(entries) = fs::read_dir(state_dir) else { return };
    for entry in entries.flatten() {
        if entry.file_name().to_str().is_some_and(|n| n.starts_with(&prefix)) {
            match fs::remove_file(entry.path()) {
                Ok(()) => {
                    tracing::info!(file = %entry.path().display(), "removed temporary file left by an interrupted write")
                }
                Err(e) => {
                    tracing::warn!(file = %entry.path().display(), error = %e, "cannot remove stale temporary file")
                }
            }
        }
    }
}

fn warn_if_readable_by_others(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let Ok(meta) = fs::metadata(path) else { return };
    if meta.permissions().mode() & 0o077 != 0 {
        tracing::warn!(
            file = %path.display(),
            mode = format_args!("{:o}", meta.permissions().mode() & 0o777),
            "owners file is readable by other users; it holds owner keys (it is rewritten as 0600 on the next change)"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn id(n: u8) -> ClientId {
        ClientId::from_bytes([n; 16])
    }

    fn owner(n: u8, nickname: &str) -> Owner {
        Owner {
            id: id(n),
            nickname: nickname.to_owned(),
            key: [n.wrapping_add(100); 32],
            paired_at_ms: 1_764_072_000_000 + u64::from(n),
        }
    }

    fn corrupt_detail(dir: &Path, contents: &str) -> String {
        fs::write(owners_path(dir), contents).unwrap();
        let err = OwnerStore::load(dir).unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, StateFileError::Corrupt { .. }), "{err:?}");
        assert!(text.contains(&owners_path(dir).display().to_string()), "error must name the file: {text}");
        text
    }

    #[test]
    fn missing_file_is_no_owners() {
        let dir = tempfile::tempdir().unwrap();
        let store = OwnerStore::load(dir.path()).unwrap();
        assert!(store.is_empty());
        assert_eq!(store.path(), owners_path(dir.path()));
        assert!(!owners_path(dir.path()).exists(), "loading must not create the file");
    }

    #[test]
    fn roundtrip_keeps_every_field_and_order() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = OwnerStore::load(dir.path()).unwrap();
        assert!(!store.add(owner(2, "Bob")).unwrap());
        assert!(!store.add(owner(1, "Alice")).unwrap());
        let again = OwnerStore::load(dir.path()).unwrap();
        assert_eq!(again.list(), &[owner(2, "Bob"), owner(1, "Alice")]);
        assert_eq!(again.get(&id(1)), Some(&owner(1, "Alice")));
        assert_eq!(again.get(&id(3)), None);
    }

    #[test]
    fn file_is_versioned_readable_json_with_hex_key() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = OwnerStore::load(dir.path()).unwrap();
        store.add(owner(1, "Alice")).unwrap();
        let text = fs::read_to_string(owners_path(dir.path())).unwrap();
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["version"], 1);
        assert_eq!(v["owners"][0]["id"], id(1).as_str());
        assert_eq!(v["owners"][0]["key"], "65".repeat(32));
        assert_eq!(v["owners"][0]["paired_at_ms"], 1_764_072_000_001u64);
        assert!(text.contains("\n  "), "pretty-printed for humans: {text}");
    }

    #[test]
    fn file_mode_is_0600() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = OwnerStore::load(dir.path()).unwrap();
        store.add(owner(1, "Alice")).unwrap();
        let mode = fs::metadata(owners_path(dir.path())).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        // Also after a rewrite of a file someone had made world-readable.
        fs::set_permissions(owners_path(dir.path()), fs::Permissions::from_mode(0o644)).unwrap();
        store.add(owner(2, "Bob")).unwrap();
        let mode = fs::metadata(owners_path(dir.path())).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }

    #[test]
    fn add_replaces_same_id_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = OwnerStore::load(dir.path()).unwrap();
        store.add(owner(1, "Alice")).unwrap();
        store.add(owner(2, "Bob")).unwrap();
        let new = Owner { key: [9; 32], paired_at_ms: 5, ..owner(1, "Alice 2") };
        assert!(store.add(new.clone()).unwrap());
        assert_eq!(store.list(), &[new.clone(), owner(2, "Bob")]);
        assert_eq!(OwnerStore::load(dir.path()).unwrap().list(), &[new, owner(2, "Bob")]);
    }

    #[test]
    fn remove_persists_and_reports_absence() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = OwnerStore::load(dir.path()).unwrap();
        store.add(owner(1, "Alice")).unwrap();
        store.add(owner(2, "Bob")).unwrap();
        assert!(store.remove(&id(1)).unwrap());
        assert!(!store.remove(&id(1)).unwrap());
        assert!(!store.remove(&id(7)).unwrap());
        assert_eq!(store.list(), &[owner(2, "Bob")]);
        let again = OwnerStore::load(dir.path()).unwrap();
        assert_eq!(again.list(), &[owner(2, "Bob")]);
        let text = fs::read_to_string(owners_path(dir.path())).unwrap();
        assert!(!text.contains(&hex::encode(owner(1, "").key)), "removed key must be gone from disk");
    }

    #[test]
    fn failed_write_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        fs::create_dir(&state).unwrap();
        let mut store = OwnerStore::load(&state).unwrap();
        store.add(owner(1, "Alice")).unwrap();
        fs::remove_file(owners_path(&state)).unwrap();
        fs::remove_dir(&state).unwrap();
        let err = store.add(owner(2, "Bob")).unwrap_err();
        assert!(matches!(err, StateFileError::Write { .. }), "{err:?}");
        assert!(err.to_string().contains("owners.json"), "{err}");
        assert_eq!(store.list(), &[owner(1, "Alice")]);
        assert!(store.remove(&id(1)).is_err());
        assert_eq!(store.list(), &[owner(1, "Alice")]);
    }

    #[test]
    fn corrupt_json_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        corrupt_detail(dir.path(), "{\"version\":1,\"owners\":[");
        corrupt_detail(dir.path(), "");
        corrupt_detail(dir.path(), "\u{0}\u{1}binary");
        corrupt_detail(dir.path(), "[]");
    }

    #[test]
    fn wrong_or_missing_version_is_corrupt() {
        let dir = tempfile::tempdir().unwrap();
        let text = corrupt_detail(dir.path(), r#"{"version":2,"owners":[]}"#);
        assert!(text.contains("unsupported version 2"), "{text}");
        corrupt_detail(dir.path(), r#"{"version":"1","owners":[]}"#);
        corrupt_detail(dir.path(), r#"{"owners":[]}"#);
    }

    #[test]
    fn duplicate_id_is_corrupt() {
        let dir = tempfile::tempdir().unwrap();
        let file = OwnersFile { version: 1, owners: vec![owner(1, "Alice"), owner(1, "Alice again")] };
        let text = corrupt_detail(dir.path(), &serde_json::to_string(&file).unwrap());
        assert!(text.contains("listed twice"), "{text}");
    }

    #[test]
    fn bad_key_is_corrupt_and_not_echoed() {
        let dir = tempfile::tempdir().unwrap();
        let entry = |key: &str| {
            format!(r#"{{"version":1,"owners":[{{"id":"{}","nickname":"A","key":"{key}","paired_at_ms":1}}]}}"#, id(1))
        };
        for key in ["ab".repeat(31), "ab".repeat(33), format!("{}zz", "ab".repeat(31)), String::new()] {
            let text = corrupt_detail(dir.path(), &entry(&key));
            assert!(text.contains("64 hex"), "{text}");
            if !key.is_empty() {
                assert!(!text.contains(&key), "error must not echo key material: {text}");
            }
        }
        // A non-hex ID and an unknown field are corrupt as well.
        corrupt_detail(
            dir.path(),
            &entry(&"ab".repeat(32)).replace(id(1).as_str(), "36940D0ECE18AEBF69D0EF6825534E24"),
        );
        corrupt_detail(
            dir.path(),
            &entry(&"ab".repeat(32)).replace("\"paired_at_ms\"", "\"extra\":0,\"paired_at_ms\""),
        );
    }

    #[test]
    fn unreadable_file_is_a_read_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        // A directory where the file should be: reading fails with EISDIR.
        fs::create_dir(owners_path(dir.path())).unwrap();
        let err = OwnerStore::load(dir.path()).unwrap_err();
        assert!(matches!(err, StateFileError::Read { .. }), "{err:?}");
        assert!(err.to_string().contains("owners.json"), "{err}");
    }

    #[test]
    fn corrupt_file_is_left_untouched() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(owners_path(dir.path()), "garbage").unwrap();
        assert!(OwnerStore::load(dir.path()).is_err());
        assert_eq!(fs::read_to_string(owners_path(dir.path())).unwrap(), "garbage");
    }

    #[test]
    fn nickname_is_sanitised_at_add() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = OwnerStore::load(dir.path()).unwrap();
        store.add(owner(1, "  Al\u{1b}[31mice\n\u{202e}\u{7f}\u{85} ")).unwrap();
        assert_eq!(store.get(&id(1)).unwrap().nickname, "Al[31mice");
        store.add(owner(2, &"ż".repeat(100))).unwrap();
        assert_eq!(store.get(&id(2)).unwrap().nickname, "ż".repeat(nickname::MAX_CHARS));
        assert_eq!(OwnerStore::load(dir.path()).unwrap().list(), store.list());
    }

    #[test]
    fn debug_never_prints_the_key() {
        let o = Owner { key: [0xab; 32], ..owner(1, "Alice") };
        let text = format!(
            "{o:?} {:?}",
            OwnerStore { store: Box::new(crate::state::MemStore::default()), owners: vec![o.clone()] }
        );
        assert!(!text.contains("abab"), "{text}");
        assert!(!text.contains("171"), "{text}");
        assert!(text.contains("<redacted>") && text.contains("Alice"), "{text}");
    }

    #[test]
    fn stale_temp_files_are_removed_at_load() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = OwnerStore::load(dir.path()).unwrap();
        store.add(owner(1, "Alice")).unwrap();
        let stale = dir.path().join(".owners.json.tmp.12345");
        fs::write(&stale, "{\"version\":1").unwrap();
        fs::write(dir.path().join("robot-id"), "keep me").unwrap();
        let again = OwnerStore::load(dir.path()).unwrap();
        assert_eq!(again.list(), &[owner(1, "Alice")]);
        assert!(!stale.exists());
        assert!(dir.path().join("robot-id").exists());
    }
}
