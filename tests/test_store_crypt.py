"""Client-side encryption of the store, on real local store directories (no mocks).

What a user cares about: nothing readable about a checkpoint (memory bytes, job names) is in the
store's objects; the key file is private; the right key reads everything back; a missing or
wrong key, or a store made with other settings, is refused with one line; a changed byte is a
corrupt chunk, never served.
"""

from __future__ import annotations

import dataclasses
import json
import os
import stat
from pathlib import Path

import pytest

from cedanafs.config import Settings, StoreSettings
from cedanafs.streamer import (ChunkerSpec, CorruptChunk, Store, StoreFormatError, StoreKeyError, chunk_key,
                               digest_of, open_store_backend)
from cedanafs.streamer.backends.format import FORMAT_KEY

pytestmark = pytest.mark.unit

MARKER = b"SECRET-MARKER-7f3a9c-in-process-memory"


def settings_for(tmp: Path, encrypt: str = "on", key_file: str | None = None, codec: str = "zstd") -> Settings:
    store = StoreSettings(url=str(tmp / "store"), encrypt=encrypt, codec=codec,
                          key_file=key_file if key_file is not None else str(tmp / "keys" / "store.key"))
    return dataclasses.replace(Settings(), store=store)


def open_store(settings: Settings, cache: Path | None = None) -> Store:
    backend = open_store_backend(settings.store.url, settings)
    return Store(backend, chunker=ChunkerSpec.for_size("fixed", 64 << 10), inline_threshold=0)


def payload() -> bytes:
    body = os.urandom(200 << 10)
    return body[:1000] + MARKER + body[1000:] + MARKER * 100


def stored_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file()]


def test_objects_hold_no_plain_bytes_or_names_and_read_back(tmp_path):
    settings = settings_for(tmp_path)
    data = payload()
    with open_store(settings) as store:
        content = store.write_bytes(data)
        store.backend.put("manifests/payroll-job/20261130T000000Z-0001.json", b'{"job": "payroll-job"}')
        assert list(store.backend.list("manifests/")) == ["manifests/payroll-job/20261130T000000Z-0001.json"]
        assert list(store.backend.list("manifests/pay")) == ["manifests/payroll-job/20261130T000000Z-0001.json"]
        assert list(store.backend.list("manifests/other/")) == []
    key_file = tmp_path / "keys" / "store.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "store").stat().st_mode) == 0o700
    files = stored_files(tmp_path / "store")
    assert len(files) > len(content.chunks)
    for path in files:
        assert MARKER not in path.read_bytes(), path
        assert b"payroll" not in path.read_bytes() and "payroll" not in str(path), path
    fmt = json.loads((tmp_path / "store" / FORMAT_KEY).read_text())
    assert fmt["encryption"] == "aes-256-gcm" and fmt["chunk_id"] == "kb3"
    assert fmt["key_id"] and fmt["key_id"] in key_file.read_text()
    assert "key" not in fmt  # the format object names the key, never holds it

    # A second machine with the same key (a copy of the key file) reads everything back.
    copy = tmp_path / "other" / "copy.key"
    copy.parent.mkdir()
    copy.write_bytes(key_file.read_bytes())
    with open_store(settings_for(tmp_path, "auto", str(copy))) as store:
        assert store.read_bytes(content) == data
        assert store.backend.get("manifests/payroll-job/20261130T000000Z-0001.json") == b'{"job": "payroll-job"}'


def test_missing_or_wrong_key_is_one_line(tmp_path):
    settings = settings_for(tmp_path)
    open_store(settings).close()
    key_id = json.loads((tmp_path / "store" / FORMAT_KEY).read_text())["key_id"]
    with pytest.raises(StoreKeyError) as missing:
        open_store(settings_for(tmp_path, "auto", str(tmp_path / "nowhere.key")))
    with pytest.raises(StoreKeyError) as wrong:
        open_store(settings_for(tmp_path / "elsewhere", "on", str(tmp_path / "elsewhere.key")))  # makes another key
        open_store(settings_for(tmp_path, "auto", str(tmp_path / "elsewhere.key")))
    for exc in (missing.value, wrong.value):
        text = str(exc)
        assert "\n" not in text and exc.exit_code != 0
        assert f"this store is encrypted; its key id is {key_id}; give store.key_file" in text


