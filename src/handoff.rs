//! Handing off to the gateway: its configuration, the API key removed from every writable
//! seed it was in, the done-marker `gateway.service` is conditioned on. See
//! docs/gateway-contract.md for what the gateway may rely on.

use crate::failure::{Code, Failure, io};
use crate::fsutil;
use crate::identity::{ACCOUNT_CA_FILE, CERT_FILE, KEY_FILE, PRIMARY_CA_FILE};
use crate::primary::Endpoint;
use crate::root::Root;
use crate::settings::gwseed::{self, UsedGwseed};
use crate::settings::{BOOT_SEED, ETC_SEED, GWSEED_FILE, seed};
use crate::state::{DONE_MARKER, State};
use std::fs::OpenOptions;
use std::io::{self, Read};
use std::ops::Range;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use toml::de::DeTable;

pub const GATEWAY_CONFIG: &str = "/etc/gateway/gateway.toml";

/// Keeps the seed's network settings under /etc/systemd/network, where the boots after this
/// one find them when the seed that gave them (a stick, a credential) is gone; without network
/// settings, removes ours from there (the image's DHCP again).
pub fn keep_network(root: &Root, state: &State) -> Result<(), Failure> {
    crate::network::write(root, crate::network::ETC_DIR, state.network.as_ref())
        .map(drop)
        .map_err(|e| {
            io(
                format!(
                    "writing the network settings in {}",
                    crate::network::ETC_DIR
                ),
                e,
            )
        })
}

/// Writes /etc/gateway/gateway.toml (and the primary's CA, if the seed gave one). Mode 0644,
/// or 0600 when it holds the proxy's password.
pub fn write_gateway_config(root: &Root, state: &State) -> Result<(), Failure> {
    let primary = state.primary.as_ref();
    if let Some(pem) = primary.and_then(|p| p.ca_pem.as_ref()) {
        fsutil::write_atomic(&root.path(PRIMARY_CA_FILE), pem.as_bytes(), 0o644)
            .map_err(|e| io(format!("writing {PRIMARY_CA_FILE}"), e))?;
    }
    let mut t = toml::Table::new();
    let mut put = |k: &str, v: toml::Value| {
        t.insert(k.to_string(), v);
    };
    put(
        "primary",
        primary.map(|p| p.url.as_str()).unwrap_or_default().into(),
    );
    put("account", state.account.clone().unwrap_or_default().into());
    put(
        "server-id",
        state.server_id.clone().unwrap_or_default().into(),
    );
    put("key", KEY_FILE.into());
    put("certificate", CERT_FILE.into());
    put("account-ca", ACCOUNT_CA_FILE.into());
    if primary.is_some_and(|p| p.ca_pem.is_some()) {
        put("primary-ca", PRIMARY_CA_FILE.into());
    }
    if let Some(pin) = primary.and_then(Endpoint::pin_hex) {
        put("primary-ca-sha256", pin.into());
    }
    let proxy = primary.and_then(|p| p.proxy.as_ref());
    let secret = proxy.is_some_and(|p| p.password.is_some());
    if let Some(proxy) = proxy {
        put("proxy", proxy.with_credentials().expose().into());
    }
    if let Some(list) = primary.map(|p| &p.no_proxy).filter(|l| !l.is_empty()) {
        put("no-proxy", list.joined().into());
    }
    let text = format!(
        "# Written by gateway-firstboot when it handed off to the gateway; see docs/gateway-contract.md.\n\
         # certificate and account-ca exist once an administrator has authorized this server.\n{}",
        toml::to_string(&t).map_err(|e| Failure::new(Code::Internal, e.to_string()))?
    );
    fsutil::write_atomic(
        &root.path(crate::handoff::GATEWAY_CONFIG),
        text.as_bytes(),
        if secret { 0o600 } else { 0o644 },
    )
    .map_err(|e| io(format!("writing {GATEWAY_CONFIG}"), e))
}

