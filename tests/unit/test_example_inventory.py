"""inventory/example as ops get it: the README's "Deploying to your fleet" steps, run on a copy
of the example, and the post-check play's reports where `make demo` says they are (#23).

The README's fenced blocks are parsed, not copied here, so the steps and this test cannot drift:
the inventory steps run as written (cp, `ansible-vault create` with a throwaway password file and
an EDITOR that writes throwaway values for the variables the README lists, the preflight) in a
folder that links this repository's files beside the copied inventory. What differs from an ops
run, and why: `--ask-vault-pass` becomes `--vault-password-file` (no terminal to answer a
prompt); every host is this machine (an extra inventory source: `ansible_connection: local`,
no become), so each role's checks read this machine's Python, ports and distribution; the
nvidia_driver role reads a PCI tree built from the recorded HGX H100 lspci output
(fixtures/nvidia/lspci/hgx_h100.txt: 8 GPUs, 4 NVSwitches) through its `__nvidia_driver_pci_root`,
since no GPU exists here. The vllm role counts GPUs on this machine's own /sys bus (none), so its
"GPU index present on the host" check cannot fail here; its tensor-parallel x GPUs check runs.
The controller steps (`make venv`, `make gateway-wheelhouse`) are not run (they would rebuild the
shared .venv and download from PyPI): their recipes are read with `make -n` instead.

The post-check play runs for real with a STAND-IN `postcheck` (no fleet here) that writes the
files it is told to, from the folder the play's command runs in: a relative path would land in
playbooks/, as it did before.
"""

from __future__ import annotations

import os
import pty
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import REPO

README = REPO / "README.md"
EXAMPLE = REPO / "inventory" / "example"
HGX_LSPCI = Path(__file__).parent / "fixtures" / "nvidia" / "lspci" / "hgx_h100.txt"
VENV_BIN = Path(sys.executable).parent
VAULT_PASSWORD = "throwaway-vault-password"


