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
/// The primary could not be reached or kept failing (transient errors until the deadline).
pub const UNAVAILABLE: u8 = 69;
/// A bug or an unexpected internal failure.
pub const SOFTWARE: u8 = 70;
/// Reading or writing a file failed.
pub const IOERR: u8 = 74;
/// The deadline passed while retrying; running again later may succeed.
pub const TEMPFAIL: u8 = 75;
/// The primary answered something that is not the protocol.
pub const PROTOCOL: u8 = 76;
/// The API key was refused (unknown, expired, not allowed from here) or the server rejected.
pub const NOPERM: u8 = 77;
/// The settings do not fit the primary (unknown account domain, untrusted certificate, ...).
pub const CONFIG: u8 = 78;

/// The installer was cancelled (Ctrl-C) before it changed anything, or `reset` was not
/// confirmed; 128 + SIGINT, as a shell reports an interrupted command.
pub const CANCELLED: u8 = 130;

/// The table shown at the end of `--help`.
pub const HELP: &str = "\
Exit status:
  0   success
  64  usage error in the agent's own command line
  65  invalid settings (every problem is printed with its source and fix)
  66  no settings found: no flag, kernel parameter, credential or seed
  69  the primary is unreachable (check --online, reset)
  70  internal error (a bug: please report it)
  74  input/output error
  75  gave up retrying at the deadline; running again may succeed
  76  the primary's answer does not follow the protocol
  77  API key refused, or the server was rejected
  78  settings do not fit the primary (account, certificate)
  130 the installer (or reset) was cancelled before it changed anything
status: 0 trusted, 1 failed, 2 done with warnings, 3 waiting for
  authorization, 4 in progress";
