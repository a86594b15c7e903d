#!/usr/bin/env python3
"""The demo: a factory-fresh software appliance boots and provisions itself, zero-touch.

Narrates a timeline from the appliance's console. Run interactively, it waits for you to
click Authorize on the primary's web page (reachable from this machine); otherwise it clicks
for you after a short pause. Everything runs in a network namespace of its own.
"""

import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import DOMAIN, Failed, Net, Sim, VM, last_match, prepare_disk, run, set_cmdline, wait_until  # noqa: E402

INTERACTIVE = sys.stdin.isatty() and sys.stdout.isatty()
START = time.monotonic()


def say(text):
    print(f"[{time.monotonic() - START:5.0f}s] {text}", flush=True)


def follow(vm, stop):
    """Prints the agent's console lines as they appear."""
    seen = 0
    while not stop.is_set():
        lines = [l for l in vm.console().splitlines() if "gateway-firstboot:" in l or "gateway-standin:" in l]
        for line in lines[seen:]:
            say("appliance | " + line[line.find("gateway-"):].strip())
        seen = len(lines)
        time.sleep(0.5)


def main():
    work = Path(tempfile.mkdtemp(prefix="gateway-demo-"))
    index = 9
    stop = threading.Event()
    sim = vm = None
    try:
        with Net(index, work) as net:
            net.start_dns({f"primary.{DOMAIN}": net.host_ip, f"gw01.{DOMAIN}": net.vm_ip})
            net.start_ntp()
            # This machine reaches the primary's web page through a veth into the namespace.
            run(["ip", "link", "add", "gwdemo0", "type", "veth", "peer", "name", "gwdemo1", "netns", net.ns])
            run(["ip", "netns", "exec", net.ns, "ip", "link", "set", "gwdemo1", "master", "br0", "up"])
            run(["ip", "addr", "add", f"{net.prefix}.254/24", "dev", "gwdemo0"])
            run(["ip", "link", "set", "gwdemo0", "up"])
            sim = Sim(net, work)
            sim.start()
            sim.cli("account", "add", "acme.example")
            say(f"primary simulator up: https://{net.host_ip}/ui (account acme.example, the image's default key)")
            say(f"network: DHCP and DNS (dnsmasq) on {net.prefix}.0/24; gw01.{DOMAIN} -> {net.vm_ip}")
            disk = prepare_disk(work, "software")
            set_cmdline(disk, f"gateway.primary=primary.{DOMAIN} gateway.account=acme.example "
                              f"gateway.primary_ca_sha256={sim.ca_pin()}")
            say("seed: kernel command line gateway.primary=primary.acme.test gateway.account=acme.example (no API key)")
            vm = VM(net, work, disk)
            vm.start()
            say("booting the appliance under QEMU (UEFI, systemd-boot); nobody at its console")
            threading.Thread(target=follow, args=(vm, stop), daemon=True).start()
            vm.wait_for("handed_off", 420)
            sid = sim.servers()[0]["server_id"]
            fp = last_match(vm.this_boot(), "handed_off", id=sid)["short"]
            say(f"the primary shows {sid} under acme.example, NOT TRUSTED; key fingerprint {fp}")
            if INTERACTIVE:
                say(f"open https://{net.host_ip}/ui?server={sid} and click Authorize (check the fingerprint {fp});"
                    " waiting up to 10 minutes")
                wait_until("Authorize", lambda: sim.servers()[0]["state"] == "trusted", 600, 2)
            else:
                time.sleep(3)
                say(f"(not interactive) clicking Authorize for {sid} through the simulator")
                sim.cli("authorize", sid)
            say("authorized")
            vm.wait_for("trusted", 240)
            wait_until("the gateway's secure connection", lambda: sim.servers()[0]["secure_contacts"] >= 2, 240, 2)
            say("the gateway (stand-in) holds its mutual-TLS connection; the primary records it:")
            print(sim.cli("servers"), flush=True)
            if INTERACTIVE:
                input(f"the web page stays at https://{net.host_ip}/ui; press Enter to power the appliance off ")
            stop.set()
            say("powering off")
            vm.poweroff()
            sim.stop()
            subprocess.run(["ip", "link", "del", "gwdemo0"], capture_output=True)
        say("demo done: zero-touch provisioning, authorization, secure connection")
        return 0
    except Failed as e:
        print(f"demo: failed: {e}", flush=True)
        if vm:
            print("\n".join(vm.console().splitlines()[-30:]))
        return 1
    finally:
        stop.set()
        if vm:
            vm.kill()
        if sim:
            sim.stop()
        subprocess.run(["ip", "link", "del", "gwdemo0"], capture_output=True)
        subprocess.run(["rm", "-rf", str(work)])


if __name__ == "__main__":
    sys.exit(main())
