//! Provisioning settings: where they come from (`sources`), how sources combine (`merge`),
//! and how they are checked (`validate`).

pub mod cmdline;
pub mod collect;
pub mod credentials;
pub mod env;
pub mod gwseed;
mod keys;
pub mod seed;
pub mod validate;

pub use collect::{Collected, builtin_layer, collect};
pub use keys::{Key, Kind};
pub use validate::{Settings, validate};

use crate::secret::Secret;
use serde::Serialize;
use std::fmt;

/// Appliance paths of the seed sources, in precedence order (highest first).
pub const ETC_SEED: &str = "/etc/gateway/seed.toml";
pub const BOOT_SEED: &str = "/boot/gateway-seed.toml";
pub const GWSEED_LABEL: &str = "GWSEED";
pub const GWSEED_DEVICE: &str = "/dev/disk/by-label/GWSEED";
pub const GWSEED_FILE: &str = "seed.toml";
pub const VENDOR_DEFAULTS: &str = "/usr/lib/gateway-firstboot/defaults.toml";
pub const PROC_CMDLINE: &str = "/proc/cmdline";
/// Prefix of our kernel command line parameters and credential names.
pub const PARAM_PREFIX: &str = "gateway.";
/// Credential holding a whole seed file.
pub const SEED_CREDENTIAL: &str = "gateway.seed";

/// Where a value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A command-line flag of the agent.
    Flag,
    /// The kernel command line.
    Cmdline,
    /// A systemd credential, by name.
    Credential(String),
    /// A seed file, by appliance path (`GWSEED` as `/dev/disk/by-label/GWSEED:seed.toml`).
    Seed(String),
    /// The vendor defaults file.
    Default(String),
    /// An environment variable of the agent (`https_proxy`), e.g. from a unit drop-in's
    /// `Environment=`: the lowest source above the built-in defaults.
    Env(String),
    /// The agent's own default.
    BuiltIn,
}

impl Source {
    /// The short tag shown by `show-config` (`seed:/etc/gateway/seed.toml`).
    pub fn tag(&self) -> String {
        match self {
            Source::Flag => "flag".into(),
            Source::Cmdline => "cmdline".into(),
            Source::Credential(name) => format!("credential:{name}"),
            Source::Seed(path) => format!("seed:{path}"),
            Source::Default(path) => format!("default:{path}"),
            Source::Env(name) => format!("env:{name}"),
            Source::BuiltIn => "built-in".into(),
        }
    }

    /// True for the image's and the agent's own defaults: values nobody gave for this server.
    pub fn is_default(&self) -> bool {
        matches!(self, Source::Default(_) | Source::BuiltIn)
    }
}

/// A source plus, for documents, the line of the value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    pub source: Source,
    pub line: Option<usize>,
}

impl Origin {
    pub fn new(source: Source) -> Self {
        Self { source, line: None }
    }

    pub fn at_line(source: Source, line: usize) -> Self {
        Self {
            source,
            line: Some(line),
        }
    }

    /// Names a setting in the words of its source, for messages:
    /// `gateway.account from /proc/cmdline`, `account from /etc/gateway/seed.toml line 3`,
    /// `--account flag`.
    pub fn subject(&self, key: Key) -> String {
        let line = self.line.map(|l| format!(" line {l}")).unwrap_or_default();
        match &self.source {
            Source::Flag => format!("{} flag", key.flag()),
            Source::Cmdline => format!("{PARAM_PREFIX}{} from {PROC_CMDLINE}", key.param_name()),
            Source::Credential(name) if name == SEED_CREDENTIAL => {
                format!("{key} from credential {name}{line}")
            }
            Source::Credential(name) => {
                format!("{PARAM_PREFIX}{} from credential {name}", key.param_name())
            }
            Source::Seed(path) | Source::Default(path) => format!("{key} from {path}{line}"),
            Source::Env(name) => format!("{key} from environment variable {name}"),
            Source::BuiltIn => format!("{key} (built-in default)"),
        }
    }

