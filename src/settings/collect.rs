//! Gathers settings from every source, highest precedence first:
//! flags > kernel command line > credentials (`gateway.<key>`, then `gateway.seed`)
//! > `/etc/gateway/seed.toml` > `/boot/gateway-seed.toml` > `seed.toml` on `GWSEED`
//! > vendor defaults (`/usr/lib/gateway-firstboot/defaults.toml`)
//! > the environment (`https_proxy`, `no_proxy`) > built-in defaults.
//!
//! The built-in defaults are a layer like the others ([`builtin_layer`], always present), so
//! every setting with a default has an entry and validation has no defaults of its own.

use super::gwseed::{self, UsedGwseed};
use super::{
    BOOT_SEED, ETC_SEED, Entry, GWSEED_FILE, Key, Kind, Layer, Origin, PROC_CMDLINE, RawValue,
    Source, VENDOR_DEFAULTS, cmdline, credentials, seed,
};
use crate::problem::{Code, Problem};
use crate::root::Root;
use std::io::{self, Read};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// What the caller supplies besides the files: the agent's own flags and the environment.
#[derive(Debug, Default)]
pub struct Inputs {
    /// Values from the agent's command-line flags.
    pub flags: Option<Layer>,
    /// Problems met while reading flags (an unreadable `--api-key-file`).
    pub flag_problems: Vec<Problem>,
    /// `$CREDENTIALS_DIRECTORY`, an appliance path (resolved under the root).
    pub credentials_dir: Option<PathBuf>,
    /// The proxy settings from the agent's environment ([`super::env::layer`]).
    pub env: Option<Layer>,
}

/// Every source's values, in precedence order, and the problems met reading them.
#[derive(Debug)]
pub struct Collected {
    pub layers: Vec<Layer>,
    pub problems: Vec<Problem>,
    /// Some source other than the vendor defaults gave a value, or tried to and failed.
    pub given: bool,
    /// The `GWSEED` filesystem whose seed is among the layers: the one to scrub.
    pub gwseed: Option<UsedGwseed>,
}

impl Collected {
    /// The value that wins for `key`. A blank API key means "the default restricted key", so
    /// it gives way to the vendor default when there is one.
    pub fn effective(&self, key: Key) -> Option<&Entry> {
        let winner = self.layers.iter().find_map(|l| l.get(key))?;
        // A blank proxy means "none", whatever lower sources say.
        if key == Key::ApiKey && winner.value.is_blank_secret() {
            let default = self
                .layers
                .iter()
                .filter(|l| matches!(l.source, Source::Default(_)))
                .find_map(|l| l.get(key))
                .filter(|e| !e.value.is_blank_secret());
            return default.or(Some(winner));
        }
        Some(winner)
    }

    /// True when some source other than the vendor defaults supplied anything (even something
    /// broken): without that there is nothing to provision from yet.
    pub fn has_seed(&self) -> bool {
        self.given
    }

    /// True when some source other than the defaults names the primary or the account,
    /// or a source is broken: there is something to provision from, or to report. Until then
    /// the unit waits for a seed (`provision --wait-for-seed`); site-wide settings alone (a CA
    /// pin in a credential) do not end the wait.
    pub fn has_target(&self) -> bool {
        self.problems.iter().any(Problem::is_error)
            || self
                .layers
                .iter()
                .filter(|l| !l.source.is_default())
                .any(|l| l.get(Key::Primary).is_some() || l.get(Key::Account).is_some())
    }
}

