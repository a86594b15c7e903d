//! Property tests: no input, however malformed, makes a parser panic.

use gateway_firstboot::settings::{Source, cmdline, credentials, gwseed, seed};
use gateway_test_support::fat::Fat;
use proptest::prelude::*;
use std::sync::OnceLock;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn cmdline_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = cmdline::parse(&bytes);
    }

    #[test]
    fn cmdline_of_our_alphabet_never_panics(s in r#"([ "=\t-]|gateway\.|api_key|primary|systemd\.set_credential|x){0,40}"#) {
        let (layer, problems) = cmdline::parse(s.as_bytes());
        // Whatever was read came from a gateway.* parameter or produced a problem, never both lost.
        prop_assert!(layer.entries.len() + problems.len() <= s.len());
    }

    #[test]
    fn seed_never_panics(text in "\\PC{0,300}") {
        let _ = seed::parse(&text, Source::Seed("/etc/gateway/seed.toml".into()));
    }

    #[test]
    fn seed_like_text_never_panics(text in r#"(primary|api-key|account|deadline|\[|\]|=| |"|'|\n|[0-9]|x|,|\{|\}|#|\\){0,80}"#) {
        let (_, problems) = seed::parse(&text, Source::Seed("/etc/gateway/seed.toml".into()));
        for p in problems {
            prop_assert!(!p.message.is_empty());
        }
    }

    #[test]
    fn credentials_never_panic(name in "gateway\\.[a-z_.-]{0,20}", bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        let _ = credentials::parse(&name, &bytes);
    }
}

/// A valid GWSEED image, made once.
fn base_image() -> &'static [u8] {
    static IMAGE: OnceLock<Vec<u8>> = OnceLock::new();
    IMAGE.get_or_init(|| {
        Fat::gwseed(&[("seed.toml", b"primary = \"p.example\"\n")]).bytes(1024 * 1024)
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    /// A damaged stick must give an error, not bring the agent down.
    #[test]
    fn damaged_fat_never_panics(mutations in proptest::collection::vec((0usize..40 * 1024, any::<u8>()), 1..24)) {
        let mut image = base_image().to_vec();
        for (offset, byte) in mutations {
            image[offset] = byte;
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gwseed.img");
        std::fs::write(&path, &image).unwrap();
        let _ = gwseed::read_file(&path, "seed.toml", 64 * 1024);
    }
}