    /// Names the source itself, for problems that are not about one setting.
    pub fn describe(&self) -> String {
        let line = self.line.map(|l| format!(" line {l}")).unwrap_or_default();
        match &self.source {
            Source::Flag => "command line flags".into(),
            Source::Cmdline => PROC_CMDLINE.into(),
            Source::Credential(name) => format!("credential {name}{line}"),
            Source::Seed(path) | Source::Default(path) => format!("{path}{line}"),
            Source::Env(name) => format!("environment variable {name}"),
            Source::BuiltIn => "built-in defaults".into(),
        }
    }
}

/// A value as a source gave it, before validation. Secrets are held as [`Secret`] from the
/// moment they are read; a secret setting given in a form that is not text keeps only the name
/// of that form, never the value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RawValue {
    Text(String),
    Secret(Secret),
    Int(i64),
    Bool(bool),
    List(Vec<String>),
    /// A TOML value of a type no setting takes (`a float`, `a table`, ...).
    Other(&'static str),
}

impl RawValue {
    /// Turns the text a source gave (command line, credential, flag) into the value of `key`.
    pub fn from_text(key: Key, text: &str) -> RawValue {
        match key.kind() {
            Kind::Secret => RawValue::Secret(key.secret(text)),
            Kind::List => RawValue::List(
                text.split([',', '\n'])
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(str::to_string)
                    .collect(),
            ),
            Kind::Text | Kind::Bool | Kind::Duration | Kind::Integer => {
                RawValue::Text(text.to_string())
            }
        }
    }

    /// True for an API key given blank: "use the image's default restricted key".
    pub fn is_blank_secret(&self) -> bool {
        matches!(self, RawValue::Secret(s) if s.is_blank())
    }

    /// What kind of value this is, for "expected X, found Y" messages.
    pub fn type_name(&self) -> &'static str {
        match self {
            RawValue::Text(_) | RawValue::Secret(_) => "a string",
            RawValue::Int(_) => "an integer",
            RawValue::Bool(_) => "a boolean",
            RawValue::List(_) => "an array",
            RawValue::Other(name) => name,
        }
    }

    /// The value for JSON output; secrets are redacted.
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::Value;
        match self {
            RawValue::Text(s) => Value::String(s.clone()),
            RawValue::Secret(s) => Value::String(s.to_string()),
            RawValue::Int(i) => Value::from(*i),
            RawValue::Bool(b) => Value::Bool(*b),
            RawValue::List(items) => Value::from(items.clone()),
            RawValue::Other(name) => Value::String(format!("({name})")),
        }
    }
}

impl fmt::Display for RawValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RawValue::Text(s) => write!(f, "{s:?}"),
            RawValue::Secret(s) => write!(f, "{s}"),
            RawValue::Int(i) => write!(f, "{i}"),
            RawValue::Bool(b) => write!(f, "{b}"),
            RawValue::List(items) => write!(f, "{items:?}"),
            RawValue::Other(name) => write!(f, "({name})"),
        }
    }
}

impl Serialize for RawValue {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.to_json().serialize(serializer)
    }
}

/// One value from one source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub key: Key,
    pub value: RawValue,
    pub origin: Origin,
}

impl Entry {
    pub fn subject(&self) -> String {
        self.origin.subject(self.key)
    }
}

/// The values one source supplied.
#[derive(Debug, Clone)]
pub struct Layer {
    pub source: Source,
    pub entries: Vec<Entry>,
}

impl Layer {
    pub fn new(source: Source) -> Self {
        Self {
            source,
            entries: Vec::new(),
        }
    }

    pub fn get(&self, key: Key) -> Option<&Entry> {
        // A later duplicate (the kernel's last-one-wins) overrides an earlier one.
        self.entries.iter().rev().find(|e| e.key == key)
    }
}
