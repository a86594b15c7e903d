//! Why provisioning could not go on: a stable code, a one-line message and fix, and whether
//! retrying can help. Messages never contain the API key or the server token.

use crate::exit;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::time::Duration;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failure {
    pub code: String,
    pub message: String,
    pub fix: String,
    /// Permanent failures stop at once; transient ones are retried until the deadline.
    pub permanent: bool,
    /// The primary's `Retry-After`, if it gave one.
    #[serde(skip)]
    pub retry_after: Option<Duration>,
}

impl Failure {
    pub fn permanent(code: &str, message: impl Into<String>, fix: impl Into<String>) -> Self {
        Failure {
            code: code.into(),
            message: message.into(),
            fix: fix.into(),
            permanent: true,
            retry_after: None,
        }
    }

    pub fn transient(code: &str, message: impl Into<String>, fix: impl Into<String>) -> Self {
        Failure {
            permanent: false,
            ..Failure::permanent(code, message, fix)
        }
    }

    /// The exit status for this failure (docs/exit-codes.md).
    pub fn exit_code(&self) -> u8 {
        match self.code.as_str() {
            "deadline" => exit::TEMPFAIL,
            "key-rejected"
            | "key-expired"
            | "key-ip-not-allowed"
            | "key-account-mismatch"
            | "key-restricted"
            | "server-rejected" => exit::NOPERM,
            "protocol" | "not-a-primary" => exit::PROTOCOL,
            "io" => exit::IOERR,
            "settings-invalid" => exit::DATAERR,
            "no-settings" => exit::NOINPUT,
            _ if self.permanent => exit::CONFIG,
            _ => exit::UNAVAILABLE,
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} [{}]\n  fix: {}", self.message, self.code, self.fix)
    }
}

impl From<std::io::Error> for Failure {
    fn from(e: std::io::Error) -> Self {
        Failure::permanent(
            "io",
            e.to_string(),
            "check the disk and the permissions of /var/lib and /etc",
        )
    }
}

/// Wraps an I/O error with what was being done.
pub fn io(what: impl fmt::Display, e: std::io::Error) -> Failure {
    Failure::permanent(
        "io",
        format!("{what}: {e}"),
        "check that the file system is writable and has space",
    )
}