# --- the README's section ------------------------------------------------------------------
def deploy_section() -> str:
    text = README.read_text()
    start = text.index("## Deploying to your fleet\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end > 0 else len(text)]


def fenced(lang: str) -> list[str]:
    return re.findall(rf"^```{lang}\n(.*?)^```$", deploy_section(), re.S | re.M)


def commands(block: str) -> list[str]:
    """The block's command lines, their trailing comments removed."""
    lines = [re.split(r"\s+#\s", line)[0].strip() for line in block.splitlines()]
    return [line for line in lines if line and not line.startswith("#")]


def controller_steps() -> list[str]:
    return commands(fenced("sh")[0])


def inventory_steps() -> list[str]:
    return commands(fenced("sh")[1])


def readme_vault_variables() -> list[str]:
    (block,) = fenced("yaml")
    return list((yaml.safe_load(block) or {}).keys())


def example_vault_references() -> set[str]:
    """vault_* variables the example's group_vars use (comments left out)."""
    used: set[str] = set()
    for f in (EXAMPLE / "group_vars").rglob("*.yml"):
        for line in f.read_text().splitlines():
            used.update(re.findall(r"\bvault_[a-z0-9_]+", line.split("#", 1)[0]))
    return used


def example_vars(group: str) -> dict[str, Any]:
    merged: dict[str, Any] = {}
    for f in sorted((EXAMPLE / "group_vars" / group).glob("*.yml")):
        merged.update(yaml.safe_load(f.read_text()) or {})
    return merged


# --- what the README says -------------------------------------------------------------------
def test_readme_vault_step_lists_every_vault_variable_the_example_uses() -> None:
    listed = readme_vault_variables()
    assert len(listed) == len(set(listed)), listed
    assert set(listed) == example_vault_references()
    # Each group's vars are a folder (main.yml, vault.yml beside it): a group_vars/<group>.yml
    # next to a group_vars/<group>/ folder is not read at all once the vault folder exists.
    assert not list((EXAMPLE / "group_vars").glob("*.yml"))
    vault_paths = [c.split()[-1] for c in inventory_steps() if " create " in c]
    assert vault_paths == ["inventory/prod/group_vars/monitoring/vault.yml"]


def test_controller_steps_are_make_targets_that_set_up_only_the_controller() -> None:
    assert controller_steps() == ["make venv", "make gateway-wheelhouse"]
    # -W: as if requirements.txt had changed, so the recipe is printed even where .venv is built.
    # --no-print-directory: under `make test` this make is a sub-make, which prints its folder.
    venv = subprocess.run(["make", "--no-print-directory", "-n", "-W", "requirements.txt", "venv"],
                          cwd=REPO,
                          capture_output=True, text=True, check=True).stdout  # fmt: skip
    recipe = [line for line in venv.splitlines() if line.strip()]
    assert recipe and all(re.match(r"(test -x|\.venv/bin/pip install|touch) ", line)
                          for line in recipe), recipe  # fmt: skip
    wheels = subprocess.run(["make", "--no-print-directory", "-n", "gateway-wheelhouse"], cwd=REPO,
                            capture_output=True,
                            text=True, check=True).stdout  # fmt: skip
    gateway_default = yaml.safe_load((REPO / "roles/gateway/defaults/main.yml").read_text())
    assert f"mkdir -p {gateway_default['gateway_wheelhouse_src']}" in wheels
    # None of the lab's set-up (its cache, image, model or CPU wheelhouse).
    assert "vllm-lab" not in venv + wheels and "labctl" not in venv + wheels


def test_example_uses_all_eight_gpus_of_an_hgx_host_with_a_pinned_driver() -> None:
    workers = example_vars("gpu_workers")
    assert workers["nvidia_driver_expected_gpu_count"] == 8
    branch = str(workers["nvidia_driver_branch"])
    assert re.match(rf"^{branch}\.[0-9]+\.[0-9]+-", workers["nvidia_driver_version"])
    engine = workers["vllm_engine_args"]
    gpus: list[int] = []
    for instance in workers["vllm_instances"]:
        args = {**engine, **instance.get("args", {})}
        tp, pp = args.get("tensor-parallel-size", 1), args.get("pipeline-parallel-size", 1)
        width = int(tp) * int(pp)
        assert len(instance["gpus"]) == width, instance["name"]
        gpus += instance["gpus"]
        assert not instance["model"].startswith("meta-llama/"), "gated: needs an HF token"
    assert sorted(gpus) == list(range(8))


# --- the README's steps on a copy of the example, to the preflight --------------------------
def hgx_pci_tree(root: Path) -> Path:
    """sysfs vendor/class/device files of the recorded HGX H100's NVIDIA functions."""
    pattern = re.compile(r"^(\S+) .*\[([0-9a-f]{4})\]: .*\[([0-9a-f]{4}):([0-9a-f]{4})\]")
    for line in HGX_LSPCI.read_text().splitlines():
        found = pattern.match(line)
        if found:
            slot, klass, vendor, device = found.groups()
            dev = root / slot
            dev.mkdir(parents=True)
            (dev / "vendor").write_text(f"0x{vendor}\n")
            (dev / "class").write_text(f"0x{klass}00\n")
            (dev / "device").write_text(f"0x{device}\n")
    return root


def throwaway(name: str) -> str:
    return f"https://throwaway.invalid/{name}" if name.endswith("_url") else f"throwaway-{name}"


def follow_readme(tmp_path: Path, vault_variables: list[str]) -> tuple[Path, list[str]]:
    """A checkout-shaped folder where the README's inventory steps up to the vault have run;
    returns it and the preflight command as the README gives it, adapted as the module says."""
    work = tmp_path / "work"
    work.mkdir()
    for entry in REPO.iterdir():
        if entry.name not in {"inventory", ".git"}:
            (work / entry.name).symlink_to(entry)
    # A copy, not a link: `cp -r` of a link would copy the link, and the vault would land here.
    shutil.copytree(EXAMPLE, work / "inventory" / "example")
    password = tmp_path / "vault-password"
    password.write_text(VAULT_PASSWORD + "\n")
    plain = tmp_path / "vault-plain.yml"
    plain.write_text(yaml.safe_dump({v: throwaway(v) for v in vault_variables}))
    editor = tmp_path / "editor"
    editor.write_text(f"#!/bin/sh\ncat {shlex.quote(str(plain))} > \"$1\"\n")
    editor.chmod(0o755)
    env = {**os.environ, "ANSIBLE_CONFIG": "ansible.cfg", "EDITOR": str(editor),
           "ANSIBLE_VAULT_PASSWORD_FILE": str(password), "ANSIBLE_NOCOLOR": "1",
           "ANSIBLE_LOCAL_TEMP": str(tmp_path / "ansible-tmp")}  # fmt: skip
    *setup, preflight, site = inventory_steps()
    assert "playbooks/preflight.yml" in preflight and "site.yml" in site
    for step in setup:
        # On a terminal, as ops run it: `ansible-vault create` opens no editor without one.
        terminal, stdout = pty.openpty()
        try:
            proc = subprocess.run(step, shell=True, cwd=work, env=env, stdout=stdout,
                                  stderr=subprocess.PIPE, text=True, timeout=120)  # fmt: skip
        finally:
            os.close(stdout)
            os.close(terminal)
        assert proc.returncode == 0, f"{step}: {proc.stderr}"
    vault = work / "inventory" / "prod" / "group_vars" / "monitoring" / "vault.yml"
    assert vault.read_text().startswith("$ANSIBLE_VAULT;"), "the vault file is not encrypted"
    assert "throwaway" not in vault.read_text()
    local = tmp_path / "local.yml"
    local.write_text(yaml.safe_dump({"all": {"vars": {
        "ansible_connection": "local", "ansible_become": False,
        "ansible_python_interpreter": "{{ ansible_playbook_python }}"}}}))  # fmt: skip
    product = tmp_path / "product_name"
    product.write_text("HGX H100 8-GPU (recorded stand-in)\n")
    args = shlex.split(preflight.replace("--ask-vault-pass", f"--vault-password-file {password}"))
    args += ["-i", str(local),
             "-e", f"__nvidia_driver_pci_root={hgx_pci_tree(tmp_path / 'pci')}",
             "-e", f"__nvidia_driver_product_file={product}"]  # fmt: skip
    return work, args


def run_in(work: Path, tmp_path: Path, args: list[str]) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "ANSIBLE_CONFIG": "ansible.cfg", "ANSIBLE_NOCOLOR": "1",
           "ANSIBLE_LOCAL_TEMP": str(tmp_path / "ansible-tmp")}  # fmt: skip
    started = time.monotonic()
    proc = subprocess.run(args, cwd=work, env=env, capture_output=True, text=True, timeout=300)
    print(f"{' '.join(args[:4])} ...: {time.monotonic() - started:.1f} s")
    return proc


