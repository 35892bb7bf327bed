#!/usr/bin/env python3
"""Capture the metric families the pinned vLLM serves, for the upgrade guard.

    .venv/bin/python lab/capture_vllm_metrics.py [--output-dir templates/vllm-metrics]
    make capture-vllm-metrics

Boots one lab host (lab `capture`, 10.231.19.0/24), installs the pinned vLLM on it with the
vllm role (bench/vllm_role.yml, the lab's settings), scrapes /metrics, sends a small load
(completions and requests for an unknown model), scrapes again and writes
<output-dir>/<version from /version>.txt: one family per line,
`name | type | labels | samples before->after | help`, plus the bucket boundaries of each
vllm: histogram. Review the diff and commit it; tests/unit/test_metric_guard.py then checks
the dashboards, rules and post-check against it. --url skips the lab and reads a running vLLM.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import requests

from postcheck import promtext
from postcheck.promtext import family_of

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
LABCTL = ROOT / "lab" / "labctl"
LAB, SUBNET, HOST, ADDRESS = "capture", "10.231.19.0/24", "capture-w1", "10.231.19.10"


@dataclass
class Family:
    name: str
    type: str = "untyped"
    help: str = ""
    labels: set[str] = field(default_factory=set)
    samples: int = 0
    buckets: list[str] = field(default_factory=list)


def parse(text: str) -> dict[str, Family]:
    """Families of a text exposition, keyed as the guard lists them (counters with _total)."""
    expo = promtext.parse(text)
    fams = {name: Family(name, kind) for name, kind in expo.types.items()}
    for name, text_ in expo.helps.items():
        fams.setdefault(name, Family(name)).help = text_
    for sample in expo.samples:
        owner = fams.get(family_of(sample.name, fams) or "")
        if owner is None:
            continue
        owner.samples += 1
        le = sample.labels.get("le") if sample.name.endswith("_bucket") else None
        if le and le not in owner.buckets and le != "+Inf":
            owner.buckets.append(le)
        owner.labels |= set(sample.labels) - {"le", "quantile"}
    # prometheus_client names counters x_total on samples, x in TYPE: list them as x_total.
    out = {}
    for fam in fams.values():
        if fam.name.endswith("_created"):
            continue
        key = (
            f"{fam.name}_total"
            if fam.type == "counter" and not fam.name.endswith("_total")
            else fam.name
        )
        out[key] = fam
    return out


def render(
    version: str, before: dict[str, Family], after: dict[str, Family], requests_sent: int
) -> str:
    lines = [
        f"# Metric families exposed by vLLM {version} /metrics (captured by "
        f"lab/capture_vllm_metrics.py after {requests_sent} requests)",
        "# name | type | labels | #samples before -> after | help",
    ]
    for name, fam in sorted(after.items()):
        if name.startswith("vllm:") and fam.type == "histogram" and fam.buckets:
            buckets = ", ".join(str(float(b)) for b in sorted(fam.buckets, key=float))
            lines.append(f"# buckets {name}: {buckets}")
    for name, fam in sorted(after.items()):
        was = before[name].samples if name in before else 0
        labels = ",".join(sorted(fam.labels))
        lines.append(f"{name} | {fam.type} | {labels} | {was}->{fam.samples} | {fam.help}")
    lines += ["", "# Every counter/histogram also has a matching <name>_created gauge family "
              "(prometheus_client default)."]  # fmt: skip
    return "\n".join(lines) + "\n"


def load(url: str, model: str, completions: int, invalid: int) -> int:
    for _ in range(completions):
        r = requests.post(f"{url}/v1/completions", timeout=120,
                          json={"model": model, "prompt": "Hello", "max_tokens": 8})  # fmt: skip
        r.raise_for_status()
    for _ in range(invalid):  # answered 404: makes the 4xx series of http_requests_total
        requests.post(f"{url}/v1/completions", timeout=30,
                      json={"model": "no-such-model", "prompt": "x", "max_tokens": 1})  # fmt: skip
    return completions + invalid


def capture(url: str, output_dir: Path) -> Path:
    version = requests.get(f"{url}/version", timeout=10).json()["version"].split("+")[0]
    model = requests.get(f"{url}/v1/models", timeout=10).json()["data"][0]["id"]
    before = parse(requests.get(f"{url}/metrics", timeout=10).text)
    sent = load(url, model, completions=20, invalid=2)
    time.sleep(1)
    after = parse(requests.get(f"{url}/metrics", timeout=10).text)
    path = output_dir / f"{version}.txt"
    path.write_text(render(version, before, after, sent))
    return path


def with_lab(output_dir: Path) -> Path:
    with tempfile.TemporaryDirectory() as tmp:
        inventory = Path(tmp)
        (inventory / "hosts.yml").write_text(
            f"all:\n  children:\n    gpu_workers:\n      hosts:\n"
            f"        {HOST}: {{ansible_host: {ADDRESS}}}\n")  # fmt: skip
        (inventory / "group_vars").symlink_to(ROOT / "inventory" / "lab" / "group_vars")
        subprocess.run([str(LABCTL), "down", "--lab", LAB], check=True)
        subprocess.run([str(LABCTL), "up", "--lab", LAB, "--subnet", SUBNET,
                        "--bind-ro=/var/cache/vllm-lab/models:/srv/models", f"{HOST}={ADDRESS}"],
                       check=True, stdout=subprocess.DEVNULL)  # fmt: skip
        try:
            subprocess.run([str(BIN / "ansible-playbook"), "-i", str(inventory),
                            str(ROOT / "bench" / "vllm_role.yml")], check=True, cwd=ROOT,
                           env={"ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"),
                                "PATH": f"{BIN}:/usr/bin:/bin"})  # fmt: skip
            return capture(f"http://{ADDRESS}:8000", output_dir)
        finally:
            subprocess.run([str(LABCTL), "down", "--lab", LAB], check=False)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output-dir", type=Path, default=ROOT / "templates" / "vllm-metrics")
    parser.add_argument("--url", help="a running vLLM (http://HOST:PORT) instead of a lab host")
    args = parser.parse_args(argv)
    path = capture(args.url, args.output_dir) if args.url else with_lab(args.output_dir)
    print(f"wrote {path}: review the diff (git diff {path}) and commit it")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
