//! The shape shared by the two code enums, [`crate::failure::Code`] (why a command stopped)
//! and [`crate::problem::Code`] (what validation found in the settings): a fieldless enum
//! whose serde form is its kebab-case name (the strings the state file, `status --json`,
//! `check --json` and the journal's `CODE=` field have always carried), with `ALL` to
//! iterate it in tests and docs, and `as_str` for the journal.

/// Declares a code enum: `Variant = "kebab-name"` per code, each with a doc comment.
/// The string is written out so that `grep key-rejected` finds the variant; a unit test
/// ([`check_names`]) checks it is the serde name too.
macro_rules! code_enum {
    (
        $(#[$meta:meta])*
        pub enum $name:ident {
            $( $(#[doc = $doc:literal])* $variant:ident = $text:literal, )*
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
        #[serde(rename_all = "kebab-case")]
        pub enum $name {
            $( $(#[doc = $doc])* $variant, )*
        }

        impl $name {
            /// Every code, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant),*];

            /// The stable, machine-readable name (its serde form).
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text),*
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

pub(crate) use code_enum;

/// Checks that every code's `as_str` is its serde name, and that names are unique.
#[cfg(test)]
pub(crate) fn check_names<C>(all: &[C], as_str: impl Fn(&C) -> &'static str)
where
    C: serde::Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug,
{
    let mut seen = std::collections::BTreeSet::new();
    for code in all {
        let name = as_str(code);
        assert_eq!(
            serde_json::to_value(code).unwrap(),
            serde_json::Value::from(name),
            "{code:?}"
        );
        assert_eq!(
            &serde_json::from_value::<C>(name.into()).unwrap(),
            code,
            "{name}"
        );
        assert!(seen.insert(name), "{name} twice");
    }
}
