//! One provisioning run at a time: `provision` (the unit) and `install` (a person at the
//! console) take `/run/gateway-firstboot/lock` before they change anything. The kernel drops
//! the lock when its holder exits, however it exits.

use crate::root::Root;
use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::time::Duration;

pub const LOCK_FILE: &str = "/run/gateway-firstboot/lock";

/// Held while it lives.
pub struct Lock {
    _file: Flock<File>,
}

fn open(root: &Root) -> io::Result<File> {
    let path = root.path(LOCK_FILE);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(path)
}

/// Takes the lock if it is free; `Ok(None)` when another run holds it.
pub fn try_lock(root: &Root) -> io::Result<Option<Lock>> {
    match Flock::lock(open(root)?, FlockArg::LockExclusiveNonblock) {
        Ok(file) => Ok(Some(Lock { _file: file })),
        Err((_, Errno::EWOULDBLOCK)) => Ok(None),
        Err((_, e)) => Err(io::Error::from(e)),
    }
}

/// Takes the lock, waiting for its holder; `on_wait` is called once if there is a wait.
pub async fn lock(root: &Root, on_wait: impl FnOnce()) -> io::Result<Lock> {
    let mut on_wait = Some(on_wait);
    loop {
        if let Some(lock) = try_lock(root)? {
            return Ok(lock);
        }
        if let Some(f) = on_wait.take() {
            f();
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_holder_waits_until_the_first_lets_go() {
        let dir = tempfile::tempdir().unwrap();
        let root = Root::new(dir.path());
        let first = try_lock(&root).unwrap().expect("free lock");
        assert!(try_lock(&root).unwrap().is_none(), "lock taken twice");
        drop(first);
        assert!(try_lock(&root).unwrap().is_some(), "lock not released");
    }
}