def test_store_made_with_other_settings_is_refused(tmp_path):
    open_store(settings_for(tmp_path, "on")).close()
    with pytest.raises(StoreFormatError, match="encrypted store .* store.encrypt is off"):
        open_store(settings_for(tmp_path, "off"))
    plain = tmp_path / "plain"
    plain.mkdir()
    open_store(settings_for(plain, "off")).close()
    with pytest.raises(StoreFormatError, match="not an encrypted store"):
        open_store(settings_for(plain, "on"))
    # auto on a local store follows what the store is, both ways
    open_store(settings_for(plain, "auto")).close()
    open_store(settings_for(tmp_path, "auto")).close()
    fmt = plain / "store" / FORMAT_KEY
    fmt.write_text(fmt.read_text().replace('"version": 1', '"version": 9'))
    with pytest.raises(StoreFormatError, match="another cedanafs version .*format 9"):
        open_store(settings_for(plain, "off"))


def test_plain_data_from_before_formats_is_not_encrypted_over(tmp_path):
    old = tmp_path / "store" / "chunks-b3" / "ab"
    old.mkdir(parents=True)
    (old / ("ab" * 32)).write_bytes(b"\x00old")
    with pytest.raises(StoreFormatError, match="unencrypted data"):
        open_store(settings_for(tmp_path, "on"))
    open_store(settings_for(tmp_path, "off")).close()  # kept readable as the plain store it is


