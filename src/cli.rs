//! The command line. Every argument carries its documentation; the man page and shell
//! completions are generated from these definitions.

use crate::exit;
use crate::problem::{Code, Problem};
use crate::secret::Secret;
use crate::settings::{Entry, Key, Layer, Origin, RawValue, Source};
use clap::{Args, Parser, Subcommand};
use std::io::Read;
use std::path::PathBuf;

#[derive(Debug, Parser)]
#[command(
    name = "gateway-firstboot",
    version,
    about = "First-boot provisioning agent of the print-management gateway appliance",
    long_about = "First-boot provisioning agent of the print-management gateway appliance.\n\n\
        Reads the primary server address, the account domain name and the API key from the \
        command line, the kernel command line, systemd credentials, seed files or the GWSEED \
        stick, checks them, and registers this server with the primary.",
    after_long_help = exit::HELP,
    max_term_width = 80
)]
pub struct Cli {
    /// Resolve every path the agent reads or writes under DIR (for tests and image builds)
    #[arg(long, global = true, value_name = "DIR", default_value = "/")]
    pub root: PathBuf,

    /// Log more (repeat for more); GATEWAY_FIRSTBOOT_LOG=debug does the same
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Show the effective settings and where each one came from
    ShowConfig(ShowConfigArgs),
    /// Check the settings offline (and with --online, against the primary)
    Check(CheckArgs),
    /// Provision this server: DNS self-check, validate with the primary, register, hand off
    Provision(ProvisionArgs),
    /// Wait until an administrator authorizes this server, then prove the secure connection
    AwaitTrust(AwaitTrustArgs),
    /// Renew the client certificate once two thirds of its lifetime have passed (re-enrol
    /// once it has expired); gateway-firstboot-renew.timer runs it
    Renew(RenewArgs),
    /// Show where provisioning stands (exit 0 trusted, 1 failed, 2 warnings, 3 waiting, 4 busy)
    Status(StatusArgs),
    /// Write, show or clear the seed in a factory image's GWSEED partition (no mounting)
    Seed(SeedArgs),
    /// Ask for the primary, the account and the API key on the console, check them with the
    /// primary, save them in /etc/gateway/seed.toml and provision
    Install(InstallArgs),
    /// Write systemd-networkd's files for the network settings (static address, gateway,
    /// DNS, VLAN); gateway-firstboot-network.service runs it before the network starts
    ApplyNetwork(ApplyNetworkArgs),
    /// Deregister from the primary and wipe what provisioning made, so that the next boot
    /// (or install) provisions again; the seeds are kept
    Reset(ResetArgs),
    /// At boot: whether this box is the one its identity was made on; a copy (a cloned VM)
    /// does not use it and provisions as a new server
    #[command(
        long_about = "Compare the hardware recorded when this server's key pair was made \
        (the SMBIOS product UUID, and the machine ID once committed) with this box's. The same \
        box: nothing happens. Another one (a VM copied after it was provisioned, booted with \
        another product UUID, or a copy whose /etc/machine-id was made anew): the copied \
        identity is not used. It is wiped as `reset` would (the private key overwritten first, \
        the state, gateway.toml), without asking the primary to remove the server (that one is \
        the original's), and this box gets a machine identity of its own; it is said on the \
        console and in the journal. gateway-firstboot.service then provisions the box as a new \
        server if a seed is there, or waits for its settings. \
        gateway-firstboot-identity.service runs it at every boot, before the gateway. See \
        docs/lifecycle.md."
    )]
    CheckIdentity,
}

#[derive(Debug, Args)]
#[command(
    long_about = "Take this gateway out of its account and back to how it was before its \
    first boot. First the primary is asked to remove this server (DELETE /api/v1/servers/ID \
    with the server token; a few attempts within 30 seconds). Then the agent's state and \
    done-marker (/var/lib/gateway-firstboot), the identity (/var/lib/gateway/identity, the \
    private key overwritten before it is removed), /etc/gateway/gateway.toml, the console \
    line and the network files the handoff kept in /etc/systemd/network are wiped. The seeds \
    stay, so the next boot (or gateway-firstboot install) provisions again.\n\n\
    A reset cut short (a power cut) completes when run again, or at the next boot before \
    provisioning starts. See docs/lifecycle.md."
)]
pub struct ResetArgs {
    /// Keep the registration: do not ask the primary to remove this server, and keep the key
    /// pair and the machine identity, so that provisioning again gets the same server id
    #[arg(long)]
    pub keep_registration: bool,

    /// Go on when the primary cannot be reached (or refuses): the primary then keeps a
    /// stale record of this server, which an administrator must remove there
    #[arg(long)]
    pub force: bool,

    /// Do not ask for confirmation (needed without a terminal)
    #[arg(long, short = 'y')]
    pub yes: bool,
}

