//! The invite high-water marks, kept across restarts: `replay.json`.
//!
//! Without them a captured invite replayed after a robot restart (within its
//! ±60 s `ts` allowance, or any time when the robot's clock is wrong after a
//! boot without network time) would start a ghost call. The robot writes the
//! file durably before it answers an invite with a new `seq`; invites are
//! rare, so this costs one small write per call attempt.
//!
//! ```json
//! {"version":1,"invite":{"36940d0ece18aebf69d0ef6825534e24":1764072000123}}
//! ```

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::state::{StateFileError, StateStore};
use crate::wire::freshness::SeqTracker;
use crate::wire::identity::ClientId;

/// The file name in the state directory.
pub const REPLAY_FILE: &str = "replay.json";

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReplayFile {
    version: u32,
    invite: BTreeMap<ClientId, u64>,
}

/// The invite `seq` table as last kept (empty when there is no file yet).
pub fn load(store: &dyn StateStore) -> Result<SeqTracker, StateFileError> {
    let mut t = SeqTracker::default();
    let Some(bytes) = store.read(REPLAY_FILE)? else { return Ok(t) };
    let corrupt = |detail: String| StateFileError::Corrupt { path: store.path(REPLAY_FILE), detail };
    let f: ReplayFile = serde_json::from_slice(&bytes).map_err(|e| corrupt(e.to_string()))?;
    if f.version != 1 {
        return Err(corrupt(format!("version {} is not 1", f.version)));
    }
    for (id, seq) in f.invite {
        t.seed(id, seq);
    }
    Ok(t)
}

/// Keep the table durably.
pub fn save(store: &mut dyn StateStore, t: &SeqTracker) -> Result<(), StateFileError> {
    let f = ReplayFile { version: 1, invite: t.entries().map(|(k, v)| (k.clone(), v)).collect() };
    store.write(REPLAY_FILE, &serde_json::to_vec(&f).expect("replay marks serialise"), 0o600)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::MemStore;
    use crate::wire::freshness::SeqCheck;

    #[test]
    fn marks_survive_a_reload_and_a_corrupt_file_names_itself() {
        let mut store = MemStore::default();
        let a: ClientId = "36940d0ece18aebf69d0ef6825534e24".parse().unwrap();
        let mut t = load(&store).unwrap();
        assert_eq!(t.classify_and_record(&a, 10), SeqCheck::New);
        save(&mut store, &t).unwrap();
        let mut again = load(&store).unwrap();
        assert_eq!(again.classify_and_record(&a, 10), SeqCheck::Duplicate);
        assert_eq!(again.classify_and_record(&a, 9), SeqCheck::Old);
        assert_eq!(again.classify_and_record(&a, 11), SeqCheck::New);
        store.write(REPLAY_FILE, b"{\"version\":1,\"invite\":7}", 0o600).unwrap();
        let e = load(&store).unwrap_err().to_string();
        assert!(e.contains("replay.json") && e.contains("corrupt"), "{e}");
    }
}
