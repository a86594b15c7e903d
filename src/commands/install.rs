//! `install`: the console installer, for an appliance started without any seed. It asks for
//! the primary server address, the account domain name and the API key, checks each answer
//! with `check`'s rules and messages, validates them with the primary as `check --online`
//! does, asks again for whatever was wrong (keeping what was right), then writes
//! `/etc/gateway/seed.toml` (0600) and provisions in the foreground.
//!
//! Without a terminal it asks nothing: `--primary`, `--account` and `--api-key-file` give the
//! answers, and anything missing is an error.

use crate::cli::InstallArgs;
use crate::exit;
use crate::failure::Code;
use crate::fsutil;
use crate::primary::{Endpoint, connect_and_validate};
use crate::problem::Problem;
use crate::root::Root;
use crate::secret::Secret;
use crate::settings::{
    self, Collected, ETC_SEED, Entry, Key, Layer, Origin, RawValue, Settings, Source,
    collect::Inputs,
};
use crate::state::{DONE_MARKER, State};
use crate::tty;
use crate::wrap;
use std::future::Future;
use std::io::Write;
use std::time::{Duration, Instant};

mod network;

/// The three questions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    Primary,
    Account,
    ApiKey,
}

const FIELDS: [Field; 3] = [Field::Primary, Field::Account, Field::ApiKey];

impl Field {
    fn label(self) -> &'static str {
        match self {
            Field::Primary => "Primary server address",
            Field::Account => "Account domain name",
            Field::ApiKey => "API key",
        }
    }

    /// The setting this question answers.
    fn key(self) -> Key {
        match self {
            Field::Primary => Key::Primary,
            Field::Account => Key::Account,
            Field::ApiKey => Key::ApiKey,
        }
    }

    /// Whether `check`'s problem is about this field.
    fn owns(self, problem: &Problem) -> bool {
        problem.code.question() == Some(self.key())
    }
}

/// The fields an online failure is about: asked again, in this order.
fn at_fault(code: Code) -> Vec<Field> {
    code.blames()
        .iter()
        .filter_map(|key| FIELDS.into_iter().find(|f| f.key() == *key))
        .collect()
}

/// The API key answer.
#[derive(Debug, Clone)]
enum KeyAnswer {
    /// Not answered: whatever the other sources give (or the default key).
    Keep,
    /// Blank: the default restricted key.
    Default,
    Typed(Secret),
}

/// The answers so far, and the flags the command was given.
struct Answers {
    primary: Option<String>,
    account: Option<String>,
    key: KeyAnswer,
    /// Every other flag (`--primary-ca`, `--nameserver`, ...): used and written to the seed.
    flags: Layer,
}

impl Answers {
    fn entries(&self) -> Vec<Entry> {
        let origin = || Origin::new(Source::Flag);
        let mut out = Vec::new();
        if let Some(p) = &self.primary {
            out.push(Entry {
                key: Key::Primary,
                value: RawValue::Text(p.clone()),
                origin: origin(),
            });
        }
        if let Some(a) = &self.account {
            out.push(Entry {
                key: Key::Account,
                value: RawValue::Text(a.clone()),
                origin: origin(),
            });
        }
        let key = match &self.key {
            KeyAnswer::Keep => None,
            KeyAnswer::Default => Some(Secret::new("")),
            KeyAnswer::Typed(s) => Some(s.clone()),
        };
        if let Some(key) = key {
            out.push(Entry {
                key: Key::ApiKey,
                value: RawValue::Secret(key),
                origin: origin(),
            });
        }
        out.extend(self.flags.entries.iter().cloned());
        out
    }

    /// Every source, with the answers on top (as flags).
    fn collect(&self, root: &Root) -> Collected {
        let mut layer = Layer::new(Source::Flag);
        layer.entries = self.entries();
        settings::collect(
            root,
            Inputs {
                flags: Some(layer),
                flag_problems: Vec::new(),
                credentials_dir: super::credentials_dir(root),
                env: super::environment(),
            },
        )
    }
}

