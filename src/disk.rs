//! Disk images for the factory line: find the `GWSEED` partition in a GPT disk image (or take
//! a bare FAT image), and give fatfs a window onto it. No loop devices, no mounts.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::Path;

/// A byte range of a file, read and written as if it were the whole file.
pub struct Slice {
    file: File,
    start: u64,
    len: u64,
    pos: u64,
}

impl Slice {
    pub fn new(file: File, start: u64, len: u64) -> Slice {
        Slice {
            file,
            start,
            len,
            pos: 0,
        }
    }
}

impl Read for Slice {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.len.saturating_sub(self.pos);
        let n = (buf.len() as u64).min(left) as usize;
        if n == 0 {
            return Ok(0);
        }
        self.file.seek(SeekFrom::Start(self.start + self.pos))?;
        let got = self.file.read(&mut buf[..n])?;
        self.pos += got as u64;
        Ok(got)
    }
}

impl Write for Slice {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let left = self.len.saturating_sub(self.pos);
        let n = (buf.len() as u64).min(left) as usize;
        if n == 0 && !buf.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                "past the end of the partition",
            ));
        }
        self.file.seek(SeekFrom::Start(self.start + self.pos))?;
        let put = self.file.write(&buf[..n])?;
        self.pos += put as u64;
        Ok(put)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

impl Seek for Slice {
    fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
        let target = match pos {
            SeekFrom::Start(p) => p as i128,
            SeekFrom::End(d) => self.len as i128 + d as i128,
            SeekFrom::Current(d) => self.pos as i128 + d as i128,
        };
        if target < 0 || target > self.len as i128 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "seek outside the partition",
            ));
        }
        self.pos = target as u64;
        Ok(self.pos)
    }
}

/// A GPT partition: name and byte range.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partition {
    pub name: String,
    pub start: u64,
    pub len: u64,
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap_or_default())
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap_or_default())
}

/// The partitions of a GPT disk image, or `None` if it has no GPT.
pub fn gpt_partitions(file: &mut File) -> io::Result<Option<Vec<Partition>>> {
    let size = file.seek(SeekFrom::End(0))?;
    for sector in [512u64, 4096] {
        let mut header = [0u8; 92];
        if size < sector * 2 {
            continue;
        }
        file.seek(SeekFrom::Start(sector))?;
        file.read_exact(&mut header)?;
        if &header[..8] != b"EFI PART" {
            continue;
        }
        let entries_lba = u64_at(&header, 72);
        let count = u32_at(&header, 80).min(1024) as u64;
        let entry_size = u32_at(&header, 84) as u64;
        if !(128..=4096).contains(&entry_size) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "damaged GPT: odd partition entry size",
            ));
        }
        let mut table = vec![0u8; (count * entry_size) as usize];
        file.seek(SeekFrom::Start(entries_lba.saturating_mul(sector)))?;
        file.read_exact(&mut table)?;
        let mut parts = Vec::new();
        for entry in table.chunks(entry_size as usize) {
            if entry[..16].iter().all(|&b| b == 0) {
                continue;
            }
            let (first, last) = (u64_at(entry, 32), u64_at(entry, 40));
            let utf16: Vec<u16> = entry[56..128]
                .chunks(2)
                .map(|c| u16::from_le_bytes([c[0], c[1]]))
                .take_while(|&c| c != 0)
                .collect();
            let start = first.saturating_mul(sector);
            let len = (last.saturating_sub(first) + 1).saturating_mul(sector);
            if start.saturating_add(len) > size {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "damaged GPT: a partition ends past the disk",
                ));
            }
            parts.push(Partition {
                name: String::from_utf16_lossy(&utf16),
                start,
                len,
            });
        }
        return Ok(Some(parts));
    }
    Ok(None)
}

fn fat_label(file: &File, part: &Partition) -> Option<String> {
    let slice = Slice::new(file.try_clone().ok()?, part.start, part.len);
    let fs = fatfs::FileSystem::new(slice, fatfs::FsOptions::new()).ok()?;
    Some(fs.volume_label().trim().to_string())
}

/// Opens the `GWSEED` FAT filesystem in `image`: the GPT partition named (or whose FAT
/// label is) GWSEED, or the whole file if it is a bare FAT image.
pub fn open_gwseed(image: &Path, writable: bool) -> io::Result<Slice> {
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(writable)
        .open(image)?;
    let mut magic = [0u8; 4];
    file.read_exact(&mut magic)?;
    if &magic == b"QFI\xfb" {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "this is a qcow2 image; the factory image is the .raw one (qcow2 has no GWSEED partition)",
        ));
    }
    let size = file.seek(SeekFrom::End(0))?;
    match gpt_partitions(&mut file)? {
        Some(parts) => {
            let hit = parts
                .iter()
                .find(|p| p.name == crate::settings::GWSEED_LABEL)
                .or_else(|| {
                    parts.iter().find(|p| {
                        fat_label(&file, p).as_deref() == Some(crate::settings::GWSEED_LABEL)
                    })
                })
                .cloned();
            match hit {
                Some(p) => Ok(Slice::new(file, p.start, p.len)),
                None => Err(io::Error::new(
                    io::ErrorKind::NotFound,
                    format!(
                        "the image has no GWSEED partition (partitions: {})",
                        parts
                            .iter()
                            .map(|p| p.name.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                )),
            }
        }
        None => Ok(Slice::new(file, 0, size)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_slice_stays_in_its_range() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk");
        std::fs::write(&path, b"aaaaBBBBcccc").unwrap();
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        let mut s = Slice::new(file, 4, 4);
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).unwrap();
        assert_eq!(buf, b"BBBB");
        s.seek(SeekFrom::Start(2)).unwrap();
        assert!(s.write_all(b"xyz").is_err(), "cannot write past the end");
        assert!(s.seek(SeekFrom::Start(5)).is_err());
        s.seek(SeekFrom::Start(0)).unwrap();
        s.write_all(b"dddd").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"aaaaddddcccc");
    }
}