/// Reads every source under `root`.
pub fn collect(root: &Root, inputs: Inputs) -> Collected {
    let mut layers = Vec::new();
    let mut problems = inputs.flag_problems;
    if let Some(flags) = inputs.flags {
        layers.push(flags);
    }

    match std::fs::read(root.path(PROC_CMDLINE)) {
        Ok(bytes) => {
            let (layer, mut found) = cmdline::parse(&bytes);
            problems.append(&mut found);
            layers.push(layer);
        }
        // Only a test tree or a chroot lacks /proc/cmdline; that is no problem.
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            log::debug!("no {PROC_CMDLINE} under {}", root.dir().display());
        }
        Err(e) => problems.push(Problem::error(
            Code::CmdlineUnreadable,
            PROC_CMDLINE,
            format!("reading: {e}"),
        )),
    }

    if let Some(dir) = &inputs.credentials_dir {
        let shown = dir.display().to_string();
        let (layer, seed_layer, mut found) = credentials::read_dir(&root.path(dir), &shown);
        problems.append(&mut found);
        layers.push(layer);
        layers.extend(seed_layer);
    }

    for path in [ETC_SEED, BOOT_SEED] {
        if let Some(layer) = read_seed_file(root, path, &mut problems) {
            layers.push(layer);
        }
    }
    let gwseed = read_gwseed(root, &mut problems).map(|(layer, used)| {
        layers.push(layer);
        used
    });
    let given =
        problems.iter().any(Problem::is_error) || layers.iter().any(|l| !l.entries.is_empty());
    if let Some(text) = read_document(&root.path(VENDOR_DEFAULTS), VENDOR_DEFAULTS, &mut problems) {
        let (layer, mut found) = seed::parse(&text, Source::Default(VENDOR_DEFAULTS.into()));
        problems.append(&mut found);
        layers.push(layer);
    }
    // Below every file: a deployer's `Environment=https_proxy=…` is the site's fallback.
    layers.extend(inputs.env);
    layers.push(builtin_layer());

    problems.extend(disagreements(&layers));
    Collected {
        layers,
        problems,
        given,
        gwseed,
    }
}

/// The agent's own defaults ([`Key::builtin_default`]): the lowest layer, under the vendor
/// defaults. Booleans are held as booleans, as a seed file holds them.
pub fn builtin_layer() -> Layer {
    let mut layer = Layer::new(Source::BuiltIn);
    layer.entries = Key::ALL
        .iter()
        .filter_map(|&key| {
            let text = key.builtin_default()?;
            let value = match key.kind() {
                Kind::Bool => text
                    .parse()
                    .map_or_else(|_| RawValue::from_text(key, text), RawValue::Bool),
                _ => RawValue::from_text(key, text),
            };
            Some(Entry {
                key,
                value,
                origin: Origin::new(Source::BuiltIn),
            })
        })
        .collect();
    layer
}

/// Reads a small text document; `None` if it does not exist (or cannot be used, with a problem).
fn read_document(real: &Path, shown: &str, problems: &mut Vec<Problem>) -> Option<String> {
    let result = std::fs::File::open(real).and_then(|f| {
        let mut bytes = Vec::new();
        f.take(seed::MAX_SEED_BYTES as u64 + 1)
            .read_to_end(&mut bytes)?;
        Ok(bytes)
    });
    let bytes = match result {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return None,
        Err(e) => {
            problems.push(
                Problem::error(
                    Code::SeedUnreadable,
                    shown,
                    format!("reading: {}", io_reason(&e)),
                )
                .fix("make it a regular file readable by root"),
            );
            return None;
        }
    };
    decode(bytes, shown, problems)
}

fn decode(bytes: Vec<u8>, shown: &str, problems: &mut Vec<Problem>) -> Option<String> {
    if bytes.len() > seed::MAX_SEED_BYTES {
        problems.push(
            Problem::error(
                Code::SeedTooLarge,
                shown,
                format!("larger than {} bytes", seed::MAX_SEED_BYTES),
            )
            .fix("a seed holds a few settings; check that the right file is in place"),
        );
        return None;
    }
    match String::from_utf8(bytes) {
        Ok(text) => Some(text),
        Err(e) => {
            problems.push(
                Problem::error(
                    Code::SeedNotText,
                    shown,
                    format!("not UTF-8 text (byte {})", e.utf8_error().valid_up_to()),
                )
                .fix("save the seed as UTF-8 text"),
            );
            None
        }
    }
}