def recap(out: str) -> dict[str, dict[str, int]]:
    hosts: dict[str, dict[str, int]] = {}
    for host, counts in re.findall(r"^(\S+)\s+: (ok=.*)$", out, re.M):
        hosts[host] = {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", counts)}
    return hosts


def test_readme_steps_on_a_copy_of_the_example_pass_the_preflight(tmp_path: Path) -> None:
    work, args = follow_readme(tmp_path, readme_vault_variables())
    proc = run_in(work, tmp_path, args)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-6000:]
    assert "is undefined" not in out
    hosts = recap(proc.stdout)
    assert set(hosts) == {"gpu-node-01", "gpu-node-02", "mon-01", "gw-01"}, hosts
    assert all(h["failed"] == 0 and h["unreachable"] == 0 and h["ok"] > 0 for h in hosts.values())
    # Every role's own checks ran on every host that gets the role (none skipped as a whole).
    included = re.findall(r"^included: (\w+) for (.*) => \(item=", proc.stdout, re.M)
    roles = {role: set(on.split(", ")) for role, on in included}
    assert roles["vllm"] == roles["nvidia_driver"] == {"gpu-node-01", "gpu-node-02"}
    assert roles["gateway"] == {"gw-01"} and roles["grafana"] == {"mon-01"}


def test_a_vault_without_one_of_the_variables_is_refused_naming_it(tmp_path: Path) -> None:
    """The README's step before #23 named two variables: the preflight stops on the others."""
    listed = readme_vault_variables()
    assert "vault_pagerduty_routing_key" in listed
    work, args = follow_readme(tmp_path, [v for v in listed if v != "vault_pagerduty_routing_key"])
    proc = run_in(work, tmp_path, [*args, "--limit", "mon-01"])
    assert proc.returncode != 0
    assert "'vault_pagerduty_routing_key' is undefined" in proc.stdout + proc.stderr


