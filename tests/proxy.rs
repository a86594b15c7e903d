//! The HTTP proxy: the real binary with `--root`, a real tinyproxy on loopback (BasicAuth),
//! and the primary simulator over real HTTPS behind it. Every test that has a password in
//! play searches every output for it.

use gateway_test_support::sim::Sim;
use gateway_test_support::tinyproxy::{PASSWORD, Tinyproxy, USER};
use gateway_test_support::{Appliance, Run, Tree, assert_code, problem_codes};
use std::os::unix::fs::PermissionsExt;

gateway_test_support::appliance_env!(
    /// A simulator with account acme.example and an appliance tree whose seed names the primary
    /// as `localhost:PORT` (in the simulator's certificate). The tree has no /etc/resolv.conf, so
    /// the agent's own DNS resolves nothing (it never reads /etc/hosts either): only the proxy,
    /// with the host's resolver, can find the primary, as in a network whose only way out is it.
    Env
);

impl Env {
    fn new() -> Env {
        Env(Appliance::new(Sim::start()))
    }

    /// Writes /etc/gateway/seed.toml: the base settings and `extra` lines.
    fn seed(&mut self, extra: &str) -> &mut Self {
        self.0.seed("localhost", extra);
        self
    }

    fn mode(&self, path: &str) -> u32 {
        std::fs::metadata(self.tree.path(path))
            .map(|m| m.permissions().mode() & 0o777)
            .unwrap_or(0)
    }
}

/// `text` holds no trace of `password`.
fn assert_hidden(what: &str, text: &str, password: &str) {
    assert!(
        !text.contains(password),
        "{what} shows the proxy password:\n{text}"
    );
}

#[test]
fn provisions_and_gets_trusted_through_the_proxy_with_credentials() {
    let proxy = Tinyproxy::start("");
    let mut env = Env::new();
    env.seed(&format!("proxy = \"{}\"\n", proxy.url_with(PASSWORD)));

    // Without the proxy the box's own DNS cannot find the primary.
    let direct = env.run(&["check", "--online", "--proxy", ""]);
    assert_code(&direct, 69);
    assert!(direct.all().contains("[primary-dns]"), "{}", direct.all());

    let run = env.run(&["provision"]);
    assert_code(&run, 0);
    let connect = format!("CONNECT localhost:{} HTTP/1.1", env.sim.port);
    assert!(
        proxy.log().contains(&connect),
        "no CONNECT in the proxy's log:\n{}",
        proxy.log()
    );
    assert_eq!(env.sim.all_servers().len(), 1);

    // The gateway gets the proxy, credentials and all, in a file only root reads.
    let config: toml::Table = env.read("/etc/gateway/gateway.toml").parse().unwrap();
    assert_eq!(
        config["proxy"].as_str(),
        Some(proxy.url_with(PASSWORD).as_str())
    );
    assert_eq!(env.mode("/etc/gateway/gateway.toml"), 0o600);
    assert_eq!(env.mode("/var/lib/gateway-firstboot/proxy-password"), 0o600);
    // The seed keeps the proxy (the gateway's, for the box's life); the API key goes.
    assert!(env.read("/etc/gateway/seed.toml").contains("proxy = "));

    // The trust step, a new process, reaches the primary through the proxy too.
    let id = env.sim.all_servers()[0]["server_id"]
        .as_str()
        .unwrap()
        .to_string();
    env.sim.ok(&["authorize", &id]);
    let trust = env.run(&["await-trust", "--poll-max", "1s", "--timeout", "60s"]);
    assert_code(&trust, 0);
    assert!(
        env.sim.all_servers()[0]["secure_contacts"]
            .as_i64()
            .unwrap()
            >= 1
    );

    let status = env.run(&["status", "--json"]);
    let shown = env.run(&["show-config"]);
    let shown_json = env.run(&["show-config", "--json"]);
    let proxy_shown = format!("http://{USER}:[redacted]@127.0.0.1:{}", proxy.port);
    assert!(shown.stdout.contains(&proxy_shown), "{}", shown.stdout);
    assert_eq!(shown_json.json()["proxy"]["value"], proxy_shown.as_str());
    for (what, text) in [
        ("provision", run.all()),
        ("check", direct.all()),
        ("await-trust", trust.all()),
        ("status --json", status.all()),
        ("show-config", shown.all()),
        ("show-config --json", shown_json.all()),
        (
            "status.json",
            env.read("/run/gateway-firstboot/status.json"),
        ),
        (
            "state.json",
            env.read("/var/lib/gateway-firstboot/state.json"),
        ),
        (
            "the console line",
            env.read("/etc/issue.d/gateway-firstboot.issue"),
        ),
    ] {
        assert_hidden(what, &text, PASSWORD);
    }
}

