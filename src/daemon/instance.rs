//! One robotd per robot: an exclusive lock on the state directory.
//!
//! Two daemons on one state directory would fight over the broker's client
//! ID, take each other's admin socket, pair owners the other never sees and
//! drive the same motor pins. So `robotd run` takes an exclusive `flock(2)`
//! on `{state_dir}/lock` before it touches the hardware, the admin socket or
//! the broker, keeps it for its whole life and writes its PID in the file for
//! the error message of the next one. The kernel releases the lock when the
//! process dies in any way (SIGKILL included), so a stale file never blocks
//! a restart.
//!
//! `robotd safe-stop` checks the same lock ([`check_not_running`]): it must
//! not touch the pins of a daemon that is still running, but runs as usual
//! under `ExecStopPost=`, after the daemon has gone.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use rustix::fs::{FlockOperation, flock};

/// Name of the lock file inside the state directory.
pub const LOCK_FILE: &str = "lock";

/// The lock file of a state directory.
pub fn lock_path(state_dir: &Path) -> PathBuf {
    state_dir.join(LOCK_FILE)
}

/// Why the state directory could not be claimed.
#[derive(Debug, thiserror::Error)]
pub enum InstanceError {
    /// Another process holds the lock: a robotd is running on this state
    /// directory. Stop it first (`systemctl stop robotd`), or give this one
    /// its own `robot.state_dir` (and `control.socket`).
    #[error(
        "another robotd ({}) is running on robot.state_dir {}; only one robotd may run per robot: \
         stop it first (systemctl stop robotd) or give this one its own robot.state_dir",
        pid_text(*.pid, path),
        dir.display()
    )]
    Running { dir: PathBuf, path: PathBuf, pid: Option<u32> },
    /// The lock file could not be opened or locked, e.g. it belongs to
    /// another user (someone ran robotd as root). Fix its owner or remove it
    /// while no robotd runs.
    #[error("cannot lock {path} (one robotd per robot): {cause}; it must be writable by the robotd user")]
    Lock { path: PathBuf, cause: io::Error },
}

fn pid_text(pid: Option<u32>, path: &Path) -> String {
    match pid {
        Some(pid) => format!("PID {pid}, from {}", path.display()),
        None => format!("PID unknown, {} holds none yet", path.display()),
    }
}

/// The claim on a state directory, held as long as this value lives.
#[derive(Debug)]
pub struct InstanceLock {
    _file: File,
    path: PathBuf,
}

impl InstanceLock {
    /// Claim `state_dir` for this process, or fail at once (no waiting) with
    /// [`InstanceError::Running`] naming the PID of the robotd that has it.
    /// On success the file holds this process's PID.
    pub fn acquire(state_dir: &Path) -> Result<InstanceLock, InstanceError> {
        let path = lock_path(state_dir);
        let err = |cause| InstanceError::Lock { path: path.clone(), cause };
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .map_err(err)?;
        try_lock(&file, state_dir, &path)?;
        let pid = format!("{}\n", std::process::id());
        (|| {
            file.set_len(0)?;
            file.rewind()?;
            file.write_all(pid.as_bytes())?;
            file.sync_all()
        })()
        .map_err(err)?;
        Ok(InstanceLock { _file: file, path })
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Succeed when no robotd runs on `state_dir` (then the returned guard, if
/// any, keeps one from starting until it is dropped); fail with
/// [`InstanceError::Running`] naming its PID when one does.
///
/// A missing state directory or lock file means no robotd has run there
/// (`Ok(None)`); the file is never created here, so a `safe-stop` run as
/// root cannot leave a lock file the robotd user cannot open.
pub fn check_not_running(state_dir: &Path) -> Result<Option<InstanceLock>, InstanceError> {
    let path = lock_path(state_dir);
    let file = match OpenOptions::new().read(true).open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(cause) => return Err(InstanceError::Lock { path, cause }),
    };
    try_lock(&file, state_dir, &path)?;
    Ok(Some(InstanceLock { _file: file, path }))
}

fn try_lock(file: &File, state_dir: &Path, path: &Path) -> Result<(), InstanceError> {
    match flock(file, FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => Ok(()),
        Err(rustix::io::Errno::WOULDBLOCK) => {
            Err(InstanceError::Running { dir: state_dir.to_path_buf(), path: path.to_path_buf(), pid: read_pid(file) })
        }
        Err(e) => Err(InstanceError::Lock { path: path.to_path_buf(), cause: e.into() }),
    }
}

/// The PID the holder wrote, if it has written one yet.
fn read_pid(mut file: &File) -> Option<u32> {
    let mut text = String::new();
    file.rewind().ok()?;
    file.read_to_string(&mut text).ok()?;
    text.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_claim_fails_naming_the_holder_until_the_first_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        assert!(check_not_running(dir.path()).unwrap().is_none(), "no lock file yet: nothing runs");
        let first = InstanceLock::acquire(dir.path()).unwrap();
        let me = std::process::id();
        assert_eq!(std::fs::read_to_string(first.path()).unwrap(), format!("{me}\n"));
        // flock locks belong to the open file, so a second open in the same
        // process conflicts just as another process would.
        let e = InstanceLock::acquire(dir.path()).unwrap_err();
        assert!(matches!(e, InstanceError::Running { pid: Some(p), .. } if p == me), "{e:?}");
        let text = e.to_string();
        assert!(text.contains(&format!("PID {me}")) && text.contains("only one robotd"), "{text}");
        assert!(matches!(check_not_running(dir.path()), Err(InstanceError::Running { .. })));
        drop(first);
        let guard = check_not_running(dir.path()).unwrap().expect("the file exists now");
        assert!(InstanceLock::acquire(dir.path()).is_err(), "the check's guard holds the lock while it lives");
        drop(guard);
        InstanceLock::acquire(dir.path()).unwrap();
    }
}