/// The seed text without its `api-key` entry (the rest byte for byte), or `None` if it has no
/// non-blank key.
pub fn without_api_key(text: &str) -> Option<String> {
    let (table, errors) = DeTable::parse_recoverable(text);
    if !errors.is_empty() {
        return None;
    }
    let (_, value) = table
        .get_ref()
        .iter()
        .find(|(k, _)| k.get_ref() == "api-key")?;
    if let toml::de::DeValue::String(s) = value.get_ref()
        && s.trim().is_empty()
    {
        return None;
    }
    seed::without_keys(text, &["api-key"])
}

/// What overwrites the key's bytes in place: a plain letter, so the seed stays valid TOML (its
/// `api-key` just reads `"xxxx…"`) if the power goes before the rewrite, and a run resumed
/// after that removes the line as it would have.
const FILLER: u8 = b'x';

/// Below this length the key's bytes are overwritten only inside its own value: replacing every
/// occurrence of a very short string would mangle the rest of the seed (valid keys have 16 or
/// more characters).
const MIN_SEARCHED: usize = 8;

/// How one seed loses its key: the byte ranges to overwrite in place, and the text it is
/// rewritten with afterwards.
#[derive(Debug, PartialEq)]
struct Scrub {
    ranges: Vec<Range<usize>>,
    scrubbed: String,
}

/// The scrub of a seed holding a non-blank `api-key`; `None` if it holds none, or is not a seed
/// the agent could have read (not UTF-8, not TOML).
///
/// The ranges cover every occurrence of the key's bytes (a commented-out copy too), and the
/// whole text between the quotes of the `api-key` value. The second matters when the value is
/// written with TOML escapes (`"gwk\u005F…"`): then the decoded key does not occur byte for
/// byte, but its escaped form is what the disk holds. A copy elsewhere in some other escaped
/// form cannot be recognised and stays; the docs ask for seeds written plainly.
fn plan_scrub(bytes: &[u8]) -> Option<Scrub> {
    let text = std::str::from_utf8(bytes).ok()?;
    without_api_key(text)?;
    let (table, _) = DeTable::parse_recoverable(text);
    let (_, value) = table
        .get_ref()
        .iter()
        .find(|(k, _)| k.get_ref() == "api-key")?;
    let mut ranges = Vec::new();
    if let toml::de::DeValue::String(key) = value.get_ref()
        && let Some(inside) = between_quotes(text, value.span())
    {
        ranges.extend(occurrences(bytes, key.as_bytes()));
        ranges.extend(occurrences(bytes, text[inside.clone()].as_bytes()));
        ranges.push(inside);
    }
    let ranges = merged(ranges);
    let mut filled = bytes.to_vec();
    for r in &ranges {
        filled[r.clone()].fill(FILLER);
    }
    // The filler is ASCII written over whole ranges, so the text stays UTF-8.
    let filled = String::from_utf8(filled).ok()?;
    // From the filled text, so that no copy of the key (a comment) comes back in the new file.
    // It parses unless the key's bytes also stood in the TOML syntax around a value (a key
    // such as `account`): then the filled text itself is written; the key is gone either way.
    let scrubbed = without_api_key(&filled).unwrap_or(filled);
    Some(Scrub { ranges, scrubbed })
}

/// The bytes between the delimiters of a string literal at `span` (`"…"`, `'…'`, `"""…"""`,
/// `'''…'''`).
fn between_quotes(text: &str, span: Range<usize>) -> Option<Range<usize>> {
    let raw = text.get(span.clone())?;
    let quote = if raw.starts_with("\"\"\"") || raw.starts_with("'''") {
        3
    } else if raw.starts_with(['"', '\'']) {
        1
    } else {
        return None;
    };
    (raw.len() >= 2 * quote).then(|| span.start + quote..span.end - quote)
}

/// Where `needle` occurs in `haystack` (overlapping occurrences too); nothing for short needles.
fn occurrences(haystack: &[u8], needle: &[u8]) -> Vec<Range<usize>> {
    if needle.len() < MIN_SEARCHED {
        return Vec::new();
    }
    haystack
        .windows(needle.len())
        .enumerate()
        .filter(|(_, w)| *w == needle)
        .map(|(i, _)| i..i + needle.len())
        .collect()
}

