//! The `GWSEED` stick or partition: a FAT filesystem labelled `GWSEED` with `seed.toml` at its
//! top. It is read straight from the block device with a FAT library, so the agent needs no
//! mount (and no mount privilege), and the same code can write seeds into disk images.
//!
//! There may be more than one: the factory image has its own (empty) `GWSEED` partition, and a
//! technician's stick adds another filesystem with the same label, while udev's
//! `/dev/disk/by-label/GWSEED` link points at only one of them. So every disk and partition is
//! looked at ([`find`]), and an order decides ([`decide`]): a `GWSEED` filesystem that is not
//! on the boot disk (a stick) holding `seed.toml` comes before the boot disk's own partition;
//! two sticks with different seeds are an error naming both.

use super::{GWSEED_DEVICE, GWSEED_FILE, GWSEED_LABEL, seed};
use crate::blockdev;
use crate::problem::{Code, Problem};
use crate::root::Root;
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::mpsc;
use std::time::{Duration, Instant};

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
    let Some(bytes) = read_capped(&open_fat(device)?, name, limit)? else {
        return Ok(None);
    };
    if bytes.len() > limit {
        return Err(io::Error::other(format!(
            "{name} is larger than {limit} bytes"
        )));
    }
    Ok(Some(bytes))
}

/// The FAT filesystem on `device`, opened so that it is never written.
fn open_fat<D: Read + Seek>(device: D) -> io::Result<fatfs::FileSystem<ReadOnly<D>>> {
    fatfs::FileSystem::new(ReadOnly(device), fatfs::FsOptions::new())
        .map_err(|e| io::Error::new(e.kind(), format!("not a FAT filesystem: {e}")))
}

/// `name` from the root directory, at most `limit` + 1 bytes (so that the caller can tell a
/// file over the limit); `Ok(None)` when there is no such file.
fn read_capped<D: Read + Write + Seek>(
    fs: &fatfs::FileSystem<D>,
    name: &str,
    limit: usize,
) -> io::Result<Option<Vec<u8>>> {
    let mut file = match fs.root_dir().open_file(name) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut bytes = Vec::new();
    (&mut file).take(limit as u64 + 1).read_to_end(&mut bytes)?;
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

/// The volume ID of the FAT filesystem on `device` (the serial number `mkfs` gives it).
pub fn volume_id(device: &Path) -> io::Result<u32> {
    let fs = fatfs::FileSystem::new(ReadOnly(File::open(device)?), fatfs::FsOptions::new())
        .map_err(|e| io::Error::new(e.kind(), format!("not a FAT filesystem: {e}")))?;
    Ok(fs.volume_id())
}

/// The `GWSEED` filesystem a seed was read from, recorded in the state so that the API key is
/// scrubbed there and nowhere else. The volume ID tells the filesystem apart from another that
/// took the same device name meanwhile (a stick swapped for another).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct UsedGwseed {
    /// The device, an appliance path: `/dev/sdb1`.
    pub device: String,
    pub volume_id: u32,
}

/// How long the look at all the disks may take: a drive that does not answer by then (a
/// failing stick, a card reader stuck in error handling) is skipped, so the boot never hangs
/// on it.
const DEADLINE: Duration = Duration::from_secs(5);

/// At most this many filesystems are read (an appliance has a handful).
const MAX_CANDIDATES: usize = 64;

/// Devices whose look has not ended yet (it passed the deadline): not opened again until it
/// does, so that a hung drive costs one thread, not one per look.
static BUSY: Mutex<BTreeSet<PathBuf>> = Mutex::new(BTreeSet::new());

/// How long the first look waits for USB sticks the kernel has found to get their block
/// devices (a stick plugged in at power-on, slow to set up): then they are looked at too.
const USB_SETTLE: Duration = Duration::from_secs(15);