@pytest.mark.expect_warnings
def test_flipped_byte_is_a_corrupt_chunk_never_served(tmp_path):
    settings = settings_for(tmp_path)
    data = payload()
    with open_store(settings) as store:
        content = store.write_bytes(data)
    victim = content.chunks[1]
    path = tmp_path / "store" / chunk_key(victim.digest, "kb3")
    blob = bytearray(path.read_bytes())
    blob[len(blob) // 2] ^= 0x01
    path.write_bytes(bytes(blob))
    with open_store(settings) as store:
        with pytest.raises(CorruptChunk, match=victim.digest):
            store.read_bytes(content)
        # A chunk moved in place of another fails too: the key is bound into every object.
        other = tmp_path / "store" / chunk_key(content.chunks[2].digest, "kb3")
        path.write_bytes(other.read_bytes())
    with open_store(settings) as store:  # a fresh store: nothing remembered as corrupt yet
        with pytest.raises(CorruptChunk, match="failed authentication"):
            store.chunks.get(victim)


def test_chunk_ids_are_keyed_per_store_and_dedup_inside_one(tmp_path):
    data = os.urandom(64 << 10)
    ids = []
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        with open_store(settings_for(tmp_path / name)) as store:
            first = store.chunks.store(data)
            again = store.chunks.store(data)
            assert first.new and not again.new and again.stored_bytes == 0
            ids.append(first.ref.digest)
    assert ids[0] != ids[1] and digest_of(data) not in ids


def test_disk_cache_serves_keyed_chunks(tmp_path):
    settings = dataclasses.replace(settings_for(tmp_path),
                                   cache=dataclasses.replace(Settings().cache, dir=str(tmp_path / "cache")))
    data = payload()
    with Store.from_settings(settings, chunker_kind="fixed") as store:
        content = store.write_bytes(data)
        assert store.read_bytes(content) == data
    assert stat.S_IMODE((tmp_path / "cache").stat().st_mode) == 0o700
    for path in stored_files(tmp_path / "store" / "chunks-kb3"):
        path.unlink()  # now only the disk cache has them
    with Store.from_settings(settings, chunker_kind="fixed") as store:
        assert store.read_bytes(content) == data
        assert store.cache.stats().disk_hits > 0


def test_a_plain_store_does_hold_the_marker(tmp_path):
    """The control for the checks above: without encryption the marker is there to be found."""
    with open_store(settings_for(tmp_path, "off")) as store:
        store.write_bytes(payload())
    assert any(MARKER in p.read_bytes() for p in stored_files(tmp_path / "store" / "chunks-b3"))


@pytest.mark.expect_warnings
def test_key_import_takes_only_the_stores_key(tmp_path):
    from cedanafs.app.storekey import export_key, import_key
    from cedanafs.errors import AlreadyExists, UsageError

    here = settings_for(tmp_path)  # made the store, and its key
    open_store(here).close()
    text, info = export_key(here, str(tmp_path / "moved.key"))
    assert stat.S_IMODE((tmp_path / "moved.key").stat().st_mode) == 0o600 and info.key_id in text
    other = tmp_path / "other"
    other.mkdir()
    open_store(settings_for(other)).close()  # another store, another key
    there = settings_for(tmp_path, "auto", str(tmp_path / "machine2" / "store.key"))
    with pytest.raises(UsageError, match="is encrypted with key"):
        import_key(there, str(other / "keys" / "store.key"))
    assert import_key(there, str(tmp_path / "moved.key")).key_id == info.key_id
    with open_store(there) as store:
        assert store.backend.key.id == info.key_id
    # A different key already installed is replaced only when asked, and kept aside.
    elsewhere = dataclasses.replace(there, store=dataclasses.replace(there.store, url=str(other / "store")))
    with pytest.raises(AlreadyExists, match="holds another key"):
        import_key(elsewhere, str(other / "keys" / "store.key"))
    import_key(elsewhere, str(other / "keys" / "store.key"), force=True)
    assert (tmp_path / "machine2" / f"store.key.{info.key_id}.old").exists()


@pytest.mark.expect_warnings
def test_a_lost_format_object_is_written_again_only_for_the_right_key(tmp_path):
    settings = settings_for(tmp_path)
    data = payload()
    with open_store(settings) as store:
        content = store.write_bytes(data)
    (tmp_path / "store" / FORMAT_KEY).unlink()  # e.g. an emptied bucket refilled by a running writer
    (tmp_path / "elsewhere").mkdir()
    open_store(settings_for(tmp_path / "elsewhere")).close()
    with pytest.raises(StoreFormatError, match="encrypted with another key"):
        open_store(settings_for(tmp_path, "on", str(tmp_path / "elsewhere" / "keys" / "store.key")))
    with open_store(settings_for(tmp_path, "auto")) as store:  # auto on a local store: the data says encrypted
        assert store.read_bytes(content) == data
    assert json.loads((tmp_path / "store" / FORMAT_KEY).read_text())["encryption"] == "aes-256-gcm"


def _conformance_checks():
    from tests import test_backend_conformance as suite

    remote_only = ("test_s3_objects_visible_with_boto3", "test_gcs_objects_visible_with_json_api")
    return [getattr(suite, name) for name in dir(suite) if name.startswith("test_") and name not in remote_only]


@pytest.mark.parametrize("check", _conformance_checks(), ids=lambda f: f.__name__)
def test_the_encrypted_backend_passes_the_backend_conformance_suite(check, tmp_path):
    backend = open_store_backend(str(tmp_path / "store"), settings_for(tmp_path))
    try:
        if check.__name__ == "test_invalid_keys_rejected":
            for key in ("", "/abs", "a//b", "a/../b", "dir/", "./x"):
                check(backend, key)
        else:
            check(backend)
    finally:
        backend.close()


def test_leases_and_gc_work_in_an_encrypted_store(tmp_path):
    data = payload()
    with open_store(settings_for(tmp_path)) as store:
        keep = store.write_bytes(data)
        with store.open_lease() as lease:
            assert list(store.backend.list("leases/")) == [lease.key]
            stored = [p.name for p in stored_files(tmp_path / "store" / "leases")]
            assert len(stored) == 1 and lease.id not in stored[0]  # its name is encrypted too
            drop = store.write_bytes(os.urandom(300 << 10), lease)
        result = store.collect_garbage(lambda: {c.digest for c in keep.chunks}, grace_seconds=0)
        assert result.deleted == len(drop.chunks) and result.referenced == len(keep.chunks)
        assert store.read_bytes(keep) == data


@pytest.mark.expect_warnings
def test_a_tampered_manifest_is_a_broken_checkpoint_not_an_outage(tmp_path):
    from cedanafs.catalog import Catalog, FileEntry, make_manifest
    from cedanafs.types import FileContent

    backend = open_store_backend(str(tmp_path / "store"), settings_for(tmp_path))
    catalog = Catalog(backend, tmp_path / "db.sqlite")
    try:
        for cid in ("20261130T000000Z-0001", "20261130T000001Z-0002"):
            files = [FileEntry("inventory.img", content=FileContent(3, (), b"inv"))]
            catalog.commit(make_manifest("job1", cid, files))
        victim = sorted(stored_files(tmp_path / "store" / "manifests"))[-1]
        blob = bytearray(victim.read_bytes())
        blob[-1] ^= 1
        victim.write_bytes(bytes(blob))
        fresh = Catalog(backend, tmp_path / "db2.sqlite")
        try:
            fresh.refresh()
            assert len(fresh.checkpoints("job1")) == 1
            [(_, error)] = fresh.broken()
            assert "failed authentication" in error
        finally:
            fresh.close()
    finally:
        catalog.close()
        backend.close()
