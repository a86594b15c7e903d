//! Disk images for the factory line: find the `GWSEED` partition in a GPT disk image (or take
//! a bare FAT image), and give fatfs a window onto it. No loop devices, no mounts.
//!
//! The partition table comes from the image, that is from whoever made or last touched it, so
//! it is checked before anything is written: both GPT headers and both partition tables must
//! carry their CRC32s (checked by the `gptman` crate's own header and CRC code), and every
//! number in them is bounded before it is used.

use gptman::{GPTHeader, GPTPartitionEntry};
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::ops::Range;
use std::path::Path;

/// A byte range of a file (or any seekable stream), read and written as if it were the whole
/// file.
pub struct Slice<F = File> {
    file: F,
    start: u64,
    len: u64,
    pos: u64,
}

impl<F> Slice<F> {
    pub fn new(file: F, start: u64, len: u64) -> Slice<F> {
        Slice {
            file,
            start,
            len,
            pos: 0,
        }
    }
}

impl<F: Read + Seek> Read for Slice<F> {
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

impl<F: Write + Seek> Write for Slice<F> {
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

impl<F> Seek for Slice<F> {
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

/// Size of a GPT partition entry; the only one in use (and the only one gptman reads).
const ENTRY_SIZE: u32 = 128;

/// Most partition entries read from a table (2 MiB of table); real tables have 128.
const MAX_ENTRIES: u32 = 16 * 1024;

fn damaged(what: impl std::fmt::Display) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!(
            "damaged GPT: {what}; nothing was written: write the image again from the build, or repair its partition table with gdisk"
        ),
    )
}

/// Whether `disk` has the GPT signature at `offset`.
fn signature_at<D: Read + Seek>(disk: &mut D, offset: u64) -> io::Result<bool> {
    let mut signature = [0u8; 8];
    disk.seek(SeekFrom::Start(offset))?;
    match disk.read_exact(&mut signature) {
        Ok(()) => Ok(&signature == b"EFI PART"),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(false),
        Err(e) => Err(e),
    }
}

/// The GPT header at `offset`, its own CRC32 checked.
fn read_header<D: Read + Seek>(disk: &mut D, offset: u64, which: &str) -> io::Result<GPTHeader> {
    disk.seek(SeekFrom::Start(offset))?;
    GPTHeader::read_from(disk).map_err(|e| match e {
        gptman::Error::InvalidChecksum(stored, computed) => damaged(format_args!(
            "the {which} header's CRC32 is {stored:#010x}, its bytes give {computed:#010x}"
        )),
        gptman::Error::InvalidSignature => damaged(format_args!("the {which} header is missing")),
        gptman::Error::InvalidRevision => {
            damaged(format_args!("the {which} header has an unknown revision"))
        }
        gptman::Error::InvalidHeaderSize => {
            damaged(format_args!("the {which} header has an odd size"))
        }
        gptman::Error::Io(e) => e,
        _ => damaged(format_args!("the {which} header is cut short")),
    })
}

/// The partition table a header points to, its CRC32 checked against the header's.
fn read_table<D: Read + Seek>(
    disk: &mut D,
    header: &GPTHeader,
    sector: u64,
    size: u64,
    which: &str,
) -> io::Result<Vec<GPTPartitionEntry>> {
    if header.size_of_partition_entry != ENTRY_SIZE {
        return Err(damaged(format_args!(
            "the {which} header gives partition entries of {} bytes ({ENTRY_SIZE} expected)",
            header.size_of_partition_entry
        )));
    }
    let count = header.number_of_partition_entries;
    if count > MAX_ENTRIES {
        return Err(damaged(format_args!(
            "the {which} header lists {count} partition entries (at most {MAX_ENTRIES} expected)"
        )));
    }
    let bytes = u64::from(count) * u64::from(ENTRY_SIZE);
    let start = header
        .partition_entry_lba
        .checked_mul(sector)
        .filter(|start| start.checked_add(bytes).is_some_and(|end| end <= size))
        .ok_or_else(|| {
            damaged(format_args!(
                "the {which} partition table lies past the end of the image"
            ))
        })?;
    let mut table = vec![0u8; bytes as usize];
    disk.seek(SeekFrom::Start(start))?;
    disk.read_exact(&mut table)?;
    let entries = table
        .chunks(ENTRY_SIZE as usize)
        .map(|mut raw| GPTPartitionEntry::read_from(&mut raw))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| damaged(format_args!("the {which} partition table: {e}")))?;
    let computed = header.generate_partition_entry_array_crc32(&entries);
    if computed != header.partition_entry_array_crc32 {
        return Err(damaged(format_args!(
            "the {which} partition table's CRC32 is {:#010x}, its bytes give {computed:#010x}",
            header.partition_entry_array_crc32
        )));
    }
    Ok(entries)
}

