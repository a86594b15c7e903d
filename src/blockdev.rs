//! The machine's disks as sysfs shows them, for finding every `GWSEED` filesystem: the whole
//! disks and partitions of the drivers the unit may open (its `DeviceAllow=` classes), the disk
//! each is on, whether that disk is removable or on USB, and which disks hold `/`. Only sysfs
//! and /proc are read here; no device is opened.

use crate::root::Root;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

pub const SYS_CLASS_BLOCK: &str = "/sys/class/block";
/// `major:minor` links to every block device.
pub const SYS_DEV_BLOCK: &str = "/sys/dev/block";
pub const PROC_DEVICES: &str = "/proc/devices";
pub const MOUNTINFO: &str = "/proc/self/mountinfo";

/// The block drivers, as /proc/devices names them, whose disks a seed can be on: the unit's
/// `DeviceAllow=block-…` classes (docs/packaging.md). Not loop, device mapper, md, zram, nbd,
/// RAM disks or CD-ROMs.
pub const DISK_DRIVERS: &[&str] = &["sd", "virtblk", "blkext", "mmc", "xvd"];

/// At most this many entries of /sys/class/block are looked at, and this many disks and
/// partitions kept: an appliance has a handful.
const MAX_ENTRIES: usize = 4096;
const MAX_DEVICES: usize = 128;

/// How deep `/` may be stacked on other block devices (LVM on LUKS on a partition, md).
const MAX_STACK: usize = 8;

/// A disk or a partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockDevice {
    /// The kernel's name: `sdb1` (sysfs writes a `/` in a name as `!`: `cciss!c0d0p1`).
    pub name: String,
    /// Its node, an appliance path: `/dev/sdb1`.
    pub node: PathBuf,
    /// `major:minor`.
    pub dev: String,
    /// The whole disk it is on: itself for a disk, `sdb` for `sdb1`.
    pub disk: String,
    pub partition: bool,
    /// The disk says it is removable (a card reader, some sticks).
    pub removable: bool,
    /// The disk is on USB (most sticks say removable=0).
    pub usb: bool,
    /// Size 0: a drive without a medium (a card reader with no card).
    pub no_medium: bool,
}

/// Every disk and partition of the [`DISK_DRIVERS`], sorted by name. Nothing (and a debug
/// line) where sysfs or /proc/devices cannot be read, as in a test tree without them.
pub fn disks(root: &Root) -> Vec<BlockDevice> {
    let majors = match std::fs::read_to_string(root.path(PROC_DEVICES)) {
        Ok(text) => disk_majors(&text),
        Err(e) => {
            log::debug!("reading {PROC_DEVICES}: {e}; no disks looked at");
            return Vec::new();
        }
    };
    let mut out: Vec<BlockDevice> = names(root)
        .into_iter()
        .filter_map(|name| device(root, name, &majors))
        .collect();
    if out.len() > MAX_DEVICES {
        log::warn!(
            "{} disks and partitions; looking at the first {MAX_DEVICES} only",
            out.len()
        );
        out.truncate(MAX_DEVICES);
    }
    out
}

/// The names in /sys/class/block, sorted.
fn names(root: &Root) -> Vec<String> {
    let entries = match std::fs::read_dir(root.path(SYS_CLASS_BLOCK)) {
        Ok(entries) => entries,
        Err(e) => {
            log::debug!("reading {SYS_CLASS_BLOCK}: {e}");
            return Vec::new();
        }
    };
    let mut names: Vec<String> = entries
        .take(MAX_ENTRIES)
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .collect();
    names.sort();
    names
}

