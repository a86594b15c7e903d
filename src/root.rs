//! The `--root` prefix: every path the agent reads or writes is resolved under it.

use std::path::{Component, Path, PathBuf};

/// Resolves the appliance's absolute paths under a root directory (`/` on a real system).
/// Messages always name the appliance path (`/etc/gateway/seed.toml`), never the prefixed one,
/// so that output is the same in a test tree and on the box.
#[derive(Debug, Clone)]
pub struct Root {
    dir: PathBuf,
}

impl Default for Root {
    fn default() -> Self {
        Self::new("/")
    }
}

impl Root {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// True when running against the real system rather than a tree under `--root`.
    pub fn is_host(&self) -> bool {
        self.dir == Path::new("/")
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The real location of an appliance path. `..` components cannot climb out of the root.
    pub fn path(&self, appliance_path: impl AsRef<Path>) -> PathBuf {
        let relative = lexical(appliance_path.as_ref());
        if relative.as_os_str().is_empty() {
            return self.dir.clone();
        }
        self.dir.join(relative)
    }

    /// Follows symbolic links (as udev makes under `/dev/disk/by-label`) without leaving the
    /// root: an absolute link target is taken relative to the root, a relative one to the
    /// link's directory. Gives up after a few hops, like the kernel does on loops.
    pub fn resolve_links(&self, appliance_path: &Path) -> std::io::Result<PathBuf> {
        self.resolve(appliance_path)
            .map(|logical| self.path(logical))
    }

    /// [`Root::resolve_links`], giving the appliance path of the target
    /// (`/dev/disk/by-label/GWSEED` → `/dev/sdb1`), for messages and for sysfs paths.
    /// `..` is taken lexically, as [`Root::path`] does.
    pub fn resolve(&self, appliance_path: &Path) -> std::io::Result<PathBuf> {
        let mut logical = appliance_path.to_path_buf();
        for _ in 0..16 {
            match std::fs::read_link(self.path(&logical)) {
                Ok(target) => {
                    logical = if target.is_absolute() {
                        target
                    } else {
                        logical.parent().unwrap_or(Path::new("/")).join(target)
                    };
                }
                Err(e) if e.kind() == std::io::ErrorKind::InvalidInput => {
                    return Ok(Path::new("/").join(lexical(&logical)));
                }
                Err(e) => return Err(e),
            }
        }
        Err(std::io::Error::other("too many levels of symbolic links"))
    }
}

/// An appliance path as a relative path without `.` and `..` (taken lexically, never above
/// the top): `/dev/disk/by-label/../../vdb1` → `dev/vdb1`.
fn lexical(appliance_path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for component in appliance_path.components() {
        match component {
            Component::Normal(part) => out.push(part),
            Component::ParentDir => {
                out.pop();
            }
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_stay_under_the_root() {
        let root = Root::new("/tmp/r");
        assert_eq!(
            root.path("/etc/gateway/seed.toml"),
            PathBuf::from("/tmp/r/etc/gateway/seed.toml")
        );
        assert_eq!(
            root.path("/../../etc/passwd"),
            PathBuf::from("/tmp/r/etc/passwd")
        );
        assert_eq!(
            root.path("/dev/disk/by-label/../../vdb1"),
            PathBuf::from("/tmp/r/dev/vdb1")
        );
        assert_eq!(
            Root::default().path("/proc/cmdline"),
            PathBuf::from("/proc/cmdline")
        );
    }

    #[test]
    fn links_resolve_inside_the_root() {
        let dir = tempfile::tempdir().unwrap();
        let root = Root::new(dir.path());
        std::fs::create_dir_all(root.path("/dev/disk/by-label")).unwrap();
        std::fs::write(root.path("/dev/vdb1"), b"x").unwrap();
        std::os::unix::fs::symlink("../../vdb1", root.path("/dev/disk/by-label/GWSEED")).unwrap();
        std::os::unix::fs::symlink("/dev/vdb1", root.path("/dev/disk/by-label/ABS")).unwrap();
        let want = root.path("/dev/vdb1");
        assert_eq!(
            root.resolve_links(Path::new("/dev/disk/by-label/GWSEED"))
                .unwrap(),
            want
        );
        assert_eq!(
            root.resolve_links(Path::new("/dev/disk/by-label/ABS"))
                .unwrap(),
            want
        );
        assert_eq!(
            root.resolve(Path::new("/dev/disk/by-label/GWSEED"))
                .unwrap(),
            PathBuf::from("/dev/vdb1")
        );
        assert_eq!(root.path("/"), dir.path());
    }
}