/// Whether a look waited for USB sticks already: only the first does (later looks, while
/// waiting for a seed, see a late stick through the block device watch).
static USB_SETTLED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Waits (once per run, at most [`USB_SETTLE`]) until no USB mass-storage interface is
/// without its block device.
fn settle_usb_storage(root: &Root) {
    if USB_SETTLED.swap(true, std::sync::atomic::Ordering::SeqCst) {
        return;
    }
    let started = Instant::now();
    let mut pending = blockdev::usb_storage_pending(root);
    if pending.is_empty() {
        return;
    }
    log::info!(
        "waiting up to {}s for USB disk(s) {} to be set up",
        USB_SETTLE.as_secs(),
        pending.join(", ")
    );
    while !pending.is_empty() && started.elapsed() < USB_SETTLE {
        std::thread::sleep(Duration::from_millis(200));
        pending = blockdev::usb_storage_pending(root);
    }
    if pending.is_empty() {
        log::info!(
            "USB disks set up after {:.1}s",
            started.elapsed().as_secs_f64()
        );
    } else {
        log::warn!(
            "USB disk(s) {} still without a block device after {}s: not looked at",
            pending.join(", "),
            USB_SETTLE.as_secs()
        );
    }
}

/// What the last [`find`] logged, so that a wait for a seed (a look every few seconds) does not
/// repeat it.
static LAST_NOTES: Mutex<Vec<String>> = Mutex::new(Vec::new());

fn busy() -> std::sync::MutexGuard<'static, BTreeSet<PathBuf>> {
    BUSY.lock().unwrap_or_else(|e| e.into_inner())
}

/// A filesystem that may be a `GWSEED`: a partition, a disk without partitions, or what
/// udev's by-label link points to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Candidate {
    /// The device, an appliance path: `/dev/sdb1`.
    pub device: PathBuf,
    /// On a disk that holds `/`: the image's own partition, not a stick.
    pub on_boot_disk: bool,
    /// On a removable or USB disk: preferred among copies of one seed.
    pub removable: bool,
    /// udev calls it `GWSEED` (its by-label link or its database): failing to read it is an
    /// error, not just some other disk.
    pub udev_gwseed: bool,
}

/// What reading a candidate gave.
#[derive(Debug)]
pub(crate) enum Outcome {
    /// A FAT filesystem: its label, its volume ID, and `seed.toml` (read only when labelled
    /// GWSEED; at most one byte over the seed size limit).
    Fat {
        label: String,
        volume_id: u32,
        seed: io::Result<Option<Vec<u8>>>,
    },
    /// Not FAT, or not readable.
    Unreadable(io::Error),
    /// No medium in the drive.
    NoMedium,
    /// No answer before the deadline, or still busy from an earlier look.
    TooSlow,
}

/// A seed found on a `GWSEED` filesystem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Found {
    pub device: String,
    pub volume_id: u32,
    pub bytes: Vec<u8>,
}

impl Found {
    pub fn used(&self) -> UsedGwseed {
        UsedGwseed {
            device: self.device.clone(),
            volume_id: self.volume_id,
        }
    }
}

/// The seed the order picked, the problems found on the way, and what is worth a log line.
#[derive(Debug, Default)]
pub(crate) struct Decision {
    pub used: Option<Found>,
    pub problems: Vec<Problem>,
    pub notes: Vec<(log::Level, String)>,
}

/// Looks at every disk and partition (and udev's by-label link) for `GWSEED` filesystems and
/// decides which seed to use.
pub(crate) fn find(root: &Root) -> Decision {
    settle_usb_storage(root);
    let mut problems = Vec::new();
    let candidates = candidates(root, &mut problems);
    let mut decision = decide(probe(root, candidates, DEADLINE));
    problems.append(&mut decision.problems);
    decision.problems = problems;
    let texts: Vec<String> = decision.notes.iter().map(|(_, n)| n.clone()).collect();
    let mut last = LAST_NOTES.lock().unwrap_or_else(|e| e.into_inner());
    if *last != texts {
        for (level, note) in &decision.notes {
            log::log!(*level, "{note}");
        }
        *last = texts;
    }
    decision
}

