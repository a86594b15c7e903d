//! The agent's environment as a source: `https_proxy` / `HTTPS_PROXY` and `no_proxy` /
//! `NO_PROXY`, as curl reads them (the lowercase name first), for a deployer who sets them in
//! a unit drop-in (`Environment=https_proxy=http://proxy.acme.lan:3128`). The lowest source
//! above the built-in defaults; `show-config` names the variable (`env:https_proxy`).

use super::{Entry, Key, Layer, Origin, RawValue, Source};

/// The variables read for each setting, in the order they are tried.
pub const VARIABLES: &[(Key, &[&str])] = &[
    (Key::Proxy, &["https_proxy", "HTTPS_PROXY"]),
    (Key::NoProxy, &["no_proxy", "NO_PROXY"]),
];

/// The layer of the variables `get` finds (blank ones are ignored, as curl ignores them).
pub fn layer(get: impl Fn(&str) -> Option<String>) -> Layer {
    let mut layer = Layer::new(Source::Env(String::new()));
    for &(key, names) in VARIABLES {
        let found = names.iter().find_map(|&name| {
            get(name)
                .filter(|v| !v.trim().is_empty())
                .map(|v| (name, v))
        });
        if let Some((name, text)) = found {
            layer.entries.push(Entry {
                key,
                value: RawValue::from_text(key, text.trim()),
                origin: Origin::new(Source::Env(name.to_string())),
            });
        }
    }
    layer
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lowercase_first_blank_ignored_password_held_as_a_secret() {
        let vars = |name: &str| match name {
            "https_proxy" => Some("http://u:pw-in-env@proxy.example:3128".to_string()),
            "HTTPS_PROXY" => Some("http://other.example:1".to_string()),
            "no_proxy" => Some(" ".to_string()),
            "NO_PROXY" => Some("primary.example, .lan".to_string()),
            _ => None,
        };
        let layer = layer(vars);
        let proxy = layer.get(Key::Proxy).unwrap();
        assert_eq!(proxy.origin.source.tag(), "env:https_proxy");
        assert!(matches!(&proxy.value, RawValue::Secret(s) if s.expose().contains("pw-in-env")));
        assert_eq!(
            proxy.value.to_string(),
            "http://u:[redacted]@proxy.example:3128"
        );
        let no_proxy = layer.get(Key::NoProxy).unwrap();
        assert_eq!(no_proxy.origin.source.tag(), "env:NO_PROXY");
        assert_eq!(
            no_proxy.value,
            RawValue::List(vec!["primary.example".into(), ".lan".into()])
        );
        assert!(super::layer(|_| None).entries.is_empty());
    }
}
