//! Waiting for a seed: with no settings anywhere, the unit waits until a seed file appears in
//! /etc or /boot (the installer writes one) or a `GWSEED` stick is plugged in, then provisions
//! without a reboot. inotify on the directories where they appear wakes it at once; a
//! five-second re-check covers what inotify cannot see (a seed written onto a stick that is
//! already plugged in).

use crate::root::Root;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
use std::os::fd::AsFd;
use std::time::Duration;

/// Where a seed can appear: the seed files' directories and the by-label links (with their
/// parents, for when those directories do not exist yet).
const WATCHED: &[&str] = &[
    "/etc/gateway",
    "/etc",
    "/boot",
    "/dev/disk/by-label",
    "/dev/disk",
];

const RECHECK: Duration = Duration::from_secs(5);

/// Returns once `arrived()` is true. `arrived` reads the sources again each time.
pub async fn wait(root: &Root, mut arrived: impl FnMut() -> bool) {
    loop {
        // Watch first, then look: a seed written in between still wakes the wait.
        let inotify = watch(root);
        if arrived() {
            return;
        }
        match inotify {
            Some(inotify) => {
                let woke = tokio::task::spawn_blocking(move || {
                    let mut fds = [PollFd::new(inotify.as_fd(), PollFlags::POLLIN)];
                    let ms = u16::try_from(RECHECK.as_millis()).unwrap_or(u16::MAX);
                    poll(&mut fds, PollTimeout::from(ms)).unwrap_or(0) > 0
                })
                .await
                .unwrap_or(false);
                if woke {
                    // Let the writer finish (a file copied rather than renamed into place).
                    tokio::time::sleep(Duration::from_millis(300)).await;
                }
            }
            None => tokio::time::sleep(RECHECK).await,
        }
    }
}

fn watch(root: &Root) -> Option<Inotify> {
    let inotify = Inotify::init(InitFlags::IN_CLOEXEC | InitFlags::IN_NONBLOCK)
        .map_err(|e| log::debug!("inotify: {e}; re-checking every {}s", RECHECK.as_secs()))
        .ok()?;
    let flags = AddWatchFlags::IN_CREATE
        | AddWatchFlags::IN_MOVED_TO
        | AddWatchFlags::IN_CLOSE_WRITE
        | AddWatchFlags::IN_ATTRIB;
    let mut any = false;
    for dir in WATCHED {
        let path = root.path(dir);
        if path.is_dir() {
            any |= inotify.add_watch(&path, flags).is_ok();
        }
    }
    any.then_some(inotify)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[tokio::test]
    async fn wakes_when_a_seed_file_appears() {
        let dir = tempfile::tempdir().unwrap();
        let root = Root::new(dir.path());
        std::fs::create_dir_all(root.path("/etc/gateway")).unwrap();
        let seed = root.path("/etc/gateway/seed.toml");
        let writer = {
            let seed = seed.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(200));
                std::fs::write(seed, "primary = \"p\"\n").unwrap();
            })
        };
        let started = Instant::now();
        let mut checks = 0;
        tokio::time::timeout(
            Duration::from_secs(20),
            wait(&root, || {
                checks += 1;
                seed.exists()
            }),
        )
        .await
        .expect("the wait never ended");
        writer.join().unwrap();
        assert!(checks >= 2, "returned without waiting");
        // Woken by inotify, not by the five-second re-check.
        assert!(started.elapsed() < RECHECK, "took {:?}", started.elapsed());
    }
}
