#!/usr/bin/env python3
"""Build a local mirror of upstream's node_exporter, Prometheus and Alertmanager release archives.

GitHub's release downloads are unreachable here, so the roles' "archive" install method is
tested against archives shaped exactly like upstream's, made from the Debian binaries that are
installed on this machine (prometheus-node-exporter, prometheus, prometheus-alertmanager):

    <mirror>/prometheus/<name>/releases/download/v<version>/<name>-<version>.linux-<arch>.tar.gz
    <mirror>/prometheus/<name>/releases/download/v<version>/sha256sums.txt

Each archive holds one folder, <name>-<version>.linux-<arch>/, with the binaries (node_exporter;
prometheus and promtool, plus consoles/, console_libraries/ and prometheus.yml; alertmanager
and amtool, plus alertmanager.yml), LICENSE and
a NOTICE saying what it really is. sha256sums.txt has upstream's format ("<sha256>  <file>").
A role points its base URL at file://<mirror>/prometheus/<name>/releases/download.

Stdlib only. Deterministic (the same binaries always give byte-identical archives, so the
checksums are stable), idempotent (an identical archive is left untouched: "unchanged") and
atomic (files are written next to their target and renamed into place).
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import os
import platform
import re
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_MIRROR = Path("/var/cache/vllm-lab/mirror")
GO_ARCH = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "armv7", "ppc64le": "ppc64le"}


@dataclass
class Release:
    """One upstream release archive: files to put in its top folder."""

    name: str
    version: str
    arch: str
    binaries: dict[str, Path]  # name in the archive -> binary on this machine
    trees: dict[str, Path | None] = field(default_factory=dict)  # folder -> source (None: empty)
    files: dict[str, Path] = field(default_factory=dict)  # other file -> source
    package: str = ""

    @property
    def top(self) -> str:
        return f"{self.name}-{self.version}.linux-{self.arch}"

    @property
    def filename(self) -> str:
        return f"{self.top}.tar.gz"

    def folder(self, mirror: Path) -> Path:
        return mirror / "prometheus" / self.name / "releases" / "download" / f"v{self.version}"


def binary_version(binary: Path) -> str:
    """'prometheus, version 2.42.0+ds (branch: ...)' -> '2.42.0'."""
    if not binary.is_file():
        raise SystemExit(f"make_release_mirror: {binary} not found (apt-get install its package)")
    out = subprocess.run(
        [str(binary), "--version"], capture_output=True, text=True, check=True, timeout=30
    )
    match = re.search(r"version (\d+\.\d+\.\d+)", out.stdout + out.stderr)
    if not match:
        raise SystemExit(f"make_release_mirror: cannot read the version of {binary}")
    return match[1]


def notice(release: Release) -> bytes:
    sources = ", ".join(f"{name} <- {path}" for name, path in sorted(release.binaries.items()))
    return (
        f"Test mirror archive, not an upstream release: Debian's {release.package} binaries\n"
        f"({sources}) repackaged in the layout of upstream's {release.filename}\n"
        "by lab/make_release_mirror.py, for testing installs from a release mirror.\n"
    ).encode()


def _add(tar: tarfile.TarFile, name: str, data: bytes | None, mode: int, mtime: int) -> None:
    info = tarfile.TarInfo(name)
    info.mtime = mtime
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    info.mode = mode
    if data is None:
        info.type = tarfile.DIRTYPE
        tar.addfile(info)
    else:
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))


def build_archive(release: Release) -> bytes:
    """The release's .tar.gz, byte-identical for identical inputs."""
    sources = [*release.binaries.values(), *release.files.values()]
    for tree in release.trees.values():
        if tree is not None and tree.is_dir():
            sources.extend(p for p in tree.rglob("*") if p.is_file())
    mtime = max(int(p.stat().st_mtime) for p in sources)
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.GNU_FORMAT) as tar:
        _add(tar, release.top, None, 0o755, mtime)
        for name, path in sorted(release.binaries.items()):
            _add(tar, f"{release.top}/{name}", path.read_bytes(), 0o755, mtime)
        for name, path in sorted(release.files.items()):
            _add(tar, f"{release.top}/{name}", path.read_bytes(), 0o644, mtime)
        _add(tar, f"{release.top}/NOTICE", notice(release), 0o644, mtime)
        for folder, tree in sorted(release.trees.items()):
            _add(tar, f"{release.top}/{folder}", None, 0o755, mtime)
            if tree is None or not tree.is_dir():
                continue
            for path in sorted(p for p in tree.rglob("*") if p.is_file()):
                rel = path.relative_to(tree).as_posix()
                _add(tar, f"{release.top}/{folder}/{rel}", path.read_bytes(), 0o644, mtime)
    out = io.BytesIO()
    # mtime=0 and no file name in the gzip header: nothing varies between builds.
    with gzip.GzipFile(filename="", mode="wb", fileobj=out, mtime=0, compresslevel=6) as gz:
        gz.write(raw.getvalue())
    return out.getvalue()