/// The ranges sorted, overlapping and touching ones joined.
fn merged(mut ranges: Vec<Range<usize>>) -> Vec<Range<usize>> {
    ranges.retain(|r| !r.is_empty());
    ranges.sort_by_key(|r| r.start);
    let mut out: Vec<Range<usize>> = Vec::new();
    for r in ranges {
        match out.last_mut() {
            Some(last) if r.start <= last.end => last.end = last.end.max(r.end),
            _ => out.push(r),
        }
    }
    out
}

/// Removes the API key from every writable seed that holds one: `/etc/gateway/seed.toml`,
/// `/boot/gateway-seed.toml`, and the `GWSEED` filesystem the seed was read from (`gwseed`, as
/// recorded when the settings were collected; no other). First the key's bytes are overwritten
/// in the file's own blocks (ext4 and FAT write a rewritten range where it was), flushed to the
/// disk, then the file is replaced by the seed without the `api-key` line. Replacing alone
/// would leave the key in freed blocks. Returns what it could not do (as warnings: the server
/// is registered; a leftover key is worth fixing, not failing for). Messages name the file,
/// never the key.
pub fn scrub_api_key(root: &Root, gwseed: Option<&UsedGwseed>) -> Vec<String> {
    let mut warnings = Vec::new();
    for path in [ETC_SEED, BOOT_SEED] {
        scrub_seed_file(&root.path(path), path, &mut warnings);
    }
    if let Some(used) = gwseed {
        scrub_gwseed(root, used, &mut warnings);
    }
    warnings
}

/// [`scrub_api_key`] for the seed on the `GWSEED` filesystem `used`, if it is still there.
fn scrub_gwseed(root: &Root, used: &UsedGwseed, warnings: &mut Vec<String>) {
    let device = root.path(&used.device);
    let shown = format!("{}:{GWSEED_FILE}", used.device);
    let by_hand = "if the stick the seed came from still holds the API key, remove its api-key \
                   line by hand (or wipe the stick)";
    match gwseed::volume_id(&device) {
        Ok(id) if id == used.volume_id => {}
        Ok(_) => {
            warnings.push(format!(
                "{} now holds another filesystem than the one the seed was read from (stick \
                 swapped?): left alone; {by_hand}",
                used.device
            ));
            return;
        }
        Err(e) => {
            warnings.push(format!(
                "{} cannot be read any more ({e}; stick removed?): the API key was not removed \
                 from {shown}; {by_hand}",
                used.device
            ));
            return;
        }
    }
    let Ok(Some(bytes)) = gwseed::read_file(&device, GWSEED_FILE, seed::MAX_SEED_BYTES) else {
        return; // no seed any more
    };
    let Some(plan) = plan_scrub(&bytes) else {
        return; // no key in it
    };
    let ranges: Vec<Range<u64>> = plan
        .ranges
        .iter()
        .map(|r| r.start as u64..r.end as u64)
        .collect();
    match gwseed::overwrite_in_place(&device, GWSEED_FILE, &ranges, FILLER) {
        Ok(()) => crate::commands::provision::failpoint("after-scrub-overwrite"),
        Err(e) => warnings.push(format!(
            "overwriting the API key in place in {shown}: {e}; the stick may still hold it in \
             freed space: wipe it (or reformat it) once provisioned"
        )),
    }
    match gwseed::replace_file(&device, GWSEED_FILE, plan.scrubbed.as_bytes()) {
        Ok(()) => {
            log::info!(MESSAGE_ID = crate::progress::MSG_KEY_SCRUBBED, SEED = shown.as_str(); "removed the API key from {shown}")
        }
        Err(e) => warnings.push(format!(
            "could not remove the API key from {shown} ({e}); remove the api-key line by hand"
        )),
    }
}