#[test]
fn a_wrong_password_is_proxy_auth_and_stops_at_once() {
    let proxy = Tinyproxy::start("");
    let mut env = Env::new();
    let wrong = "Wr0ng-pw-4471";
    env.seed(&format!("proxy = \"{}\"\n", proxy.url_with(wrong)));
    let check = env.run(&["check", "--online"]);
    assert_code(&check, 77);
    let address = format!("the proxy 127.0.0.1:{}", proxy.port);
    assert!(check.all().contains(&address), "{}", check.all());
    assert!(check.all().contains("[proxy-auth]"), "{}", check.all());
    assert!(
        check
            .all()
            .contains("fix: check the proxy user and password"),
        "{}",
        check.all()
    );
    let run = env.run(&["provision"]);
    assert_code(&run, 77);
    let status = env.run(&["status", "--json"]).json();
    assert_eq!(status["last_error"]["code"], "proxy-auth");
    assert_eq!(status["last_error"]["permanent"], true);
    assert!(env.sim.all_servers().is_empty());
    for (what, text) in [
        ("check", check.all()),
        ("provision", run.all()),
        ("status", status.to_string()),
        (
            "status.json",
            env.read("/run/gateway-firstboot/status.json"),
        ),
    ] {
        assert_hidden(what, &text, wrong);
    }
}

#[test]
fn a_closed_proxy_port_is_proxy_unreachable() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut env = Env::new();
    env.seed(&format!(
        "proxy = \"http://{USER}:{PASSWORD}@127.0.0.1:{port}\"\n"
    ));
    let check = env.run(&["check", "--online"]);
    assert_code(&check, 69);
    assert!(
        check.all().contains(&format!(
            "cannot connect to the proxy 127.0.0.1:{port}: connection refused [proxy-unreachable]"
        )),
        "{}",
        check.all()
    );
    assert_hidden("check", &check.all(), PASSWORD);
}

#[test]
fn a_connect_the_proxy_refuses_is_named_by_its_status() {
    // Policy: CONNECT only to port 443 (the simulator is elsewhere): 403, permanent.
    let policy = Tinyproxy::start("ConnectPort 443\n");
    let mut env = Env::new();
    env.seed(&format!("proxy = \"{}\"\n", policy.url_with(PASSWORD)));
    let check = env.run(&["check", "--online"]);
    assert_code(&check, 78);
    let said = format!("the proxy 127.0.0.1:{} answered HTTP 403", policy.port);
    assert!(check.all().contains(&said), "{}", check.all());
    assert!(
        check.all().contains("[proxy-connect-refused]"),
        "{}",
        check.all()
    );

    // The primary down behind the proxy: the proxy cannot connect (tinyproxy says 500),
    // transient.
    let open = Tinyproxy::start("");
    env.seed(&format!("proxy = \"{}\"\n", open.url_with(PASSWORD)));
    env.sim.stop();
    let check = env.run(&["check", "--online"]);
    assert_code(&check, 69);
    assert!(check.all().contains("[proxy-upstream]"), "{}", check.all());
    assert_hidden("check", &check.all(), PASSWORD);
}