pub async fn run(root: &Root, args: &InstallArgs) -> anyhow::Result<u8> {
    if args.console {
        let result = console(root, args).await;
        // The terminal is reset when the unit ends: what it was told must have gone out first.
        tty::drain_stdout(Duration::from_secs(5));
        return result;
    }
    ask_and_provision(root, args).await
}

/// The console setup: the questions in place of the login prompt on a terminal, until the box
/// is provisioned. Ends with success whatever happened (the unit then gives the terminal back
/// to its login prompt), so that cancelling is not a failed unit.
async fn console(root: &Root, args: &InstallArgs) -> anyhow::Result<u8> {
    if root.path(DONE_MARKER).exists() {
        return Ok(exit::OK);
    }
    if !tty::interactive() {
        log::warn!(
            "install --console: standard input and output are not a terminal; nothing asked"
        );
        return Ok(exit::OK);
    }
    let found = settings::collect(
        root,
        Inputs {
            flags: None,
            flag_problems: Vec::new(),
            credentials_dir: super::credentials_dir(root),
            env: super::environment(),
        },
    );
    if found.has_target() {
        println!(
            "Provisioning settings were found: gateway-firstboot.service provisions from them by itself."
        );
        return Ok(exit::OK);
    }
    println!("\nThis gateway has no provisioning settings yet: set it up here, no login needed.");
    loop {
        let code = match ask_and_provision(root, args).await {
            Ok(code) => code,
            Err(e) if tty::is_stopped(e.as_ref()) => {
                println!(
                    "\nProvisioning started from elsewhere (a GWSEED stick, a seed file, or the \
                     setup on another console): this setup ends. The login prompt follows and \
                     shows how provisioning goes.\n"
                );
                return Ok(exit::OK);
            }
            Err(e) => return Err(e),
        };
        if root.path(DONE_MARKER).exists() {
            println!("The login prompt follows.\n");
            return Ok(exit::OK);
        }
        if code == exit::CANCELLED {
            println!(
                "The login prompt follows. The setup comes back at the next boot; after logging \
                 in, `gateway-firstboot install` runs it.\n"
            );
            return Ok(exit::OK);
        }
        println!(
            "\nThe setup did not finish (see above): the questions again, Ctrl-C for the login prompt.\n"
        );
    }
}

async fn ask_and_provision(root: &Root, args: &InstallArgs) -> anyhow::Result<u8> {
    let interactive = tty::interactive();
    if provisioned_already(root) {
        return Ok(exit::OK);
    }
    let mut answers = match answers_from_flags(args)? {
        Ok(answers) => answers,
        Err(code) => return Ok(code),
    };
    // What the other sources hold now: offered as the answers' starting text.
    let current = settings::collect(
        root,
        Inputs {
            flags: None,
            flag_problems: Vec::new(),
            credentials_dir: super::credentials_dir(root),
            env: super::environment(),
        },
    );
    let Some(ask) = first_questions(&answers, interactive) else {
        return Ok(exit::USAGE);
    };
    if interactive
        && network::wanted(root, &answers, &current)
        && !network::ask(root, &mut answers, args.console)?
    {
        wrap::say("Cancelled: nothing was changed.");
        return Ok(exit::CANCELLED);
    }
    let asking = Asking {
        root,
        console: args.console,
        interactive,
        offer: offer(&current),
    };
    match asking.until_valid(&mut answers, ask).await? {
        Ok(settings) => provision_answers(root, &answers, &current, &settings).await,
        Err(code) => Ok(code),
    }
}

/// The answers the flags give; the exit status instead when a flag's value cannot be read.
fn answers_from_flags(args: &InstallArgs) -> anyhow::Result<Result<Answers, u8>> {
    let (mut flags, flag_problems) = args.settings.to_layer();
    if !flag_problems.is_empty() {
        // A flag's value the agent cannot read is a settings problem, as in `check` (65).
        super::check::print_problems(&mut std::io::stdout(), &flag_problems)?;
        return Ok(Err(exit::DATAERR));
    }
    let take = |flags: &mut Layer, key: Key| {
        let i = flags.entries.iter().position(|e| e.key == key)?;
        Some(flags.entries.remove(i).value)
    };
    let text = |v: Option<RawValue>| match v {
        Some(RawValue::Text(s)) => Some(s),
        _ => None,
    };
    Ok(Ok(Answers {
        primary: text(take(&mut flags, Key::Primary)),
        account: text(take(&mut flags, Key::Account)),
        key: match take(&mut flags, Key::ApiKey) {
            Some(v) if v.is_blank_secret() => KeyAnswer::Default,
            Some(RawValue::Secret(s)) => KeyAnswer::Typed(s),
            _ => KeyAnswer::Keep,
        },
        flags,
    }))
}

