"""The QEMU boot harness: an isolated network per scenario, the primary simulator, the image.

Every wait has a deadline; everything created is removed again, also on failure. Standard
library only, so it runs on any Debian with python3.
"""

import base64
import json
import os
import re
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
TARGET = Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target"))
OVMF_CODE = Path("/usr/share/OVMF/OVMF_CODE_4M.fd")
OVMF_VARS = Path("/usr/share/OVMF/OVMF_VARS_4M.fd")
# The image's default restricted key (image/build --default-key); the simulator gets the same.
DEFAULT_KEY = "gwk_default_ImageDefaultKey2026"
MAC = "52:54:00:12:34:56"
DOMAIN = "acme.test"
ESP_OFFSET = 1024 * 1024  # image/build puts the ESP at 1 MiB


class Failed(Exception):
    """A scenario's expectation was not met."""


# What the harness reads on the serial console, the one live channel while a guest runs: every
# phrase a scenario waits for or checks deliberately (wording that is the product: the DNS
# record a technician must create, the installer's questions, a failure's fix), by name. A
# scenario names a phrase (`vm.wait_for("handed_off", ...)`) and never spells one out, so a
# reworded message is changed here once. `{name}` is a placeholder: the scenario may fill it
# (`code="account-unknown"`), otherwise it matches any text. tests/console_phrases.rs checks
# that every phrase but those in NOT_THE_AGENT occurs in the agent's source (outside its unit
# tests), each placeholder where the source has a format argument `{...}`: `cargo test`
# catches a rewording without a boot. One entry per line, `"name": "phrase",`, no backslash.
# Outcomes (phase, server, trust, failure code) come from the guest's own records after
# poweroff, not from here: state_file(), status_json(), events().
CONSOLE = {
    # the agent's progress lines (standard output: the console)
    "provisioning": "provisioning this gateway",
    "connected": "connected to {url}: account {account} exists, API key accepted",
    "retrying": "{message} [{code}]; attempt {attempt} failed, retrying in {delay}s",
    "failure_code": "{message} [{code}]",
    "handed_off": "handed off to the gateway (server {id}, key {short})",
    "trusted": "trusted: secure connection to {url} established as {id} at {when}",
    "dns_wait": "waiting for DNS (dns-check = require): {summary}",
    "dns_create": "create this DNS record: {record}",
    "dns_record": "{fqdn}. IN {kind} {address}",
    "clock_wrong": "this server's clock ({now}) is {skew}s away from the primary's ({theirs})",
    # a failure's text and its fix, as the technician reads them
    "no_account": "the primary has no account with the domain name {account}",
    "fix": "fix: {fix}",
    "fix_account_text": "check the account domain name (Account settings on the primary show it)",
    # the lines above the login prompt (/etc/issue.d)
    "issue_gateway": "Gateway {id} is",
    "issue_trusted": "Gateway {id} is trusted by {url} (account {account}); secure connection established.",
    "issue_dns_missing": "DNS record missing (create it): {record}",
    # the installer (the console setup and `gateway-firstboot install`)
    "setup_offered": "This gateway has no provisioning settings yet: set it up here, no login needed.",
    "setup_ends": "The login prompt follows",
    "ask_primary": "Primary server address",
    "ask_account": "Account domain name",
    "ask_key": "API key (Enter for the default restricted key): ",
    "install_next": "Next: it is NOT TRUSTED yet.",
    # not the agent: agetty, login, the shell, the harness's own health unit (HEALTH_UNIT)
    "login": "login:",
    "password": "Password:",
    "shell": ":~# ",
    "boot_health": "boot-health: {state}",
    "boot_cost_done": "boot-cost: done",
    "gateway_started": "gateway-started: {pid}",
    # after the first boot (lifecycle.md): reset, a copy of a provisioned box
    "reset_done": "reset done: the state",
    "copy": "this box is a copy: its identity",
    "replaces": "; it replaces {old} (the same hardware, re-imaged)",
}
NOT_THE_AGENT = {"login", "password", "shell", "boot_health", "boot_cost_done", "gateway_started"}
_HOLE = re.compile(r"\{(\w+)\}")


def phrase(name, **values):
    """The regular expression for CONSOLE[name] on a flattened console (see VM.this_boot), with
    the placeholders given in `values` filled in; the others match any text (up to 200
    characters, as little as will do) as a group of their name."""
    template = CONSOLE[name]
    parts, at = [], 0
    for m in _HOLE.finditer(template):
        parts.append(re.escape(flat(template[at:m.start()])))
        value = values.pop(m.group(1), None)
        parts.append(re.escape(flat(str(value))) if value is not None else f"(?P<{m.group(1)}>.{{1,200}}?)")
        at = m.end()
    parts.append(re.escape(flat(template[at:])))
    if values:
        raise KeyError(f"console phrase {name!r} has no placeholder {sorted(values)}")
    return "".join(parts)


def phrase_text(name, **values):
    """CONSOLE[name] with every placeholder filled: the exact text (e.g. a DNS record)."""
    text = CONSOLE[name]
    missing = set(_HOLE.findall(text)) - set(values)
    if missing:
        raise KeyError(f"console phrase {name!r}: fill {sorted(missing)}")
    return _HOLE.sub(lambda m: str(values[m.group(1)]), text)


def shows(text, name, **values):
    """Whether `text` (flattened) holds the phrase `name`."""
    return re.search(phrase(name, **values), flat(text)) is not None


