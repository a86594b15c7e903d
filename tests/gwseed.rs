//! Two (or three) filesystems labelled GWSEED: the factory image's own partition and sticks.
//! The real binary with `--root` on a fake machine (sysfs, /proc/devices, mountinfo, device
//! nodes as FAT images), against gateway-primary-sim over TLS on loopback.

use gateway_test_support::fat::Fat;
use gateway_test_support::sim::Sim;
use gateway_test_support::{Tree, appliance_tree};
use std::path::Path;

/// The factory image's layout on a virtio disk: vda2 the root, vda3 its GWSEED partition.
const VIRTIO: &str = "pci0000:00/0000:00:04.0/virtio2";
const USB1: &str = "pci0000:00/0000:00:05.0/usb2/2-1/2-1:1.0/host0/target0:0:0/0:0:0:0";
const USB2: &str = "pci0000:00/0000:00:05.0/usb2/2-2/2-2:1.0/host1/target1:0:0/1:0:0:0";

/// A sysfs entry for a block device, linked as the kernel does; `part` for a partition.
fn sys_device(tree: &mut Tree, bus: &str, disk: &str, part: Option<&str>, dev: &str) {
    let mut dir = format!("/sys/devices/{bus}/block/{disk}");
    if let Some(part) = part {
        dir = format!("{dir}/{part}");
        tree.file_mode(&format!("{dir}/partition"), "1\n", 0o444);
    }
    tree.file_mode(&format!("{dir}/dev"), format!("{dev}\n"), 0o444);
    tree.file_mode(&format!("{dir}/size"), "32768\n", 0o444);
    tree.file_mode(&format!("{dir}/removable"), "0\n", 0o444);
    let name = part.unwrap_or(disk);
    for link in [
        format!("/sys/class/block/{name}"),
        format!("/sys/dev/block/{dev}"),
    ] {
        let path = tree.path(&link);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let target = dir.strip_prefix("/sys").unwrap();
        std::os::unix::fs::symlink(format!("../..{target}"), path).unwrap();
    }
}

/// A FAT filesystem labelled GWSEED at the device node `node`, holding `seed` if given.
fn fat(tree: &Tree, node: &str, volume_id: u32, seed: Option<&str>) {
    let path = tree.path(node);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let files: &[(&str, &[u8])] = match seed {
        Some(seed) => &[("seed.toml", seed.as_bytes())],
        None => &[],
    };
    Fat::gwseed(files)
        .volume_id(volume_id)
        .write_file(&path, 1024 * 1024);
}

/// An appliance booted from the factory image: its GWSEED partition (vda3) empty, and udev's
/// by-label link pointing at it.
fn factory(sim: &Sim) -> Tree {
    let mut tree = appliance_tree(&sim.default_key, &sim.ca_pem());
    tree.file_mode(
        "/proc/devices",
        "Character devices:\n  4 tty\n\nBlock devices:\n  7 loop\n  8 sd\n254 virtblk\n259 blkext\n",
        0o444,
    );
    sys_device(&mut tree, VIRTIO, "vda", None, "254:0");
    sys_device(&mut tree, VIRTIO, "vda", Some("vda2"), "254:2");
    sys_device(&mut tree, VIRTIO, "vda", Some("vda3"), "254:3");
    tree.file_mode(
        "/proc/self/mountinfo",
        "26 1 254:2 / / rw,relatime shared:1 - ext4 /dev/vda2 rw\n",
        0o444,
    );
    tree.file("/dev/vda2", vec![0u8; 4096]);
    fat(&tree, "/dev/vda3", 0x0fac, None);
    let link = tree.path("/dev/disk/by-label/GWSEED");
    std::fs::create_dir_all(link.parent().unwrap()).unwrap();
    std::os::unix::fs::symlink("../../vda3", link).unwrap();
    tree
}

/// A USB stick formatted whole, GWSEED, holding `seed`.
fn stick(tree: &mut Tree, name: &str, bus: &str, dev: &str, volume_id: u32, seed: &str) {
    sys_device(tree, bus, name, None, dev);
    fat(tree, &format!("/dev/{name}"), volume_id, Some(seed));
}

