//! `seed embed|show|clear` on a GPT disk image made with the real tools (sfdisk, mkfs.vfat),
//! and the agent reading the embedded seed as it would at boot.

use gateway_test_support::{Tree, agent_bin};
use std::path::{Path, PathBuf};
use std::process::Command;

const MIB: u64 = 1024 * 1024;

fn sh(cmd: &str) {
    let status = Command::new("sh").arg("-c").arg(cmd).status().expect("sh");
    assert!(status.success(), "{cmd}");
}

/// A 40 MiB GPT disk: ESP (8 MiB) and GWSEED (16 MiB FAT, labelled GWSEED), like the factory image.
fn factory_disk(dir: &Path) -> PathBuf {
    for tool in ["sfdisk", "mkfs.vfat"] {
        assert!(
            Command::new("sh")
                .arg("-c")
                .arg(format!("command -v {tool}"))
                .status()
                .unwrap()
                .success(),
            "{tool} is missing: tests/setup installs fdisk and dosfstools"
        );
    }
    let disk = dir.join("disk.raw");
    let d = disk.display();
    let part = dir.join("gwseed.img");
    let p = part.display();
    sh(&format!("truncate -s 40M {d}"));
    sh(&format!(
        "printf 'label: gpt\\nstart=2048, size=16384, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, name=ESP\\nsize=32768, type=EBD0A0A2-B9E5-4433-87C0-68B6B72699C7, name=GWSEED\\n' | sfdisk -q {d}"
    ));
    sh(&format!("mkfs.vfat -n GWSEED -C {p} 16384 >/dev/null"));
    sh(&format!(
        "dd if={p} of={d} bs=1M seek=9 conv=notrunc status=none"
    ));
    disk
}

fn run(args: &[&str]) -> gateway_test_support::Run {
    Command::new(agent_bin())
        .args(args)
        .output()
        .unwrap()
        .into()
}

/// The GWSEED partition's bytes, as the appliance's device for it would show them.
fn partition_bytes(disk: &Path) -> Vec<u8> {
    let bytes = std::fs::read(disk).unwrap();
    bytes[(9 * MIB) as usize..(25 * MIB) as usize].to_vec()
}

fn appliance_with(disk: &Path) -> Tree {
    let mut tree = Tree::new();
    tree.file("/dev/vdb3", partition_bytes(disk));
    std::fs::create_dir_all(tree.path("/dev/disk/by-label")).unwrap();
    std::os::unix::fs::symlink("../../vdb3", tree.path("/dev/disk/by-label/GWSEED")).unwrap();
    tree.file_mode(
        "/usr/lib/gateway-firstboot/defaults.toml",
        "api-key = \"gwk_imageDefaultKey0001\"\n",
        0o644,
    );
    tree
}

#[test]
fn embed_show_read_at_boot_and_clear() {
    let dir = tempfile::tempdir().unwrap();
    let disk = factory_disk(dir.path());
    let d = disk.to_str().unwrap();
    let empty = run(&["seed", "show", d]);
    assert_eq!(empty.code, 66, "{}", empty.all());
    assert!(empty.stdout.contains("holds no seed"));

    let key = "gwkFactorySeedKey0123456789";
    let seed = dir.path().join("customer.toml");
    std::fs::write(
        &seed,
        format!(
            "primary = \"primary.example.com\"\naccount = \"acme.example\"\napi-key = \"{key}\"\n"
        ),
    )
    .unwrap();
    let embedded = run(&["seed", "embed", d, seed.to_str().unwrap()]);
    assert_eq!(embedded.code, 0, "{}", embedded.all());

    let shown = run(&["seed", "show", d]);
    assert_eq!(shown.code, 0, "{}", shown.all());
    assert!(
        shown.stdout.contains("account = \"acme.example\"")
            && shown.stdout.contains("api-key = [redacted]"),
        "{}",
        shown.stdout
    );
    assert!(!shown.all().contains(key));

    // At boot the agent finds it (udev's link points at it) and accepts it, named by its device.
    let tree = appliance_with(&disk);
    let check = tree.run(&["check"]);
    assert_eq!(check.code, 0, "{}", check.all());
    let json = tree.run(&["show-config", "--json"]).json();
    assert_eq!(json["account"]["origin"], "seed:/dev/vdb3:seed.toml");

    // A shorter seed over a longer one leaves no old bytes behind; clear removes all.
    std::fs::write(
        &seed,
        "primary = \"p.example\"\naccount = \"acme.example\"\n",
    )
    .unwrap();
    assert_eq!(run(&["seed", "embed", d, seed.to_str().unwrap()]).code, 0);
    let raw = std::fs::read(&disk).unwrap();
    assert!(
        !raw.windows(key.len()).any(|w| w == key.as_bytes()),
        "the old key's bytes stayed on the disk"
    );
    let cleared = run(&["seed", "clear", d]);
    assert_eq!(cleared.code, 0, "{}", cleared.all());
    assert_eq!(run(&["seed", "show", d]).code, 66);
    let raw = std::fs::read(&disk).unwrap();
    assert!(
        !raw.windows(13).any(|w| w == b"acme.example\""),
        "clear overwrote the seed"
    );
}