/// The filesystems to read: partitions, disks without partitions (a stick formatted whole),
/// and the target of `/dev/disk/by-label/GWSEED` (which may be none of them in a test tree).
pub(crate) fn candidates(root: &Root, problems: &mut Vec<Problem>) -> Vec<Candidate> {
    let link = match root.resolve(Path::new(GWSEED_DEVICE)) {
        Ok(target) => Some(target),
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => {
            problems.push(Problem::error(
                Code::GwseedUnreadable,
                GWSEED_DEVICE,
                format!("resolving: {}", super::collect::io_reason(&e)),
            ));
            None
        }
    };
    let devices = blockdev::disks(root);
    let boot = blockdev::boot_disks(root);
    let mut out: Vec<Candidate> = Vec::new();
    for d in &devices {
        if !d.partition && devices.iter().any(|p| p.partition && p.disk == d.name) {
            continue; // the filesystems are on its partitions
        }
        if d.no_medium {
            log::debug!("{}: no medium", d.node.display());
            continue;
        }
        out.push(Candidate {
            device: d.node.clone(),
            on_boot_disk: boot.contains(&d.disk),
            removable: d.removable || d.usb,
            udev_gwseed: link.as_ref() == Some(&d.node)
                || udev_label(root, &d.dev).is_some_and(|l| is_gwseed(&l)),
        });
    }
    if let Some(target) = link
        && !devices.iter().any(|d| d.node == target)
    {
        out.push(Candidate {
            device: target,
            on_boot_disk: false,
            removable: false,
            udev_gwseed: true,
        });
    }
    if out.len() > MAX_CANDIDATES {
        log::warn!(
            "{} disks and partitions; looking for GWSEED on the first {MAX_CANDIDATES} only",
            out.len()
        );
        out.truncate(MAX_CANDIDATES);
    }
    out
}

/// The filesystem label udev's database has for the device `dev` (`major:minor`), if any.
fn udev_label(root: &Root, dev: &str) -> Option<String> {
    let text = std::fs::read_to_string(root.path(format!("/run/udev/data/b{dev}"))).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("E:ID_FS_LABEL="))
        .map(str::to_string)
}

fn is_gwseed(label: &str) -> bool {
    label.trim_end().eq_ignore_ascii_case(GWSEED_LABEL)
}

/// Reads every candidate, each on a thread of its own, all within `deadline`.
pub(crate) fn probe(
    root: &Root,
    candidates: Vec<Candidate>,
    deadline: Duration,
) -> Vec<(Candidate, Outcome)> {
    let (tx, rx) = mpsc::channel();
    let mut outcomes: Vec<Option<Outcome>> = candidates.iter().map(|_| None).collect();
    let mut pending = 0;
    for (i, candidate) in candidates.iter().enumerate() {
        let real = root.path(&candidate.device);
        if !busy().insert(real.clone()) {
            log::debug!(
                "{}: still busy from an earlier look",
                candidate.device.display()
            );
            outcomes[i] = Some(Outcome::TooSlow);
            continue;
        }
        let tx = tx.clone();
        let spawned = std::thread::Builder::new()
            .name("gwseed-probe".into())
            .spawn({
                let real = real.clone();
                move || {
                    let outcome = inspect(&real, seed::MAX_SEED_BYTES);
                    busy().remove(&real);
                    let _ = tx.send((i, outcome));
                }
            });
        match spawned {
            Ok(_) => pending += 1,
            Err(e) => {
                busy().remove(&real);
                outcomes[i] = Some(Outcome::Unreadable(e));
            }
        }
    }
    drop(tx);
    let until = Instant::now() + deadline;
    while pending > 0 {
        match rx.recv_timeout(until.saturating_duration_since(Instant::now())) {
            Ok((i, outcome)) => {
                outcomes[i] = Some(outcome);
                pending -= 1;
            }
            Err(_) => break,
        }
    }
    candidates
        .into_iter()
        .zip(outcomes)
        .map(|(c, o)| (c, o.unwrap_or(Outcome::TooSlow)))
        .collect()
}