#[derive(Debug, Args)]
#[command(
    long_about = "Write systemd-networkd's files for the network settings (address, gateway, \
    dns-servers, search-domains, vlan, interface) from every source, as provisioning reads \
    them: under /run/systemd/network before provisioning, under /etc/systemd/network once \
    provisioned. Without network settings, removes the files it wrote (the image's DHCP \
    again). Invalid settings write nothing and exit 65, each problem printed with its source \
    and fix."
)]
pub struct ApplyNetworkArgs {
    /// Then have systemd-networkd read the files again (networkctl reload), for a network
    /// that is up already
    #[arg(long)]
    pub reload: bool,

    #[command(flatten)]
    pub settings: SettingsArgs,
}

#[derive(Debug, Args)]
#[command(
    long_about = "Ask for the primary server address, the account domain name and the \
    API key on the terminal (the key masked; blank means the default restricted key), check \
    each answer, validate them with the primary, ask again for whatever is wrong, then save \
    them in /etc/gateway/seed.toml (mode 0600) and provision in the foreground.\n\n\
    Without a terminal nothing is asked: --primary, --account and --api-key-file give the \
    answers. Other settings flags are used and saved too."
)]
pub struct InstallArgs {
    /// Run as the console setup (gateway-firstboot-installer@.service, no login): nothing when
    /// provisioned or when a seed exists; asks again until provisioned; Ctrl-C, or a seed that
    /// turns up meanwhile, ends it (and the login prompt comes back)
    #[arg(long)]
    pub console: bool,

    #[command(flatten)]
    pub settings: SettingsArgs,
}

#[derive(Debug, Args)]
pub struct SeedArgs {
    #[command(subcommand)]
    pub command: SeedCommand,
}

#[derive(Debug, Subcommand)]
pub enum SeedCommand {
    /// Validate SEED (as `check` does) and write it into IMAGE's GWSEED partition
    Embed {
        /// Raw disk image with a GWSEED partition, or a bare FAT image
        image: PathBuf,
        /// Seed file ("-" for standard input)
        seed: PathBuf,
    },
    /// Print the seed in IMAGE's GWSEED partition, the API key redacted
    Show {
        /// Raw disk image with a GWSEED partition, or a bare FAT image
        image: PathBuf,
        /// Print JSON
        #[arg(long)]
        json: bool,
    },
    /// Remove the seed from IMAGE's GWSEED partition (its bytes overwritten)
    Clear {
        /// Raw disk image with a GWSEED partition, or a bare FAT image
        image: PathBuf,
    },
}

#[derive(Debug, Args)]
pub struct ProvisionArgs {
    /// With no settings anywhere, wait for a seed (the installer's, a GWSEED stick) instead of
    /// stopping with exit status 66; the unit runs with this
    #[arg(long)]
    pub wait_for_seed: bool,

    /// With --wait-for-seed: while waiting, run the setup questions on each console terminal
    /// (gateway-firstboot-installer@TTY.service on tty1 and the serial console), in place of
    /// the login prompt; the unit runs with this
    #[arg(long, requires = "wait_for_seed")]
    pub console_installer: bool,

    #[command(flatten)]
    pub settings: SettingsArgs,
}

#[derive(Debug, Args)]
pub struct AwaitTrustArgs {
    /// Longest wait between two polls of the primary (backoff grows to it)
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = parse_duration)]
    pub poll_max: std::time::Duration,

    /// Give up after DURATION (30s, 2m; a bare number is seconds; default: wait for ever)
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub timeout: Option<std::time::Duration>,

    /// Command run once trusted ("none" for nothing; default on the real system:
    /// systemctl try-restart gateway.service, under --root: nothing)
    #[arg(long, value_name = "COMMAND")]
    pub notify_command: Option<String>,
}

#[derive(Debug, Args)]
#[command(
    long_about = "Keep the trusted server's client certificate current. Until two thirds of \
    its lifetime have passed, nothing happens (it says when renewal is due). Then a new \
    certificate signing request for the same key pair goes to the primary over mutual TLS \
    with the current certificate (POST /api/v1/servers/ID/certificate), retried with backoff \
    and jitter until the certificate expires or --timeout; the new certificate is proved with \
    the secure hello, stored in /var/lib/gateway/identity/cert.pem, and the gateway is told \
    (systemctl reload-or-try-restart gateway.service). Once the primary says the certificate \
    has expired, the server re-enrols instead (POST /api/v1/servers/ID/enrolment with its \
    server token and a new request): the primary shows it not trusted until an administrator \
    clicks Authorize again, and gateway-firstboot-trust.service waits for that as at the \
    first boot. gateway-firstboot-renew.timer runs it twice a day. See docs/lifecycle.md."
)]
pub struct RenewArgs {
    /// Renew now, whatever the certificate's age
    #[arg(long)]
    pub force: bool,