#[test]
fn an_invalid_seed_is_refused_with_the_words_of_check() {
    let dir = tempfile::tempdir().unwrap();
    let disk = factory_disk(dir.path());
    let d = disk.to_str().unwrap();
    let bad = "primary = \"ftp://p.example\"\naccount = \"acme..example\"\nacount = \"x\"\n";
    let seed = dir.path().join("bad.toml");
    std::fs::write(&seed, bad).unwrap();
    let refused = run(&["seed", "embed", d, seed.to_str().unwrap()]);
    assert_eq!(refused.code, 65, "{}", refused.all());
    assert!(refused.stdout.contains("the seed was not embedded"));
    assert_eq!(run(&["seed", "show", d]).code, 66, "nothing was written");

    // The same seed on an appliance's GWSEED stick, checked there: the same error lines.
    let scratch = tempfile::tempdir().unwrap();
    let stick = factory_disk(scratch.path());
    let mut tree = appliance_with(&stick);
    tree.gwseed(&[("seed.toml", bad.as_bytes())]);
    let check = tree.run(&["check"]);
    assert_eq!(check.code, 65);
    let errors = |text: &str| -> Vec<String> {
        let lines: Vec<&str> = text.lines().collect();
        lines
            .iter()
            .enumerate()
            .filter(|(_, l)| l.starts_with("error: "))
            .map(|(i, l)| format!("{l}\n{}", lines.get(i + 1).unwrap_or(&"")))
            .collect()
    };
    let from_embed = errors(&refused.stdout);
    assert_eq!(from_embed.len(), 3, "{}", refused.stdout);
    // On the appliance the seed is named by the device it was read from; `seed embed`, which
    // cannot know that device, names the by-label link.
    let on_appliance = check
        .stdout
        .replace("/dev/vdb1:seed.toml", "/dev/disk/by-label/GWSEED:seed.toml");
    assert_eq!(from_embed, errors(&on_appliance));
}

#[test]
fn images_without_a_gwseed_partition_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let qcow = dir.path().join("x.qcow2");
    std::fs::write(&qcow, b"QFI\xfb\0\0\0\x03rest").unwrap();
    let seed = dir.path().join("s.toml");
    std::fs::write(
        &seed,
        "account = \"acme.example\"\nprimary = \"p.example\"\n",
    )
    .unwrap();
    let r = run(&[
        "seed",
        "embed",
        qcow.to_str().unwrap(),
        seed.to_str().unwrap(),
    ]);
    assert_eq!(r.code, 74, "{}", r.all());
    assert!(
        r.stderr
            .contains("this is a qcow2 image; the factory image is the .raw one"),
        "{}",
        r.stderr
    );

    let disk = dir.path().join("plain.raw");
    let d = disk.display();
    sh(&format!(
        "truncate -s 8M {d} && printf 'label: gpt\\nstart=2048, size=4096, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, name=ESP\\n' | sfdisk -q {d}"
    ));
    let r = run(&["seed", "show", disk.to_str().unwrap()]);
    assert_eq!(r.code, 66, "{}", r.all());
    assert!(
        r.stderr
            .contains("the image has no GWSEED partition (partitions: ESP)"),
        "{}",
        r.stderr
    );
}
