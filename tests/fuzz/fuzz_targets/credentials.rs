//! systemd credentials (`$CREDENTIALS_DIRECTORY/gateway.*`): the input is the credential's
//! name after `gateway.`, a newline, then its content. `gateway.seed` holds a whole seed;
//! every other name holds one setting.
#![no_main]

use gateway_firstboot::settings::{Key, PARAM_PREFIX, credentials, seed};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (name, content) = match data.iter().position(|&b| b == b'\n') {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    // The agent reads names from a directory (UTF-8 here) and at most MAX_SEED_BYTES of each.
    let Ok(name) = std::str::from_utf8(name) else {
        return;
    };
    if content.len() > seed::MAX_SEED_BYTES {
        return;
    }
    let full = format!("{PARAM_PREFIX}{name}");
    let (entry, seed_layer, problems) = credentials::parse(&full, content);
    assert!(
        entry.is_none() || seed_layer.is_none(),
        "one credential, one kind"
    );
    if entry.is_none() && seed_layer.is_none() {
        assert!(
            !problems.is_empty(),
            "{full}: nothing read and nothing said"
        );
    }
    if let Some(entry) = entry {
        assert_eq!(Some(entry.key), Key::from_param_name(name));
        assert!(problems.is_empty());
    }
});