fn seed(sim: &Sim, account: &str, key: &str) -> String {
    format!(
        "# on the stick\nprimary = \"127.0.0.1:{}\"\naccount = \"{account}\"\napi-key = \"{key}\"\n\
         primary-ca = \"/etc/gateway/primary-ca.pem\"\nhostname = \"gw01.acme.test\"\n\
         dns-check = \"off\"\ndeadline = \"10s\"\n",
        sim.port
    )
}

/// The simulator with acme.example and a full key, and the factory tree with one USB stick
/// (`/dev/sda`, this volume ID) holding a seed with that key.
fn factory_with_a_stick(volume_id: u32) -> (Sim, String, Tree) {
    let sim = Sim::start();
    sim.ok(&["account", "add", "acme.example"]);
    let key = sim.ok(&["key", "add", "acme.example", "--kind", "full"]);
    let mut tree = factory(&sim);
    let text = seed(&sim, "acme.example", &key);
    stick(&mut tree, "sda", USB1, "8:0", volume_id, &text);
    (sim, key, tree)
}

fn holds(path: &Path, key: &str) -> bool {
    let bytes = std::fs::read(path).unwrap();
    bytes.windows(key.len()).any(|w| w == key.as_bytes())
}

#[test]
fn provisions_from_the_stick_and_scrubs_it_not_the_images_partition() {
    let (sim, key, tree) = factory_with_a_stick(0x5717);
    let partition = std::fs::read(tree.path("/dev/vda3")).unwrap();

    let (value, origin) = tree.effective("account", &[]);
    assert_eq!(
        (value.as_str(), origin.as_str()),
        (Some("acme.example"), Some("seed:/dev/sda:seed.toml"))
    );
    let run = tree.run(&["provision"]);
    assert_eq!(run.code, 0, "{}", run.all());
    assert!(
        run.stdout.contains("API key accepted (full)"),
        "{}",
        run.all()
    );
    assert_eq!(sim.all_servers().len(), 1);

    let state: serde_json::Value = serde_json::from_slice(
        &std::fs::read(tree.path("/var/lib/gateway-firstboot/state.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        state["gwseed"],
        serde_json::json!({"device": "/dev/sda", "volume-id": 0x5717})
    );
    assert!(
        !holds(&tree.path("/dev/sda"), &key),
        "the stick still holds the key"
    );
    assert_eq!(
        std::fs::read(tree.path("/dev/vda3")).unwrap(),
        partition,
        "the image's partition was changed"
    );
    assert!(!run.all().contains(&key));
}

#[test]
fn two_sticks_with_different_seeds_stop_everything_and_name_both() {
    let (sim, key, mut tree) = factory_with_a_stick(1);
    stick(
        &mut tree,
        "sdb",
        USB2,
        "8:16",
        2,
        &seed(&sim, "other.example", &key),
    );
    let before: Vec<Vec<u8>> = ["/dev/sda", "/dev/sdb"]
        .iter()
        .map(|d| std::fs::read(tree.path(d)).unwrap())
        .collect();

    let check = tree.run(&["check"]);
    assert_eq!(check.code, 65, "{}", check.all());
    assert!(
        check.stdout.contains(
            "error: GWSEED: /dev/sda and /dev/sdb hold different seed.toml files: which one to \
             use is not clear\n  fix: keep one: unplug the other GWSEED sticks, or give them the \
             same seed.toml"
        ),
        "{}",
        check.all()
    );
    let run = tree.run(&["provision"]);
    assert_eq!(run.code, 65, "{}", run.all());
    assert!(sim.all_servers().is_empty(), "nothing may be registered");
    for (d, bytes) in ["/dev/sda", "/dev/sdb"].iter().zip(&before) {
        assert_eq!(&std::fs::read(tree.path(d)).unwrap(), bytes, "{d} changed");
    }
    assert!(!check.all().contains(&key) && !run.all().contains(&key));

    // The same seed on both: provisions from the first (by name), says the other keeps its key.
    let same = seed(&sim, "acme.example", &key);
    fat(&tree, "/dev/sdb", 2, Some(&same));
    let run = tree.run(&["provision"]);
    assert_eq!(run.code, 0, "{}", run.all());
    assert!(
        run.stdout
            .contains("warning: /dev/sdb: holds the same seed.toml as /dev/sda"),
        "{}",
        run.all()
    );
    assert!(!holds(&tree.path("/dev/sda"), &key));
    assert!(
        holds(&tree.path("/dev/sdb"), &key),
        "only the one used is scrubbed"
    );
}
