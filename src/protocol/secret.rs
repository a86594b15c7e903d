//! A string that must never reach a log, the console, a status file or an error message.

use std::fmt;

/// The text every output path prints in place of a secret.
pub const REDACTED: &str = "[redacted]";

/// A secret value (the API key, a proxy URL with its password). `Debug`, `Display` and
/// `Serialize` print its shown form: [`REDACTED`], or for a value with a public part the text
/// given to [`Secret::shown_as`] (a proxy URL with the password replaced by [`REDACTED`]).
/// The only way to the text is [`Secret::expose`], which callers use to put it on the wire.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Secret(String, Option<String>);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into(), None)
    }

    /// A secret whose every text form is `shown`, which the caller built without the secret
    /// part (`http://user:[redacted]@proxy.acme.lan:3128`).
    pub fn shown_as(value: impl Into<String>, shown: impl Into<String>) -> Self {
        Self(value.into(), Some(shown.into()))
    }

    /// What every text form prints.
    pub fn shown(&self) -> &str {
        self.1.as_deref().unwrap_or(REDACTED)
    }

    /// The secret text, for sending it to the primary. Never format it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn is_blank(&self) -> bool {
        self.0.trim().is_empty()
    }

    /// Number of characters, for error messages that must not show the value.
    pub fn char_count(&self) -> usize {
        self.0.chars().count()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.shown())
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.shown())
    }
}

impl serde::Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.shown())
    }
}

impl<'de> serde::Deserialize<'de> for Secret {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(Secret::new)
    }
}

/// For wire formats only (`#[serde(serialize_with = "...")]`): writes the secret's text.
pub fn serialize_exposed<S: serde::Serializer>(
    secret: &Secret,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(secret.expose())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_formatting_path_redacts() {
        let s = Secret::new("gwk_live_0123456789abcdef");
        assert_eq!(format!("{s}"), REDACTED);
        assert_eq!(format!("{s:?}"), REDACTED);
        assert_eq!(format!("{:?}", Some(&s)), format!("Some({REDACTED})"));
        assert_eq!(
            serde_json::to_string(&s).unwrap(),
            format!("\"{REDACTED}\"")
        );
        assert_eq!(s.expose(), "gwk_live_0123456789abcdef");
        let url = Secret::shown_as("http://u:pw@p:3128", "http://u:[redacted]@p:3128");
        for text in [
            format!("{url}"),
            format!("{url:?}"),
            serde_json::to_string(&url).unwrap(),
        ] {
            assert!(text.contains("http://u:[redacted]@p:3128"), "{text}");
            assert!(!text.contains("pw"), "{text}");
        }
    }
}
