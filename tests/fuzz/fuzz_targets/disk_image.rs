//! A disk image or stick: the GPT that `seed embed|show|clear` read to find the GWSEED
//! partition (`disk::find_gwseed`), then the FAT filesystem on it and `seed.toml` in that,
//! read as the agent reads a GWSEED stick at boot (`gwseed::read_from`), then the seed.
//!
//! The first byte holds flags, the image follows. Flag 1: sign the GPT's headers and tables
//! with their right CRC32s before reading, as anyone who crafts an image can, so the fuzzer
//! gets past the CRC checks to the numbers behind them. Reading never writes to the image.
#![no_main]

use gateway_firstboot::disk;
use gateway_firstboot::settings::{GWSEED_FILE, Source, gwseed, seed};
use libfuzzer_sys::fuzz_target;
use std::io::Cursor;

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

/// Writes the right CRC32s into the GPT header at `at` (and its table, if in the image).
fn sign_header(image: &mut [u8], at: u64, sector: u64) {
    let Some(at) = usize::try_from(at)
        .ok()
        .filter(|&at| at + 92 <= image.len())
    else {
        return;
    };
    let header = &image[at..at + 92];
    let table_len = u64::from(u32_at(header, 80)) * u64::from(u32_at(header, 84));
    let table = u64_at(header, 72)
        .checked_mul(sector)
        .filter(|start| start.saturating_add(table_len) <= image.len() as u64);
    if let Some(start) = table {
        let crc = crc32fast::hash(&image[start as usize..(start + table_len) as usize]);
        image[at + 88..at + 92].copy_from_slice(&crc.to_le_bytes());
    }
    image[at + 16..at + 20].fill(0);
    let crc = crc32fast::hash(&image[at..at + 92]);
    image[at + 16..at + 20].copy_from_slice(&crc.to_le_bytes());
}

fn sign(image: &mut [u8]) {
    for sector in [512u64, 4096] {
        let at = sector as usize;
        if image.len() >= at + 92 && &image[at..at + 8] == b"EFI PART" {
            let backup = u64_at(image, at + 32);
            sign_header(image, sector, sector);
            if let Some(backup_at) = backup.checked_mul(sector) {
                sign_header(image, backup_at, sector);
            }
            return;
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, image)) = data.split_first() else {
        return;
    };
    let mut image = image.to_vec();
    if flags & 1 != 0 {
        sign(&mut image);
    }
    let original = image.clone();
    let mut disk = Cursor::new(image);
    if let Ok(range) = disk::find_gwseed(&mut disk) {
        assert!(range.start <= range.end && range.end <= original.len() as u64);
        let slice = disk::Slice::new(&mut disk, range.start, range.end - range.start);
        if let Ok(Some(bytes)) = gwseed::read_from(slice, GWSEED_FILE, seed::MAX_SEED_BYTES) {
            assert!(bytes.len() <= seed::MAX_SEED_BYTES);
            if let Ok(text) = std::str::from_utf8(&bytes) {
                let shown = format!(
                    "{}:{GWSEED_FILE}",
                    gateway_firstboot::settings::GWSEED_DEVICE
                );
                let _ = seed::parse(text, Source::Seed(shown));
            }
        }
    }
    assert!(disk.get_ref() == &original, "reading the image wrote to it");
});