/// What the sources other than the defaults hold now, offered as the answers' starting text;
/// and whether the image has a default key to fall back on.
fn offer(current: &Collected) -> Offer {
    let current_text = |key: Key| {
        current
            .effective(key)
            .filter(|e| !e.origin.source.is_default())
            .and_then(|e| match &e.value {
                RawValue::Text(s) => Some(s.clone()),
                _ => None,
            })
    };
    Offer {
        primary: current_text(Key::Primary),
        account: current_text(Key::Account),
        current_key: current
            .effective(Key::ApiKey)
            .filter(|e| !e.origin.source.is_default())
            .filter(|e| !e.value.is_blank_secret())
            .map(|e| e.origin.describe()),
        has_default_key: current
            .layers
            .iter()
            .filter(|l| matches!(l.source, Source::Default(_)))
            .filter_map(|l| l.get(Key::ApiKey))
            .any(|e| !e.value.is_blank_secret()),
    }
}

/// Whether the box is provisioned already (then says so).
fn provisioned_already(root: &Root) -> bool {
    let Ok(state) = State::load(root) else {
        return false;
    };
    if !root.path(DONE_MARKER).exists() {
        return false;
    }
    wrap::say(&format!(
        "This server is provisioned already (server {}, {}): nothing to do.\n\
         `gateway-firstboot status` shows where it stands.",
        state.server_id.as_deref().unwrap_or("?"),
        crate::progress::describe(state.phase)
    ));
    true
}

/// The questions the flags leave open, after the greeting. `None`: they cannot be asked
/// (no terminal), which is said.
fn first_questions(answers: &Answers, interactive: bool) -> Option<Vec<Field>> {
    let mut ask: Vec<Field> = Vec::new();
    if answers.primary.is_none() {
        ask.push(Field::Primary);
    }
    if answers.account.is_none() {
        ask.push(Field::Account);
    }
    if matches!(answers.key, KeyAnswer::Keep) && interactive {
        ask.push(Field::ApiKey);
    }
    if !interactive && ask.iter().any(|f| *f != Field::ApiKey) {
        wrap::say(
            "gateway-firstboot install asks its questions on a terminal, and standard input and output \
             are not one.\n  fix: run it on the console, or give --primary, --account and (for a key \
             other than the default) --api-key-file for scripted use",
        );
        return None;
    }
    if interactive {
        wrap::say(
            "Gateway setup: connect this server to the primary server.\n\
             Edit an answer with the arrow keys; Enter accepts it; Ctrl-C quits without changing anything.\n",
        );
    }
    Some(ask)
}

/// What the other sources hold now, offered as the answers' starting text and in the key's
/// prompt.
struct Offer {
    primary: Option<String>,
    account: Option<String>,
    /// Where a key some source holds comes from.
    current_key: Option<String>,
    /// A default restricted key is installed.
    has_default_key: bool,
}

/// After a round of answers: ask these fields again, or stop with this exit status.
enum Next {
    Ask(Vec<Field>),
    Stop(u8),
}

/// The question rounds of one setup.
struct Asking<'a> {
    root: &'a Root,
    /// The console setup (gives way when provisioning starts elsewhere).
    console: bool,
    interactive: bool,
    offer: Offer,
}