/// The device `name`, if it is a disk or partition of one of `majors`.
fn device(root: &Root, name: String, majors: &BTreeSet<u32>) -> Option<BlockDevice> {
    let sys = Path::new(SYS_CLASS_BLOCK).join(&name);
    let dev = read_attr(root, &sys.join("dev"))?;
    let major: u32 = dev.split(':').next()?.parse().ok()?;
    if !majors.contains(&major) || read_attr(root, &sys.join("hidden")).as_deref() == Some("1") {
        return None;
    }
    let partition = root.path(sys.join("partition")).exists();
    let real = root.resolve(&sys).unwrap_or_else(|_| sys.clone());
    let disk = if partition {
        parent_name(&real)?
    } else {
        name.clone()
    };
    let disk_sys = Path::new(SYS_CLASS_BLOCK).join(&disk);
    Some(BlockDevice {
        node: Path::new("/dev").join(name.replace('!', "/")),
        removable: read_attr(root, &disk_sys.join("removable")).as_deref() == Some("1"),
        usb: real.to_string_lossy().contains("/usb"),
        no_medium: read_attr(root, &sys.join("size")).as_deref() == Some("0"),
        name,
        dev,
        disk,
        partition,
    })
}

/// The disks that hold `/` (through LVM, LUKS or md to the disks beneath), by name; empty
/// when that cannot be told (no /proc/self/mountinfo in a test tree, a root on tmpfs).
pub fn boot_disks(root: &Root) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let Ok(text) = std::fs::read_to_string(root.path(MOUNTINFO)) else {
        log::debug!("no {MOUNTINFO}: the boot disk is not known");
        return out;
    };
    let Some((dev, source)) = root_mount(&text) else {
        return out;
    };
    // By number; a filesystem with an anonymous device number (btrfs) by its source.
    let by_number = root
        .resolve(&Path::new(SYS_DEV_BLOCK).join(dev))
        .ok()
        .filter(|p| root.path(p).exists())
        .and_then(|p| Some(p.file_name()?.to_string_lossy().into_owned()));
    let by_source = source
        .strip_prefix("/dev/")
        .map(|name| name.replace('/', "!"))
        .filter(|name| root.path(Path::new(SYS_CLASS_BLOCK).join(name)).exists());
    if let Some(name) = by_number.or(by_source) {
        underlying_disks(root, &name, 0, &mut out);
    }
    out
}

/// Adds the whole disks beneath the block device `name` to `out`.
fn underlying_disks(root: &Root, name: &str, depth: usize, out: &mut BTreeSet<String>) {
    if depth > MAX_STACK {
        return;
    }
    let sys = Path::new(SYS_CLASS_BLOCK).join(name);
    let mut slaves: Vec<String> = std::fs::read_dir(root.path(sys.join("slaves")))
        .map(|entries| {
            entries
                .take(MAX_DEVICES)
                .filter_map(|e| e.ok()?.file_name().into_string().ok())
                .collect()
        })
        .unwrap_or_default();
    slaves.sort();
    if !slaves.is_empty() {
        for slave in &slaves {
            underlying_disks(root, slave, depth + 1, out);
        }
    } else if root.path(sys.join("partition")).exists() {
        if let Some(disk) = root.resolve(&sys).ok().and_then(|p| parent_name(&p)) {
            out.insert(disk);
        }
    } else {
        out.insert(name.to_string());
    }
}

/// USB devices, as sysfs lists them (interfaces are `1-1:1.0`).
pub const SYS_USB_DEVICES: &str = "/sys/bus/usb/devices";

/// USB mass-storage interfaces (class 08) that have no block device under them yet: a stick
/// the kernel has found but not finished setting up (usb-storage waits a second before it
/// scans, and under load much longer). Their names, sorted; empty where sysfs has no USB.
pub fn usb_storage_pending(root: &Root) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(root.path(SYS_USB_DEVICES)) else {
        return Vec::new();
    };
    let mut pending: Vec<String> = entries
        .flatten()
        .take(MAX_ENTRIES)
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|name| name.contains(':'))
        .filter(|name| {
            let dir = Path::new(SYS_USB_DEVICES).join(name);
            read_attr(root, &dir.join("bInterfaceClass")).as_deref() == Some("08")
                && !has_block(&root.path(&dir), 6)
        })
        .collect();
    pending.sort();
    pending
}

