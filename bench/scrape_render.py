"""Benchmark: render and check the scrape configuration for simulated fleets.

    .venv/bin/python bench/scrape_render.py [--sizes 200,500,1000,2000] [--runs 3] [--json]

For each size it writes an inventory of that many GPU hosts (two vLLM instances each, so
2 x size vllm targets, size + 2 node targets and size GPU targets) plus an HA pair of
monitoring hosts, then times `ansible-playbook bench/scrape_render.yml`: Ansible loading the
inventory, the prometheus role's templates rendering every file_sd file, prometheus.yml and
the rules, and promtool checking them. Nothing is contacted. Prints the median, min and max
of --runs runs per size, and how the time grows; asserts nothing about the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
PLAYBOOK = REPO / "bench" / "scrape_render.yml"
ANSIBLE_PLAYBOOK = Path(sys.executable).parent / "ansible-playbook"


@dataclass
class Row:
    hosts: int
    targets: int
    median_s: float
    min_s: float
    max_s: float
    runs: list[float]


def inventory(size: int) -> dict[str, Any]:
    workers = {
        f"gpu{i:05d}": {"ansible_host": f"10.{i // 65536 % 256}.{i // 256 % 256}.{i % 256}"}
        for i in range(size)
    }
    instances = [
        {"name": name, "port": port, "model": f"/srv/models/{name}", "served_model_name": name}
        for name, port in (("llama", 8000), ("coder", 8001))
    ]
    slos = [{"model": "llama", "availability": 0.999, "latency_threshold_seconds": 10,
             "latency_objective": 0.95, "window": "30d"}]  # fmt: skip
    return {
        "all": {
            "children": {
                "gpu_workers": {"hosts": workers, "vars": {"vllm_instances": instances}},
                "monitoring": {
                    "hosts": {f"mon{i}": {"ansible_host": f"10.255.0.{i}"} for i in (1, 2)},
                    "vars": {"prometheus_vllm_slos": slos},
                },
            }
        }
    }


def count_targets(dest: Path) -> int:
    total = 0
    for path in (dest / "file_sd").glob("*.json"):
        total += sum(len(group["targets"]) for group in json.loads(path.read_text()))
    return total


def run_once(size: int, work: Path) -> tuple[float, int]:
    inv = work / f"hosts-{size}.yml"
    inv.write_text(yaml.safe_dump(inventory(size)))
    dest = work / f"out-{size}"
    env = {**os.environ, "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"),
           "ANSIBLE_LOCALHOST_WARNING": "0", "ANSIBLE_NOCOLOR": "1"}  # fmt: skip
    start = time.monotonic()
    proc = subprocess.run(
        [str(ANSIBLE_PLAYBOOK), "-i", str(inv), str(PLAYBOOK), "-e", f"render_dest={dest}"],
        capture_output=True, text=True, env=env, cwd=REPO,
    )  # fmt: skip
    seconds = time.monotonic() - start
    if proc.returncode != 0:
        sys.exit(f"render of {size} hosts failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-2000:]}")
    return seconds, count_targets(dest)


def bench(sizes: list[int], runs: int) -> list[Row]:
    rows = []
    with tempfile.TemporaryDirectory(prefix="scrape-render-") as tmp:
        for size in sizes:
            results = [run_once(size, Path(tmp)) for _ in range(runs)]
            times = [round(s, 2) for s, _ in results]
            rows.append(Row(size, results[0][1], round(statistics.median(times), 2),
                            min(times), max(times), times))  # fmt: skip
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="200,500,1000,2000", help="GPU hosts per inventory")
    parser.add_argument("--runs", type=int, default=3, help="runs per size (median, min, max)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)
    rows = bench([int(s) for s in args.sizes.split(",")], args.runs)
    if args.json:
        print(json.dumps([asdict(r) for r in rows], indent=2))
        return 0
    print(f"{'GPU hosts':>9} {'targets':>8} {'median s':>9} {'min s':>6} {'max s':>6}  growth")
    base = rows[0]
    for r in rows:
        growth = f"x{r.median_s / base.median_s:.2f} time for x{r.hosts / base.hosts:.0f} hosts"
        figures = f"{r.median_s:>9.2f} {r.min_s:>6.2f} {r.max_s:>6.2f}"
        print(f"{r.hosts:>9} {r.targets:>8} {figures}  {growth}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