    /// Longest wait between two attempts (backoff grows to it)
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = parse_duration)]
    pub poll_max: std::time::Duration,

    /// Give up after DURATION (30s, 2m; a bare number is seconds; default: when the
    /// certificate expires)
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub timeout: Option<std::time::Duration>,

    /// Command run once renewed ("none" for nothing; default on the real system:
    /// systemctl reload-or-try-restart gateway.service, under --root: nothing)
    #[arg(long, value_name = "COMMAND")]
    pub notify_command: Option<String>,

    /// Command run once re-enrolled ("none" for nothing; default on the real system:
    /// systemctl start --no-block gateway-firstboot-trust.service, under --root: nothing)
    #[arg(long, value_name = "COMMAND")]
    pub trust_command: Option<String>,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Print JSON
    #[arg(long)]
    pub json: bool,

    /// Wait while provisioning is in progress
    #[arg(long)]
    pub wait: bool,

    /// With --wait, give up after DURATION (30s, 2m; a bare number is seconds) and exit 4
    #[arg(long, value_name = "DURATION", requires = "wait", value_parser = parse_duration)]
    pub timeout: Option<std::time::Duration>,
}

fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    let text = crate::settings::RawValue::Text(s.to_string());
    crate::settings::validate::parse_duration_value(&text)
        .ok_or_else(|| format!("{s:?} is not a duration (30s, 5m, 1h)"))
}

#[derive(Debug, Args)]
pub struct ShowConfigArgs {
    /// Print JSON: {"SETTING": {"value": ..., "origin": ...}, ...}
    #[arg(long)]
    pub json: bool,

    #[command(flatten)]
    pub settings: SettingsArgs,
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Print the result as JSON
    #[arg(long)]
    pub json: bool,

    /// Also connect to the primary and validate the account and key (registers nothing)
    #[arg(long)]
    pub online: bool,

    #[command(flatten)]
    pub settings: SettingsArgs,
}

/// Settings given as flags; they override every other source.
#[derive(Debug, Args, Default)]
#[command(next_help_heading = "Settings (override every other source)")]
pub struct SettingsArgs {
    /// Primary server: host, host:port, IPv4, [IPv6]:port or https:// URL
    #[arg(long, value_name = "ADDRESS")]
    pub primary: Option<String>,

    /// DNS name of the account this server attaches to
    #[arg(long, value_name = "DOMAIN")]
    pub account: Option<String>,

    /// Read the API key from FILE ("-" for standard input); blank means the default key
    #[arg(long, value_name = "FILE")]
    pub api_key_file: Option<PathBuf>,

    /// This server's host name or FQDN
    #[arg(long, value_name = "NAME")]
    pub hostname: Option<String>,

    /// DNS self-check policy: warn, require or off
    #[arg(long, value_name = "POLICY")]
    pub dns_check: Option<String>,

    /// DNS server for the self-check (repeat for more)
    #[arg(long = "nameserver", value_name = "IP[:PORT]")]
    pub nameservers: Vec<String>,

    /// CA certificate of the primary: a PEM file
    #[arg(long, value_name = "PEM-FILE")]
    pub primary_ca: Option<String>,

    /// SHA-256 fingerprint pinning the primary's certificate or CA
    #[arg(long, value_name = "HEX")]
    pub primary_ca_sha256: Option<String>,

    /// Time allowed for one connection attempt (30s, 2m)
    #[arg(long, value_name = "DURATION")]
    pub connect_timeout: Option<String>,

    /// Time allowed for one request (30s, 2m)
    #[arg(long, value_name = "DURATION")]
    pub request_timeout: Option<String>,

    /// How long to retry transient failures (30m, 2h, infinity)
    #[arg(long, value_name = "DURATION")]
    pub deadline: Option<String>,

    /// Allow a plain http:// primary (testing only)
    #[arg(long)]
    pub insecure_http: bool,

    /// Static address with prefix length, 192.0.2.10/24 (repeat for more; default: DHCP)
    #[arg(long = "address", value_name = "IP/PREFIX")]
    pub addresses: Vec<String>,

    /// Default gateway (router) for the static address
    #[arg(long, value_name = "IP")]
    pub gateway: Option<String>,

    /// DNS server this server uses (repeat for more; default: DHCP's)
    #[arg(long = "dns-server", value_name = "IP")]
    pub dns_servers: Vec<String>,

    /// DNS search domain (repeat for more; default: DHCP's)
    #[arg(long = "search-domain", value_name = "DOMAIN")]
    pub search_domains: Vec<String>,

    /// VLAN id (1-4094) of the server network (default: untagged)
    #[arg(long, value_name = "ID")]
    pub vlan: Option<String>,

