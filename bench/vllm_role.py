"""Benchmark of the vllm role on real lab hosts: the figures ops ask about, printed.

Install (uv from the repository's lock): cold (wheels pulled from the lab's HTTP mirror, empty
uv cache), warm (uv's cache on the host, a new venv) with and without bytecode compiled at
install, and the controller-push path (one archive); bytes the controller sent over SSH and
the mirror served, per host; three hosts installing at once against one. Then first start to
ready, a converge that changes nothing, restart to ready, `kill -9` to serving again, and the
unit's systemd exposure score. Timings are figures, never assertions: `make bench-vllm`.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
LABCTL = ROOT / "lab" / "labctl"
LAB, SUBNET, HOST, ADDRESS = "bench-vllm", "10.231.30.0/24", "bench-w1", "10.231.30.10"
HOSTS = {HOST: ADDRESS, "bench-w2": "10.231.30.11", "bench-w3": "10.231.30.12"}
BRIDGE, GATEWAY, MIRROR_PORT = "vlab-bench-vllm", "10.231.30.1", 8766
MIRROR_DIR = Path("/var/cache/vllm-lab/wheel-mirror")
MIRROR_URL = f"http://{GATEWAY}:{MIRROR_PORT}/"
sys.path.insert(0, str(ROOT / "lab"))
from wheel_mirror import served_bytes  # noqa: E402

KEY = "/var/lib/vllm-lab/ssh/id_ed25519"

def ssh_to(address: str) -> list[str]:
    return ["ssh", "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
            "-o", "LogLevel=ERROR", "-i", KEY, f"root@{address}"]


SSH = ssh_to(ADDRESS)
URL = f"http://{ADDRESS}:8000"


def sh(cmd: list[str], **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, check=True, text=True, capture_output=True, **kw)  # type: ignore[call-overload, no-any-return]


def timed(fn: Callable[[], object]) -> float:
    start = time.monotonic()
    fn()
    return time.monotonic() - start


def bridge_tx_bytes() -> int:
    """Bytes the controller sent into the lab (SSH and the mirror alike)."""
    return int(Path(f"/sys/class/net/{BRIDGE}/statistics/tx_bytes").read_text())


class Traffic:
    """What one step cost the controller: SSH (Ansible) bytes and mirror bytes, apart."""

    def __init__(self, log: Path) -> None:
        self.log = log
        self.tx, self.mirror = bridge_tx_bytes(), served_bytes(log)

    def done(self) -> dict[str, float]:
        mirror = served_bytes(self.log) - self.mirror
        total = bridge_tx_bytes() - self.tx
        return {"controller_ssh_mib": round((total - mirror) / 2**20, 1),
                "mirror_mib": round(mirror / 2**20, 1)}


def install(inventory: Path, log: Path, *args: str) -> dict[str, float]:
    traffic = Traffic(log)
    seconds = timed(lambda: playbook(inventory, "--tags", "vllm_install", *args))
    return {"s": round(seconds, 1), **traffic.done()}


def playbook(inventory: Path, *args: str) -> None:
    env = {"ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"), "PATH": f"{BIN}:/usr/bin:/bin"}
    proc = subprocess.run([str(BIN / "ansible-playbook"), "-i", str(inventory),
                           str(ROOT / "bench" / "vllm_role.yml"), *args],
                          text=True, capture_output=True, env=env)
    if proc.returncode != 0:
        sys.exit(f"ansible-playbook failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-2000:]}")


def serving() -> bool:
    try:
        r = requests.post(f"{URL}/v1/completions", timeout=5,
                          json={"model": "tiny-llama", "prompt": "Hello", "max_tokens": 1})
        return r.status_code == 200
    except requests.RequestException:
        return False


def wait_serving(deadline_s: float = 180) -> None:
    end = time.monotonic() + deadline_s
    while not serving():
        if time.monotonic() > end:
            sys.exit("the instance did not serve again in time")
        time.sleep(0.2)


def main_pid() -> str:
    return sh([*SSH, "systemctl show -p MainPID --value vllm-tiny"]).stdout.strip()


def restart_to_ready() -> float:
    start = time.monotonic()
    sh([*SSH, "systemctl restart vllm-tiny"])
    wait_serving()
    return time.monotonic() - start


def kill_to_serving() -> float:
    pid = main_pid()
    start = time.monotonic()
    sh([*SSH, f"kill -9 {pid}"])
    while serving():  # the port answers until the process is really gone
        time.sleep(0.05)
    wait_serving()
    return time.monotonic() - start


def stats(values: list[float]) -> dict[str, float]:
    return {"median": round(statistics.median(values), 2), "min": round(min(values), 2),
            "max": round(max(values), 2), "runs": len(values)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3, help="repeats of the restart figures")
    parser.add_argument("--output", type=Path, default=Path("bench-vllm.json"))
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        inventory = Path(tmp)
        hosts = "".join(f"        {h}: {{ansible_host: {a}}}\n" for h, a in HOSTS.items())
        (inventory / "hosts.yml").write_text(
            f"all:\n  children:\n    gpu_workers:\n      hosts:\n{hosts}")
        (inventory / "group_vars").symlink_to(ROOT / "inventory" / "lab" / "group_vars")
        log = inventory / "mirror.log"
        pull = ("-e", f"vllm_mirror_url={MIRROR_URL}", "-e", "vllm_wheels_archive_src=")
        one = ("--limit", HOST, *pull)
        wipe = "rm -rf /opt/vllm/venvs /opt/vllm/uv-cache"
        sh([str(LABCTL), "down", "--lab", LAB])
        sh([str(LABCTL), "up", "--lab", LAB, "--subnet", SUBNET,
            "--bind-ro=/var/cache/vllm-lab/models:/srv/models",
            *(f"{h}={a}" for h, a in HOSTS.items())])
        mirror = subprocess.Popen(
            [sys.executable, str(ROOT / "lab" / "wheel_mirror.py"), "serve", "--directory",
             str(MIRROR_DIR), "--bind", GATEWAY, "--port", str(MIRROR_PORT), "--log", str(log)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            end = time.monotonic() + 30
            while not log.exists() and time.monotonic() < end:  # written once it listens
                time.sleep(0.2)
            figures: dict[str, object] = {}
            figures["install_cold_mirror"] = install(inventory, log, *one)
            sh([*SSH, "rm -rf /opt/vllm/venvs"])
            figures["install_warm_compiled"] = install(
                inventory, log, *one, "-e", "vllm_compile_bytecode=true")
            sh([*SSH, "rm -rf /opt/vllm/venvs"])
            figures["install_warm"] = install(
                inventory, log, *one, "-e", "vllm_compile_bytecode=false")
            figures["install_cold_controller_archive"] = install(
                inventory, log, "--limit", "bench-w2")
            for address in HOSTS.values():
                sh([*ssh_to(address), wipe])
            figures["install_cold_mirror_3_hosts"] = install(inventory, log, *pull)
            figures["first_start_to_ready_s"] = round(timed(lambda: playbook(
                inventory, *one, "--tags", "vllm_configure,vllm_run")), 1)
            figures["second_converge_s"] = stats(
                [timed(lambda: playbook(inventory, *one)) for _ in range(args.runs)])
            figures["restart_to_ready_s"] = stats([restart_to_ready() for _ in range(args.runs)])
            figures["kill9_to_serving_s"] = stats([kill_to_serving() for _ in range(args.runs)])
            exposure = sh([*SSH, "systemd-analyze security --no-pager vllm-tiny"]).stdout
            score = re.search(r"exposure level for \S+: ([0-9.]+)", exposure)
            figures["exposure"] = float(score[1]) if score else exposure.strip()[-80:]
            rss = sh([*SSH, "ps -o rss= -u vllm"]).stdout.split()
            figures["rss_mib"] = round(sum(int(x) for x in rss) / 1024)
        finally:
            mirror.terminate()
            mirror.wait()
            sh([str(LABCTL), "down", "--lab", LAB])
    args.output.write_text(json.dumps(figures, indent=2) + "\n")
    width = max(len(k) for k in figures)
    for name, value in figures.items():
        print(f"{name:<{width}}  {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