# --- the post-check play's reports ----------------------------------------------------------
STAND_IN = """#!/bin/sh
# STAND-IN for postcheck (no fleet here): writes the reports it is told to, relative to where
# the play runs it, and prints a summary line as the real one does.
while [ $# -gt 0 ]; do
  case "$1" in --json|--junit|--html) echo "stand-in $1" > "$2"; shift;; esac
  shift
done
echo "summary: stand-in"
"""


def venv_with_stand_in(tmp_path: Path) -> Path:
    """A venv whose python is this one and whose bin/postcheck is the stand-in: the play runs
    `<ansible_playbook_python's folder>/postcheck`."""
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "pyvenv.cfg").write_text((Path(sys.prefix) / "pyvenv.cfg").read_text())
    (venv / "lib").symlink_to(Path(sys.prefix) / "lib", target_is_directory=True)
    (venv / "bin" / "python").symlink_to(os.path.realpath(sys.executable))
    (venv / "bin" / "postcheck").write_text(STAND_IN)
    (venv / "bin" / "postcheck").chmod(0o755)
    return venv


@pytest.mark.parametrize(
    ("env_report", "extra_var", "expected_stem"),
    [
        (None, None, "postcheck-report"),
        ("reports/run1.json", None, "reports/run1"),
        (None, "ABS/elsewhere/run2.json", "ABS/elsewhere/run2"),
    ],
    ids=["default", "POSTCHECK_REPORT relative", "postcheck_report absolute"],
)
def test_postcheck_reports_are_where_make_demo_prints_them(
    tmp_path: Path, env_report: str | None, extra_var: str | None, expected_stem: str
) -> None:
    venv = venv_with_stand_in(tmp_path)
    run = tmp_path / "run"
    (run / "reports").mkdir(parents=True)
    (tmp_path / "elsewhere").mkdir()
    inventory = tmp_path / "empty.yml"
    inventory.write_text("all:\n  hosts: {}\n")
    env = {k: v for k, v in os.environ.items() if k != "POSTCHECK_REPORT"}
    env |= {"ANSIBLE_CONFIG": str(REPO / "ansible.cfg"), "ANSIBLE_NOCOLOR": "1",
            "ANSIBLE_LOCALHOST_WARNING": "0", "ANSIBLE_LOCAL_TEMP": str(tmp_path / "ansible-tmp")}
    if env_report:
        env["POSTCHECK_REPORT"] = env_report
    args = [str(venv / "bin" / "python"), str(VENV_BIN / "ansible-playbook"), "-i", str(inventory),
            str(REPO / "playbooks" / "postcheck.yml")]  # fmt: skip
    if extra_var:
        args += ["-e", f"postcheck_report={extra_var.replace('ABS', str(tmp_path))}"]
    before = sorted((REPO / "playbooks").iterdir())
    proc = subprocess.run(args, cwd=run, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert sorted((REPO / "playbooks").iterdir()) == before, "a report landed in playbooks/"
    stem = (tmp_path / expected_stem.replace("ABS/", "")) if extra_var else run / expected_stem
    for ext in ("json", "xml", "html"):
        assert (stem.parent / f"{stem.name}.{ext}").read_text().startswith("stand-in --")
    # The play says where they are (the YAML callback folds long lines: compare words).
    assert f"Reports: {stem}.json, {stem}.xml, {stem}.html" in " ".join(proc.stdout.split())
    if extra_var:
        return
    # What `make demo` prints after the deployment (-o deploy: its echo lines only), from the
    # folder the play ran in: the printed report exists.
    make = ["make", "-s", "-f", str(REPO / "Makefile"), "-o", "deploy", "demo"]
    shown = subprocess.run(make, cwd=run, env=env, capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0, shown.stdout + shown.stderr
    printed = re.search(r"^Report:\s+(\S+)", shown.stdout, re.M)
    assert printed, shown.stdout
    assert printed.group(1) == f"{stem}.html" and Path(printed.group(1)).is_file()
    json_line = re.search(r"^Post-check:\s+(\S+)", shown.stdout, re.M)
    assert json_line and Path(json_line.group(1)).is_file()
