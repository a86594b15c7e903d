//! The one builder of FAT filesystems for the tests: the agent's unit tests, the integration
//! tests and the property tests all make their GWSEED sticks here.

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;

/// The volume label of a seed stick, space-padded to 11 bytes as FAT keeps it.
pub const GWSEED: [u8; 11] = *b"GWSEED     ";

/// What to put in a FAT filesystem.
pub struct Fat<'a> {
    pub label: [u8; 11],
    /// fatfs's default when not given.
    pub volume_id: Option<u32>,
    /// Files of the root directory: name, content.
    pub files: &'a [(&'a str, &'a [u8])],
}

impl<'a> Fat<'a> {
    /// A stick labelled GWSEED holding `files`.
    pub fn gwseed(files: &'a [(&'a str, &'a [u8])]) -> Self {
        Fat {
            label: GWSEED,
            volume_id: None,
            files,
        }
    }

    pub fn volume_id(self, id: u32) -> Self {
        Fat {
            volume_id: Some(id),
            ..self
        }
    }

    pub fn label(self, label: [u8; 11]) -> Self {
        Fat { label, ..self }
    }

    /// Formats the whole of `disk` (as long as it is now) and writes the files.
    pub fn write_into<T: Read + Write + Seek>(&self, disk: &mut T) {
        let mut options = fatfs::FormatVolumeOptions::new().volume_label(self.label);
        if let Some(id) = self.volume_id {
            options = options.volume_id(id);
        }
        fatfs::format_volume(&mut *disk, options).unwrap();
        if self.files.is_empty() {
            return;
        }
        disk.seek(SeekFrom::Start(0)).unwrap();
        let fs = fatfs::FileSystem::new(disk, fatfs::FsOptions::new()).unwrap();
        for (name, content) in self.files {
            fs.root_dir()
                .create_file(name)
                .unwrap()
                .write_all(content)
                .unwrap();
        }
        fs.unmount().unwrap();
    }

    /// A file of `len` bytes at `path` (created or truncated) holding the filesystem.
    pub fn write_file(&self, path: &Path, len: u64) {
        let mut f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)
            .unwrap();
        f.set_len(len).unwrap();
        self.write_into(&mut f);
    }

    /// The filesystem as `len` bytes in memory.
    pub fn bytes(&self, len: usize) -> Vec<u8> {
        let mut disk = std::io::Cursor::new(vec![0u8; len]);
        self.write_into(&mut disk);
        disk.into_inner()
    }
}