/// Whether a `block` directory with an entry is somewhere under `dir` (an interface's
/// `host6/target6:0:0/6:0:0:0/block/sda`), at most `depth` levels down.
fn has_block(dir: &Path, depth: usize) -> bool {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return false;
    };
    entries.flatten().take(MAX_ENTRIES).any(|e| {
        let path = e.path();
        // Only real directories: sysfs links lead back up the tree.
        let is_dir = e.file_type().is_ok_and(|t| t.is_dir());
        if !is_dir {
            return false;
        }
        if e.file_name() == "block" {
            return std::fs::read_dir(&path).is_ok_and(|mut d| d.next().is_some());
        }
        depth > 0 && has_block(&path, depth - 1)
    })
}

/// The name of the directory a sysfs device directory is in: the disk of a partition
/// (`/sys/devices/…/block/sdb/sdb1` → `sdb`).
fn parent_name(real: &Path) -> Option<String> {
    Some(real.parent()?.file_name()?.to_str()?.to_string())
}

/// A sysfs attribute, trimmed.
fn read_attr(root: &Root, path: &Path) -> Option<String> {
    std::fs::read_to_string(root.path(path))
        .ok()
        .map(|s| s.trim().to_string())
}

/// The major numbers of the [`DISK_DRIVERS`] in the text of /proc/devices.
pub fn disk_majors(text: &str) -> BTreeSet<u32> {
    text.lines()
        .skip_while(|l| l.trim() != "Block devices:")
        .skip(1)
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let major = fields.next()?.parse().ok()?;
            let driver = fields.next()?;
            DISK_DRIVERS.contains(&driver).then_some(major)
        })
        .collect()
}

