"""The release_archive role (upstream release archives, pinned and sha256-checked) on localhost.

A real ansible-playbook runs the role against this machine with a small archive that the test
builds in upstream's layout (<name>-<version>.linux-<arch>/<binary>) and serves from a file://
mirror, as the lab does with lab/make_release_mirror.py. Everything it writes (the controller's
cache, the unpacked versions, the links) lies under tmp_path. What it proves: the archive is
downloaded into the cache and checked, unpacked into <install_dir>/<version>/, its binaries
linked and runnable; a second run changes nothing; --check on a fresh host changes nothing; a
wrong sha256 fails naming the URL and the checksum, with nothing installed and nothing bad
cached; a changed archive of the same version is unpacked again. What it cannot prove: a
download over HTTPS from GitHub (unreachable here) and a copy over SSH (the lab scenarios do).
"""

from __future__ import annotations

import hashlib
import io
import os
import platform
import re
import subprocess
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from conftest import run_ansible_playbook

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the role installs files owned by root")

ARCH = {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(), platform.machine())
NAME, VERSION = "demo_exporter", "1.2.3"
FILENAME = f"{NAME}-{VERSION}.linux-{ARCH}.tar.gz"
RESULT = re.compile(r"RELEASE_ARCHIVE dir=(\S+)\s+changed=(\w+)")

PLAYBOOK = """\
- name: Install a release archive on this machine
  hosts: localhost
  connection: local
  gather_facts: false
  tasks:
    - name: Install it
      ansible.builtin.include_role:
        name: release_archive
    - name: Report what the role says it did
      ansible.builtin.debug:
        msg: "RELEASE_ARCHIVE dir={{ release_archive_dir }} changed={{ release_archive_changed }}"
"""


def make_archive(path: Path, greeting: str, binaries: tuple[str, ...] = ("demo_exporter",)) -> str:
    """An upstream-shaped .tar.gz at path; returns its sha256."""
    top = f"{NAME}-{VERSION}.linux-{ARCH}"
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w:gz") as tar:
        entries = [(f"{top}/{b}", f"#!/bin/sh\necho {greeting}\n", 0o755) for b in binaries]
        entries.append((f"{top}/LICENSE", "test\n", 0o644))
        for name, text, mode in entries:
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(text), mode
            tar.addfile(info, io.BytesIO(text.encode()))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(raw.getvalue())
    return hashlib.sha256(path.read_bytes()).hexdigest()


class Env:
    def __init__(self, tmp_path: Path) -> None:
        self.tmp = tmp_path
        self.base = tmp_path / "mirror" / "releases" / "download"
        self.archive = self.base / f"v{VERSION}" / FILENAME
        self.cache = tmp_path / "controller-cache"
        self.opt = tmp_path / "opt" / NAME
        self.bin = tmp_path / "bin"
        self.bin.mkdir()
        (tmp_path / "site.yml").write_text(PLAYBOOK)

    def vars(self, sha256: object, **extra: object) -> dict[str, object]:
        return {
            "release_archive_name": NAME,
            "release_archive_version": VERSION,
            "release_archive_sha256": sha256,
            "release_archive_binaries": [NAME],
            "release_archive_base_url": f"file://{self.base}",
            "release_archive_cache_dir": str(self.cache),
            "release_archive_install_dir": str(self.opt),
            "release_archive_bin_dir": str(self.bin),
            **extra,
        }

    def play(self, variables: dict[str, object], *args: str) -> subprocess.CompletedProcess[str]:
        (self.tmp / "vars.yml").write_text(yaml.safe_dump(variables))
        return run_ansible_playbook(
            [str(self.tmp / "site.yml"), "-e", f"@{self.tmp / 'vars.yml'}", *args], self.tmp
        )


@pytest.fixture
def env(tmp_path: Path) -> Env:
    return Env(tmp_path)


def changed(proc: subprocess.CompletedProcess[str]) -> int:
    match = re.search(r"localhost\s*:.*changed=(\d+)", proc.stdout)
    assert match, proc.stdout
    return int(match[1])


def reported(proc: subprocess.CompletedProcess[str]) -> tuple[str, bool]:
    match = RESULT.search(proc.stdout)
    assert match, proc.stdout
    return match[1], match[2] == "True"


