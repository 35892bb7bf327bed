"""The lab's vLLM wheel mirror: what an air-gapped fleet's artifact store or file server holds.

`build`: from the wheelhouse, the wheels the role's locks pin (matched by sha256, hard links, so
no extra disk), uv's binary, and one tar per lock (the controller-push path: one file per host).
`serve`: a plain HTTP file server on a lab bridge or loopback address only, logging the bytes it
sends, so benchmarks and tests can say what the hosts fetched and the controller sent.
"""

from __future__ import annotations

import argparse
import hashlib
import http.server
import ipaddress
import os
import re
import shutil
import sys
import tarfile
from pathlib import Path

# Lab bridges live in 10.231.0.0/16 (lab/labctl); nothing else may reach this server.
LAB_NETWORK = ipaddress.ip_network("10.231.0.0/16")
HASH = re.compile(r"--hash=sha256:([0-9a-f]{64})")


def lock_hashes(lock: Path) -> set[str]:
    return set(HASH.findall(lock.read_text()))


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def link(src: Path, dest: Path) -> None:
    if dest.exists():
        return
    try:
        os.link(src, dest)
    except OSError:
        shutil.copy2(src, dest)


def build(wheelhouse: Path, locks: list[Path], uv: Path, output: Path) -> None:
    output.mkdir(parents=True, exist_ok=True)
    by_hash = {sha256(p): p for p in sorted(wheelhouse.glob("*.whl"))}
    for lock in locks:
        wanted = lock_hashes(lock)
        missing = wanted - by_hash.keys()
        if missing:
            sys.exit(f"{lock}: {len(missing)} pinned wheels are not in {wheelhouse}"
                     " (run make wheelhouse)")
        wheels = sorted(by_hash[h] for h in wanted)
        for wheel in wheels:
            link(wheel, output / wheel.name)
        archive = output / "archives" / f"{lock.stem}.tar"
        if not archive.exists():
            archive.parent.mkdir(exist_ok=True)
            # Wheels are zip files already: plain tar, nothing to gain from compressing again.
            with tarfile.open(f"{archive}.part", "w") as tar:
                for wheel in wheels:
                    tar.add(wheel, arcname=wheel.name)
            os.replace(f"{archive}.part", archive)
        print(f"{lock.stem}: {len(wheels)} wheels, {archive} ({archive.stat().st_size >> 20} MiB)")
    shutil.copy2(uv, output / "uv")


class Handler(http.server.SimpleHTTPRequestHandler):
    log_path: Path

    def copyfile(self, source, outputfile) -> None:  # type: ignore[no-untyped-def]
        start = source.tell()
        super().copyfile(source, outputfile)
        with self.log_path.open("a") as log:
            log.write(f"{self.client_address[0]} {self.path} {source.tell() - start}\n")

    def log_message(self, format: str, *args: object) -> None:
        pass


def serve(directory: Path, address: str, port: int, log: Path, pidfile: Path | None) -> None:
    ip = ipaddress.ip_address(address)
    if not (ip.is_loopback or ip in LAB_NETWORK):
        sys.exit(f"--bind {address}: only loopback or a lab bridge address ({LAB_NETWORK})")
    log.parent.mkdir(parents=True, exist_ok=True)

    class Bound(Handler):
        log_path = log

        def __init__(self, *a: object, **kw: object) -> None:
            super().__init__(*a, directory=str(directory), **kw)  # type: ignore[arg-type]

    with http.server.ThreadingHTTPServer((address, port), Bound) as server:
        log.touch()  # listening: the log's existence says so
        if pidfile:
            pidfile.write_text(f"{os.getpid()}\n")
        server.serve_forever()


def served_bytes(log: Path, client: str | None = None) -> int:
    """Bytes the server sent, to every client or one."""
    total = 0
    for line in (log.read_text() if log.exists() else "").splitlines():
        host, _, size = line.split(" ")
        if client is None or host == client:
            total += int(size)
    return total


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="lay out the mirror folder")
    b.add_argument("--wheelhouse", type=Path, required=True)
    b.add_argument("--lock", type=Path, action="append", required=True)
    b.add_argument("--uv", type=Path, required=True)
    b.add_argument("--output", type=Path, required=True)
    s = sub.add_parser("serve", help="serve the mirror folder over HTTP")
    s.add_argument("--directory", type=Path, required=True)
    s.add_argument("--bind", required=True)
    s.add_argument("--port", type=int, default=8765)
    s.add_argument("--log", type=Path, required=True)
    s.add_argument("--pidfile", type=Path)
    args = parser.parse_args()
    if args.command == "build":
        build(args.wheelhouse, args.lock, args.uv, args.output)
    else:
        serve(args.directory, args.bind, args.port, args.log, args.pidfile)
    return 0


if __name__ == "__main__":
    sys.exit(main())