def write_atomic(path: Path, data: bytes) -> bool:
    """Write data to path unless it already holds exactly that; True if written."""
    if path.exists() and path.read_bytes() == data:
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return True


def publish(release: Release, mirror: Path) -> str:
    """Write the archive and its sha256sums.txt; return the archive's sha256."""
    data = build_archive(release)
    digest = hashlib.sha256(data).hexdigest()
    folder = release.folder(mirror)
    written = write_atomic(folder / release.filename, data)
    # Keep other architectures' lines, as upstream's list has them all.
    sums = folder / "sha256sums.txt"
    lines = [
        line
        for line in (sums.read_text().splitlines() if sums.exists() else [])
        if line.strip() and not line.endswith(f"  {release.filename}")
    ]
    lines.append(f"{digest}  {release.filename}")
    write_atomic(sums, ("\n".join(sorted(lines, key=lambda s: s.split()[-1])) + "\n").encode())
    state = "written" if written else "unchanged"
    print(f"{digest}  {folder / release.filename} ({state})")
    return digest


def releases(args: argparse.Namespace) -> list[Release]:
    arch = args.arch
    found: list[Release] = []
    if "node_exporter" in args.only:
        binary = Path(args.node_exporter_bin)
        found.append(
            Release(
                name="node_exporter",
                version=args.node_exporter_version or binary_version(binary),
                arch=arch,
                binaries={"node_exporter": binary},
                files=_existing(
                    {"LICENSE": Path(args.doc_root, "prometheus-node-exporter/copyright")}
                ),
                package="prometheus-node-exporter",
            )
        )
    if "prometheus" in args.only:
        binary = Path(args.prometheus_bin)
        examples = Path(args.doc_root, "prometheus/examples")
        found.append(
            Release(
                name="prometheus",
                version=args.prometheus_version or binary_version(binary),
                arch=arch,
                binaries={"prometheus": binary, "promtool": Path(args.promtool_bin)},
                trees={
                    "consoles": examples / "consoles",
                    "console_libraries": examples / "console_libraries",
                },
                files=_existing(
                    {
                        "LICENSE": Path(args.doc_root, "prometheus/copyright"),
                        "prometheus.yml": examples / "prometheus.yml",
                    }
                ),
                package="prometheus",
            )
        )
    if "alertmanager" in args.only:
        binary = Path(args.alertmanager_bin)
        found.append(
            Release(
                name="alertmanager",
                version=args.alertmanager_version or binary_version(binary),
                arch=arch,
                binaries={"alertmanager": binary, "amtool": Path(args.amtool_bin)},
                files=_existing(
                    {
                        "LICENSE": Path(args.doc_root, "prometheus-alertmanager/copyright"),
                        "alertmanager.yml": Path(args.alertmanager_example),
                    }
                ),
                package="prometheus-alertmanager",
            )
        )
    return found


def _existing(files: dict[str, Path]) -> dict[str, Path]:
    return {name: path for name, path in files.items() if path.is_file()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", type=Path, default=DEFAULT_MIRROR, help="mirror folder")
    parser.add_argument(
        "--only",
        nargs="+",
        choices=["node_exporter", "prometheus", "alertmanager"],
        default=["node_exporter", "prometheus", "alertmanager"],
        help="which releases to build (default: all)",
    )
    parser.add_argument(
        "--arch",
        default=GO_ARCH.get(platform.machine(), platform.machine()),
        help="architecture in the file names (default: this machine's, e.g. amd64)",
    )
    parser.add_argument("--node-exporter-bin", default="/usr/bin/prometheus-node-exporter")
    parser.add_argument("--prometheus-bin", default="/usr/bin/prometheus")
    parser.add_argument("--promtool-bin", default="/usr/bin/promtool")
    parser.add_argument("--alertmanager-bin", default="/usr/bin/prometheus-alertmanager")
    parser.add_argument("--amtool-bin", default="/usr/bin/amtool")
    parser.add_argument("--alertmanager-example", default="/etc/prometheus/alertmanager.yml")
    parser.add_argument("--node-exporter-version", help="default: the binary's --version")
    parser.add_argument("--alertmanager-version", help="default: the binary's --version")
    parser.add_argument("--prometheus-version", help="default: the binary's --version")
    parser.add_argument("--doc-root", default="/usr/share/doc", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    for release in releases(args):
        missing = [str(p) for p in release.binaries.values() if not p.is_file()]
        if missing:
            raise SystemExit(
                f"make_release_mirror: {', '.join(missing)} not found "
                f"(apt-get install {release.package})"
            )
        publish(release, args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
