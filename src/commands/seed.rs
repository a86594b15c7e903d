//! `seed embed|show|clear IMAGE`: the factory line writes a customer's seed into the
//! `GWSEED` partition of the hardware image, without mounting anything. `embed` validates the
//! seed first, with the very checks (and words) of `gateway-firstboot check`.

use crate::cli::{SeedArgs, SeedCommand};
use crate::disk;
use crate::exit;
use crate::problem::{Code, Problem};
use crate::root::Root;
use crate::settings::{self, Collected, GWSEED_DEVICE, GWSEED_FILE, Key, Source, seed};
use std::io::{Read, Seek, SeekFrom, Write};

fn shown() -> String {
    format!("{GWSEED_DEVICE}:{GWSEED_FILE}")
}

pub fn run(args: &SeedArgs) -> anyhow::Result<u8> {
    match &args.command {
        SeedCommand::Embed { image, seed } => embed(image, seed),
        SeedCommand::Show { image, json } => show(image, *json),
        SeedCommand::Clear { image } => clear(image),
    }
}

fn image_error(image: &std::path::Path, e: std::io::Error) -> u8 {
    eprintln!("gateway-firstboot: error: {}: {e}", image.display());
    if e.kind() == std::io::ErrorKind::NotFound {
        exit::NOINPUT
    } else {
        exit::IOERR
    }
}

/// Validates a seed as `check` would find it on the appliance's GWSEED partition.
fn validate(text: &str) -> (bool, Vec<Problem>) {
    let (layer, problems) = seed::parse(text, Source::Seed(shown()));
    let collected = Collected {
        layers: vec![layer, settings::builtin_layer()],
        problems,
        given: true,
        gwseed: None,
    };
    // Validated against an absent root: nothing of the host is read.
    let (_, mut problems) = settings::validate(&Root::new("/nonexistent"), &collected);
    // The image supplies the default key; a CA path is read on the appliance, not here.
    problems.retain(|p| p.code != Code::ApiKeyMissing);
    let mut unverifiable = Vec::new();
    problems.retain(|p| {
        let skip = p.code == Code::InvalidPrimaryCa && p.message.starts_with("reading ");
        if skip {
            unverifiable.push(p.subject.clone());
        }
        !skip
    });
    for subject in unverifiable {
        problems.push(Problem::warning(
            Code::CaPathUnchecked,
            subject,
            "the CA file is read on the appliance; it was not checked here",
        ));
    }
    (!problems.iter().any(Problem::is_error), problems)
}

fn embed(image: &std::path::Path, seed_path: &std::path::Path) -> anyhow::Result<u8> {
    let mut text = String::new();
    let read = if seed_path.as_os_str() == "-" {
        std::io::stdin()
            .lock()
            .take(seed::MAX_SEED_BYTES as u64 + 1)
            .read_to_string(&mut text)
    } else {
        std::fs::File::open(seed_path).and_then(|f| {
            f.take(seed::MAX_SEED_BYTES as u64 + 1)
                .read_to_string(&mut text)
        })
    };
    if let Err(e) = read {
        eprintln!(
            "gateway-firstboot: error: reading {}: {e}",
            seed_path.display()
        );
        return Ok(exit::NOINPUT);
    }
    let (ok, problems) = validate(&text);
    let mut out = std::io::stdout().lock();
    super::check::print_problems(&mut out, &problems)?;
    if !ok {
        writeln!(out, "the seed was not embedded: fix the errors above")?;
        return Ok(exit::DATAERR);
    }
    let slice = match disk::open_gwseed(image, true) {
        Ok(s) => s,
        Err(e) => return Ok(image_error(image, e)),
    };
    let fs = fatfs::FileSystem::new(slice, fatfs::FsOptions::new())?;
    {
        let mut f = fs.root_dir().create_file(GWSEED_FILE)?;
        let old = f.seek(SeekFrom::End(0))?;
        f.seek(SeekFrom::Start(0))?;
        f.write_all(text.as_bytes())?;
        // Zero what a longer old seed held, so no old key stays in the cluster.
        f.write_all(&vec![0u8; old.saturating_sub(text.len() as u64) as usize])?;
        f.seek(SeekFrom::Start(text.len() as u64))?;
        f.truncate()?;
        f.flush()?;
    }
    fs.unmount()?;
    writeln!(
        out,
        "embedded {} into the GWSEED partition of {}",
        seed_path.display(),
        image.display()
    )?;
    Ok(exit::OK)
}

fn read_seed(image: &std::path::Path) -> Result<Option<String>, u8> {
    let slice = disk::open_gwseed(image, false).map_err(|e| image_error(image, e))?;
    let fs = fatfs::FileSystem::new(slice, fatfs::FsOptions::new())
        .map_err(|e| image_error(image, e))?;
    let mut text = String::new();
    match fs.root_dir().open_file(GWSEED_FILE) {
        Ok(mut f) => {
            f.read_to_string(&mut text)
                .map_err(|e| image_error(image, e))?;
            Ok(Some(text))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(image_error(image, e)),
    }
}

fn show(image: &std::path::Path, json: bool) -> anyhow::Result<u8> {
    let text = match read_seed(image) {
        Ok(Some(t)) => t,
        Ok(None) => {
            println!("the GWSEED partition of {} holds no seed", image.display());
            return Ok(exit::NOINPUT);
        }
        Err(code) => return Ok(code),
    };
    let (layer, problems) = seed::parse(&text, Source::Seed(shown()));
    if json {
        let mut map = serde_json::Map::new();
        for e in &layer.entries {
            map.insert(e.key.name().into(), e.value.to_json());
        }
        println!("{}", serde_json::to_string_pretty(&map)?);
    } else {
        for &key in Key::ALL {
            if let Some(e) = layer.get(key) {
                let value = if e.value.is_blank_secret() {
                    "\"\" (the image's default key)".to_string()
                } else {
                    e.value.to_string()
                };
                println!("{key} = {value}");
            }
        }
    }
    let mut err = std::io::stderr().lock();
    super::check::print_problems(&mut err, &problems)?;
    Ok(exit::OK)
}

fn clear(image: &std::path::Path) -> anyhow::Result<u8> {
    let slice = match disk::open_gwseed(image, true) {
        Ok(s) => s,
        Err(e) => return Ok(image_error(image, e)),
    };
    let fs = fatfs::FileSystem::new(slice, fatfs::FsOptions::new())?;
    let removed = match fs.root_dir().open_file(GWSEED_FILE) {
        Ok(mut f) => {
            let len = f.seek(SeekFrom::End(0))?;
            f.seek(SeekFrom::Start(0))?;
            f.write_all(&vec![0u8; len as usize])?;
            f.flush()?;
            drop(f);
            fs.root_dir().remove(GWSEED_FILE)?;
            true
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
        Err(e) => return Err(e.into()),
    };
    fs.unmount()?;
    if removed {
        println!(
            "cleared the seed from the GWSEED partition of {}",
            image.display()
        );
    } else {
        println!("the GWSEED partition of {} held no seed", image.display());
    }
    Ok(exit::OK)
}
