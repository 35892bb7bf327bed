"""Filters of the nvidia_driver role: the host's APT sources, read so as never to conflict.

apt refuses the whole source list ("Conflicting values set for option Signed-By regarding
source ...") when two entries for the same URI and suite name different keys, one of
them none. So the role adds an entry only where none exists yet, with the key the host's
own entries for that URI already use.
"""

from __future__ import annotations

import re
from typing import Any

# The role's files read "==> PATH" then the file's text (see tasks/apt_sources.yml).
_FILE = re.compile(r"^==> (.+)$")
_ONE_LINE = re.compile(r"^(deb|deb-src)\s+(?:\[(?P<opts>[^\]]*)\]\s+)?(?P<rest>.+)$")


def _norm(uri: str) -> str:
    return uri.rstrip("/")


def _one_line(path: str, line: str) -> dict[str, Any] | None:
    m = _ONE_LINE.match(line)
    if not m:
        return None
    opts = dict(o.split("=", 1) for o in (m["opts"] or "").split() if "=" in o)
    uri, suite, *components = m["rest"].split()
    return {
        "file": path,
        "types": [m[1]],
        "uris": [_norm(uri)],
        "suites": [suite],
        "components": components,
        "signed_by": opts.get("signed-by", ""),
    }


def _deb822(path: str, paragraph: list[str]) -> dict[str, Any] | None:
    fields: dict[str, str] = {}
    key = ""
    for line in paragraph:
        if line[:1] in (" ", "\t") and key:
            fields[key] += "\n" + line.strip()
        elif ":" in line:
            key, value = line.split(":", 1)
            key = key.strip().lower()
            fields[key] = value.strip()
    if not fields.get("uris") or fields.get("enabled", "yes").lower() == "no":
        return None
    return {
        "file": path,
        "types": fields.get("types", "deb").split(),
        "uris": [_norm(u) for u in fields["uris"].split()],
        "suites": fields.get("suites", "").split(),
        "components": fields.get("components", "").split(),
        "signed_by": fields.get("signed-by", ""),
    }


def nvidia_apt_sources(text: str) -> list[dict[str, Any]]:
    """Every enabled entry of sources.list and sources.list.d, with its file."""
    entries: list[dict[str, Any]] = []
    path = ""
    paragraph: list[str] = []

    def flush() -> None:
        if paragraph and path.endswith(".sources"):
            entry = _deb822(path, paragraph)
            if entry:
                entries.append(entry)
        paragraph.clear()

    for raw in text.splitlines():
        m = _FILE.match(raw)
        if m:
            flush()
            path = m[1]
            continue
        line = raw.split("#", 1)[0].rstrip() if not raw.lstrip().startswith("#") else ""
        if path.endswith(".sources"):
            if line.strip():
                paragraph.append(line)
            else:
                flush()
        elif line.strip():
            entry = _one_line(path, line.strip())
            if entry:
                entries.append(entry)
    flush()
    return entries


def nvidia_same_uri(entries: list[dict[str, Any]], uri: str, own_file: str) -> list[str]:
    """Files other than the role's own that already have an entry for this URI."""
    return sorted({e["file"] for e in entries if _norm(uri) in e["uris"] and e["file"] != own_file})


def nvidia_debian_components(
    entries: list[dict[str, Any]],
    release: str,
    mirror: str,
    needed: list[str],
    own_file: str,
    default_key: str,
) -> dict[str, Any]:
    """The Debian components the host still lacks for its release, and the key to use.

    Entries of the role's own file do not count (so a second run decides the same). The
    key is the one the host's entries for the mirror URI already use (none when they use
    none); with no such entry, Debian's archive keyring.
    """
    others = [e for e in entries if e["file"] != own_file and "deb" in e["types"]]
    enabled = {c for e in others if release in e["suites"] for c in e["components"]}
    missing = [c for c in needed if c not in enabled]
    same = [e for e in others if _norm(mirror) in e["uris"]]
    signed_by = same[0]["signed_by"] if same else default_key
    return {
        "missing": missing,
        "signed_by": signed_by,
        "suites": [release, f"{release}-updates"],
        "files": sorted({e["file"] for e in same}),
    }


class FilterModule:
    def filters(self) -> dict[str, Any]:
        return {
            "nvidia_apt_sources": nvidia_apt_sources,
            "nvidia_same_uri": nvidia_same_uri,
            "nvidia_debian_components": nvidia_debian_components,
        }
