//! The `GWSEED` stick or partition: a FAT filesystem labelled `GWSEED` with `seed.toml` at its
//! top. It is read straight from the block device with a FAT library, so the agent needs no
//! mount (and no mount privilege), and the same code can write seeds into disk images.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::ops::Range;
use std::path::Path;

/// A device opened read-only; fatfs wants `Write` as well, which here always fails.
struct ReadOnly<D>(D);

impl<D: Read> Read for ReadOnly<D> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.read(buf)
    }
}

impl<D: Seek> Seek for ReadOnly<D> {
    fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
        self.0.seek(pos)
    }
}

impl<D> Write for ReadOnly<D> {
    fn write(&mut self, _: &[u8]) -> io::Result<usize> {
        Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            "opened read-only",
        ))
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Reads `name` from the FAT filesystem on `device`. `Ok(None)` when the filesystem has no such
/// file (an empty `GWSEED` partition, as a factory image has before a seed is embedded).
pub fn read_file(device: &Path, name: &str, limit: usize) -> io::Result<Option<Vec<u8>>> {
    read_from(File::open(device)?, name, limit)
}

/// [`read_file`] on an open device, an image or bytes in memory; never writes to it.
pub fn read_from<D: Read + Seek>(
    device: D,
    name: &str,
    limit: usize,
) -> io::Result<Option<Vec<u8>>> {
    let fs = fatfs::FileSystem::new(ReadOnly(device), fatfs::FsOptions::new())
        .map_err(|e| io::Error::new(e.kind(), format!("not a FAT filesystem: {e}")))?;
    let mut seed = match fs.root_dir().open_file(name) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut bytes = Vec::new();
    (&mut seed).take(limit as u64 + 1).read_to_end(&mut bytes)?;
    if bytes.len() > limit {
        return Err(io::Error::other(format!(
            "{name} is larger than {limit} bytes"
        )));
    }
    Ok(Some(bytes))
}

/// Replaces `name` on the FAT filesystem on `device` with `content` (the file must exist), and
/// flushes the device. Used to scrub the API key from a `GWSEED` seed once registered (after
/// [`overwrite_in_place`]), and by the seed tools.
pub fn replace_file(device: &Path, name: &str, content: &[u8]) -> io::Result<()> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(device)?;
    let fs = fatfs::FileSystem::new(&file, fatfs::FsOptions::new())
        .map_err(|e| io::Error::new(e.kind(), format!("not a FAT filesystem: {e}")))?;
    {
        // Overwrite in place, zeroing what the old content held beyond the new, so that no
        // byte of it (an API key) stays behind in a freed cluster.
        let mut f = fs.root_dir().open_file(name)?;
        let old_len = f.seek(SeekFrom::End(0))?;
        f.seek(SeekFrom::Start(0))?;
        f.write_all(content)?;
        let rest = old_len.saturating_sub(content.len() as u64);
        f.write_all(&vec![0u8; rest as usize])?;
        f.flush()?;
        f.seek(SeekFrom::Start(content.len() as u64))?;
        f.truncate()?;
        f.flush()?;
    }
    fs.unmount()?;
    file.sync_all()
}