/// Reads the label, the volume ID and, on a `GWSEED`, `seed.toml` (at most `limit` + 1 bytes)
/// of the FAT filesystem on `device`. Never writes.
fn inspect(device: &Path, limit: usize) -> Outcome {
    let file = match File::open(device) {
        Ok(f) => f,
        Err(e) if e.raw_os_error() == Some(nix::errno::Errno::ENOMEDIUM as i32) => {
            return Outcome::NoMedium;
        }
        Err(e) => return Outcome::Unreadable(e),
    };
    let fs = match open_fat(file) {
        Ok(fs) => fs,
        Err(e) => return Outcome::Unreadable(e),
    };
    // The label in the root directory is the one tools show and set (blkid, Windows); the boot
    // sector's copy may be stale.
    let label = match fs.read_volume_label_from_root_dir() {
        Ok(Some(label)) => label,
        _ => fs.volume_label(),
    };
    let seed = if is_gwseed(&label) {
        read_capped(&fs, GWSEED_FILE, limit)
    } else {
        Ok(None)
    };
    Outcome::Fat {
        label,
        volume_id: fs.volume_id(),
        seed,
    }
}

/// A `GWSEED` filesystem holding a seed, and where it is.
struct Seeded {
    found: Found,
    on_boot_disk: bool,
    removable: bool,
}

/// The order. Among the `GWSEED` filesystems holding `seed.toml`: those not on the boot disk
/// (sticks) before the boot disk's own partition; within the first group that has any, one
/// seed, or several byte for byte the same (then the first of removable or USB ones, by device
/// name, is used and the others are warned about: their key stays); different seeds there are
/// an error naming every device, and no seed is used. A `GWSEED` without `seed.toml` is
/// skipped; one that cannot be read is an error, as is a device udev calls `GWSEED` that is
/// not FAT.
pub(crate) fn decide(seen: Vec<(Candidate, Outcome)>) -> Decision {
    let mut decision = Decision::default();
    let seeded: Vec<Seeded> = seen
        .into_iter()
        .filter_map(|(candidate, outcome)| seeded(candidate, outcome, &mut decision))
        .collect();
    let (first, passed) = in_order(seeded);
    decision.used = choose(&first, &passed, &mut decision);
    decision
}

/// The seed a candidate holds, if it is a `GWSEED` with `seed.toml`; what else it tells is
/// recorded in `decision` (an unreadable `GWSEED` is a problem, a slow disk a note).
fn seeded(candidate: Candidate, outcome: Outcome, decision: &mut Decision) -> Option<Seeded> {
    let device = candidate.device.display().to_string();
    match outcome {
        Outcome::Fat {
            label,
            volume_id,
            seed,
        } if is_gwseed(&label) => match seed {
            Ok(Some(bytes)) => {
                return Some(Seeded {
                    found: Found {
                        device,
                        volume_id,
                        bytes,
                    },
                    on_boot_disk: candidate.on_boot_disk,
                    removable: candidate.removable,
                });
            }
            Ok(None) => decision.notes.push((
                log::Level::Info,
                format!("{device}: a GWSEED filesystem without {GWSEED_FILE}; skipped"),
            )),
            Err(e) => decision.problems.push(unreadable(&device, &e)),
        },
        Outcome::Unreadable(e) if candidate.udev_gwseed => {
            decision.problems.push(unreadable(&device, &e));
        }
        Outcome::TooSlow => decision.notes.push((
            log::Level::Warn,
            format!(
                "{device}: no answer within {}s; skipped in the search for GWSEED",
                DEADLINE.as_secs()
            ),
        )),
        Outcome::Fat { .. } | Outcome::Unreadable(_) | Outcome::NoMedium => {}
    }
    None
}

/// The group the seed is chosen from (the sticks, or else the boot disk's own partitions),
/// removable ones first, then by device name; and the boot disk's seeds the sticks pass over.
fn in_order(seeded: Vec<Seeded>) -> (Vec<Seeded>, Vec<Seeded>) {
    let (sticks, own): (Vec<Seeded>, Vec<Seeded>) =
        seeded.into_iter().partition(|s| !s.on_boot_disk);
    let (mut first, passed) = if sticks.is_empty() {
        (own, Vec::new())
    } else {
        (sticks, own)
    };
    first.sort_by(|a, b| (!a.removable, &a.found.device).cmp(&(!b.removable, &b.found.device)));
    (first, passed)
}