/// [`scrub_api_key`] for one seed file on a mounted filesystem (`/etc` on ext4, `/boot` on the
/// ESP's FAT). `shown` is the appliance path, for messages.
fn scrub_seed_file(real: &Path, shown: &str, warnings: &mut Vec<String>) {
    let Ok(bytes) = std::fs::read(real) else {
        return; // no such seed
    };
    if bytes.len() > seed::MAX_SEED_BYTES {
        return; // not read as a seed either (seed-too-large)
    }
    let Some(read) = plan_scrub(&bytes) else {
        return;
    };
    let mode = std::fs::metadata(real)
        .map(|m| m.permissions().mode() & 0o7777)
        .unwrap_or(0o600);
    let plan = match overwrite_seed_file(real, mode) {
        Ok(Some(plan)) => {
            crate::commands::provision::failpoint("after-scrub-overwrite");
            plan
        }
        Ok(None) => return, // changed meanwhile, and holds no key now
        Err(e) => {
            warnings.push(format!(
                "overwriting the API key in place in {shown}: {e}; the filesystem may keep it \
                 in freed blocks until they are reused"
            ));
            read
        }
    };
    match fsutil::write_atomic(real, plan.scrubbed.as_bytes(), mode) {
        Ok(()) => {
            log::info!(MESSAGE_ID = crate::progress::MSG_KEY_SCRUBBED, SEED = shown; "removed the API key from {shown}")
        }
        Err(e) => warnings.push(format!(
            "could not remove the API key from {shown} ({e}); remove the api-key line by hand"
        )),
    }
}

/// Overwrites the key's bytes in the seed file's own blocks and flushes them to the disk.
/// Returns the scrub planned from what it read through the same handle (`None`: no key).
fn overwrite_seed_file(real: &Path, mode: u32) -> io::Result<Option<Scrub>> {
    let open = || OpenOptions::new().read(true).write(true).open(real);
    let mut file = match open() {
        // The unit runs as root without CAP_DAC_OVERRIDE: it may replace a file whose mode
        // says read-only (the directory is writable) but not open it for writing. As its
        // owner it may make it writable; the rewrite gives the new file the old mode.
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied && mode & 0o200 == 0 => {
            std::fs::set_permissions(real, std::fs::Permissions::from_mode(mode | 0o200))?;
            open()?
        }
        other => other?,
    };
    let mut bytes = Vec::new();
    (&mut file)
        .take(seed::MAX_SEED_BYTES as u64 + 1)
        .read_to_end(&mut bytes)?;
    let Some(plan) = plan_scrub(&bytes) else {
        return Ok(None);
    };
    fsutil::overwrite_in_place(&file, &plan.ranges, FILLER)?;
    Ok(Some(plan))
}

