"""Benchmark of the whole stack on a lab of its own (`make bench-site`).

    .venv/bin/python bench/site_bench.py [--first-runs 2] [--runs 3] [--output bench-site.json]

On fresh lab hosts (lab `bench`, 10.231.30.0/24: one GPU worker on vLLM's CPU build, one
monitoring host) it measures:

- first converge: `site.yml` on freshly booted hosts (one fresh lab per --first-runs);
- second converge: `site.yml` again, changing nothing (--runs times);
- the Ansible floor: a generated playbook with the same plays, hosts, fact gathering and
  number of tasks per host as the second converge (ansible.builtin.ping round trips for the
  tasks that ran, `when: false` for those it skipped), and the ratio second / floor;
- the post-check against the lab (--runs times);
- the scrape configuration render for 2,000 simulated hosts (bench/scrape_render.py);
- `systemd-analyze security` exposure of every unit the project installs;
- the peak memory of each lab host over each fresh lab's life (its own memory cgroup) and of
  the whole lab, against the 6 GiB the lab may take beside CI.

Both converges skip the post-check play (`--skip-tags postcheck`): the post-check is timed on
its own. Every timing is the median of its runs, with min and max. Figures, not assertions.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
LABCTL = ROOT / "lab" / "labctl"
LAB, SUBNET = "bench", "10.231.30.0/24"
HOSTS = {"bench-worker1": ("gpu_workers", "10.231.30.10"),
         "bench-mon1": ("monitoring", "10.231.30.11")}
CACHE = Path("/var/cache/vllm-lab")
BINDS = [f"--bind-ro={CACHE / 'wheelhouse'}:/opt/wheelhouse",
         f"--bind-ro={CACHE / 'models'}:/srv/models"]
SSH = ["ssh", "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
       "-o", "LogLevel=ERROR", "-o", "BatchMode=yes", "-i", "/var/lib/vllm-lab/ssh/id_ed25519"]
UNITS = ["vllm-*.service", "prometheus.service", "prometheus-node-exporter.service",
         "node_exporter.service", "grafana-server.service"]
LAB_BUDGET_MIB = 6 * 1024
MIB = 1024 * 1024


# ---------------------------------------------------------------- helpers
def sh(cmd: list[str], **kw: Any) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(cmd, text=True, capture_output=True, **kw)
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd[:4])}... exited {proc.returncode}:\n"
                 f"{proc.stdout[-3000:]}\n{proc.stderr[-2000:]}")
    return proc


def ssh(address: str, command: str) -> str:
    return sh([*SSH, f"root@{address}", command]).stdout


def stats(values: list[float], digits: int = 2) -> dict[str, float]:
    return {"median": round(statistics.median(values), digits),
            "min": round(min(values), digits), "max": round(max(values), digits),
            "runs": len(values)}


def timed(fn: Callable[[], object]) -> float:
    start = time.monotonic()
    fn()
    return time.monotonic() - start


# ---------------------------------------------------------------- inventory and playbooks
def write_inventory(folder: Path) -> Path:
    groups: dict[str, dict[str, Any]] = {}
    for name, (group, address) in HOSTS.items():
        groups.setdefault(group, {"hosts": {}})["hosts"][name] = {"ansible_host": address}
    (folder / "hosts.yml").write_text(yaml.safe_dump({"all": {"children": groups}}))
    (folder / "group_vars").symlink_to(ROOT / "inventory" / "lab" / "group_vars")
    return folder


def ansible_playbook(inventory: Path, playbook: Path, *args: str) -> dict[str, Any]:
    """Run a playbook with the JSON callback; its parsed output (exits on failure)."""
    env = dict(os.environ, ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"),
               ANSIBLE_STDOUT_CALLBACK="ansible.posix.json", PATH=f"{BIN}:{os.environ['PATH']}")
    proc = subprocess.run([str(BIN / "ansible-playbook"), "-i", str(inventory), str(playbook),
                           *args], env=env, cwd=ROOT, text=True, capture_output=True)
    try:
        result: dict[str, Any] = json.loads(proc.stdout[proc.stdout.index("{"):])
    except ValueError:
        sys.exit(f"{playbook.name} exited {proc.returncode}:\n{proc.stdout[-3000:]}"
                 f"\n{proc.stderr[-2000:]}")
    if proc.returncode != 0:
        sys.exit(f"{playbook.name} failed:\n" + "\n".join(failures(result)))
    return result


def failures(result: dict[str, Any]) -> list[str]:
    """One line per failed task and host of a JSON-callback result."""
    return [f"{task['task']['name']} on {host}: {str(res.get('msg', ''))[:1500]}"
            for play in result["plays"] for task in play["tasks"]
            for host, res in task["hosts"].items()
            if res.get("failed") or res.get("unreachable")]


EXTRA_VARS: list[str] = []  # --extra-vars, given to every site.yml run


def converge(inventory: Path) -> dict[str, Any]:
    extra = [a for e in EXTRA_VARS for a in ("-e", e)]
    return ansible_playbook(inventory, ROOT / "site.yml", "--skip-tags", "postcheck", *extra)


def recap(result: dict[str, Any]) -> dict[str, dict[str, int]]:
    return {host: {k: int(s[k]) for k in ("ok", "changed", "skipped", "failures")}
            for host, s in result["stats"].items()}


def play_settings() -> dict[str, dict[str, Any]]:
    """become and gather_facts of each play of site.yml, by play name."""
    settings: dict[str, dict[str, Any]] = {}
    for entry in yaml.safe_load((ROOT / "site.yml").read_text()):
        for play in yaml.safe_load((ROOT / entry["ansible.builtin.import_playbook"]).read_text()):
            settings[play["name"]] = {"become": bool(play.get("become", False)),
                                      "connection": play.get("connection")}
    return settings


def task_counts(play: dict[str, Any]) -> tuple[bool, dict[str, list[int]]]:
    """Whether the play gathered facts, and per host [tasks run, tasks skipped]."""
    counts: dict[str, list[int]] = {}
    gathered = False
    for task in play["tasks"]:
        if task["task"]["name"] == "Gathering Facts":
            gathered = True
            continue
        for host, res in task["hosts"].items():
            counts.setdefault(host, [0, 0])[1 if res.get("skipped") else 0] += 1
    return gathered, counts


def balance(per_play: list[tuple[bool, dict[str, list[int]]]],
            stats: dict[str, dict[str, int]]) -> None:
    """Make each host's totals those of the recap: included files count there as tasks run
    but are not listed as tasks; the difference goes to the host's largest play."""
    for host, recap_counts in stats.items():
        plays = [(g, c) for g, c in per_play if host in c]
        if not plays:
            continue
        ran = sum(c[host][0] + int(g) for g, c in plays)
        skipped = sum(c[host][1] for _, c in plays)
        largest = max(plays, key=lambda p: sum(p[1][host]))[1][host]
        largest[0] = max(0, largest[0] + recap_counts["ok"] - ran)
        largest[1] = max(0, largest[1] + recap_counts["skipped"] - skipped)