/// The first of `first` when all of them hold the same seed (the others are warned about);
/// none, with an error, when they differ.
fn choose(first: &[Seeded], passed: &[Seeded], decision: &mut Decision) -> Option<Found> {
    let chosen = first.first()?;
    if first.iter().any(|s| s.found.bytes != chosen.found.bytes) {
        let devices: Vec<&str> = first.iter().map(|s| s.found.device.as_str()).collect();
        decision.problems.push(ambiguous(&devices));
        return None;
    }
    let used = &chosen.found.device;
    for copy in &first[1..] {
        decision.problems.push(same_copy(&copy.found.device, used));
    }
    for other in passed {
        decision.notes.push((
            log::Level::Info,
            format!(
                "{}: the boot disk's own GWSEED seed is not used: {used}, not on the boot disk, \
                 comes first",
                other.found.device
            ),
        ));
    }
    decision.notes.push((
        log::Level::Info,
        format!("reading the seed from {used}:{GWSEED_FILE}"),
    ));
    Some(chosen.found.clone())
}

fn ambiguous(devices: &[&str]) -> Problem {
    Problem::error(
        Code::GwseedAmbiguous,
        GWSEED_LABEL,
        format!(
            "{} hold different {GWSEED_FILE} files: which one to use is not clear",
            listed(devices)
        ),
    )
    .fix("keep one: unplug the other GWSEED sticks, or give them the same seed.toml")
}

fn same_copy(device: &str, used: &str) -> Problem {
    Problem::warning(
        Code::GwseedCopy,
        device,
        format!(
            "holds the same {GWSEED_FILE} as {used}, which is the one used: the API key \
             is removed from {used} only"
        ),
    )
    .fix(format!(
        "unplug {device}, or remove the api-key line from its seed"
    ))
}

fn unreadable(device: &str, e: &io::Error) -> Problem {
    Problem::error(
        Code::GwseedUnreadable,
        device,
        format!("reading {GWSEED_FILE}: {}", super::collect::io_reason(e)),
    )
    .fix("write the seed with `gateway-firstboot seed embed`, or format the stick as FAT labelled GWSEED")
}