#[test]
fn no_proxy_naming_the_primary_goes_direct() {
    let proxy = Tinyproxy::open("");
    let mut env = Env::new();
    // Direct, so the box's own DNS must find the primary: by address, then.
    env.seed(&format!(
        "proxy = \"{}\"\nno-proxy = [\".example\", \"127.0.0.0/8\"]\n",
        proxy.url()
    ));
    let by_address = format!("--primary=127.0.0.1:{}", env.sim.port);
    let check = env.run(&["check", "--online", &by_address]);
    assert_code(&check, 0);
    assert!(
        !proxy.log().contains("CONNECT 127.0.0.1"),
        "went through the proxy:\n{}",
        proxy.log()
    );
    // The control: without the no-proxy match the same check goes through the proxy.
    let check = env.run(&[
        "check",
        "--online",
        &by_address,
        "--no-proxy",
        "other.example",
    ]);
    assert_code(&check, 0);
    assert!(
        proxy
            .log()
            .contains(&format!("CONNECT 127.0.0.1:{}", env.sim.port))
    );
}

#[test]
fn the_environment_gives_the_proxy_below_every_other_source() {
    let proxy = Tinyproxy::start("");
    let mut env = Env::new();
    env.seed("");
    let url = proxy.url_with(PASSWORD);
    let shown = format!("http://{USER}:[redacted]@127.0.0.1:{}", proxy.port);
    let with_env = |env: &Env, args: &[&str]| -> Run {
        env.tree
            .command(args)
            .env("https_proxy", &url)
            .env("NO_PROXY", "nothing.example")
            .output()
            .unwrap()
            .into()
    };
    let json = with_env(&env, &["show-config", "--json"]);
    assert_code(&json, 0);
    let config = json.json();
    assert_eq!(config["proxy"]["value"], shown.as_str());
    assert_eq!(config["proxy"]["origin"], "env:https_proxy");
    assert_eq!(config["no-proxy"]["origin"], "env:NO_PROXY");
    let text = with_env(&env, &["show-config"]);
    assert!(text.stdout.contains("# env:https_proxy"), "{}", text.stdout);
    let check = with_env(&env, &["check", "--online"]);
    assert_code(&check, 0);
    assert!(proxy.log().contains("CONNECT localhost"), "{}", proxy.log());
    // A seed's proxy wins over the environment's; a blank one means none.
    env.seed("proxy = \"\"\n");
    let json = with_env(&env, &["show-config", "--json"]).json();
    assert_eq!(json["proxy"]["origin"], "seed:/etc/gateway/seed.toml");
    let check = with_env(&env, &["check", "--online"]);
    assert_code(&check, 69);
    assert!(check.all().contains("[primary-dns]"), "{}", check.all());
    for (what, text) in [
        ("show-config --json", json.to_string()),
        ("show-config", text.all()),
        ("check", check.all()),
    ] {
        assert_hidden(what, &text, PASSWORD);
    }
}