impl Asking<'_> {
    /// Asks `ask`, checks all the answers offline and with the primary, and asks again what
    /// was wrong until the primary accepts them. `Err`: stopped, with this exit status.
    async fn until_valid(
        &self,
        answers: &mut Answers,
        mut ask: Vec<Field>,
    ) -> anyhow::Result<Result<Settings, u8>> {
        loop {
            if !self.ask_round(answers, &ask)? {
                wrap::say("Cancelled: nothing was changed.");
                return Ok(Err(exit::CANCELLED));
            }
            let next = match self.check_offline(answers) {
                Ok(settings) => match self.check_online(&settings).await {
                    None => return Ok(Ok(settings)),
                    Some(next) => next,
                },
                Err(next) => next,
            };
            match next {
                Next::Ask(fields) => ask = fields,
                Next::Stop(code) => return Ok(Err(code)),
            }
        }
    }

    /// Asks each field of `ask` in turn. `false`: cancelled.
    fn ask_round(&self, answers: &mut Answers, ask: &[Field]) -> anyhow::Result<bool> {
        let offer = &self.offer;
        for &field in ask {
            // The answer so far (typed, or a flag's), else what the other sources hold.
            let previous = match field {
                Field::Primary => answers.primary.clone().or_else(|| offer.primary.clone()),
                Field::Account => answers.account.clone().or_else(|| offer.account.clone()),
                Field::ApiKey => None,
            };
            let prompt = match field {
                Field::ApiKey => key_prompt(offer.current_key.as_deref(), offer.has_default_key),
                f => format!("{}: ", f.label()),
            };
            if !ask_field(
                self.root,
                answers,
                field,
                &prompt,
                previous.unwrap_or_default(),
                offer.current_key.is_some(),
                self.console,
            )? {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// `check`'s rules on every answer and every other setting.
    fn check_offline(&self, answers: &Answers) -> Result<Settings, Next> {
        let root = self.root;
        let collected = answers.collect(root);
        let (settings, problems) = settings::validate(root, &collected);
        let (ours, others): (Vec<&Problem>, Vec<&Problem>) = problems
            .iter()
            .partition(|p| FIELDS.iter().any(|f| f.owns(p)));
        if others.iter().any(|p| p.is_error()) {
            wrap::say("Other settings on this server stop provisioning; fix them first:");
            for p in &others {
                wrap::say(&format!("  {p}"));
            }
            return Err(Next::Stop(exit::DATAERR));
        }
        if !ours.is_empty() {
            // Answers given as flags (typed ones were checked as they were typed).
            for p in &ours {
                print_error(&format!("{}: {}", p.subject, p.message), p.fix.as_deref());
            }
            if !self.interactive {
                return Err(Next::Stop(exit::DATAERR));
            }
            return Err(Next::Ask(
                FIELDS
                    .into_iter()
                    .filter(|f| ours.iter().any(|p| f.owns(p)))
                    .collect(),
            ));
        }
        let Some(settings) = settings else {
            return Err(Next::Stop(exit::DATAERR));
        };
        for p in &others {
            wrap::say(&format!("warning: {p}"));
        }
        Ok(settings)
    }

    /// The primary's word on the answers, as `check --online` gets it. `None`: accepted.
    async fn check_online(&self, settings: &Settings) -> Option<Next> {
        let what = format!("Checking with {} ...", settings.primary);
        let endpoint = Endpoint::from_settings(settings);
        let validating =
            connect_and_validate(self.root, &endpoint, &settings.account, &settings.api_key);
        let failure = match spin(self.interactive, &what, validating).await {
            Ok(validated) => {
                wrap::say(&super::check::confirmed(settings, &validated));
                return None;
            }
            Err(failure) => failure,
        };
        print_error(
            &format!("{} [{}]", failure.message, failure.code),
            Some(&failure.fix),
        );
        let fields = at_fault(failure.code);
        if !self.interactive || fields.is_empty() {
            return Some(Next::Stop(failure.exit_code()));
        }
        wrap::say(&format!(
            "Correct the {} (Enter keeps it as it is, to try again).\n",
            fields
                .iter()
                .map(|f| f.label().to_lowercase())
                .collect::<Vec<_>>()
                .join(" or the ")
        ));
        Some(Next::Ask(fields))
    }
}

/// Writes the seed and provisions from the answers, in one provisioning run.
async fn provision_answers(
    root: &Root,
    answers: &Answers,
    current: &Collected,
    settings: &Settings,
) -> anyhow::Result<u8> {
    // From here on, one provisioning run: the seed is written under the lock, so that the
    // waiting unit provisions from it only if this run does not finish.
    let lock = match crate::lock::try_lock(root)? {
        Some(lock) => lock,
        None => {
            wrap::say(
                "Waiting for the provisioning run in progress (gateway-firstboot.service) to end ...",
            );
            crate::lock::lock(root, || {}).await?
        }
    };
    if let Some(code) = write_seed(root, answers)? {
        return Ok(code);
    }
    warn_overridden(current, answers);
    wrap::say(&format!("\nProvisioning {} ...", settings.primary));
    let load = || answers.collect(root);
    let code =
        super::provision::provision(root, &load, super::provision::WaitForSeed::No, Some(lock))
            .await;
    summary(root, code);
    Ok(code)
}

fn key_prompt(current_key: Option<&str>, has_default_key: bool) -> String {
    match (current_key, has_default_key) {
        (Some(from), true) => format!(
            "API key (Enter keeps the key from {from}; type default for the default restricted key): "
        ),
        (Some(from), false) => format!("API key (Enter keeps the key from {from}): "),
        (None, true) => "API key (Enter for the default restricted key): ".into(),
        (None, false) => "API key: ".into(),
    }
}

/// Asks one field until its answer passes the offline checks. `false`: cancelled.
/// `blank_keeps`: a blank key keeps the key some source holds (else it is the default key).
/// Whether the box got provisioned, or a provisioning run holds the lock: a GWSEED stick or
/// seed file found by gateway-firstboot.service, or the setup on another console.
fn provisioning_elsewhere(root: &Root) -> bool {
    root.path(DONE_MARKER).exists() || matches!(crate::lock::try_lock(root), Ok(None))
}

fn ask_field(
    root: &Root,
    answers: &mut Answers,
    field: Field,
    prompt: &str,
    mut initial: String,
    blank_keeps: bool,
    console: bool,
) -> anyhow::Result<bool> {
    // The console setup gives way when provisioning starts elsewhere.
    let mut stop = || console && provisioning_elsewhere(root);
    loop {
        let Some(answer) = tty::ask_unless(prompt, &initial, field == Field::ApiKey, &mut stop)?
        else {
            return Ok(false);
        };
        let answer = answer.trim().to_string();
        match field {
            Field::Primary => answers.primary = Some(answer.clone()),
            Field::Account => answers.account = Some(answer.clone()),
            Field::ApiKey => {
                answers.key = match answer.as_str() {
                    "" if blank_keeps => KeyAnswer::Keep,
                    "" | "default" => KeyAnswer::Default,
                    _ => KeyAnswer::Typed(Secret::new(&answer)),
                }
            }
        }
        if answer.is_empty() && field != Field::ApiKey {
            print_error(
                &format!("the {} is needed", field.label().to_lowercase()),
                Some(match field {
                    Field::Primary => {
                        "type the primary server's host name or address, for example primary.example.com"
                    }
                    _ => {
                        "type the account's DNS name as shown in its settings on the primary, for example acme.example"
                    }
                }),
            );
            continue;
        }
        let (_, problems) = settings::validate(root, &answers.collect(root));
        let ours: Vec<&Problem> = problems.iter().filter(|p| field.owns(p)).collect();
        if ours.is_empty() {
            return Ok(true);
        }
        for p in ours {
            print_error(&p.message, p.fix.as_deref());
        }
        // Asked again with the answer to correct in place (a key is typed anew).
        initial = answer;
    }
}

fn print_error(message: &str, fix: Option<&str>) {
    wrap::say(&format!("  error: {message}"));
    if let Some(fix) = fix {
        wrap::say(&format!("  fix: {fix}"));
    }
}

/// Runs `work` showing a spinner and the seconds spent (a plain line without a terminal).
async fn spin<T>(interactive: bool, what: &str, work: impl Future<Output = T>) -> T {
    wrap::say(what);
    if !interactive {
        return work.await;
    }
    let started = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(150));
    let mut out = std::io::stdout();
    tokio::pin!(work);
    let mut frames = ['|', '/', '-', '\\'].iter().cycle();
    loop {
        tokio::select! {
            result = &mut work => {
                let _ = write!(out, "\r\x1b[K");
                let _ = out.flush();
                return result;
            }
            _ = tick.tick() => {
                let frame = frames.next().unwrap_or(&'-');
                let _ = write!(out, "\r{frame} {}s", started.elapsed().as_secs());
                let _ = out.flush();
            }
        }
    }
}

/// Writes the answers (and the other flags) into /etc/gateway/seed.toml, keeping every other
/// line of an existing one. `Some(code)`: it could not.
fn write_seed(root: &Root, answers: &Answers) -> anyhow::Result<Option<u8>> {
    let path = root.path(ETC_SEED);
    let existing = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => {
            print_error(
                &format!("reading {ETC_SEED}: {e}"),
                Some("make it a readable file, or remove it"),
            );
            return Ok(Some(exit::IOERR));
        }
    };
    let comment = format!(
        "Written by `gateway-firstboot install` on {}.",
        crate::state::now_rfc3339()
    );
    let Some(text) = settings::seed::with_entries(&existing, &answers.entries(), &comment) else {
        print_error(
            &format!("{ETC_SEED} is not valid TOML, and the installer would lose what it holds"),
            Some(
                "correct it (`gateway-firstboot check` shows where) or remove it, then run the installer again",
            ),
        );
        return Ok(Some(exit::DATAERR));
    };
    if let Err(e) = fsutil::write_atomic(&path, text.as_bytes(), 0o600) {
        print_error(
            &format!("writing {ETC_SEED}: {e}"),
            Some("check that /etc is writable and has space"),
        );
        return Ok(Some(exit::IOERR));
    }
    wrap::say(&format!("Settings saved in {ETC_SEED}."));
    Ok(None)
}

