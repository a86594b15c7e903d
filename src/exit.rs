//! Exit codes, from sysexits(3), so that units and scripts can tell failures apart
//! (`RestartPreventExitStatus=` lists the permanent ones). Documented in docs/exit-codes.md.

/// Success.
pub const OK: u8 = 0;
/// The agent's own command line is wrong.
pub const USAGE: u8 = 64;
/// The settings are invalid (a seed, the kernel command line, a credential or a flag).
pub const DATAERR: u8 = 65;
/// No settings were found anywhere: nothing to provision from yet.
pub const NOINPUT: u8 = 66;
/// A bug or an unexpected internal failure.
pub const SOFTWARE: u8 = 70;
/// Reading or writing a file failed.
pub const IOERR: u8 = 74;

/// The table shown at the end of `--help`.
pub const HELP: &str = "\
Exit status:
  0   success
  64  usage error in the agent's own command line
  65  invalid settings (every problem is printed with its source and fix)
  66  no settings found: no flag, kernel parameter, credential or seed
  70  internal error (a bug: please report it)
  74  input/output error";