/// One validation case: the seed's extra lines, the code and text `check` reports.
const CASES: &[(&str, &str, &str)] = &[
    (
        "proxy = \"https://u:Pr0xy-pw-7c1e9d@proxy.example:3128\"",
        "invalid-proxy",
        "error: proxy from /etc/gateway/seed.toml line 4: \"https://u:[redacted]@proxy.example:3128\": https:// proxies (TLS to the proxy) are not supported\n  fix: use the proxy's plain http:// port",
    ),
    (
        "proxy = \"socks5://proxy.example:1080\"",
        "invalid-proxy",
        "\"socks5://proxy.example:1080\": socks5:// proxies are not supported, only http://",
    ),
    (
        "proxy = \"http://u:Pr0xy-pw-7c1e9d@proxy.example\"",
        "invalid-proxy",
        "\"http://u:[redacted]@proxy.example\" is not a proxy URL: no port",
    ),
    (
        "proxy = \"http://proxy.example:3128/path\"",
        "invalid-proxy",
        "is not a proxy URL: it must not have a path, query (?) or fragment (#)",
    ),
    (
        "proxy = \"http://proxy..example:3128\"",
        "invalid-proxy",
        "is not a proxy URL: host \"proxy..example\": empty label",
    ),
    (
        "proxy = \"http://:Pr0xy-pw-7c1e9d@proxy.example:3128\"",
        "invalid-proxy",
        "\"http://:[redacted]@proxy.example:3128\" is not a proxy URL: a password without a user name",
    ),
    (
        "proxy = \"http://u:%ff@proxy.example:3128\"",
        "invalid-proxy",
        "is not a proxy URL: the password is not UTF-8 once percent-decoded",
    ),
    (
        "proxy = 3128",
        "invalid-proxy",
        "proxy from /etc/gateway/seed.toml line 4: expected a string, found an integer",
    ),
    (
        "no-proxy = [\"10.0.0.0/33\"]",
        "invalid-no-proxy",
        "no-proxy from /etc/gateway/seed.toml line 4: \"10.0.0.0/33\": the prefix length must be 0 to 32\n  fix: list host names",
    ),
    (
        "no-proxy = [\"proxy.example:3128\"]",
        "invalid-no-proxy",
        "\"proxy.example:3128\": ports do not belong in no-proxy",
    ),
    (
        "no-proxy = [\"bad_name\"]",
        "invalid-no-proxy",
        "\"bad_name\" is not a host name, domain, IP address or CIDR range",
    ),
    (
        "no-proxy = true",
        "invalid-no-proxy",
        "expected an array of strings, found a boolean",
    ),
];

#[test]
fn every_proxy_validation_error_names_its_origin_and_fix_without_the_password() {
    for (line, code, says) in CASES {
        let mut tree = Tree::new();
        tree.file(
            "/etc/gateway/seed.toml",
            format!(
                "primary = \"primary.example.com\"\naccount = \"acme.example\"\n\
                 api-key = \"gwk_0123456789abcdef\"\n{line}\n"
            ),
        );
        let text = tree.run(&["check"]);
        assert_code(&text, 65);
        assert!(
            text.stdout.contains(says),
            "{line}: lacks {says:?}:\n{}",
            text.all()
        );
        let json = tree.run(&["check", "--json"]).json();
        let codes: Vec<&str> = problem_codes(&json);
        assert_eq!(codes, [*code], "{line}");
        assert_hidden(line, &text.all(), PASSWORD);
        assert_hidden(line, &json.to_string(), PASSWORD);
    }
}

#[test]
fn a_proxy_password_on_the_kernel_command_line_or_in_a_readable_seed_is_warned_about() {
    let mut tree = Tree::new();
    tree.credential("gateway.api_key", "gwk_0123456789abcdef");
    tree.file_mode(
        "/etc/gateway/seed.toml",
        format!(
            "primary = \"primary.example.com\"\naccount = \"acme.example\"\n\
             proxy = \"http://{USER}:{PASSWORD}@proxy.example:3128\"\n"
        ),
        0o644,
    );
    let run = tree.run(&["check"]);
    assert_code(&run, 0);
    assert!(
        run.stdout
            .contains("holds the proxy password (line 3) but is readable by other users"),
        "{}",
        run.stdout
    );
    tree.cmdline(&format!(
        "quiet gateway.proxy=http://{USER}:{PASSWORD}@proxy.example:3128"
    ));
    let run = tree.run(&["check"]);
    assert!(
        run.stdout
            .contains("the proxy password is on the kernel command line"),
        "{}",
        run.stdout
    );
    assert_hidden("check", &run.all(), PASSWORD);
    // Without a password there is nothing to warn about.
    tree.cmdline("quiet gateway.proxy=http://proxy.example:3128");
    tree.file_mode(
        "/etc/gateway/seed.toml",
        "primary = \"primary.example.com\"\naccount = \"acme.example\"\n",
        0o644,
    );
    let run = tree.run(&["check"]);
    assert!(!run.stdout.contains("warning"), "{}", run.stdout);
}