def last_match(text, name, **values):
    """The last occurrence of phrase `name` in `text` (flattened; its unfilled placeholders are
    groups: `last_match(console, "handed_off")["short"]`), or None."""
    found = list(re.finditer(phrase(name, **values), flat(text)))
    return found[-1] if found else None


def last_match_end(text, name, **values):
    """Where the last occurrence of phrase `name` in `text` (flattened) ends, or -1."""
    m = last_match(text, name, **values)
    return m.end() if m else -1


def run(cmd, timeout=120, check=True, **kw):
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)
    if check and r.returncode != 0:
        raise Failed(f"{' '.join(map(str, cmd))} exited {r.returncode}: {r.stderr.strip()}")
    return r


def wait_until(what, predicate, timeout, interval=1.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise Failed(f"timed out after {timeout:.0f}s waiting for {what}")


_kvm = None


def accelerator(image):
    """KVM when a probe boot proves it works (the firmware and the kernel get going), else TCG."""
    global _kvm
    if _kvm is None:
        _kvm = False
        if os.path.exists("/dev/kvm"):
            with tempfile.TemporaryDirectory() as d:
                serial = Path(d) / "serial"
                vars_fd = Path(d) / "vars.fd"
                shutil.copy(OVMF_VARS, vars_fd)
                cmd = ["qemu-system-x86_64", "-machine", "q35", "-accel", "kvm", "-cpu", "host", "-m", "512",
                       "-nodefaults", "-display", "none", "-serial", f"file:{serial}",
                       "-drive", f"if=pflash,format=raw,readonly=on,file={OVMF_CODE}",
                       "-drive", f"if=pflash,format=raw,file={vars_fd}",
                       "-drive", f"if=virtio,file={image},format=qcow2,snapshot=on"]
                p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                try:
                    deadline = time.monotonic() + 40
                    while time.monotonic() < deadline and p.poll() is None:
                        text = serial.read_text(errors="replace") if serial.exists() else ""
                        if "systemd" in text or "Welcome" in text:
                            _kvm = True
                            break
                        time.sleep(1)
                finally:
                    p.kill()
                    p.wait()
        print(f"boot: accelerator {'kvm' if _kvm else 'tcg (KVM did not boot a probe guest)'}", flush=True)
    return ["-accel", "kvm", "-cpu", "host"] if _kvm else ["-accel", "tcg", "-cpu", "qemu64"]


class Net:
    """A network namespace with a bridge and a tap for the VM; dnsmasq on the bridge for DNS and
    (unless `dhcp` is false) DHCP, started by start_dns (a scenario may start it late). Unless
    `ntp` is false, DHCP offers the bridge address as NTP server, where start_ntp runs chrony
    (a real NTP server): from the start when `ntp` is True (the runner starts it), later by the
    scenario when it is "late". Without DHCP the appliance's address (`vm_ip`) is the static one
    its seed gives, .50."""

    def __init__(self, index, work, dhcp=True, ntp=True):
        self.ns = f"gwboot{os.getpid() % 10000}x{index}"
        self.index = index
        self.prefix = f"10.77.{index}"
        self.host_ip = f"{self.prefix}.1"
        self.vm_ip = f"{self.prefix}.10" if dhcp else f"{self.prefix}.50"
        self.work = work
        self.dhcp = dhcp
        self.ntp = ntp
        self.dnsmasq = self.chrony = None

    def cmd(self, *args):
        """`args` run inside the namespace."""
        return ["ip", "netns", "exec", self.ns, *args]

    def __enter__(self):
        run(["ip", "netns", "add", self.ns])
        run(self.cmd("ip", "link", "set", "lo", "up"))
        run(self.cmd("ip", "link", "add", "br0", "type", "bridge"))
        run(self.cmd("ip", "addr", "add", f"{self.host_ip}/24", "dev", "br0"))
        run(self.cmd("ip", "link", "set", "br0", "up"))
        run(self.cmd("ip", "tuntap", "add", "dev", "tap0", "mode", "tap"))
        run(self.cmd("ip", "link", "set", "tap0", "master", "br0"))
        run(self.cmd("ip", "link", "set", "tap0", "up"))
        return self

    def start_dns(self, records):
        """(Re)starts dnsmasq with these DNS records (name -> address), and DHCP if the network
        has it."""
        if self.dnsmasq:
            self.dnsmasq.kill()
            self.dnsmasq.wait()
        args = self.cmd("dnsmasq", "--keep-in-foreground", "--conf-file=/dev/null",
                        "--no-resolv", "--no-hosts", "--bind-interfaces", "--interface=br0", "--except-interface=lo",
                        "--user=root", "--pid-file=", f"--log-facility={self.work}/dnsmasq.log", "--log-dhcp",
                        f"--domain={DOMAIN}", f"--local=/{DOMAIN}/")
        if self.dhcp:
            args += [f"--dhcp-range={self.prefix}.10,{self.prefix}.49,12h", f"--dhcp-host={MAC},{self.vm_ip}",
                     # The host name as a plain DHCP option: dnsmasq would otherwise also put a
                     # leased name into DNS, and DNS must hold exactly the scenario's records.
                     "--dhcp-option=12,gw01", "--dhcp-ignore-names",
                     f"--dhcp-option=option:domain-search,{DOMAIN}", f"--dhcp-leasefile={self.work}/leases"]
            if self.ntp:
                args.append(f"--dhcp-option=option:ntp-server,{self.host_ip}")
        for name, ip in records.items():
            args.append(f"--host-record={name},{ip}")
        errors = self.work / "dnsmasq.err"
        self.dnsmasq = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=open(errors, "w"))
        time.sleep(0.5)
        if self.dnsmasq.poll() is not None:
            raise Failed(f"dnsmasq did not start: {errors.read_text().strip()}")

    def leases(self):
        """When dnsmasq acknowledged a DHCP lease (host clock, seconds since the epoch; its log
        has whole seconds, local time), in order."""
        log = self.work / "dnsmasq.log"
        text = log.read_text(errors="replace") if log.exists() else ""
        year = time.localtime().tm_year
        stamps = re.findall(r"^(\w{3} +\d+ [\d:]{8}) dnsmasq-dhcp\[\d+\]: (?:\d+ )?DHCPACK", text, re.M)
        return [time.mktime(time.strptime(f"{year} {t}", "%Y %b %d %H:%M:%S")) for t in stamps]

    def start_ntp(self):
        """chrony as the network's NTP server on the bridge address: its own clock as the source
        (`local stratum 8`), never setting the host's (-x), in the foreground."""
        conf = self.work / "chrony.conf"
        conf.write_text(f"local stratum 8\nallow {self.prefix}.0/24\nbindaddress {self.host_ip}\ncmdport 0\n"
                        f"pidfile {self.work}/chronyd.pid\ndriftfile {self.work}/chrony.drift\n")
        self.chrony = subprocess.Popen(self.cmd("chronyd", "-x", "-d", "-u", "root", "-f", str(conf)),
                                       stdout=subprocess.DEVNULL, stderr=open(self.work / "chrony.log", "w"))
        wait_until("chronyd", lambda: self.chrony.poll() is not None or "Disabled control of system clock"
                   in (self.work / "chrony.log").read_text(), 10, 0.2)
        if self.chrony.poll() is not None:
            raise Failed(f"chronyd did not start: {(self.work / 'chrony.log').read_text().strip()}")

    def drop_direct(self, address, port):
        """A firewall of the customer's: TCP from the appliance's side (the bridge) to
        address:port is dropped, silently, and counted (direct_drops)."""
        rules = ("table inet gwboot {\n chain input {\n  type filter hook input priority 0; policy accept;\n"
                 f'  iifname "br0" ip daddr {address} tcp dport {port} counter drop\n }}\n}}\n')
        run(self.cmd("nft", "-f", "-"), input=rules)

    def direct_drops(self):
        """Packets the drop_direct rule dropped."""
        out = json.loads(run(self.cmd("nft", "-j", "list", "chain", "inet", "gwboot", "input")).stdout)
        counts = [x["counter"]["packets"] for item in out["nftables"] if "rule" in item
                  for x in item["rule"]["expr"] if "counter" in x]
        return sum(counts)

    def __exit__(self, *exc):
        for proc in (self.dnsmasq, self.chrony):
            if proc:
                proc.kill()
                proc.wait()
        subprocess.run(["ip", "netns", "del", self.ns], capture_output=True)
        shutil.rmtree(f"/etc/netns/{self.ns}", ignore_errors=True)