pub(super) fn io_reason(e: &io::Error) -> String {
    match e.raw_os_error() {
        Some(code) => nix::errno::Errno::from_raw(code).desc().to_lowercase(),
        None => e.to_string(),
    }
}

fn read_seed_file(root: &Root, path: &str, problems: &mut Vec<Problem>) -> Option<Layer> {
    let real = root.path(path);
    let text = read_document(&real, path, problems)?;
    let (layer, mut found) = seed::parse(&text, Source::Seed(path.into()));
    problems.append(&mut found);
    let secret = |e: &&Entry| match &e.value {
        RawValue::Secret(s) => e.key.holds_secret(s.expose()),
        _ => false,
    };
    if let Some(key_entry) = Key::ALL
        .iter()
        .find_map(|&key| layer.get(key).filter(secret))
        && let Some(mode) = readable_by_others(&real)
    {
        problems.push(
            Problem::warning(
                Code::SeedReadable,
                path,
                format!(
                    "holds {} (line {}) but is readable by other users (mode {mode:04o})",
                    key_entry.key.secret_name(),
                    key_entry.origin.line.unwrap_or(0)
                ),
            )
            .fix(format!("chmod 600 {path}")),
        );
    }
    Some(layer)
}

/// The file's permission bits if group or others may read it, on a filesystem that has
/// permissions at all (FAT's are made up by mount options, so a warning there would be noise).
fn readable_by_others(path: &Path) -> Option<u32> {
    let mode = std::fs::metadata(path).ok()?.mode() & 0o7777;
    if mode & 0o044 == 0 {
        return None;
    }
    let fs = nix::sys::statfs::statfs(path).ok()?;
    (fs.filesystem_type() != nix::sys::statfs::MSDOS_SUPER_MAGIC).then_some(mode)
}

/// The seed on the one `GWSEED` filesystem the order picks (see [`gwseed::decide`]), named by
/// its device (`/dev/sdb1:seed.toml`), and that filesystem, for the scrub after registration.
fn read_gwseed(root: &Root, problems: &mut Vec<Problem>) -> Option<(Layer, UsedGwseed)> {
    let mut decision = gwseed::find(root);
    problems.append(&mut decision.problems);
    let found = decision.used?;
    let shown = format!("{}:{GWSEED_FILE}", found.device);
    let used = found.used();
    let text = decode(found.bytes, &shown, problems)?;
    let (layer, mut found) = seed::parse(&text, Source::Seed(shown));
    problems.append(&mut found);
    Some((layer, used))
}

/// Two seed files giving one setting different values is almost always a leftover: say so.
fn disagreements(layers: &[Layer]) -> Vec<Problem> {
    let seeds: Vec<&Layer> = layers
        .iter()
        .filter(|l| matches!(l.source, Source::Seed(_)))
        .collect();
    let mut problems = Vec::new();
    for &key in Key::ALL {
        let entries: Vec<&Entry> = seeds.iter().filter_map(|l| l.get(key)).collect();
        let Some((first, rest)) = entries.split_first() else {
            continue;
        };
        let differing: Vec<&&Entry> = rest.iter().filter(|e| e.value != first.value).collect();
        if differing.is_empty() {
            continue;
        }
        let mut says = vec![first];
        says.extend(differing);
        let message = if key.is_secret() {
            let places: Vec<String> = says.iter().map(|e| e.origin.describe()).collect();
            format!(
                "the seed files disagree on {key} (values not shown): {}",
                places.join(", ")
            )
        } else {
            let places: Vec<String> = says
                .iter()
                .map(|e| format!("{} says {}", e.origin.describe(), e.value))
                .collect();
            format!("the seed files disagree on {key}: {}", places.join(", "))
        };
        problems.push(
            Problem::warning(Code::SeedsDisagree, key.name(), message).fix(format!(
                "{} wins; remove the stale value from the others",
                first.origin.describe()
            )),
        );
    }
    problems
}