/// Overwrites the byte `ranges` of `name` with `filler` inside the clusters the file already
/// has (same offsets, same length: no cluster is allocated or freed, the size stays), then
/// flushes the filesystem and the device, so that the old bytes are gone from the medium
/// before anything rewrites or truncates the file. A range past the file's end is an error,
/// and then nothing is written.
pub fn overwrite_in_place(
    device: &Path,
    name: &str,
    ranges: &[Range<u64>],
    filler: u8,
) -> io::Result<()> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(device)?;
    let fs = fatfs::FileSystem::new(&file, fatfs::FsOptions::new())
        .map_err(|e| io::Error::new(e.kind(), format!("not a FAT filesystem: {e}")))?;
    {
        let mut f = fs.root_dir().open_file(name)?;
        let len = f.seek(SeekFrom::End(0))?;
        if ranges.iter().any(|r| r.end > len || r.start > r.end) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{name} changed: a range to overwrite is past its end ({len} bytes)"),
            ));
        }
        for r in ranges {
            f.seek(SeekFrom::Start(r.start))?;
            f.write_all(&vec![filler; (r.end - r.start) as usize])?;
        }
        f.flush()?;
    }
    fs.unmount()?;
    file.sync_all()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Makes a small FAT image labelled GWSEED holding `files`.
    pub fn fat_image(path: &Path, files: &[(&str, &[u8])]) {
        let mut f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)
            .unwrap();
        f.set_len(2 * 1024 * 1024).unwrap();
        fatfs::format_volume(
            &mut f,
            fatfs::FormatVolumeOptions::new().volume_label(*b"GWSEED     "),
        )
        .unwrap();
        f.seek(SeekFrom::Start(0)).unwrap();
        let fs = fatfs::FileSystem::new(f, fatfs::FsOptions::new()).unwrap();
        for (name, content) in files {
            fs.root_dir()
                .create_file(name)
                .unwrap()
                .write_all(content)
                .unwrap();
        }
        fs.unmount().unwrap();
    }

    #[test]
    fn reads_a_seed_without_mounting() {
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("gwseed.img");
        fat_image(&image, &[("SEED.TOML", b"account = \"a.example\"\n")]);
        let before = std::fs::read(&image).unwrap();
        let got = read_file(&image, "seed.toml", 1024).unwrap().unwrap();
        assert_eq!(got, b"account = \"a.example\"\n");
        assert_eq!(
            std::fs::read(&image).unwrap(),
            before,
            "reading must not write"
        );
        assert_eq!(read_file(&image, "other.toml", 1024).unwrap(), None);
        assert!(read_file(&image, "seed.toml", 4).is_err());
    }

    #[test]
    fn replaces_a_file_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("gwseed.img");
        fat_image(
            &image,
            &[("seed.toml", b"account = \"a.example\"\napi-key = \"k\"\n")],
        );
        replace_file(&image, "seed.toml", b"account = \"a.example\"\n").unwrap();
        assert_eq!(
            read_file(&image, "seed.toml", 1024).unwrap().unwrap(),
            b"account = \"a.example\"\n"
        );
    }

    #[test]
    fn overwrites_bytes_in_the_clusters_the_file_has() {
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("gwseed.img");
        let seed = b"account = \"a.example\"\napi-key = \"gwk_scrub_in_place_0123\"\n";
        fat_image(&image, &[("seed.toml", seed)]);
        let key = b"gwk_scrub_in_place_0123";
        let at = seed.windows(key.len()).position(|w| w == key).unwrap() as u64;
        let before = std::fs::read(&image).unwrap();
        assert!(before.windows(key.len()).any(|w| w == key));
        let end = at + key.len() as u64;
        overwrite_in_place(&image, "seed.toml", &[at..at + 5, at + 5..end], b'x').unwrap();
        let raw = std::fs::read(&image).unwrap();
        assert!(
            !raw.windows(key.len()).any(|w| w == key),
            "no byte string of the key anywhere in the image"
        );
        assert_eq!(
            read_file(&image, "seed.toml", 1024).unwrap().unwrap(),
            b"account = \"a.example\"\napi-key = \"xxxxxxxxxxxxxxxxxxxxxxx\"\n"
        );
        let changed = before.iter().zip(&raw).filter(|(a, b)| a != b).count();
        assert!(
            changed <= key.len() + 64,
            "only the key's bytes (and the dirty flag, a time stamp) change: {changed}"
        );
        let past = overwrite_in_place(&image, "seed.toml", &[0..1, 4000..4096], b'x');
        let past = past.unwrap_err();
        assert!(past.to_string().contains("past its end"), "{past}");
        assert_eq!(
            std::fs::read(&image).unwrap(),
            raw,
            "then nothing is written"
        );
        assert!(overwrite_in_place(&image, "other.toml", &[0..1, 1..2], b'x').is_err());
    }

    #[test]
    fn a_non_fat_device_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("zero.img");
        std::fs::write(&image, vec![0u8; 64 * 1024]).unwrap();
        let err = read_file(&image, "seed.toml", 1024).unwrap_err();
        assert!(err.to_string().contains("not a FAT filesystem"), "{err}");
    }
}