/// Marks provisioning done (the unit's and the gateway's condition).
pub fn mark_done(root: &Root, server_id: &str) -> Result<(), Failure> {
    fsutil::write_atomic(
        &root.path(DONE_MARKER),
        format!("{server_id}\n").as_bytes(),
        0o644,
    )
    .map_err(|e| io(format!("writing {DONE_MARKER}"), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_key_goes() {
        let cases: &[(&str, Option<&str>)] = &[
            (
                "# seed\nprimary = \"p.example\"\napi-key = \"gwk_secret\" # from the portal\naccount = \"a.example\"\n",
                Some("# seed\nprimary = \"p.example\"\naccount = \"a.example\"\n"),
            ),
            ("api-key = 'gwk_secret'", Some("")),
            ("primary = \"p\"\napi-key = \"\"\n", None),
            ("primary = \"p\"\n", None),
            ("api-key = \"broken\n", None),
            (
                "api-key = \"\"\"\ngwk_multi\n\"\"\"\nprimary = \"p\"\n",
                Some("primary = \"p\"\n"),
            ),
        ];
        for (input, want) in cases {
            assert_eq!(without_api_key(input).as_deref(), *want, "{input:?}");
        }
    }

    const KEY: &str = "gwk_0123456789abcdefABCDEF";

    fn holds(bytes: &[u8], needle: &str) -> bool {
        bytes.windows(needle.len()).any(|w| w == needle.as_bytes())
    }

    fn parses(text: &str) -> bool {
        DeTable::parse_recoverable(text).1.is_empty()
    }

    #[test]
    fn the_plan_covers_every_copy_of_the_key_and_keeps_the_seed_valid() {
        let cases: &[(&str, &str)] = &[
            (
                "primary = \"p\"\napi-key = \"gwk_0123456789abcdefABCDEF\" # key\n",
                "primary = \"p\"\n",
            ),
            // A commented-out copy goes too, from the in-place step and from the new file.
            (
                "# old: api-key = \"gwk_0123456789abcdefABCDEF\"\napi-key = 'gwk_0123456789abcdefABCDEF'\n",
                "# old: api-key = \"xxxxxxxxxxxxxxxxxxxxxxxxxx\"\n",
            ),
            // TOML escapes: the decoded key is not in the file byte for byte.
            (
                "api-key = \"gwk\\u005F0123456789abcdefABCDEF\"\naccount = \"a\"\n",
                "account = \"a\"\n",
            ),
            (
                "api-key = \"\"\"\ngwk_0123456789abcdefABCDEF\\\n  \"\"\"\naccount = \"a\"\n",
                "account = \"a\"\n",
            ),
        ];
        for (input, want) in cases {
            let plan = plan_scrub(input.as_bytes()).expect(input);
            let mut filled = input.as_bytes().to_vec();
            for r in &plan.ranges {
                filled[r.clone()].fill(FILLER);
            }
            let filled = String::from_utf8(filled).unwrap();
            assert!(
                !filled.contains(KEY) && !filled.contains("u005F"),
                "{filled}"
            );
            assert!(
                parses(&filled),
                "stays TOML after the in-place step: {filled}"
            );
            let value = toml::from_str::<toml::Table>(&filled).unwrap()["api-key"].clone();
            assert!(
                value.as_str().unwrap().bytes().all(|b| b == FILLER),
                "{value}"
            );
            assert_eq!(plan.scrubbed, *want, "{input:?}");
        }
    }

    #[test]
    fn short_keys_other_values_and_no_keys() {
        // A short key is overwritten only in its own value, not wherever its letters occur.
        let text = "account = \"abcd.example\"\napi-key = \"abcd\"\n";
        let at = text.rfind("abcd").unwrap();
        let plan = plan_scrub(text.as_bytes()).unwrap();
        assert_eq!(plan.ranges, vec![at..at + 4]);
        assert_eq!(plan.scrubbed, "account = \"abcd.example\"\n");
        let plan = plan_scrub(b"api-key = 12345\naccount = \"a\"\n").unwrap();
        assert!(plan.ranges.is_empty());
        assert_eq!(plan.scrubbed, "account = \"a\"\n");
        for none in [
            &b"api-key = \"  \"\n"[..],
            b"account = \"a\"\n",
            b"api-key = \"gwk_0123456789abcdefABCDEF\n",
            b"api-key = \"gwk_0123456789abcdef\xff\"\n",
        ] {
            assert_eq!(plan_scrub(none), None, "{}", String::from_utf8_lossy(none));
        }
    }

    /// A tree with seeds in /etc (mode 0400) and /boot, and two GWSEED filesystems, the stick
    /// /dev/sda (volume ID 0x5717c4) and the image's partition /dev/vda3, each holding KEY.
    fn tree_with_seeds() -> (tempfile::TempDir, Root) {
        let dir = tempfile::tempdir().unwrap();
        let root = Root::new(dir.path());
        let etc = root.path(ETC_SEED);
        std::fs::create_dir_all(etc.parent().unwrap()).unwrap();
        std::fs::write(
            &etc,
            format!("# etc seed\nprimary = \"p.example\"\napi-key = \"{KEY}\"\naccount = \"a.example\"\n"),
        )
        .unwrap();
        std::fs::set_permissions(&etc, std::fs::Permissions::from_mode(0o400)).unwrap();
        let boot = root.path(BOOT_SEED);
        std::fs::create_dir_all(boot.parent().unwrap()).unwrap();
        std::fs::write(&boot, format!("api-key = \"{KEY}\" # portal\n")).unwrap();
        std::fs::create_dir_all(root.path("/dev")).unwrap();
        let seed = format!("account = \"a.example\"\napi-key = \"{KEY}\"\n");
        for (device, id) in [("/dev/sda", STICK), ("/dev/vda3", 0x1234)] {
            gwseed::tests::fat_image_id(&root.path(device), id, &[("seed.toml", seed.as_bytes())]);
        }
        (dir, root)
    }

    const STICK: u32 = 0x5717c4;

    fn stick() -> UsedGwseed {
        UsedGwseed {
            device: "/dev/sda".into(),
            volume_id: STICK,
        }
    }

    #[test]
    fn scrub_overwrites_the_old_blocks_then_replaces_every_seed() {
        let (_dir, root) = tree_with_seeds();
        let partition = std::fs::read(root.path("/dev/vda3")).unwrap();
        // Handles on the files as they are: after the rename they still reach the old inodes,
        // i.e. the blocks the filesystem frees.
        let mut old: Vec<(&str, std::fs::File)> = [ETC_SEED, BOOT_SEED]
            .into_iter()
            .map(|p| (p, std::fs::File::open(root.path(p)).unwrap()))
            .collect();
        let warnings = scrub_api_key(&root, Some(&stick()));
        assert!(warnings.is_empty(), "{warnings:?}");
        for (path, file) in &mut old {
            let mut bytes = Vec::new();
            file.read_to_end(&mut bytes).unwrap();
            assert!(
                !holds(&bytes, KEY),
                "{path}: the old blocks still hold the key"
            );
            assert!(parses(std::str::from_utf8(&bytes).unwrap()), "{path}");
            let now = std::fs::read_to_string(root.path(*path)).unwrap();
            assert!(parses(&now) && !now.contains("api-key"), "{path}: {now}");
        }
        assert_eq!(
            std::fs::read_to_string(root.path(ETC_SEED)).unwrap(),
            "# etc seed\nprimary = \"p.example\"\naccount = \"a.example\"\n"
        );
        let mode = std::fs::metadata(root.path(ETC_SEED))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o400, "the seed keeps its mode");
        let device = root.path("/dev/sda");
        assert!(
            !holds(&std::fs::read(&device).unwrap(), KEY),
            "the stick still holds the key"
        );
        let seed = gwseed::read_file(&device, GWSEED_FILE, 1024)
            .unwrap()
            .unwrap();
        assert_eq!(seed, b"account = \"a.example\"\n");
        assert_eq!(
            std::fs::read(root.path("/dev/vda3")).unwrap(),
            partition,
            "the GWSEED filesystem the seed did not come from is left alone"
        );
        // Nothing left to do the second time, and nothing said.
        assert!(scrub_api_key(&root, Some(&stick())).is_empty());
    }

    #[test]
    fn a_swapped_or_removed_stick_is_left_alone_and_said() {
        let (_dir, root) = tree_with_seeds();
        let before = std::fs::read(root.path("/dev/sda")).unwrap();
        let other = UsedGwseed {
            volume_id: STICK + 1,
            ..stick()
        };
        let warnings = scrub_api_key(&root, Some(&other));
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(
            warnings[0].starts_with(
                "/dev/sda now holds another filesystem than the one the seed was read from"
            ),
            "{warnings:?}"
        );
        assert_eq!(std::fs::read(root.path("/dev/sda")).unwrap(), before);

        std::fs::remove_file(root.path("/dev/sda")).unwrap();
        let warnings = scrub_api_key(&root, Some(&stick()));
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(
            warnings[0].starts_with("/dev/sda cannot be read any more"),
            "{warnings:?}"
        );
        assert!(warnings.iter().all(|w| !w.contains(KEY)));
        // Without a GWSEED seed in use, no GWSEED filesystem is touched.
        let partition = std::fs::read(root.path("/dev/vda3")).unwrap();
        assert!(scrub_api_key(&root, None).is_empty());
        assert_eq!(std::fs::read(root.path("/dev/vda3")).unwrap(), partition);
    }
}