def run_demo(bin_dir: Path) -> str:
    return subprocess.run(
        [str(bin_dir / NAME)], capture_output=True, text=True, check=True
    ).stdout.strip()


def test_installs_once_links_the_binaries_and_a_second_run_changes_nothing(env: Env) -> None:
    sha = make_archive(env.archive, "hello-1")
    first = env.play(env.vars(sha))
    assert first.returncode == 0, first.stdout + first.stderr
    assert reported(first) == (str(env.opt / VERSION), True)
    assert (env.cache / FILENAME).read_bytes() == env.archive.read_bytes()
    link = env.bin / NAME
    assert link.is_symlink() and os.readlink(link) == str(env.opt / VERSION / NAME)
    assert run_demo(env.bin) == "hello-1"
    assert (env.opt / VERSION / "LICENSE").is_file()
    assert (env.opt / VERSION / ".release-archive").read_text() == f"{sha}  {FILENAME}\n"
    assert (env.opt / VERSION / NAME).stat().st_mode & 0o777 == 0o755

    second = env.play(env.vars(sha))
    assert second.returncode == 0, second.stdout + second.stderr
    assert changed(second) == 0, second.stdout
    assert reported(second) == (str(env.opt / VERSION), False)


def test_check_mode_on_a_fresh_host_installs_nothing(env: Env) -> None:
    sha = make_archive(env.archive, "hello")
    proc = env.play(env.vars(sha), "--check")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert changed(proc) > 0
    assert not env.opt.exists()
    assert list(env.bin.iterdir()) == []
    # The controller's cache is filled even in check mode: it changes no host.
    assert (env.cache / FILENAME).is_file()


def test_a_wrong_sha256_fails_naming_url_and_checksum_and_installs_nothing(env: Env) -> None:
    make_archive(env.archive, "hello")
    wrong = "0123456789abcdef" * 4
    proc = env.play(env.vars(wrong, release_archive_sha256_var="my_exporter_sha256"))
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert f"file://{env.archive}" in out
    assert wrong in out and "my_exporter_sha256" in out
    assert "nothing was installed" in out
    assert not env.opt.exists()
    assert list(env.bin.iterdir()) == []
    assert not (env.cache / FILENAME).exists(), "a file that failed its check was cached"


@pytest.mark.parametrize(
    "sha256_of",
    [lambda sha: "not-a-sha256", lambda sha: {"some-other-arch": sha}],
    ids=["ill-formed", "no-checksum-for-this-arch"],
)
def test_a_bad_checksum_option_fails_before_downloading(
    env: Env, sha256_of: Callable[[str], object]
) -> None:
    sha = make_archive(env.archive, "hello")
    proc = env.play(env.vars(sha256_of(sha), release_archive_sha256_var="my_exporter_sha256"))
    assert proc.returncode != 0
    assert "my_exporter_sha256 must be the sha256 (64 hex digits)" in proc.stdout
    assert not env.cache.exists() and not env.opt.exists()


def test_a_local_path_and_a_checksum_per_architecture(env: Env) -> None:
    archive = env.tmp / "elsewhere" / "any-name.tar.gz"
    sha = make_archive(archive, "from-a-path")
    proc = env.play(env.vars({ARCH: sha, "s390x": "f" * 64}, release_archive_url=str(archive)))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (env.cache / "any-name.tar.gz").is_file()
    assert run_demo(env.bin) == "from-a-path"


def test_another_archive_of_the_same_version_is_unpacked_again(env: Env) -> None:
    first = make_archive(env.archive, "build-1")
    assert env.play(env.vars(first)).returncode == 0
    second = make_archive(env.archive, "build-2")
    proc = env.play(env.vars(second))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert reported(proc)[1] is True
    assert run_demo(env.bin) == "build-2"


def test_an_archive_without_a_named_binary_fails_naming_it(env: Env) -> None:
    sha = make_archive(env.archive, "hello")
    proc = env.play(env.vars(sha, release_archive_binaries=[NAME, "demotool"]))
    assert proc.returncode != 0
    assert "has no executable demotool" in proc.stdout
    assert not (env.opt / VERSION / ".release-archive").exists()
