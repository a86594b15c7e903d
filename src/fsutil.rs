//! Files written so that a power cut at any instant leaves either the old or the new content:
//! temporary file (`tempfile`), `sync_all`, rename, fsync of the directory.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::Path;

pub fn write_atomic(path: &Path, data: &[u8], mode: u32) -> io::Result<()> {
    write_replace(path, data, mode, true)
}

/// Replaces a file through a rename, without waiting for the disk: for what may be lost in a
/// power cut (the live status in /run, the console line, a phase that is simply redone).
pub fn write_quick(path: &Path, data: &[u8], mode: u32) -> io::Result<()> {
    write_replace(path, data, mode, false)
}

fn write_replace(path: &Path, data: &[u8], mode: u32, durable: bool) -> io::Result<()> {
    let dir = path
        .parent()
        .ok_or_else(|| io::Error::other("no parent directory"))?;
    fs::create_dir_all(dir)?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    // A new file of a name no one else uses (O_EXCL), removed again if anything below fails.
    let mut tmp = tempfile::Builder::new()
        .prefix(&format!(".{name}."))
        .suffix(".tmp")
        .tempfile_in(dir)?;
    // Created 0600: give it the mode asked, whatever the umask.
    tmp.as_file()
        .set_permissions(std::os::unix::fs::PermissionsExt::from_mode(mode))?;
    tmp.write_all(data)?;
    if durable {
        tmp.as_file().sync_all()?;
    }
    tmp.persist(path).map_err(|e| e.error)?;
    if durable {
        File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// Overwrites `ranges` of `file` with `filler` in the file's own blocks (ext4 and FAT write a
/// rewritten range where it was) and waits for the disk: what a secret gets before its file is
/// replaced or removed, which alone would leave the bytes in freed blocks.
pub fn overwrite_in_place(
    file: &File,
    ranges: &[std::ops::Range<usize>],
    filler: u8,
) -> io::Result<()> {
    use std::os::unix::fs::FileExt;
    for r in ranges {
        file.write_all_at(&vec![filler; r.len()], r.start as u64)?;
    }
    file.sync_all()
}

/// Removes a file that holds a secret (a private key, a token): its bytes overwritten in place
/// first ([`overwrite_in_place`]), then unlinked, the directory synced. `Ok(false)` if there
/// was no such file.
pub fn shred(path: &Path) -> io::Result<bool> {
    let file = match fs::OpenOptions::new().write(true).open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    };
    let len = file.metadata()?.len() as usize;
    overwrite_in_place(&file, std::slice::from_ref(&(0..len)), 0)?;
    drop(file);
    remove(path)
}

/// Removes a file and syncs its directory; `Ok(false)` if there was none.
pub fn remove(path: &Path) -> io::Result<bool> {
    match fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    }
    if let Some(dir) = path.parent() {
        File::open(dir)?.sync_all()?;
    }
    Ok(true)
}

/// Reads a file that may not exist.
pub fn read_optional(path: &Path) -> io::Result<Option<Vec<u8>>> {
    match fs::read(path) {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn replaces_content_with_the_mode_asked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/state.json");
        write_atomic(&path, b"one", 0o600).unwrap();
        write_atomic(&path, b"two", 0o640).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"two");
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o640
        );
        let names: Vec<_> = fs::read_dir(dir.path().join("sub"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 1, "no temporary file is left: {names:?}");
    }

    #[test]
    fn a_shredded_file_is_overwritten_then_gone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key.pem");
        write_atomic(&path, b"secret bytes", 0o600).unwrap();
        // A second name for the same inode shows what the blocks held after the overwrite.
        let witness = dir.path().join("witness");
        fs::hard_link(&path, &witness).unwrap();
        assert!(shred(&path).unwrap());
        assert!(!path.exists());
        assert_eq!(fs::read(&witness).unwrap(), vec![0u8; 12]);
        assert!(!shred(&path).unwrap(), "nothing to shred twice");
    }
}
