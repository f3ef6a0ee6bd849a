"""llama.cpp as one pinned llama-cpp-python release carries it.

Two parts of the release are used, never a rewrite of either:
- its converters (`convert_hf_to_gguf.py`, `convert_lora_to_gguf.py` and their `gguf-py`),
  taken out of the release's source distribution, fetched once (SHA-256 checked) and cached
  outside any checkout ($SFTKEY_LLAMA_CPP, else ~/.cache/sftkey-lora/llama.cpp-<release>);
- its runtime, the `llama_cpp` binding that pip builds from the same release
  (`pip install 'sftkey-lora[gguf]'`; pip keeps the built wheel, so a machine compiles it once):
  the k-quant quantizer, the GGUF runs of the tests and `sftkey-lora eval FILE.gguf`.
"""

from __future__ import annotations

import logging
import os
import tarfile
import tempfile
from pathlib import Path
from types import ModuleType

from ..errors import UserError
from ..pinned import cache_home, fetch_pinned
from ..rundir.files import replace_dir

RELEASE = "0.3.36"
SDIST_URL = ("https://files.pythonhosted.org/packages/ec/e9/e7de2b0463ea3ffbf0ede6cb21b58c1258a8f6521aae45ca"
             "773a59fe7cf3/llama_cpp_python-0.3.36.tar.gz")
SDIST_SHA256 = "832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e"
_VENDORED = f"llama_cpp_python-{RELEASE}/vendor/llama.cpp/"
# What the converters import or read, relative to llama.cpp's root.
CONVERTER_PARTS = ("convert_hf_to_gguf.py", "convert_lora_to_gguf.py", "conversion/", "gguf-py/",
                   "models/templates/", "LICENSE")
INSTALL_HINT = "pip install 'sftkey-lora[gguf]' (it builds llama.cpp once: some minutes)"


def converters_dir() -> Path:
    """llama.cpp's converter scripts of the pinned release, fetched on first use."""
    found = os.environ.get("SFTKEY_LLAMA_CPP")
    folder = Path(found) if found else cache_home() / f"llama.cpp-{RELEASE}-{SDIST_SHA256[:12]}"
    if not (folder / "convert_hf_to_gguf.py").is_file():
        folder.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=folder.parent) as scratch:
            try:
                sdist = fetch_pinned(SDIST_URL, SDIST_SHA256, Path(scratch) / "llama-cpp-python.tar.gz")
            except OSError as err:
                raise UserError(f"llama.cpp's converter: could not fetch {SDIST_URL} ({err}); on a machine "
                                "without internet, set SFTKEY_LLAMA_CPP to a folder holding "
                                f"llama.cpp {RELEASE}'s convert_hf_to_gguf.py") from None
            built = Path(scratch) / "llama.cpp"
            with tarfile.open(sdist) as archive:
                members = [member for member in archive.getmembers() if _is_converter_part(member.name)]
                for member in members:
                    member.name = member.name.removeprefix(_VENDORED)
                archive.extractall(built, members=members, filter="data")
            replace_dir(built, folder)
    return folder


def _is_converter_part(name: str) -> bool:
    inside = name.removeprefix(_VENDORED)
    return name.startswith(_VENDORED) and any(
        inside == part or (part.endswith("/") and inside.startswith(part)) for part in CONVERTER_PARTS)


def binding() -> ModuleType:
    """The `llama_cpp` module, llama.cpp's own log cut to its errors (it writes every tensor
    it loads or quantizes to stderr otherwise); a UserError says how to install it."""
    try:
        import llama_cpp
    except ImportError:
        raise UserError(f"this needs llama.cpp's Python binding, not installed: {INSTALL_HINT}") from None
    logging.getLogger("llama-cpp-python").setLevel(logging.ERROR)  # the binding's log callback reads it
    return llama_cpp


def quantizer_types() -> dict[str, int]:
    """The file types llama.cpp's quantizer offers, by lowercase name (`q4_k_m`: its id)."""
    llama_cpp = binding()
    prefix = "LLAMA_FTYPE_MOSTLY_"
    return {name.removeprefix(prefix).lower(): value for name, value in vars(llama_cpp).items()
            if name.startswith(prefix) and isinstance(value, int)}


if __name__ == "__main__":
    print(converters_dir())  # fetched once: `python -m sftkey_lora.gguf.llamacpp`