    /// Network link for these settings: name or MAC address (default: every Ethernet link)
    #[arg(long, value_name = "NAME|MAC")]
    pub interface: Option<String>,

    /// HTTP proxy to reach the primary through: http://[USER:PASSWORD@]HOST:PORT
    /// (a password here is visible in ps: prefer a seed or a credential)
    #[arg(long, value_name = "URL")]
    pub proxy: Option<String>,

    /// Hosts reached without the proxy: names, .domain suffixes, IPs, CIDR ranges, *
    /// (comma-separated)
    #[arg(long, value_name = "LIST")]
    pub no_proxy: Option<String>,
}

impl SettingsArgs {
    /// The flags as the highest-precedence layer, and any problem reading the key file.
    pub fn to_layer(&self) -> (Layer, Vec<Problem>) {
        let mut layer = Layer::new(Source::Flag);
        let mut problems = Vec::new();
        let mut push = |key: Key, value: RawValue| {
            layer.entries.push(Entry {
                key,
                value,
                origin: Origin::new(Source::Flag),
            })
        };
        let texts = [
            (Key::Primary, &self.primary),
            (Key::Account, &self.account),
            (Key::Hostname, &self.hostname),
            (Key::DnsCheck, &self.dns_check),
            (Key::PrimaryCa, &self.primary_ca),
            (Key::PrimaryCaSha256, &self.primary_ca_sha256),
            (Key::ConnectTimeout, &self.connect_timeout),
            (Key::RequestTimeout, &self.request_timeout),
            (Key::Deadline, &self.deadline),
            (Key::Gateway, &self.gateway),
            (Key::Vlan, &self.vlan),
            (Key::Interface, &self.interface),
        ];
        for (key, value) in texts {
            if let Some(v) = value {
                push(key, RawValue::Text(v.clone()));
            }
        }
        let lists = [
            (Key::Nameservers, &self.nameservers),
            (Key::Address, &self.addresses),
            (Key::DnsServers, &self.dns_servers),
            (Key::SearchDomains, &self.search_domains),
        ];
        for (key, items) in lists {
            if !items.is_empty() {
                push(key, RawValue::List(items.clone()));
            }
        }
        if self.insecure_http {
            push(Key::InsecureHttp, RawValue::Bool(true));
        }
        for (key, value) in [(Key::Proxy, &self.proxy), (Key::NoProxy, &self.no_proxy)] {
            if let Some(v) = value {
                push(key, RawValue::from_text(key, v));
            }
        }
        if let Some(path) = &self.api_key_file {
            match read_key_file(path) {
                Ok(key) => push(Key::ApiKey, RawValue::Secret(key)),
                Err(e) => problems.push(
                    Problem::error(
                        Code::ApiKeyFileUnreadable,
                        "--api-key-file flag",
                        format!("reading {}: {e}", path.display()),
                    )
                    .fix("give a readable file holding only the key, or - to read it from standard input"),
                ),
            }
        }
        (layer, problems)
    }
}

fn read_key_file(path: &std::path::Path) -> std::io::Result<Secret> {
    let mut text = String::new();
    if path.as_os_str() == "-" {
        std::io::stdin()
            .lock()
            .take(4096)
            .read_to_string(&mut text)?;
    } else {
        std::fs::File::open(path)?
            .take(4096)
            .read_to_string(&mut text)?;
    }
    Ok(Secret::new(text.trim()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn help_fits_80_columns() {
        let mut cmd = Cli::command();
        cmd.build();
        let mut pages = vec![cmd.render_long_help().to_string()];
        for sub in cmd.get_subcommands_mut() {
            pages.push(sub.render_long_help().to_string());
        }
        for page in pages {
            for line in page.lines() {
                assert!(line.chars().count() <= 80, "too wide: {line:?}");
            }
        }
    }

    #[test]
    fn every_argument_of_every_command_says_what_it_is() {
        use clap::CommandFactory;
        fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>, seen: &mut usize) {
            for arg in cmd.get_arguments() {
                *seen += 1;
                let generated = matches!(arg.get_id().as_str(), "help" | "version");
                if arg.get_help().is_none() && !arg.is_hide_set() && !generated {
                    missing.push(format!("{path} {}", arg.get_id()));
                }
            }
            for sub in cmd.get_subcommands() {
                walk(sub, &format!("{path} {}", sub.get_name()), missing, seen);
            }
        }
        let (mut missing, mut seen) = (Vec::new(), 0);
        walk(
            &Cli::command(),
            "gateway-firstboot",
            &mut missing,
            &mut seen,
        );
        assert!(seen > 30, "only {seen} arguments: the walk is broken");
        assert!(missing.is_empty(), "no help text: {missing:?}");
    }
}