/// The used entries of a checked table as byte ranges inside the image.
fn partitions(entries: &[GPTPartitionEntry], sector: u64, size: u64) -> io::Result<Vec<Partition>> {
    let mut parts = Vec::new();
    for (i, entry) in entries.iter().enumerate().filter(|(_, e)| e.is_used()) {
        let name = entry.partition_name.as_str().to_string();
        let start = entry.starting_lba.checked_mul(sector);
        let end = entry
            .ending_lba
            .checked_add(1)
            .and_then(|end| end.checked_mul(sector));
        match (start, end) {
            (Some(start), Some(end)) if start < end && end <= size => parts.push(Partition {
                name,
                start,
                len: end - start,
            }),
            _ => {
                return Err(damaged(format_args!(
                    "partition {} ({}) does not lie inside the image",
                    i + 1,
                    name.escape_debug()
                )));
            }
        }
    }
    Ok(parts)
}

/// The partitions of a GPT disk image, or `None` if it has no GPT. Both headers and both
/// tables must be intact (CRC32s, bounds); a damaged GPT is an error, never a guess.
pub fn gpt_partitions<D: Read + Seek>(disk: &mut D) -> io::Result<Option<Vec<Partition>>> {
    let size = disk.seek(SeekFrom::End(0))?;
    for sector in [512u64, 4096] {
        if size < sector * 2 || !signature_at(disk, sector)? {
            continue;
        }
        let primary = read_header(disk, sector, "primary")?;
        let entries = read_table(disk, &primary, sector, size, "primary")?;
        let backup_at = primary
            .backup_lba
            .checked_mul(sector)
            .filter(|at| at.checked_add(sector).is_some_and(|end| end <= size))
            .ok_or_else(|| {
                damaged("the backup header lies past the end of the image (was it cut short?)")
            })?;
        let backup = read_header(disk, backup_at, "backup")?;
        read_table(disk, &backup, sector, size, "backup")?;
        return partitions(&entries, sector, size).map(Some);
    }
    // No primary header. If a backup header survives at the end, this is a GPT disk that lost
    // its start, not a bare FAT image.
    for sector in [512u64, 4096] {
        if size >= sector * 2 {
            disk.seek(SeekFrom::Start((size / sector - 1) * sector))?;
            if GPTHeader::read_from(disk).is_ok() {
                return Err(damaged(
                    "the primary header is missing, but a backup header is at the end of the image",
                ));
            }
        }
    }
    Ok(None)
}

fn fat_label<D: Read + Write + Seek>(disk: &mut D, part: &Partition) -> Option<String> {
    let slice = Slice::new(disk, part.start, part.len);
    let fs = fatfs::FileSystem::new(slice, fatfs::FsOptions::new()).ok()?;
    Some(fs.volume_label().trim().to_string())
}

/// Where the `GWSEED` FAT filesystem lies in a disk image: the GPT partition named (or whose
/// FAT label is) GWSEED, or the whole image if it is a bare FAT image.
pub fn find_gwseed<D: Read + Write + Seek>(disk: &mut D) -> io::Result<Range<u64>> {
    let mut magic = [0u8; 4];
    disk.seek(SeekFrom::Start(0))?;
    disk.read_exact(&mut magic)?;
    if &magic == b"QFI\xfb" {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "this is a qcow2 image; the factory image is the .raw one (qcow2 has no GWSEED partition)",
        ));
    }
    let size = disk.seek(SeekFrom::End(0))?;
    let Some(parts) = gpt_partitions(disk)? else {
        return Ok(0..size);
    };
    let by_name = parts
        .iter()
        .find(|p| p.name == crate::settings::GWSEED_LABEL);
    let hit = match by_name {
        Some(p) => Some(p),
        None => parts
            .iter()
            .find(|p| fat_label(disk, p).as_deref() == Some(crate::settings::GWSEED_LABEL)),
    };
    match hit {
        Some(p) => Ok(p.start..p.start + p.len),
        None => Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!(
                "the image has no GWSEED partition (partitions: {})",
                parts
                    .iter()
                    .map(|p| p.name.escape_debug().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )),
    }
}

