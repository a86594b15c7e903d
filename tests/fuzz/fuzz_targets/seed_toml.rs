//! Seed documents (`/etc/gateway/seed.toml`, `/boot/gateway-seed.toml`, `seed.toml` on a
//! GWSEED stick, the `gateway.seed` credential): parsed, then validated as `check` and
//! `seed embed` do. A document that parses is written back by the installer's own writer
//! (`seed::with_entries`) and must read back to the very same settings.
#![no_main]

use gateway_firstboot::root::Root;
use gateway_firstboot::settings::{self, Collected, Key, Layer, RawValue, Source, seed};
use libfuzzer_sys::fuzz_target;

fn settings_of(layer: &Layer) -> Vec<(Key, RawValue)> {
    let mut pairs: Vec<_> = layer
        .entries
        .iter()
        .map(|e| (e.key, e.value.clone()))
        .collect();
    pairs.sort_by_key(|(key, _)| *key);
    pairs
}

fuzz_target!(|data: &[u8]| {
    // The agent reads at most MAX_SEED_BYTES of a seed, as UTF-8 text.
    if data.len() > seed::MAX_SEED_BYTES {
        return;
    }
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let source = Source::Seed("/etc/gateway/seed.toml".into());
    let (layer, problems) = seed::parse(text, source.clone());
    for p in &problems {
        assert!(!p.message.is_empty() && !p.subject.is_empty(), "{p:?}");
    }
    let collected = Collected {
        // As the agent stacks them: the built-in defaults under the seed.
        layers: vec![layer.clone(), settings::builtin_layer()],
        problems: problems.clone(),
        given: true,
        gwseed: None,
    };
    // As `seed embed` validates: against an absent root, so nothing of the host is read.
    let _ = settings::validate(&Root::new("/nonexistent"), &collected);

    // Only documents that parsed cleanly, with values of setting types, are written back
    // (`with_entries` skips a value it cannot write, as a float where a string belongs).
    if !problems.is_empty()
        || layer
            .entries
            .iter()
            .any(|e| matches!(e.value, RawValue::Other(_)))
    {
        return;
    }
    let want = settings_of(&layer);
    for entries in [&layer.entries[..], &[]] {
        let written = seed::with_entries(text, entries, "written by the fuzzer\nsecond line")
            .expect("a seed that parsed is valid TOML");
        let (again, problems) = seed::parse(&written, source.clone());
        assert!(
            problems.is_empty(),
            "{text:?} written back as {written:?}: {problems:?}"
        );
        assert_eq!(
            settings_of(&again),
            want,
            "{text:?} written back as {written:?}"
        );
    }
});