def floor_playbook(second: dict[str, Any]) -> list[dict[str, Any]]:
    """Plays with the second converge's hosts, fact gathering and task counts: no-ops."""
    settings = play_settings()
    plays: list[dict[str, Any]] = []
    per_play = [task_counts(play) for play in second["plays"]]
    balance(per_play, recap(second))
    for play, (gathered, counts) in zip(second["plays"], per_play, strict=True):
        if not counts:
            continue
        name = play["play"]["name"]
        total = max(run + skip for run, skip in counts.values())
        tasks = [{"name": f"no-op {i + 1}", "ansible.builtin.ping": None,
                  "when": f"{i} < __bench_ran[inventory_hostname]"} for i in range(total)]
        plays.append({"name": f"Floor of: {name}", "hosts": ",".join(sorted(counts)),
                      "gather_facts": gathered,
                      "become": settings.get(name, {}).get("become", False),
                      "vars": {"__bench_ran": {h: c[0] for h, c in counts.items()}},
                      "tasks": tasks})
    return plays


# ---------------------------------------------------------------- memory
def own_memory_cgroup() -> Path | None:
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if "memory" in controllers.split(","):
            root = Path("/sys/fs/cgroup/memory") / path.lstrip("/")
            return root if root.is_dir() else None
    return None


@dataclass
class MemoryWatch:
    """Each lab host in a memory cgroup of its own (cgroup v1), under one for the lab."""

    parent: Path
    peak_anon: dict[str, int] = field(default_factory=dict)
    peak_anon_total: int = 0
    stop: threading.Event = field(default_factory=threading.Event)

    def host(self, name: str) -> Path:
        return self.parent / name

    def enter(self, name: str) -> Callable[[], None]:
        """A preexec_fn moving the child (labctl up, then the host it boots) into the cgroup."""
        procs = self.host(name) / "cgroup.procs"
        procs.parent.mkdir(parents=True, exist_ok=True)

        def move() -> None:
            procs.write_text(str(os.getpid()))
        return move

    def anon(self, name: str) -> int:
        """Memory that cannot be dropped: anonymous pages and shared memory."""
        stat = dict(line.split() for line in (self.host(name) / "memory.stat").read_text()
                    .splitlines())
        return int(stat["total_rss"]) + int(stat["total_shmem"])

    def poll(self) -> None:
        while not self.stop.wait(0.5):
            now = {h: self.anon(h) for h in HOSTS if self.host(h).is_dir()}
            for h, v in now.items():
                self.peak_anon[h] = max(self.peak_anon.get(h, 0), v)
            self.peak_anon_total = max(self.peak_anon_total, sum(now.values()))

    def peaks(self) -> dict[str, float]:
        """MiB: per host and lab, kernel-recorded peak (page cache included) and polled
        peak of anonymous + shared memory."""
        out: dict[str, float] = {}
        for h in HOSTS:
            out[f"{h}_peak_mib"] = read_int(self.host(h) / "memory.max_usage_in_bytes") / MIB
            out[f"{h}_peak_anon_mib"] = self.peak_anon.get(h, 0) / MIB
        out["lab_peak_mib"] = read_int(self.parent / "memory.max_usage_in_bytes") / MIB
        out["lab_peak_anon_mib"] = self.peak_anon_total / MIB
        return out

    def remove(self) -> None:
        for h in HOSTS:
            if self.host(h).is_dir():
                self.host(h).rmdir()
        if self.parent.is_dir():
            self.parent.rmdir()