class Proxy:
    """tinyproxy in the namespace on the bridge address, port 3128, with basic authentication:
    a customer's web proxy. It resolves names from `hosts` (name -> address) and then with the
    network's dnsmasq (the namespace's own hosts and resolv.conf, /etc/netns/NS, which
    `ip netns exec` puts in place for it) and logs every CONNECT."""

    PORT = 3128

    def __init__(self, net, work, user, password, hosts=None):
        self.net = net
        self.work = work
        self.user = user
        self.password = password
        self.hosts = dict(hosts or {})
        self.log = work / "tinyproxy.log"
        self.proc = None

    def url(self):
        return f"http://{self.user}:{self.password}@{self.net.host_ip}:{self.PORT}"

    def start(self):
        netns = Path(f"/etc/netns/{self.net.ns}")
        netns.mkdir(parents=True, exist_ok=True)
        (netns / "resolv.conf").write_text(f"nameserver {self.net.host_ip}\n")
        (netns / "hosts").write_text("127.0.0.1 localhost\n" + "".join(f"{ip} {name}\n" for name, ip in self.hosts.items()))
        conf = self.work / "tinyproxy.conf"
        conf.write_text(f"Port {self.PORT}\nListen {self.net.host_ip}\nTimeout 600\nMaxClients 50\n"
                        f"Allow {self.net.prefix}.0/24\nBasicAuth {self.user} {self.password}\nConnectPort 443\n"
                        f'DisableViaHeader Yes\nLogLevel Connect\nLogFile "{self.log}"\n'
                        f'PidFile "{self.work}/tinyproxy.pid"\n')
        self.proc = subprocess.Popen(self.net.cmd("tinyproxy", "-d", "-c", str(conf)),
                                     stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        wait_until("tinyproxy", lambda: self.proc.poll() is not None or
                   (self.log.exists() and "Reloading config file finished" in self.log.read_text()), 10, 0.2)
        if self.proc.poll() is not None:
            raise Failed(f"tinyproxy did not start: {self.log.read_text() if self.log.exists() else ''}")

    def connects(self):
        """The hosts tinyproxy tunnelled a CONNECT to (one per tunnel established), in order."""
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return re.findall(r'Established connection to host "([^"]+)"', text)

    def stop(self):
        if self.proc:
            self.proc.kill()
            self.proc.wait()
            self.proc = None


class Sim:
    """gateway-primary-sim inside the namespace, HTTPS on the bridge address (or `address`)."""

    def __init__(self, net, work, extra=()):
        self.bin = TARGET / "release" / "gateway-primary-sim"
        self.net = net
        self.address = net.host_ip
        self.db = work / "primary.db"
        self.tls = work / "tls"
        self.extra = list(extra)
        self.proc = None
        self.log = work / "primary.log"

    def cli(self, *args):
        return run([str(self.bin), "--db", str(self.db), *args]).stdout.strip()

    def start(self, extra=()):
        cmd = ["ip", "netns", "exec", self.net.ns, str(self.bin), "--db", str(self.db), "serve",
               "--listen", f"{self.address}:443", "--tls-dir", str(self.tls), "--name", f"primary.{DOMAIN}",
               "--name", self.address, "--default-key", DEFAULT_KEY, *self.extra, *extra]
        self.proc = subprocess.Popen(cmd, stdout=open(self.log, "a"), stderr=subprocess.STDOUT)
        wait_until("the primary simulator", lambda: "listening on" in self.log.read_text(), 30, 0.2)

    def stop(self):
        if self.proc:
            self.proc.kill()
            self.proc.wait()
            self.proc = None

    def ca_pem(self):
        return (self.tls / "ca.pem").read_text()

    def ca_pin(self):
        """SHA-256 of the simulator's CA certificate: what primary-ca-sha256 pins."""
        import hashlib
        import ssl
        return hashlib.sha256(ssl.PEM_cert_to_DER_cert(self.ca_pem())).hexdigest()

    def servers(self):
        tree = json.loads(self.cli("servers", "--json"))
        return [s for a in tree["accounts"] for s in a["servers"]]


class VM:
    """The appliance under QEMU in the namespace; serial console to a file, a monitor socket."""

    def __init__(self, net, work, disk, fmt="raw", smbios=()):
        self.net = net
        self.work = work
        self.disk = disk
        self.fmt = fmt
        self.smbios = list(smbios)
        self.serial = work / "serial.log"
        self.monitor = work / "monitor.sock"
        # interactive: the serial port is also a socket the harness types into (type()).
        self.interactive = False
        self.serial_sock = work / "serial.sock"
        self.keyboard = None
        self.proc = None
        self.boots = 0
        # Raw images plugged in as USB sticks (an xHCI controller, usb-storage: sd in the guest).
        self.usb_sticks = []
        # Credentials through QEMU's fw_cfg (name -> value): systemd imports
        # opt/io.systemd.credentials/NAME as the credential NAME, as it does SMBIOS type 11.
        self.fw_cfg = {}
        # Where the guest's real-time clock starts (QEMU -rtc base=, UTC, e.g. 2025-12-02T14:00:00).
        self.rtc = None
        # The machine's SMBIOS system identity (type 1): product UUID and serial number, as a
        # vendor sets them once per board and a hypervisor per VM. QEMU's default (no serial,
        # a zero UUID) when None.
        self.product_uuid = None
        self.product_serial = None

    def start(self):
        self.boots += 1
        vars_fd = self.work / "vars.fd"
        if not vars_fd.exists():
            shutil.copy(OVMF_VARS, vars_fd)
        with open(self.serial, "a") as f:
            f.write(f"\n===== boot {self.boots} =====\n")
        cmd = ["ip", "netns", "exec", self.net.ns, "qemu-system-x86_64", "-machine", "q35",
               *accelerator(REPO / "target/image/gateway-appliance.qcow2"), "-m", "1024", "-smp", "2",
               "-nodefaults", "-no-user-config", "-display", "none",
               *self.serial_chardev(), "-serial", "chardev:ser",
               "-monitor", f"unix:{self.monitor},server,nowait",
               "-drive", f"if=pflash,format=raw,readonly=on,file={OVMF_CODE}",
               "-drive", f"if=pflash,format=raw,file={vars_fd}",
               "-drive", f"if=virtio,file={self.disk},format={self.fmt}",
               "-netdev", "tap,id=n0,ifname=tap0,script=no,downscript=no",
               "-device", f"virtio-net-pci,netdev=n0,mac={MAC}"]
        if self.rtc:
            cmd += ["-rtc", f"base={self.rtc}"]
        if self.product_uuid:
            cmd += ["-uuid", self.product_uuid]
        if self.product_serial:
            cmd += ["-smbios", f"type=1,serial={self.product_serial}"]
        for cred in self.smbios:
            cmd += ["-smbios", f"type=11,value={cred}"]
        for name, value in self.fw_cfg.items():
            # QEMU's option syntax: a comma in a value is written twice.
            cmd += ["-fw_cfg", f"name=opt/io.systemd.credentials/{name},string={value.replace(',', ',,')}"]
        if self.usb_sticks:
            cmd += ["-device", "qemu-xhci,id=xhci"]
        for i, stick in enumerate(self.usb_sticks):
            cmd += ["-drive", f"if=none,id=stick{i},format=raw,file={stick}",
                    "-device", f"usb-storage,bus=xhci.0,drive=stick{i}"]
        self.proc = subprocess.Popen(cmd, stdout=open(self.work / "qemu.log", "a"), stderr=subprocess.STDOUT)
        self.boot_started = time.monotonic()

    def serial_chardev(self):
        if not self.interactive:
            return ["-chardev", f"file,id=ser,path={self.serial},append=on"]
        # A socket to type into; QEMU still logs everything the guest writes to the file.
        return ["-chardev", f"socket,id=ser,path={self.serial_sock},server=on,wait=off,"
                            f"logfile={self.serial},logappend=on"]

    def type(self, text, per_char=0.02):
        """Types on the serial console, as a person at it would (a key at a time)."""
        import socket
        if self.keyboard is None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(10)
            sock.connect(str(self.serial_sock))
            self.keyboard = sock

            def drain():
                """What the guest writes also goes to the socket: read it away, for as long as
                the socket is open. Were this to stop (on a quiet spell of the socket timeout),
                the socket's buffer would fill, QEMU would stop taking the guest's serial
                output, and every writer to the console would block, PID 1 among them."""
                while True:
                    try:
                        if not sock.recv(65536):
                            return
                    except socket.timeout:
                        continue
                    except OSError:
                        return
            threading.Thread(target=drain, daemon=True).start()
        for ch in text:
            self.keyboard.sendall(ch.encode())
            time.sleep(per_char)

    def console(self):
        text = self.serial.read_text(errors="replace") if self.serial.exists() else ""
        return re.sub(r"\x1b\[[0-9;?]*[a-zA-Z]|\x1b[=>][0-9]*[a-z]?|\x1b\[!p", "", text)

    def this_boot(self):
        """This boot's console, its whitespace runs made single spaces: the agent wraps its
        lines to the console's width, so a phrase may span rows."""
        return flat(self.console().split(f"===== boot {self.boots} =====")[-1])

    def mark(self):
        """Where this boot's console ends now: for `wait_for(after=...)`, to wait only for what
        a command typed next prints (a prompt drawn after it would hide it from `after=name`)."""
        return len(self.this_boot())

    def shows(self, name, **values):
        """Whether this boot's console shows the phrase `name` (CONSOLE)."""
        return shows(self.this_boot(), name, **values)

    def wait_for(self, name, timeout, after=None, answer=None, **values):
        """Waits for the phrase `name` (CONSOLE; placeholders from `values`) on this boot's
        console; with `after` (a phrase name), only where it follows the last occurrence of
        that phrase (a login prompt drawn before the setup took the terminal does not count),
        or (a number, from `mark()`) only what came after that point;
        with `answer`, a question shown again with the answer given before (`label: answer`)."""
        pattern = phrase(name, **values)
        if answer is not None:
            pattern += re.escape(": " + answer)

        def seen():
            if self.proc.poll() is not None:
                raise Failed(f"QEMU exited while waiting for {name!r}")
            console = self.this_boot()
            if KERNEL_PANIC in console:  # nothing more will come: fail now, not at the deadline
                raise Failed(f"the guest kernel panicked while waiting for {name!r}")
            if after is not None:
                at = after if isinstance(after, int) else last_match_end(console, after)
                if at < 0:
                    return False
                console = console[at:]
            return re.search(pattern, console) is not None
        where = "" if after is None else f" after {after!r}" if isinstance(after, str) else " after the command"
        return wait_until(f"{name!r} ({CONSOLE[name]!r}){where} on the console", seen, timeout, 1.0)

    def monitor_cmd(self, command):
        import socket
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(5)
        s.connect(str(self.monitor))
        s.sendall(command.encode() + b"\n")
        time.sleep(0.5)
        s.close()

    def poweroff(self, timeout=120):
        """A clean shutdown (ACPI), so the journal reaches the disk; forced at the deadline.
        Waits first for the boot to have finished (boot-health.service reports it), so that
        every boot's health is in the journal."""
        if not self.proc or self.proc.poll() is not None:
            return
        try:
            self.wait_for("boot_health", BOOT_FINISHED)
            self.monitor_cmd("system_powerdown")
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and self.proc.poll() is None:
                time.sleep(1)
        finally:
            self.kill()

    def kill(self):
        if self.keyboard is not None:
            self.keyboard.close()
            self.keyboard = None
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
        if self.proc:
            self.proc.wait()


# A guest kernel that stopped (seen under TCG: an oops while the kernel live-patched itself).
KERNEL_PANIC = "Kernel panic - not syncing"


def flat(text):
    """`text` with every run of whitespace (line breaks, a wrapped line's indent) one space."""
    return re.sub(r"\s+", " ", text)


def partitions(disk):
    out = json.loads(run(["sfdisk", "-J", str(disk)]).stdout)
    sector = out["partitiontable"].get("sectorsize", 512)
    return {p.get("name", ""): p["start"] * sector for p in out["partitiontable"]["partitions"]}


def set_cmdline(disk, extra):
    """Writes the boot entry's kernel command line (the ESP edited in place, no mount)."""
    entry = ("title Gateway appliance\nlinux /vmlinuz\ninitrd /initrd.img\n"
             f"options root=LABEL=gwroot ro console=ttyS0,115200 mitigations=off {extra}\n")
    with tempfile.NamedTemporaryFile("w", suffix=".conf", delete=False) as f:
        f.write(entry)
    run(["mcopy", "-o", "-i", f"{disk}@@{ESP_OFFSET}", f.name, "::loader/entries/gateway.conf"])
    os.unlink(f.name)


def read_file(disk, path):
    """A file from the root partition, after poweroff (debugfs; no mount)."""
    off = partitions(disk)["root"]
    r = run(["debugfs", "-R", f"cat {path}", f"{disk}?offset={off}"], check=False)
    return r.stdout


def write_root_file(disk, path, local, mode=0o600):
    """Puts a file on the root partition before boot (debugfs; no mount), owned by root."""
    off = partitions(disk)["root"]
    parent, name = os.path.split(path)
    commands = [f"mkdir {d}" for d in _parents(parent)]
    commands += [f"cd {parent}", f"rm {name}", f"write {local} {name}",
                 f"sif {name} mode 0{0o100000 | mode:o}", f"sif {name} uid 0", f"sif {name} gid 0"]
    with tempfile.NamedTemporaryFile("w", suffix=".debugfs", delete=False) as f:
        f.write("\n".join(commands) + "\n")
    try:
        run(["debugfs", "-w", "-f", f.name, f"{disk}?offset={off}"])
    finally:
        os.unlink(f.name)
    if read_file(disk, path) != Path(local).read_text():
        raise Failed(f"writing {path} into the root partition did not take")


def _parents(path):
    """/a/b/c -> /a, /a/b, /a/b/c (debugfs mkdir complains about those that exist; harmless)."""
    parts = [p for p in path.split("/") if p]
    return ["/" + "/".join(parts[:i + 1]) for i in range(len(parts))]


def write_esp_file(disk, name, local):
    """Puts a file at the top of the ESP, which the appliance mounts on /boot (mtools)."""
    run(["mcopy", "-o", "-i", f"{disk}@@{ESP_OFFSET}", str(local), f"::{name}"])


def gwseed_stick(work, seed_text):
    """A USB stick image as a customer makes one: FAT (no partition table) labelled GWSEED,
    holding seed.toml."""
    stick = work / "stick.raw"
    seed = work / "stick-seed.toml"
    seed.write_text(seed_text)
    run(["mkfs.vfat", "-n", "GWSEED", "-C", str(stick), str(8 * 1024)])
    run(["mcopy", "-i", str(stick), str(seed), "::seed.toml"])
    return stick


def read_esp_file(disk, name):
    r = run(["mtype", "-i", f"{disk}@@{ESP_OFFSET}", f"::{name}"], check=False)
    return r.stdout


def find_on_disk(disk, needle, chunk=64 * 1024 * 1024):
    """Every offset of `needle` in a raw disk image (each with the partition that holds it, if
    it has a partition table), freed blocks and all."""
    r = run(["sfdisk", "-J", str(disk)], check=False)
    table = json.loads(r.stdout).get("partitiontable", {}) if r.returncode == 0 else {}
    sector = table.get("sectorsize", 512)
    starts = sorted((p["start"] * sector, p.get("name", "")) for p in table.get("partitions", []))
    hits = []
    with open(disk, "rb") as f:
        base, tail = 0, b""
        while block := f.read(chunk):
            data = tail + block
            at = data.find(needle)
            while at != -1:
                hits.append(base - len(tail) + at)
                at = data.find(needle, at + 1)
            tail = data[-(len(needle) - 1):] if len(needle) > 1 else b""
            base += len(block)
    where = []
    for hit in hits:
        part = next((f"{name}+{hit - off}" for off, name in reversed(starts) if hit >= off), "outside any partition")
        where.append(f"byte {hit} ({part})")
    return where


def _journal_dir(disk, work):
    """The appliance's journal files, copied out of the root partition (debugfs; no mount)."""
    off = partitions(disk)["root"]
    dest = work / "journal"
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir()
    run(["debugfs", "-R", f"rdump /var/log/journal {dest}", f"{disk}?offset={off}"], check=False)
    return dest / "journal"


def journal(disk, work, unit=None):
    """The appliance's journal (all boots), read with the host's journalctl."""
    args = ["journalctl", "--no-pager", "-o", "short-monotonic", "-D", str(_journal_dir(disk, work))]
    if unit:
        args += ["-u", unit]
    return run(args, check=False).stdout


# The journal's MESSAGE_IDs of the agent's events (docs/provisioning.md; src/progress.rs MSG_*,
# the name being the constant's without MSG_, lowercase; tests/console_phrases.rs checks that
# the two agree). Generated once, never changed: what a scenario reads the agent's steps from.
MESSAGE_IDS = {
    "started": "5b1f0c6e2a9d4c7f8e3a1b2c4d5e6f70",
    "settings_invalid": "6c2e1d7f3b0a4d8e9f4b2c3d5e6f7081",
    "dns_ok": "7d3f2e8a4c1b4e9fa05c3d4e6f708192",
    "dns_missing": "8e403f9b5d2c4fa0b16d4e5f708192a3",
    "connected": "9f5140ac6e3d40b1c27e5f608192a3b4",
    "retrying": "a06251bd7f4e41c2d38f6071a2b3c4d5",
    "key_created": "b17362ce8051420de4907182b3c4d5e6",
    "registered": "c28473df9162431ef5a18293c4d5e6f7",
    "handed_off": "d39584e0a27344f0a6b293a4d5e6f708",
    "awaiting_trust": "e4a695f1b38445a1b7c3a4b5e6f70819",
    "trusted": "f5b7a602c49546b2c8d4b5c6f708192a",
    "failed": "06c8b713d5a647c3d9e5c6d708192a3b",
    "waiting_for_seed": "0d78282148414d0bba53d5b66c9e2b29",
    "already_provisioned": "51a00cc27df04fb49c3511dee8102f1f",
    "lock_wait": "04d2f43fffcf4392b963db4f06d44362",
    "key_scrubbed": "13eaa51533ff44858e532531cbca4154",
    "hostname_set": "20ca3964077b40afb5e766f8d5ec2823",
    "network_applied": "3a7c5e9b1d2f4a6c8e0b2d4f6a8c0e1f",
    "deregistered": "8189c9a3b46848c7b4da8a3d6a982e4d",
    "reset": "df8f9930ae1a4c6999b069cf73e1bfce",
    "copy_detected": "ca4d3c1aa7aa453792d9afbf5df8e526",
    "renewing": "a2904ca55a6f472a8478fb06920aad6c",
    "renewed": "b213ae9d89ea47f1b4b8d76c48503a96",
    "reenrolled": "ee434912ca5044f8838586fbf4d808cc",
}


def events(disk, work):
    """The agent's events in the journal of every boot, in order, after poweroff: dicts with
    `event` (a MESSAGE_IDS name), `boot` (1 for the scenario's first boot, and so on), `unit`,
    `pid` (one per run of the agent), `realtime` (the guest's clock then, seconds since the
    epoch), and the agent's fields `phase`, `code`, `attempt`,
    `server_id`, `seed`, `hostname` (None when absent)."""
    names = {v: k for k, v in MESSAGE_IDS.items()}
    fields = "MESSAGE_ID,_BOOT_ID,_SYSTEMD_UNIT,_PID,PHASE,CODE,ATTEMPT,SERVER_ID,SEED,HOSTNAME"
    out = run(["journalctl", "--no-pager", "-o", "json", f"--output-fields={fields}",
               "-D", str(_journal_dir(disk, work))], check=False, timeout=300).stdout
    boots, found = [], []
    for line in out.splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        boot = entry.get("_BOOT_ID")
        if boot not in boots:
            boots.append(boot)
        event = names.get(entry.get("MESSAGE_ID"))
        if event:
            found.append({"event": event, "boot": boots.index(boot) + 1, "unit": entry.get("_SYSTEMD_UNIT"), "pid": entry.get("_PID"),
                          "realtime": int(entry["__REALTIME_TIMESTAMP"]) / 1e6,
                          "phase": entry.get("PHASE"), "code": entry.get("CODE"), "attempt": entry.get("ATTEMPT"),
                          "server_id": entry.get("SERVER_ID"), "seed": entry.get("SEED"), "hostname": entry.get("HOSTNAME")})
    return found


def event_names(found, boot=None, unit=None):
    """The names of `found` (events()), of one boot and one unit if given."""
    return [e["event"] for e in found if (boot is None or e["boot"] == boot) and (unit is None or e["unit"] == unit)]


STATE_DIR = "/var/lib/gateway-firstboot"


def state_file(disk):
    """The agent's persisted state (state.json), read from the disk after poweroff; {} if none.
    (status.json is under /run: gone at poweroff.)"""
    text = read_file(disk, f"{STATE_DIR}/state.json")
    return json.loads(text) if text.strip() else {}


def status_json(disk, work):
    """`gateway-firstboot status --json` as the appliance would answer it: the agent (built
    for this run) reads the state directory copied off the disk (--root). The verdict is in
    `status` (trusted, trusted-with-warnings, waiting-for-authorization, failed, in-progress),
    with phase, server_id, trust, last_error (its `code`)."""
    root = work / "status-root"
    shutil.rmtree(root, ignore_errors=True)
    (root / "var/lib").mkdir(parents=True)
    off = partitions(disk)["root"]
    run(["debugfs", "-R", f"rdump {STATE_DIR} {root / 'var/lib'}", f"{disk}?offset={off}"])
    try:
        r = run([str(TARGET / "release/gateway-firstboot"), "--root", str(root), "status", "--json"], check=False)
        try:
            return json.loads(r.stdout)
        except ValueError:
            raise Failed(f"status --json (exit {r.returncode}) did not print JSON: {r.stdout!r} {r.stderr!r}")
    finally:
        shutil.rmtree(root, ignore_errors=True)


def expect(what, got, want):
    """Raises Failed unless got == want, naming what it is."""
    if got != want:
        raise Failed(f"{what}: expected {want!r}, got {got!r}")


# A test-only unit put on each scenario's disk: once a boot is done (every start job finished),
# it writes `boot-health: STATE` (systemctl is-system-running) to the journal. Type=exec, so
# the boot does not wait for it.
HEALTH_UNIT = """[Unit]
Description=Boot test: report systemctl is-system-running once the boot is done
[Service]
Type=exec
ExecStart=/bin/sh -c 'echo "boot-health: $(systemctl is-system-running --wait)"'
StandardOutput=journal+console
[Install]
WantedBy=multi-user.target
"""
# Each start of gateway.service, on the console: the handoff queues the start (--no-block) and
# it waits for the identity check, so "handed off" on the console is not yet a started gateway.
# Only where a scenario asks for it (install_gateway_probe). No BindsTo= and no ExecCondition=:
# a gateway restarted once trusted, or a poweroff, while the probe or its condition runs must
# not make it a failed unit. Type=exec: SIGTERM is a clean end (for a oneshot only exit 0 is);
# the shell prints only for a gateway that is active, and exits 0 either way.
GATEWAY_STARTED_UNIT = """[Unit]
Description=Boot test: say on the console that gateway.service has started
After=gateway.service
[Service]
Type=exec
ExecStart=/bin/sh -c 'if systemctl is-active -q gateway.service; then echo "gateway-started: $(systemctl show -P MainPID gateway.service)"; fi; exit 0'
StandardOutput=journal+console
[Install]
WantedBy=gateway.service
"""
# How long a boot may still take to finish once a scenario is done with it (TCG, two VMs).
BOOT_FINISHED = 240
# Journal lines of a unit that systemd stopped starting or triggering.
LIMIT_MARKERS = ("Trigger limit hit", "Start request repeated too quickly", "start-limit-hit",
                 "trigger-limit-hit")


def install_health_probe(disk, work):
    """The harness's boot-health.service on the disk: is-system-running, once the boot is done."""
    _install_unit(disk, work, "boot-health.service", HEALTH_UNIT, "multi-user.target")


def install_gateway_probe(disk, work):
    """The harness's gateway-started.service on the disk: each start of gateway.service on the
    console (the phrase gateway_started)."""
    _install_unit(disk, work, "gateway-started.service", GATEWAY_STARTED_UNIT, "gateway.service")


def _install_unit(disk, work, name, text, wanted_by):
    local = work / name
    local.write_text(text)
    write_root_file(disk, f"/etc/systemd/system/{name}", local, 0o644)
    off = partitions(disk)["root"]
    wants = f"/etc/systemd/system/{wanted_by}.wants"
    script = work / f"{name}.debugfs"
    script.write_text("\n".join([*(f"mkdir {d}" for d in _parents(wants)), f"cd {wants}",
                                  f"symlink {name} /etc/systemd/system/{name}"]) + "\n")
    run(["debugfs", "-w", "-f", str(script), f"{disk}?offset={off}"])


def system_health(disk, work, expect_failed=()):
    """Checks, from the journal of every boot of the scenario, that each boot that finished
    reported `running`, that no unit failed (but those in `expect_failed`, which a scenario
    provokes), and that no unit hit a start or trigger limit. Raises Failed otherwise."""
    text = journal(disk, work)
    limits = [line for line in text.splitlines() if any(m in line for m in LIMIT_MARKERS)]
    if limits:
        raise Failed("a unit hit a start or trigger limit:\n" + "\n".join(limits[:10]))
    failed = set(re.findall(r"(\S+\.(?:service|path|socket|mount|timer|target)): Failed with result", text))
    unexpected = failed - set(expect_failed)
    if unexpected:
        raise Failed(f"units failed: {sorted(unexpected)}")
    states = re.findall(r"boot-health: (\S+)", text)
    if not states:
        raise Failed("no boot reported its health (systemctl is-system-running)")
    allowed = {"running"} | ({"degraded"} if failed else set())
    if any(s not in allowed for s in states):
        raise Failed(f"systemctl is-system-running said {states} (expected only {sorted(allowed)})")


def file_mtime(disk, path):
    """A file's modification time on the root partition (seconds since the epoch), or None."""
    r = run(["debugfs", "-R", f"stat {path}", f"{disk}?offset={partitions(disk)['root']}"], check=False)
    m = re.search(r"mtime: 0x([0-9a-f]+)", r.stdout)
    return int(m.group(1), 16) if m else None


def set_mtime(disk, path, when):
    """Sets a file's modification time on the root partition (debugfs; UTC, whole seconds)."""
    stamp = time.strftime("%Y%m%d%H%M%S", time.gmtime(when))
    run(["debugfs", "-w", "-R", f"sif {path} mtime {stamp}", f"{disk}?offset={partitions(disk)['root']}"])
    if file_mtime(disk, path) != int(when):
        raise Failed(f"setting the mtime of {path} on the disk did not take")


def reached_at(disk, work, unit):
    """How far into the scenario's first boot (seconds, the journal's monotonic clock) systemd
    reached `unit` (a target) or started it, or None."""
    for line in journal(disk, work, unit).splitlines():
        m = re.match(r"\[\s*([\d.]+)\] .*: (?:Reached target|Finished|Started) ", line)
        if m:
            return float(m.group(1))
    return None


def clock_at_end(disk, work):
    """The guest's clock at its journal's last entry (seconds since the epoch), after poweroff."""
    out = run(["journalctl", "--no-pager", "-o", "json", "-n", "1", "--output-fields=MESSAGE",
               "-D", str(_journal_dir(disk, work))], check=False).stdout.strip().splitlines()
    if not out:
        raise Failed("the journal is empty")
    return int(json.loads(out[-1])["__REALTIME_TIMESTAMP"]) / 1e6


def credential(name, value):
    return f"io.systemd.credential.binary:{name}={base64.b64encode(value.encode()).decode()}"


def prepare_disk(work, kind):
    """A private copy of an image: raw (for the ESP edit and debugfs), sparse."""
    disk = work / "disk.raw"
    if kind == "factory":
        run(["cp", "--sparse=always", str(REPO / "target/image/gateway-appliance.raw"), str(disk)], timeout=300)
    else:
        run(["qemu-img", "convert", "-O", "raw", str(REPO / "target/image/gateway-appliance.qcow2"), str(disk)], timeout=300)
    return disk