/// Opens the `GWSEED` FAT filesystem in `image` (see [`find_gwseed`]).
pub fn open_gwseed(image: &Path, writable: bool) -> io::Result<Slice> {
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(writable)
        .open(image)?;
    let range = find_gwseed(&mut file)?;
    Ok(Slice::new(file, range.start, range.end - range.start))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::cli::{SeedArgs, SeedCommand};

    const SECTOR: u64 = 512;
    /// Where `gpt_image` puts the GWSEED partition.
    const GWSEED_SECTORS: Range<u64> = 4096..8192;

    fn entry(first: u64, last: u64, name: &str) -> GPTPartitionEntry {
        GPTPartitionEntry {
            partition_type_guid: [0xeb; 16],
            unique_partition_guid: [(first >> 8) as u8; 16],
            starting_lba: first,
            ending_lba: last,
            attribute_bits: 0,
            partition_name: name.into(),
        }
    }

    /// A 5 MiB GPT disk image as the factory image is laid out: an ESP and a GWSEED
    /// partition holding an empty FAT filesystem labelled GWSEED.
    pub fn gpt_image(path: &Path) {
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)
            .unwrap();
        file.set_len(5 * 1024 * 1024).unwrap();
        let mut gpt = gptman::GPT::new_from(&mut file, SECTOR, [7; 16]).unwrap();
        gpt[1] = entry(2048, 4095, "ESP");
        gpt[2] = entry(GWSEED_SECTORS.start, GWSEED_SECTORS.end - 1, "GWSEED");
        gpt.write_into(&mut file).unwrap();
        gptman::GPT::write_protective_mbr_into(&mut file, SECTOR).unwrap();
        let len = (GWSEED_SECTORS.end - GWSEED_SECTORS.start) * SECTOR;
        let mut fat = Slice::new(&mut file, GWSEED_SECTORS.start * SECTOR, len);
        gateway_test_support::fat::Fat::gwseed(&[]).write_into(&mut fat);
    }

    fn flip(path: &Path, offset: u64) {
        let mut bytes = std::fs::read(path).unwrap();
        bytes[offset as usize] ^= 0x01;
        std::fs::write(path, bytes).unwrap();
    }

    /// Sets a field of the primary header and signs the header again, as a tool that wrote
    /// nonsense (or an attacker) would: the CRC32 is right, the numbers are not.
    fn forge_primary(path: &Path, change: impl FnOnce(&mut GPTHeader)) {
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .unwrap();
        file.seek(SeekFrom::Start(SECTOR)).unwrap();
        let mut header = GPTHeader::read_from(&mut file).unwrap();
        change(&mut header);
        header.update_crc32_checksum();
        let mut raw = [0u8; 92];
        file.seek(SeekFrom::Start(SECTOR)).unwrap();
        file.read_exact(&mut raw).unwrap();
        raw[16..20].copy_from_slice(&header.crc32_checksum.to_le_bytes());
        raw[32..40].copy_from_slice(&header.backup_lba.to_le_bytes());
        raw[72..80].copy_from_slice(&header.partition_entry_lba.to_le_bytes());
        raw[80..84].copy_from_slice(&header.number_of_partition_entries.to_le_bytes());
        raw[84..88].copy_from_slice(&header.size_of_partition_entry.to_le_bytes());
        file.seek(SeekFrom::Start(SECTOR)).unwrap();
        file.write_all(&raw).unwrap();
    }

    fn embed(image: &Path, seed: &Path) -> u8 {
        crate::commands::seed::run(&SeedArgs {
            command: SeedCommand::Embed {
                image: image.to_path_buf(),
                seed: seed.to_path_buf(),
            },
        })
        .unwrap()
    }

    fn clear(image: &Path) -> u8 {
        crate::commands::seed::run(&SeedArgs {
            command: SeedCommand::Clear {
                image: image.to_path_buf(),
            },
        })
        .unwrap()
    }

    #[test]
    fn finds_gwseed_in_an_intact_gpt() {
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("disk.raw");
        gpt_image(&image);
        let mut file = File::open(&image).unwrap();
        let parts = gpt_partitions(&mut file).unwrap().unwrap();
        let names: Vec<_> = parts.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["ESP", "GWSEED"]);
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&image)
            .unwrap();
        assert_eq!(
            find_gwseed(&mut file).unwrap(),
            GWSEED_SECTORS.start * SECTOR..GWSEED_SECTORS.end * SECTOR
        );

        let seed = dir.path().join("seed.toml");
        std::fs::write(
            &seed,
            "primary = \"p.example\"\naccount = \"acme.example\"\n",
        )
        .unwrap();
        let before = std::fs::read(&image).unwrap();
        assert_eq!(embed(&image, &seed), crate::exit::OK);
        assert_ne!(
            std::fs::read(&image).unwrap(),
            before,
            "the seed was written"
        );
        let slice = open_gwseed(&image, false).unwrap();
        let got = crate::settings::gwseed::read_from(slice, "seed.toml", 1024).unwrap();
        assert_eq!(
            got.as_deref(),
            Some(std::fs::read(&seed).unwrap().as_slice())
        );
    }

    #[test]
    fn a_gpt_with_a_bad_crc_is_refused_and_left_as_it_was() {
        let end = 5 * 1024 * 1024 / SECTOR;
        let cases = [
            // The header's own CRC32 field.
            (SECTOR + 16, "the primary header's CRC32 is"),
            // The ESP's name in the primary table (LBA 2).
            (2 * SECTOR + 56, "the primary partition table's CRC32 is"),
            // The backup header (last LBA) and the backup table (the 32 LBAs before it).
            ((end - 1) * SECTOR + 16, "the backup header's CRC32 is"),
            (
                (end - 33) * SECTOR + 60,
                "the backup partition table's CRC32 is",
            ),
        ];
        for (offset, want) in cases {
            let dir = tempfile::tempdir().unwrap();
            let image = dir.path().join("disk.raw");
            gpt_image(&image);
            flip(&image, offset);
            let before = std::fs::read(&image).unwrap();

            let err = open_gwseed(&image, true).err().unwrap().to_string();
            assert!(err.starts_with("damaged GPT: "), "{err}");
            assert!(err.contains(want), "{want:?} not in {err:?}");
            assert!(
                err.ends_with("nothing was written: write the image again from the build, or repair its partition table with gdisk"),
                "{err}"
            );

            let seed = dir.path().join("seed.toml");
            std::fs::write(
                &seed,
                "primary = \"p.example\"\naccount = \"acme.example\"\n",
            )
            .unwrap();
            assert_eq!(embed(&image, &seed), crate::exit::IOERR, "{want}");
            assert_eq!(clear(&image), crate::exit::IOERR, "{want}");
            assert!(
                std::fs::read(&image).unwrap() == before,
                "{want}: the image was changed"
            );
        }
    }

    #[test]
    fn a_gpt_without_its_primary_header_is_not_taken_for_a_fat_image() {
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("disk.raw");
        gpt_image(&image);
        flip(&image, SECTOR);
        let err = open_gwseed(&image, true).err().unwrap().to_string();
        assert!(
            err.contains("the primary header is missing, but a backup header is at the end"),
            "{err}"
        );
    }

    /// A change to a header field, and what the error must say about it.
    type Forgery = (fn(&mut GPTHeader), &'static str);

    #[test]
    fn numbers_in_a_signed_header_are_bounded() {
        let cases: [Forgery; 5] = [
            (
                |h| h.size_of_partition_entry = 256,
                "partition entries of 256 bytes (128 expected)",
            ),
            (
                |h| h.number_of_partition_entries = u32::MAX,
                "lists 4294967295 partition entries",
            ),
            (
                |h| h.partition_entry_lba = u64::MAX / 4,
                "the primary partition table lies past the end of the image",
            ),
            (
                |h| h.backup_lba = u64::MAX,
                "the backup header lies past the end of the image",
            ),
            (|h| h.backup_lba = 1 << 20, "the backup header lies past"),
        ];
        for (change, want) in cases {
            let dir = tempfile::tempdir().unwrap();
            let image = dir.path().join("disk.raw");
            gpt_image(&image);
            forge_primary(&image, change);
            let err = open_gwseed(&image, false).err().unwrap().to_string();
            assert!(err.contains(want), "{want:?} not in {err:?}");
        }
    }

    #[test]
    fn a_bare_fat_image_is_taken_whole() {
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("gwseed.img");
        crate::settings::gwseed::tests::fat_image(&image, &[("seed.toml", b"x = 1\n")]);
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&image)
            .unwrap();
        assert_eq!(find_gwseed(&mut file).unwrap(), 0..2 * 1024 * 1024);
    }

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