/// `a`, `a and b`, `a, b and c`.
fn listed(items: &[&str]) -> String {
    match items {
        [] => String::new(),
        [one] => one.to_string(),
        [rest @ .., last] => format!("{} and {last}", rest.join(", ")),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Makes a small FAT image labelled GWSEED holding `files`.
    pub fn fat_image(path: &Path, files: &[(&str, &[u8])]) {
        fat_image_id(path, 0x1234_5678, files);
    }

    /// [`fat_image`] with the volume ID `id`.
    pub fn fat_image_id(path: &Path, id: u32, files: &[(&str, &[u8])]) {
        fat_image_labelled(path, *b"GWSEED     ", id, files);
    }

    /// A small FAT image with the volume label `label` (11 bytes, space-padded).
    pub fn fat_image_labelled(path: &Path, label: [u8; 11], id: u32, files: &[(&str, &[u8])]) {
        gateway_test_support::fat::Fat::gwseed(files)
            .label(label)
            .volume_id(id)
            .write_file(path, 2 * 1024 * 1024);
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

    use crate::blockdev::tests::{Machine, USB, USB2, VIRTIO};

    const SEED: &[u8] = b"primary = \"p.example\"\naccount = \"a.example\"\n";
    const OTHER: &[u8] = b"primary = \"p.example\"\naccount = \"b.example\"\n";

    /// The factory image on a virtio disk, booted: vda1 an ESP (FAT, labelled ESP), vda2 the
    /// root, vda3 its own GWSEED partition holding `own` (nothing: empty), udev's by-label
    /// link on vda3.
    fn factory(own: Option<&[u8]>) -> (tempfile::TempDir, Root) {
        let dir = tempfile::tempdir().unwrap();
        let root = Root::new(dir.path());
        Machine::new(&root)
            .disk(VIRTIO, "vda", 254, false)
            .partition(VIRTIO, "vda", "vda1", 254)
            .partition(VIRTIO, "vda", "vda2", 254)
            .partition(VIRTIO, "vda", "vda3", 254)
            .root_on("vda2");
        std::fs::create_dir_all(root.path("/dev")).unwrap();
        fat_image_labelled(
            &root.path("/dev/vda1"),
            *b"ESP        ",
            1,
            &[("seed.toml", OTHER)],
        );
        std::fs::write(root.path("/dev/vda2"), vec![0u8; 64 * 1024]).unwrap();
        let files: Vec<(&str, &[u8])> = own.map(|s| ("seed.toml", s)).into_iter().collect();
        fat_image_id(&root.path("/dev/vda3"), 3, &files);
        link_label(&root, "vda3");
        (dir, root)
    }

    fn link_label(root: &Root, name: &str) {
        let link = root.path(GWSEED_DEVICE);
        std::fs::create_dir_all(link.parent().unwrap()).unwrap();
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(format!("../../{name}"), link).unwrap();
    }

    /// A USB stick formatted whole (no partition table), GWSEED holding `seed`.
    fn stick(root: &Root, name: &str, bus: &str, seed: &[u8], id: u32) {
        Machine::new(root).disk(bus, name, 8, false);
        fat_image_id(
            &root.path(format!("/dev/{name}")),
            id,
            &[("seed.toml", seed)],
        );
    }

    fn used(d: &Decision) -> Option<&str> {
        d.used.as_ref().map(|f| f.device.as_str())
    }

    fn codes(d: &Decision) -> Vec<&str> {
        d.problems.iter().map(|p| p.code.as_str()).collect()
    }

    #[test]
    fn a_stick_comes_before_the_images_own_partition() {
        // Only the image's partition, empty: nothing, quietly (the ESP is FAT, not GWSEED).
        let (_dir, root) = factory(None);
        let d = find(&root);
        assert_eq!((used(&d), codes(&d)), (None, vec![]), "{d:?}");
        assert!(
            d.notes
                .iter()
                .any(|(_, n)| n == "/dev/vda3: a GWSEED filesystem without seed.toml; skipped")
        );

        // A stick plugged in: its seed, though the link still points at the partition.
        stick(&root, "sda", USB, SEED, 0x5717c4);
        let d = find(&root);
        assert_eq!((used(&d), codes(&d)), (Some("/dev/sda"), vec![]), "{d:?}");
        let found = d.used.unwrap();
        assert_eq!(found.bytes, SEED);
        assert_eq!(
            found.used(),
            UsedGwseed {
                device: "/dev/sda".into(),
                volume_id: 0x5717c4
            }
        );

        // The image's partition holding a seed of its own: the stick still comes first.
        let (_dir, root) = factory(Some(OTHER));
        assert_eq!(used(&find(&root)), Some("/dev/vda3"));
        stick(&root, "sda", USB, SEED, 0x5717c4);
        let d = find(&root);
        assert_eq!((used(&d), codes(&d)), (Some("/dev/sda"), vec![]), "{d:?}");
        assert!(
            d.notes
                .iter()
                .any(|(_, n)| n
                    .starts_with("/dev/vda3: the boot disk's own GWSEED seed is not used")),
            "{:?}",
            d.notes
        );
    }

    #[test]
    fn two_sticks_with_different_seeds_are_an_error_naming_both() {
        let (_dir, root) = factory(None);
        stick(&root, "sda", USB, SEED, 1);
        // The second stick has a partition table: its partition is the filesystem.
        Machine::new(&root)
            .disk(USB2, "sdb", 8, true)
            .partition(USB2, "sdb", "sdb1", 8);
        fat_image_id(&root.path("/dev/sdb1"), 2, &[("SEED.TOML", OTHER)]);
        std::fs::write(root.path("/dev/sdb"), b"a partition table").unwrap();
        let d = find(&root);
        assert_eq!(used(&d), None);
        assert_eq!(codes(&d), ["gwseed-ambiguous"]);
        let p = &d.problems[0];
        assert!(p.is_error());
        assert_eq!(
            p.to_string(),
            "GWSEED: /dev/sda and /dev/sdb1 hold different seed.toml files: which one to use is \
             not clear\n  fix: keep one: unplug the other GWSEED sticks, or give them the same seed.toml"
        );
    }

    #[test]
    fn copies_of_one_seed_are_fine_and_the_removable_one_is_used() {
        let (_dir, root) = factory(None);
        stick(&root, "sdc", USB, SEED, 1);
        // A SATA disk (not removable, not USB) with the same seed, and a card reader's card.
        Machine::new(&root).disk(
            "pci0000:00/0000:00:1f.2/ata1/host2/target2:0:0/2:0:0:0",
            "sda",
            8,
            false,
        );
        fat_image_id(&root.path("/dev/sda"), 2, &[("seed.toml", SEED)]);
        Machine::new(&root).disk(
            "pci0000:00/0000:00:06.0/mmc_host/mmc0/mmc0:0001",
            "mmcblk0",
            179,
            true,
        );
        fat_image_id(&root.path("/dev/mmcblk0"), 3, &[("seed.toml", SEED)]);
        let d = find(&root);
        // Removable or USB first, then by name: the card, then the USB stick, then the disk.
        assert_eq!(used(&d), Some("/dev/mmcblk0"), "{d:?}");
        assert_eq!(codes(&d), ["gwseed-copy", "gwseed-copy"]);
        let copies: Vec<&str> = d.problems.iter().map(|p| p.subject.as_str()).collect();
        assert_eq!(copies, ["/dev/sdc", "/dev/sda"]);
        assert!(d.problems.iter().all(|p| !p.is_error()));
        assert!(
            d.problems[0]
                .message
                .contains("the API key is removed from /dev/mmcblk0 only"),
            "{}",
            d.problems[0]
        );
    }

    #[test]
    fn what_udev_calls_gwseed_must_be_readable_other_disks_need_not() {
        let (_dir, root) = factory(None);
        // A stick that is not FAT, not known to udev as GWSEED: not ours, nothing said.
        Machine::new(&root).disk(USB, "sda", 8, false);
        std::fs::write(root.path("/dev/sda"), vec![0u8; 8192]).unwrap();
        let d = find(&root);
        assert_eq!((used(&d), codes(&d)), (None, vec![]), "{d:?}");
        // udev's database says it is labelled GWSEED (exFAT, say): an error naming it.
        let dev = std::fs::read_to_string(root.path("/sys/class/block/sda/dev")).unwrap();
        let data = root.path(format!("/run/udev/data/b{}", dev.trim()));
        std::fs::create_dir_all(data.parent().unwrap()).unwrap();
        std::fs::write(
            &data,
            "S:disk/by-label/GWSEED\nE:ID_FS_TYPE=exfat\nE:ID_FS_LABEL=GWSEED\n",
        )
        .unwrap();
        let d = find(&root);
        assert_eq!(codes(&d), ["gwseed-unreadable"]);
        let p = &d.problems[0];
        assert_eq!(p.subject, "/dev/sda");
        assert!(
            p.message
                .starts_with("reading seed.toml: not a FAT filesystem"),
            "{p}"
        );
        // The same when udev's link points at it.
        std::fs::remove_file(&data).unwrap();
        link_label(&root, "sda");
        assert_eq!(codes(&find(&root)), ["gwseed-unreadable"]);
    }

    #[test]
    fn drives_without_a_medium_are_not_opened() {
        let (_dir, root) = factory(None);
        Machine::new(&root)
            .disk(
                "pci0000:00/0000:00:06.0/mmc_host/mmc0/mmc0:0001",
                "mmcblk0",
                179,
                true,
            )
            .attr("mmcblk0", "size", "0");
        // Were it opened, this would be an error: udev's link points at it.
        std::fs::write(root.path("/dev/mmcblk0"), b"not FAT").unwrap();
        link_label(&root, "mmcblk0");
        let mut problems = Vec::new();
        let devices: Vec<PathBuf> = candidates(&root, &mut problems)
            .into_iter()
            .map(|c| c.device)
            .collect();
        assert!(problems.is_empty());
        assert!(
            !devices.contains(&PathBuf::from("/dev/mmcblk0")),
            "{devices:?}"
        );
        assert!(
            devices.contains(&PathBuf::from("/dev/vda3"))
                && !devices.contains(&PathBuf::from("/dev/vda")),
            "partitions, not the disk that has them: {devices:?}"
        );
    }

    #[test]
    fn a_drive_that_never_answers_is_skipped_in_time() {
        let (_dir, root) = factory(None);
        stick(&root, "sda", USB, SEED, 1);
        // Opening a FIFO blocks until a writer comes, like a drive stuck in error handling.
        Machine::new(&root).disk(USB2, "sdb", 8, true);
        nix::unistd::mkfifo(&root.path("/dev/sdb"), nix::sys::stat::Mode::S_IRUSR).unwrap();
        let mut problems = Vec::new();
        let all = candidates(&root, &mut problems);
        let started = Instant::now();
        let seen = probe(&root, all.clone(), Duration::from_millis(300));
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{:?}",
            started.elapsed()
        );
        let slow: Vec<String> = seen
            .iter()
            .filter(|(_, o)| matches!(o, Outcome::TooSlow))
            .map(|(c, _)| c.device.display().to_string())
            .collect();
        assert_eq!(slow, ["/dev/sdb"]);
        let d = decide(seen);
        assert_eq!(used(&d), Some("/dev/sda"));
        assert!(d.notes.iter().any(|(l, n)| *l == log::Level::Warn && n.starts_with("/dev/sdb: no answer within")));
        // The next look does not open it again while the first still waits.
        let started = Instant::now();
        let again = probe(&root, all, Duration::from_secs(10));
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{:?}",
            started.elapsed()
        );
        assert!(
            again
                .iter()
                .any(|(c, o)| c.device == Path::new("/dev/sdb") && matches!(o, Outcome::TooSlow))
        );
        // Let the stuck thread go.
        use std::os::unix::fs::OpenOptionsExt;
        let _ = std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(nix::fcntl::OFlag::O_NONBLOCK.bits())
            .open(root.path("/dev/sdb"));
    }

    #[test]
    fn the_link_alone_still_works() {
        // A tree with no sysfs (older test trees, a chroot): the by-label link is the one
        // candidate, named by where it points.
        let dir = tempfile::tempdir().unwrap();
        let root = Root::new(dir.path());
        std::fs::create_dir_all(root.path("/dev")).unwrap();
        fat_image(&root.path("/dev/vdb1"), &[("seed.toml", SEED)]);
        link_label(&root, "vdb1");
        let d = find(&root);
        assert_eq!((used(&d), codes(&d)), (Some("/dev/vdb1"), vec![]));
    }

    #[test]
    fn the_order_is_a_pure_function_of_what_was_read() {
        let c = |device: &str, on_boot_disk: bool, removable: bool| Candidate {
            device: device.into(),
            on_boot_disk,
            removable,
            udev_gwseed: false,
        };
        let fat = |seed: Option<&[u8]>| Outcome::Fat {
            label: "gwseed".into(),
            volume_id: 7,
            seed: Ok(seed.map(<[u8]>::to_vec)),
        };
        // Two partitions of the boot disk with different seeds: ambiguous too.
        let d = decide(vec![
            (c("/dev/vda3", true, false), fat(Some(SEED))),
            (c("/dev/vda4", true, false), fat(Some(OTHER))),
        ]);
        assert_eq!((used(&d), codes(&d)), (None, vec!["gwseed-ambiguous"]));
        // A stick without a seed does not beat the partition with one.
        let d = decide(vec![
            (c("/dev/sda", false, true), fat(None)),
            (c("/dev/vda3", true, false), fat(Some(SEED))),
        ]);
        assert_eq!((used(&d), codes(&d)), (Some("/dev/vda3"), vec![]));
        // An unreadable seed.toml on a GWSEED is an error; other labels are not looked into.
        let d = decide(vec![
            (
                c("/dev/sda", false, true),
                Outcome::Fat {
                    label: "GWSEED     ".into(),
                    volume_id: 1,
                    seed: Err(io::Error::from_raw_os_error(5)),
                },
            ),
            (
                c("/dev/sdb", false, true),
                Outcome::Fat {
                    label: "NO NAME".into(),
                    volume_id: 1,
                    seed: Ok(Some(OTHER.to_vec())),
                },
            ),
            (c("/dev/sdc", false, true), Outcome::NoMedium),
        ]);
        assert_eq!((used(&d), codes(&d)), (None, vec!["gwseed-unreadable"]));
        assert_eq!(d.problems[0].message, "reading seed.toml: i/o error");
        assert_eq!(listed(&["a", "b", "c"]), "a, b and c");
    }
}
