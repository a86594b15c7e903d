//! Waiting for a seed: with no settings anywhere, the unit waits until a seed file appears in
//! /etc or /boot (the installer writes one) or a `GWSEED` stick is plugged in, then provisions
//! without a reboot. inotify on the directories where they appear wakes it at once: a stick
//! shows as a new `/dev/block/MAJOR:MINOR` link (every disk and partition gets one, whatever
//! its label, so a second `GWSEED` that udev's by-label link does not point at is seen too). A
//! five-second re-check covers what inotify cannot see (a seed written onto a stick that is
//! already plugged in).

use crate::root::Root;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
use std::os::fd::AsFd;
use std::time::Duration;

/// Where a seed can appear: the seed files' directories, the by-label links and udev's links
/// to every block device (with their parents, for when those directories do not exist yet;
/// not /dev itself, where every close of /dev/null after a write would wake the wait).
const WATCHED: &[&str] = &[
    "/etc/gateway",
    "/etc",
    "/boot",
    "/dev/disk/by-label",
    "/dev/disk",
    "/dev/block",
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

    /// Waits until `path` exists, which a thread creates after 200 ms; asserts inotify, not the
    /// re-check, ended the wait.
    async fn woken_by(root: &Root, path: std::path::PathBuf, create: fn(&std::path::Path)) {
        let writer = {
            let path = path.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(200));
                create(&path);
            })
        };
        let started = Instant::now();
        let mut checks = 0;
        tokio::time::timeout(
            Duration::from_secs(20),
            wait(root, || {
                checks += 1;
                path.symlink_metadata().is_ok()
            }),
        )
        .await
        .expect("the wait never ended");
        writer.join().unwrap();
        assert!(checks >= 2, "returned without waiting");
        assert!(started.elapsed() < RECHECK, "took {:?}", started.elapsed());
    }

    #[tokio::test]
    async fn wakes_when_a_disk_appears() {
        // A second GWSEED stick: udev's by-label link may stay where it was, but every new
        // disk and partition gets a /dev/block link.
        let dir = tempfile::tempdir().unwrap();
        let root = Root::new(dir.path());
        std::fs::create_dir_all(root.path("/dev/block")).unwrap();
        std::fs::create_dir_all(root.path("/dev/disk/by-label")).unwrap();
        woken_by(&root, root.path("/dev/block/8:16"), |p| {
            std::os::unix::fs::symlink("../sdb", p).unwrap()
        })
        .await;
    }

    #[tokio::test]
    async fn wakes_when_a_seed_file_appears() {
        let dir = tempfile::tempdir().unwrap();
        let root = Root::new(dir.path());
        std::fs::create_dir_all(root.path("/etc/gateway")).unwrap();
        woken_by(&root, root.path("/etc/gateway/seed.toml"), |p| {
            std::fs::write(p, "primary = \"p\"\n").unwrap()
        })
        .await;
    }
}