/// The kernel command line and credentials come before /etc/gateway/seed.toml: say so when
/// they hold one of the answers, for the runs after this one.
fn warn_overridden(current: &Collected, answers: &Answers) {
    for entry in answers.entries() {
        let higher = current.layers.iter().find_map(|l| {
            matches!(l.source, Source::Cmdline | Source::Credential(_))
                .then(|| l.get(entry.key))
                .flatten()
        });
        if let Some(other) = higher {
            wrap::say(&format!(
                "warning: {} also sets {}, and comes before {ETC_SEED}: this run uses your answer, \
                 a later one would not; remove it there",
                other.origin.describe(),
                entry.key
            ));
        }
    }
}

/// The end: what was done, and what the administrator does next.
fn summary(root: &Root, code: u8) {
    let state = State::load(root).unwrap_or_default();
    if code != exit::OK {
        wrap::say(&format!(
            "\nProvisioning did not finish (exit status {code}; the error and its fix are above).\n\
             The settings are kept in {ETC_SEED}: correct the cause and run `gateway-firstboot install` again."
        ));
        return;
    }
    let id = state.server_id.as_deref().unwrap_or("?");
    let fingerprint = state.key_fingerprint.as_deref().unwrap_or("?");
    let short = crate::protocol::short_fingerprint(fingerprint);
    let host = state
        .hostname
        .as_ref()
        .map_or("this server", crate::dns::HostName::full);
    wrap::say(&format!("\nDone: this server is registered as {id}."));
    wrap::say(&format!("  key fingerprint: {fingerprint}"));
    if state.trust == Some(crate::protocol::TrustState::Trusted) {
        wrap::say("It is trusted already: the gateway holds a secure connection to the primary.");
    } else {
        wrap::say(&format!(
            "Next: it is NOT TRUSTED yet. An administrator opens the primary's web page, finds {host} \
             ({id}) in the account's server tree, checks that its key fingerprint is {short}, and \
             clicks Authorize.\nThe gateway then connects securely by itself; \
             `gateway-firstboot status` shows when."
        ));
    }
}