/// `major:minor` and source of the filesystem mounted on `/`, from the text of
/// /proc/self/mountinfo: the last mount on `/`, the one in sight.
pub fn root_mount(text: &str) -> Option<(&str, &str)> {
    text.lines()
        .filter_map(|line| {
            let (mount, fs) = line.split_once(" - ")?;
            let fields: Vec<&str> = mount.split_whitespace().collect();
            let source = fs.split_whitespace().nth(1)?;
            (fields.get(4) == Some(&"/")).then_some((*fields.get(2)?, source))
        })
        .next_back()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    #[test]
    fn a_usb_stick_without_its_block_device_yet_is_pending() {
        let dir = tempfile::tempdir().unwrap();
        let root = Root::new(dir.path());
        assert!(usb_storage_pending(&root).is_empty(), "no USB in sysfs");
        let usb = root.path(SYS_USB_DEVICES);
        let interface = |name: &str, class: &str| {
            std::fs::create_dir_all(usb.join(name)).unwrap();
            std::fs::write(usb.join(name).join("bInterfaceClass"), format!("{class}\n")).unwrap();
        };
        interface("1-1:1.0", "08");
        interface("1-2:1.0", "03"); // a keyboard
        std::fs::create_dir_all(usb.join("1-1")).unwrap(); // the device, not an interface
        assert_eq!(usb_storage_pending(&root), ["1-1:1.0"]);
        // The SCSI scan made the disk but not its block device yet: still pending.
        let scsi = usb.join("1-1:1.0/host6/target6:0:0/6:0:0:0");
        std::fs::create_dir_all(scsi.join("block")).unwrap();
        assert_eq!(usb_storage_pending(&root), ["1-1:1.0"]);
        std::fs::create_dir_all(scsi.join("block/sda")).unwrap();
        assert!(usb_storage_pending(&root).is_empty());
    }

    /// A fake machine under a test root: /proc/devices, /proc/self/mountinfo, and sysfs entries
    /// for disks and partitions, as the kernel lays them out (`/sys/devices/…/block/DISK/PART`,
    /// linked from /sys/class/block and /sys/dev/block).
    pub struct Machine<'a> {
        pub root: &'a Root,
        next_minor: u32,
    }

    pub const PROC_DEVICES_TEXT: &str = "Character devices:\n  1 mem\n  4 tty\n\nBlock devices:\n  7 loop\n  8 sd\n  9 md\n 11 sr\n 65 sd\n179 mmc\n252 device-mapper\n253 zram\n254 virtblk\n259 blkext\n";

    impl<'a> Machine<'a> {
        pub fn new(root: &'a Root) -> Self {
            std::fs::create_dir_all(root.path("/proc/self")).unwrap();
            std::fs::write(root.path(PROC_DEVICES), PROC_DEVICES_TEXT).unwrap();
            // Numbers not taken by devices added before.
            let next_minor = std::fs::read_dir(root.path(SYS_DEV_BLOCK))
                .map(|entries| entries.count() as u32)
                .unwrap_or(0);
            Machine { root, next_minor }
        }

        fn write(&self, path: &Path, text: &str) {
            let real = self.root.path(path);
            std::fs::create_dir_all(real.parent().unwrap()).unwrap();
            std::fs::write(real, text).unwrap();
        }

        fn link(&self, link: &Path, target: &Path) {
            let real = self.root.path(link);
            std::fs::create_dir_all(real.parent().unwrap()).unwrap();
            let rel = Path::new("../..").join(target.strip_prefix("/sys").unwrap());
            std::os::unix::fs::symlink(rel, real).unwrap();
        }

        /// A device directory under `bus` (`pci0000:00/0000:00:04.0/virtio2` or
        /// `pci0000:00/0000:00:05.0/usb2/2-1/2-1:1.0/host0/target0:0:0/0:0:0:0`).
        fn add(
            &mut self,
            bus: &str,
            disk: &str,
            part: Option<&str>,
            major: u32,
            attrs: &[(&str, &str)],
        ) -> PathBuf {
            let mut dir = Path::new("/sys/devices").join(bus).join("block").join(disk);
            let name = part.unwrap_or(disk);
            if let Some(part) = part {
                dir.push(part);
                self.write(&dir.join("partition"), "1\n");
            }
            let dev = format!("{major}:{}", self.next_minor);
            self.next_minor += 1;
            self.write(&dir.join("dev"), &format!("{dev}\n"));
            self.write(&dir.join("size"), "32768\n");
            for (attr, value) in attrs {
                self.write(&dir.join(attr), &format!("{value}\n"));
            }
            self.link(&Path::new(SYS_CLASS_BLOCK).join(name), &dir);
            self.link(&Path::new(SYS_DEV_BLOCK).join(&dev), &dir);
            dir
        }

        /// A whole disk; `removable` as its sysfs flag.
        pub fn disk(&mut self, bus: &str, disk: &str, major: u32, removable: bool) -> &mut Self {
            let flag = if removable { "1" } else { "0" };
            self.add(bus, disk, None, major, &[("removable", flag)]);
            self
        }

        /// A partition of a disk added before (same `bus`).
        pub fn partition(&mut self, bus: &str, disk: &str, part: &str, major: u32) -> &mut Self {
            self.add(bus, disk, Some(part), major, &[]);
            self
        }

        /// Sets an attribute of a device added before.
        pub fn attr(&mut self, name: &str, attr: &str, value: &str) -> &mut Self {
            let dir = self
                .root
                .resolve(&Path::new(SYS_CLASS_BLOCK).join(name))
                .unwrap();
            self.write(&dir.join(attr), &format!("{value}\n"));
            self
        }

        /// `/` is on the device `name` (added before).
        pub fn root_on(&mut self, name: &str) -> &mut Self {
            let dev = std::fs::read_to_string(
                self.root
                    .path(Path::new(SYS_CLASS_BLOCK).join(name).join("dev")),
            )
            .unwrap();
            self.write(
                Path::new(MOUNTINFO),
                &format!(
                    "21 26 0:20 / /proc rw,nosuid shared:12 - proc proc rw\n\
                     26 1 {} / / rw,relatime shared:1 - ext4 /dev/{name} rw\n\
                     27 26 0:25 / /tmp rw shared:2 - tmpfs tmpfs rw\n",
                    dev.trim()
                ),
            );
            self
        }
    }

    pub const VIRTIO: &str = "pci0000:00/0000:00:04.0/virtio2";
    pub const USB: &str = "pci0000:00/0000:00:05.0/usb2/2-1/2-1:1.0/host0/target0:0:0/0:0:0:0";
    pub const USB2: &str = "pci0000:00/0000:00:05.0/usb2/2-2/2-2:1.0/host1/target1:0:0/1:0:0:0";

    #[test]
    fn disks_of_the_allowed_drivers_only() {
        let dir = tempfile::tempdir().unwrap();
        let root = Root::new(dir.path());
        let mut m = Machine::new(&root);
        m.disk(VIRTIO, "vda", 254, false)
            .partition(VIRTIO, "vda", "vda1", 254)
            .partition(VIRTIO, "vda", "vda2", 254)
            .disk(USB, "sda", 8, false)
            .disk("virtual", "loop0", 7, false)
            .disk("virtual", "dm-0", 252, false)
            .disk("virtual", "zram0", 253, false)
            .disk(
                "pci0000:00/0000:00:06.0/mmc_host/mmc0/mmc0:0001",
                "mmcblk0",
                179,
                true,
            )
            .attr("mmcblk0", "size", "0")
            .disk(
                "pci0000:00/0000:00:07.0/nvme/nvme0",
                "nvme0c0n1",
                259,
                false,
            )
            .attr("nvme0c0n1", "hidden", "1");
        let got = disks(&root);
        let names: Vec<&str> = got.iter().map(|d| d.name.as_str()).collect();
        assert_eq!(names, ["mmcblk0", "sda", "vda", "vda1", "vda2"]);
        let vda2 = &got[4];
        assert_eq!(
            (vda2.node.as_path(), vda2.disk.as_str(), vda2.partition),
            (Path::new("/dev/vda2"), "vda", true)
        );
        assert!(!vda2.usb && !vda2.removable && !vda2.no_medium);
        let sda = &got[1];
        assert!(sda.usb && !sda.removable && !sda.partition && sda.disk == "sda");
        let card = &got[0];
        assert!(card.removable && card.no_medium && !card.usb);
    }

    #[test]
    fn the_boot_disk_is_the_one_holding_root() {
        let dir = tempfile::tempdir().unwrap();
        let root = Root::new(dir.path());
        assert!(boot_disks(&root).is_empty(), "unknown without mountinfo");
        let mut m = Machine::new(&root);
        m.disk(VIRTIO, "vda", 254, false)
            .partition(VIRTIO, "vda", "vda2", 254)
            .disk(USB, "sda", 8, true)
            .root_on("vda2");
        assert_eq!(boot_disks(&root), BTreeSet::from(["vda".to_string()]));

        // Root on LVM on a partition: through the device mapper's slaves.
        m.disk("virtual", "dm-0", 252, false);
        let slaves = root
            .resolve(Path::new("/sys/class/block/dm-0"))
            .unwrap()
            .join("slaves");
        std::fs::create_dir_all(root.path(&slaves)).unwrap();
        std::os::unix::fs::symlink(
            root.path("/sys/class/block/vda2"),
            root.path(slaves.join("vda2")),
        )
        .unwrap();
        m.root_on("dm-0");
        assert_eq!(boot_disks(&root), BTreeSet::from(["vda".to_string()]));
    }

    #[test]
    fn parses_proc_devices_and_mountinfo() {
        assert_eq!(
            disk_majors(PROC_DEVICES_TEXT),
            BTreeSet::from([8, 65, 179, 254, 259])
        );
        assert!(disk_majors("Character devices:\n  8 sd\n").is_empty());
        assert!(disk_majors("").is_empty());
        let text = "25 1 254:2 / / ro,relatime shared:1 - ext4 /dev/vda2 rw\n\
                    30 25 0:30 / /tmp rw - tmpfs tmpfs rw\n\
                    40 25 254:2 / / ro shared:9 - ext4 /dev/vda2 ro\n\
                    broken line\n\
                    41 25 0:40 /x /srv - btrfs /dev/sdb1 rw\n";
        assert_eq!(root_mount(text), Some(("254:2", "/dev/vda2")));
        assert_eq!(root_mount("1 0 0:2 / / - \n"), None);
        assert_eq!(root_mount(""), None);
    }
}