def read_int(path: Path) -> int:
    return int(path.read_text().split()[0])


# ---------------------------------------------------------------- the lab
def lab_down() -> None:
    sh([str(LABCTL), "down", "--lab", LAB])


@contextmanager
def fresh_lab(memory_root: Path | None) -> Iterator[MemoryWatch | None]:
    """A lab booted from scratch, each host in its own memory cgroup; down afterwards."""
    lab_down()
    watch = MemoryWatch(memory_root / f"vllm-bench-{os.getpid()}") if memory_root else None
    try:
        for name, (_, address) in HOSTS.items():
            sh([str(LABCTL), "up", "--lab", LAB, "--subnet", SUBNET, *BINDS, f"{name}={address}"],
               preexec_fn=watch.enter(name) if watch else None)
        poller = threading.Thread(target=watch.poll, daemon=True) if watch else None
        if poller:
            poller.start()
        yield watch
    finally:
        if watch:
            watch.stop.set()
        lab_down()
        if watch:
            watch.remove()


# ---------------------------------------------------------------- the figures
def postcheck(inventory: Path, report: Path, failures: list[str]) -> None:
    """One post-check run; the checks it failed are added to failures (timed all the same)."""
    proc = subprocess.run([str(BIN / "postcheck"), "--inventory", str(inventory), "--json",
                           str(report)], text=True, capture_output=True, cwd=ROOT)
    if proc.returncode not in (0, 1):
        sys.exit(f"the post-check could not run:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    checks = json.loads(report.read_text())["checks"]
    failures += [f"{c['name']} {c['target']}" for c in checks if c["status"] == "fail"]


def exposure() -> dict[str, float]:
    scores: dict[str, float] = {}
    for name, (_, address) in HOSTS.items():
        listed = ssh(address, "systemctl list-units --all --plain --no-legend --type=service "
                     + " ".join(f"'{u}'" for u in UNITS))
        for unit in sorted(line.split()[0] for line in listed.splitlines() if line.strip()):
            out = ssh(address, f"systemd-analyze security --no-pager {unit}")
            score = re.search(r"exposure level for \S+: ([0-9.]+)", out)
            if score:
                scores[f"{name}:{unit.removesuffix('.service')}"] = float(score[1])
    return scores


def scrape_render(runs: int) -> dict[str, Any]:
    script = ROOT / "bench" / "scrape_render.py"
    if not script.exists():
        # TODO(scrape_render): bench/scrape_render.py (2,000 simulated hosts) is not written yet.
        return {"todo": "bench/scrape_render.py not present: render time not measured"}
    proc = sh([sys.executable, str(script), "--sizes", "2000", "--runs", str(runs), "--json"],
              cwd=ROOT)
    sizes: list[dict[str, Any]] = json.loads(proc.stdout)
    at = next(r for r in sizes if r["hosts"] == 2000)
    return {"targets": at["targets"], "render_s": stats([float(x) for x in at["runs"]])}


def repeated(runs: int, fn: Callable[[], object]) -> list[float]:
    return [timed(fn) for _ in range(runs)]


def bench(args: argparse.Namespace, inventory: Path, tmp: Path) -> dict[str, Any]:
    # Other work on the machine slows every figure: the load average says how much.
    figures: dict[str, Any] = {"loadavg_1m_at_start": round(os.getloadavg()[0], 2)}
    first: list[float] = []
    memory: list[dict[str, float]] = []
    memory_root = own_memory_cgroup()
    for cycle in range(args.first_runs):
        with fresh_lab(memory_root) as watch:
            first.append(timed(lambda: converge(inventory)))
            print(f"first converge {cycle + 1}: {first[-1]:.1f} s", file=sys.stderr)
            if cycle == args.first_runs - 1:
                figures.update(steady_state(args.runs, inventory, tmp))
                figures["exposure"] = exposure()
            if watch:
                memory.append(watch.peaks())
    figures["first_converge_s"] = stats(first, 1)
    figures["memory_mib"] = {k: stats([m[k] for m in memory], 0) for k in memory[0]} \
        if memory else {"todo": "no cgroup v1 memory hierarchy: peak memory not measured"}
    figures["scrape_render_2000_hosts"] = scrape_render(args.runs)
    figures["loadavg_1m_at_end"] = round(os.getloadavg()[0], 2)
    return figures


def steady_state(runs: int, inventory: Path, tmp: Path) -> dict[str, Any]:
    """Second converge, its Ansible floor, and the post-check, on a converged lab."""
    second_results: list[dict[str, Any]] = []
    floor_results: list[dict[str, Any]] = []
    second: list[float] = []
    floor: list[float] = []
    floor_file = tmp / "floor.yml"
    # Each second converge is followed by its floor, so each ratio compares runs made under
    # the same load on the machine.
    for _ in range(runs):
        second.append(timed(lambda: second_results.append(converge(inventory))))
        floor_file.write_text(yaml.safe_dump(floor_playbook(second_results[-1]), sort_keys=False))
        floor.append(timed(lambda: floor_results.append(ansible_playbook(inventory, floor_file))))
    changed = {h: r["changed"] for h, r in recap(second_results[-1]).items() if r["changed"]}
    ratios = [s / f for s, f in zip(second, floor, strict=True)]
    failures: list[str] = []
    checks = repeated(runs, lambda: postcheck(inventory, tmp / "postcheck.json", failures))
    return {"second_converge_s": stats(second), "second_converge_changed": changed,
            "floor_playbook_s": stats(floor), "second_to_floor_ratio": stats(ratios),
            "tasks_second": recap(second_results[-1]), "tasks_floor": recap(floor_results[-1]),
            "postcheck_s": stats(checks), "postcheck_failed_checks": sorted(set(failures))}


# ---------------------------------------------------------------- output
def table(figures: dict[str, Any]) -> list[str]:
    rows: list[tuple[str, str]] = [
        ("load average (1 min) at start, end",
         f"{figures['loadavg_1m_at_start']}, {figures['loadavg_1m_at_end']} (2 cores)")]
    for key in ("first_converge_s", "second_converge_s", "floor_playbook_s",
                "second_to_floor_ratio", "postcheck_s"):
        rows.append((key, cell(figures[key])))
    rows.append(("second_converge_changed", str(figures["second_converge_changed"] or "none")))
    failed = figures["postcheck_failed_checks"]
    rows.append(("postcheck_failed_checks", f"{len(failed)}: {failed[:3]}" if failed else "none"))
    render = figures["scrape_render_2000_hosts"]
    rows += [(f"scrape_render_2000_hosts.{k}", cell(v)) for k, v in render.items()]
    rows += [(f"exposure {k}", f"{v:.1f}") for k, v in figures["exposure"].items()]
    rows += [(f"memory {k}", cell(v)) for k, v in figures["memory_mib"].items()]
    width = max(len(r[0]) for r in rows)
    return [f"{name:<{width}}  {value}" for name, value in rows]


def cell(value: Any) -> str:
    if isinstance(value, dict) and "median" in value:
        return (f"{value['median']:>8}  (min {value['min']}, max {value['max']}, "
                f"{value['runs']} runs)")
    return str(value)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--first-runs", type=int, default=2,
                        help="fresh labs, one first converge each (about 3 min each)")
    parser.add_argument("--runs", type=int, default=3,
                        help="repeats of the second converge, the floor and the post-check")
    parser.add_argument("--output", type=Path, default=Path("bench-site.json"))
    parser.add_argument("-e", "--extra-vars", action="append", default=[],
                        help="extra variables for every site.yml run (as ansible-playbook -e)")
    args = parser.parse_args()
    EXTRA_VARS.extend(args.extra_vars)
    if os.geteuid() != 0:
        sys.exit("the lab needs root")
    with tempfile.TemporaryDirectory() as tmp:
        figures = bench(args, write_inventory(Path(tmp)), Path(tmp))
    figures["lab_memory_budget_mib"] = LAB_BUDGET_MIB
    lab_peak = figures["memory_mib"].get("lab_peak_anon_mib")
    if isinstance(lab_peak, dict):
        figures["lab_within_budget"] = lab_peak["max"] <= LAB_BUDGET_MIB
    args.output.write_text(json.dumps(figures, indent=2) + "\n")
    print("\n".join(table(figures)))
    print(f"lab memory budget {LAB_BUDGET_MIB} MiB: "
          f"{'within' if figures.get('lab_within_budget') else 'OVER or unmeasured'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
