"""Benchmark of the vllm role on a real lab host: the figures ops ask about, printed.

Install time with a cold wheelhouse (copied from the controller, then installed) and a warm
one (already on the host), first start to ready, a converge that changes nothing, restart to
ready, `kill -9` to serving again, and the unit's systemd exposure score. Timings are
figures, never assertions: run it with `make bench-vllm`.
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
KEY = "/var/lib/vllm-lab/ssh/id_ed25519"
SSH = ["ssh", "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
       "-o", "LogLevel=ERROR", "-i", KEY, f"root@{ADDRESS}"]
URL = f"http://{ADDRESS}:8000"


def sh(cmd: list[str], **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, check=True, text=True, capture_output=True, **kw)  # type: ignore[call-overload, no-any-return]


def timed(fn: Callable[[], object]) -> float:
    start = time.monotonic()
    fn()
    return time.monotonic() - start


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
        (inventory / "hosts.yml").write_text(
            f"all:\n  children:\n    gpu_workers:\n      hosts:\n"
            f"        {HOST}: {{ansible_host: {ADDRESS}}}\n")
        (inventory / "group_vars").symlink_to(ROOT / "inventory" / "lab" / "group_vars")
        sh([str(LABCTL), "down", "--lab", LAB])
        sh([str(LABCTL), "up", "--lab", LAB, "--subnet", SUBNET,
            "--bind-ro=/var/cache/vllm-lab/models:/srv/models", f"{HOST}={ADDRESS}"])
        try:
            figures: dict[str, object] = {}
            figures["install_cold_wheelhouse_s"] = round(
                timed(lambda: playbook(inventory, "--tags", "vllm_install")), 1)
            sh([*SSH, "rm -rf /opt/vllm/venvs"])
            figures["install_warm_wheelhouse_s"] = round(
                timed(lambda: playbook(inventory, "--tags", "vllm_install")), 1)
            figures["first_start_to_ready_s"] = round(
                timed(lambda: playbook(inventory, "--tags", "vllm_configure,vllm_run")), 1)
            figures["second_converge_s"] = stats(
                [timed(lambda: playbook(inventory)) for _ in range(args.runs)])
            figures["restart_to_ready_s"] = stats([restart_to_ready() for _ in range(args.runs)])
            figures["kill9_to_serving_s"] = stats([kill_to_serving() for _ in range(args.runs)])
            exposure = sh([*SSH, "systemd-analyze security --no-pager vllm-tiny"]).stdout
            score = re.search(r"exposure level for \S+: ([0-9.]+)", exposure)
            figures["exposure"] = float(score[1]) if score else exposure.strip()[-80:]
            rss = sh([*SSH, "ps -o rss= -u vllm"]).stdout.split()
            figures["rss_mib"] = round(sum(int(x) for x in rss) / 1024)
        finally:
            sh([str(LABCTL), "down", "--lab", LAB])
    args.output.write_text(json.dumps(figures, indent=2) + "\n")
    width = max(len(k) for k in figures)
    for name, value in figures.items():
        print(f"{name:<{width}}  {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
