"""Faults of the place we write to: a broken cache index, a read-only cache, a full disk,
an OS refusal in any command, and logs cut off mid-write.

Each case ends in a correct result with one warning, or in exit 1 with one `Error:` line
and one `Hint:` line; never a traceback, never a temp file left, and the cache works after.
Full and read-only disks are real tmpfs mounts where this process may mount (root), and
fakes of the OS layer otherwise (the fakes always run).
"""

from __future__ import annotations

import builtins
import contextlib
import errno
import io
import json
import logging
import os
import re
import shutil
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path

import diskcache
import pytest

from svdlora_cli.errors import StepLogError
from svdlora_cli.training.steplog import StepRow, read_step_log, write_step_log
from tests.conftest import assert_user_error, invoke, invoke_json
from tests.reliability.conftest import COUNTS

MODULES = 14  # LoRA targets in the tiny llama pair


# -- helpers ----------------------------------------------------------------------------------


def _svd(pair, cache_dir: Path, out: Path, *extra: object, plot: bool = False) -> list[object]:
    return [
        "svd",
        "-b",
        pair.base,
        "-t",
        pair.tuned,
        "--rank",
        "2",
        "--plot" if plot else "--no-plot",
        "--cache-dir",
        cache_dir,
        "-o",
        out,
        *extra,
    ]


def _warnings(result) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith("Warning:")]


def _ok(result) -> dict:
    """A successful --json run: exit 0, no traceback, one JSON document."""
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert "Traceback" not in result.output
    return json.loads(result.stdout)


def _temp_files(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.name.endswith(".tmp")] if folder.exists() else []


def _energies(doc: dict) -> list[float]:
    return [m["energy"] for m in doc["modules"]]


@pytest.fixture(scope="module")
def reference(llama_pair, tmp_path_factory) -> tuple[Path, dict]:
    """A filled cache (copied per test) and the svd document it came from."""
    root = tmp_path_factory.mktemp("faults")
    doc = invoke_json(*_svd(llama_pair, root / "cache", root / "out"))
    return root / "cache", doc


@pytest.fixture
def filled_cache(reference, tmp_path) -> Path:
    cache_dir = tmp_path / "cache"
    shutil.copytree(reference[0], cache_dir)
    return cache_dir


@contextlib.contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    """A real tmpfs of `size` at `path` (skips the test where mounting is not allowed)."""
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def _remount_read_only(path: Path) -> None:
    done = subprocess.run(["mount", "-o", "remount,ro", str(path)], capture_output=True)
    if done.returncode != 0:
        pytest.skip("cannot remount read-only here")


def _fill(folder: Path) -> None:
    """Take every free byte of the file system that holds `folder`."""
    fd = os.open(folder / "filler", os.O_WRONLY | os.O_CREAT)
    try:
        with contextlib.suppress(OSError):
            while True:
                os.write(fd, b"\0" * 4096)
    finally:
        os.close(fd)


def _under(path: object, root: Path) -> bool:
    try:
        return Path(os.fsdecode(path)).resolve().is_relative_to(root.resolve())
    except (TypeError, ValueError):
        return False


def refuse_writes(monkeypatch, root: Path, code: int) -> None:
    """Fake a file system at `root` that refuses every write with `code` (EROFS, EACCES)."""

    def refuse(path: object) -> None:
        raise OSError(code, os.strerror(code), os.fsdecode(path))

    def guard(name: str, real, paths: int = 1):
        def checked(*args, **kwargs):
            for path in args[:paths]:
                if _under(path, root):
                    refuse(path)
            return real(*args, **kwargs)

        monkeypatch.setattr(os, name, checked)

    for name in ("mkdir", "unlink", "remove", "rmdir", "chmod"):
        guard(name, getattr(os, name))
    for name in ("replace", "rename"):
        guard(name, getattr(os, name), paths=2)
    real_os_open, real_open = os.open, io.open

    def os_open(path, flags, *args, **kwargs):
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT) and _under(path, root):
            refuse(path)
        return real_os_open(path, flags, *args, **kwargs)

    def open_(file, mode="r", *args, **kwargs):
        if any(c in mode for c in "wax+") and _under(file, root):
            refuse(file)
        return real_open(file, mode, *args, **kwargs)

    monkeypatch.setattr(os, "open", os_open)
    monkeypatch.setattr(io, "open", open_)
    monkeypatch.setattr(builtins, "open", open_)
    real_init = diskcache.Cache.__init__

    def init(self, directory=None, *args, **kwargs):  # SQLite opens files below Python
        if directory is not None and _under(directory, root):
            raise sqlite3.OperationalError("attempt to write a readonly database")
        real_init(self, directory, *args, **kwargs)

    monkeypatch.setattr(diskcache.Cache, "__init__", init)


def _snapshot(folder: Path) -> dict[str, bytes]:
    """Every file's bytes, but SQLite's -wal/-shm side files (a reader may create them)."""
    return {
        str(p.relative_to(folder)): p.read_bytes()
        for p in folder.rglob("*")
        if p.is_file() and not p.name.endswith(("-wal", "-shm"))
    }


# -- 1. a broken cache index ------------------------------------------------------------------


def _garbage(db: Path) -> None:
    db.write_bytes(os.urandom(db.stat().st_size))


def _truncated(db: Path) -> None:
    db.write_bytes(db.read_bytes()[: db.stat().st_size // 2])


def _emptied(db: Path) -> None:
    db.write_bytes(b"")


def _bad_value(db: Path) -> None:
    """A sound SQLite file whose first entry holds bytes that are not a zlib'd JSON value."""
    with contextlib.closing(sqlite3.connect(db)) as con, con:
        con.execute(
            "UPDATE Cache SET value = X'DEADBEEF' WHERE rowid = (SELECT MIN(rowid) FROM Cache)"
        )


@pytest.mark.parametrize(
    "damage", [_garbage, _truncated, _emptied, _bad_value], ids=lambda f: f.__name__[1:]
)
def test_broken_index_is_moved_aside_and_rebuilt(
    damage, filled_cache, reference, llama_pair, tmp_path
):
    db = filled_cache / "index" / "cache.db"
    damage(db)
    info = invoke("cache", "info", "--cache-dir", filled_cache, "--json")
    assert _ok(info)["decompositions"] == MODULES
    assert len(_warnings(info)) == 1, info.stderr
    assert "cache.db" in info.stderr or "re-indexing" in info.stderr
    if damage is not _emptied:
        assert list(db.parent.glob("cache.db.corrupt-*")), "the broken index is kept aside"
    again = _ok(invoke(*_svd(llama_pair, filled_cache, tmp_path / "o"), "--json"))
    assert again["cache"] == {"hits": MODULES, "misses": 0}
    assert _energies(again) == _energies(reference[1])
    assert _ok(invoke("cache", "verify", "--cache-dir", filled_cache, "--json"))["ok"] == MODULES
    COUNTS["corruptions detected"] += 1
    COUNTS["faults handled"] += 1


def test_verify_and_clear_on_a_broken_index(filled_cache, llama_pair, tmp_path):
    db = filled_cache / "index" / "cache.db"
    _garbage(db)
    verify = invoke("cache", "verify", "--cache-dir", filled_cache, "--json")
    assert _ok(verify)["ok"] == MODULES
    _garbage(db)
    cleared = _ok(invoke("cache", "clear", "--yes", "--cache-dir", filled_cache, "--json"))
    assert cleared["removed"] == MODULES
    assert not list(db.parent.glob("cache.db.corrupt-*")) and not _temp_files(filled_cache)
    after = _ok(invoke(*_svd(llama_pair, filled_cache, tmp_path / "o"), "--json"))
    assert after["cache"] == {"hits": 0, "misses": MODULES}
    COUNTS["faults handled"] += 1


def test_payloads_that_cannot_be_reindexed_are_dropped_with_a_warning(filled_cache):
    payloads = sorted((filled_cache / "payloads").rglob("*.safetensors"))
    flipped = bytearray(payloads[0].read_bytes())
    flipped[-3] ^= 0xFF  # a tensor byte: the payload's own checksum no longer matches
    payloads[0].write_bytes(bytes(flipped))
    payloads[1].write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ")  # no entry inside
    _garbage(filled_cache / "index" / "cache.db")
    info = invoke("cache", "info", "--cache-dir", filled_cache, "--json")
    assert _ok(info)["decompositions"] == MODULES - 2
    assert any("dropped 2 cache payload(s)" in w for w in _warnings(info)), info.stderr
    assert not payloads[0].exists() and not payloads[1].exists()
    assert _ok(invoke("cache", "verify", "--cache-dir", filled_cache, "--json"))["ok"] == 12
    COUNTS["corruptions detected"] += 2
    COUNTS["faults handled"] += 1


# -- 2. a cache that cannot be written --------------------------------------------------------


def _read_only_run(cache_dir: Path, llama_pair, reference, out: Path) -> None:
    """svd on a read-only cache: every hit served, nothing stored, one warning."""
    run = invoke(*_svd(llama_pair, cache_dir, out), "--json")
    doc = _ok(run)
    assert doc["cache"] == {"hits": MODULES, "misses": 0}
    assert _energies(doc) == _energies(reference[1])
    assert len(_warnings(run)) == 1 and "cannot be written" in run.stderr, run.stderr
    info = invoke("cache", "info", "--cache-dir", cache_dir, "--json")
    assert _ok(info)["decompositions"] == MODULES and _ok(info)["read_only"]
    assert _ok(invoke("cache", "verify", "--cache-dir", cache_dir, "--json"))["ok"] == MODULES


@pytest.mark.parametrize("code", [errno.EROFS, errno.EACCES], ids=["EROFS", "EACCES"])
def test_read_only_cache_is_used_for_hits_only(
    code, filled_cache, reference, llama_pair, tmp_path, monkeypatch
):
    before = _snapshot(filled_cache)
    refuse_writes(monkeypatch, filled_cache, code)
    _read_only_run(filled_cache, llama_pair, reference, tmp_path / "o")
    assert _snapshot(filled_cache) == before
    COUNTS["faults handled"] += 1


def test_uncreatable_cache_folder_runs_without_the_cache(llama_pair, tmp_path, monkeypatch):
    refuse_writes(monkeypatch, tmp_path / "ro", errno.EROFS)
    run = invoke(*_svd(llama_pair, tmp_path / "ro" / "cache", tmp_path / "o"), "--json")
    assert _ok(run)["cache"] == {"hits": 0, "misses": MODULES}
    assert len(_warnings(run)) == 1 and "running without the cache" in run.stderr
    COUNTS["faults handled"] += 1


def test_read_only_mount(reference, llama_pair, tmp_path):
    with tmpfs(tmp_path / "mnt", "4m") as mount:
        shutil.copytree(reference[0], mount / "cache")
        _remount_read_only(mount)
        _read_only_run(mount / "cache", llama_pair, reference, tmp_path / "o")
        cleared = invoke("cache", "clear", "--yes", "--cache-dir", mount / "cache")
        assert_user_error(cleared, "cannot clear the cache", "read-only file system")
    COUNTS["faults handled"] += 1


# -- 3. a full disk under the cache -----------------------------------------------------------


def _no_space_payloads(monkeypatch, root: Path) -> None:
    """Payload writes under `root` stop half way with ENOSPC, as on a full disk."""
    real = Path.write_bytes

    def write_bytes(self: Path, data: bytes) -> int:
        if _under(self, root):
            real(self, data[: len(data) // 2])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(self, data)

    monkeypatch.setattr(Path, "write_bytes", write_bytes)


def _no_space_index(monkeypatch, root: Path) -> None:
    """Index writes under `root` fail as SQLite fails on a full disk."""
    real = diskcache.Cache.set

    def set_(self, key, value, *args, **kwargs):
        if _under(self.directory, root):
            raise sqlite3.OperationalError("database or disk is full")
        return real(self, key, value, *args, **kwargs)

    monkeypatch.setattr(diskcache.Cache, "set", set_)


@pytest.mark.parametrize("fault", [_no_space_payloads, _no_space_index], ids=["payload", "index"])
def test_full_disk_while_storing_still_finishes(
    fault, reference, llama_pair, tmp_path, monkeypatch
):
    cache_dir = tmp_path / "cache"
    fault(monkeypatch, cache_dir)
    run = invoke(*_svd(llama_pair, cache_dir, tmp_path / "o"), "--json")
    assert _energies(_ok(run)) == _energies(reference[1])
    assert len(_warnings(run)) == 1 and "could not store results" in run.stderr, run.stderr
    assert not _temp_files(cache_dir) and not _temp_files(tmp_path / "o")
    verify = invoke("cache", "verify", "--cache-dir", cache_dir, "--json")  # still on a full disk
    assert _ok(verify)["bad"] == []
    monkeypatch.undo()
    _ok(invoke(*_svd(llama_pair, cache_dir, tmp_path / "o2"), "--json"))
    warm = _ok(invoke(*_svd(llama_pair, cache_dir, tmp_path / "o3"), "--json"))
    assert warm["cache"] == {"hits": MODULES, "misses": 0}
    COUNTS["faults handled"] += 1


def test_full_tmpfs_under_the_cache(reference, llama_pair, tmp_path):
    with tmpfs(tmp_path / "mnt", "384k") as mount:  # the index fits, not every payload
        cache_dir = mount / "cache"
        run = invoke(*_svd(llama_pair, cache_dir, tmp_path / "o"), "--json")
        assert _energies(_ok(run)) == _energies(reference[1])
        assert len(_warnings(run)) == 1 and "could not store results" in run.stderr, run.stderr
        # The payloads or the index run out of room first (which depends on what is
        # stored); either way the warning names the space left.
        assert re.search(r"\d+(\.\d+)? (B|KiB) free", run.stderr) and not _temp_files(mount)
        _fill(mount)
        info = _ok(invoke("cache", "info", "--cache-dir", cache_dir, "--json"))
        stored = info["decompositions"]
        assert stored < MODULES and info["read_only"]  # about 6 fit in 384k
        assert _ok(invoke("cache", "verify", "--cache-dir", cache_dir, "--json"))["ok"] == stored
        assert _ok(invoke("cache", "verify", "--fix", "--cache-dir", cache_dir, "--json"))["ok"]
        again = _ok(invoke(*_svd(llama_pair, cache_dir, tmp_path / "o2"), "--json"))
        assert again["cache"] == {"hits": stored, "misses": MODULES - stored}
        cleared = _ok(invoke("cache", "clear", "--yes", "--cache-dir", cache_dir, "--json"))
        assert cleared["removed"] >= stored and not list((cache_dir / "payloads").rglob("*"))
        (mount / "filler").unlink()  # usable again (it fills up again part way)
        rerun = invoke(*_svd(llama_pair, cache_dir, tmp_path / "o3"), "--json")
        assert _energies(_ok(rerun)) == _energies(reference[1]) and len(_warnings(rerun)) <= 1
        stored = _ok(invoke("cache", "info", "--cache-dir", cache_dir, "--json"))["decompositions"]
        verify = _ok(invoke("cache", "verify", "--cache-dir", cache_dir, "--json"))
        assert verify["ok"] == verify["checked"] == stored
    COUNTS["faults handled"] += 1


def test_index_whose_wal_cannot_be_mapped_on_a_full_disk_is_still_read(tmp_path):
    """Entries still in the WAL (no -shm file, none can be made) are read, not lost."""
    from svdlora_cli.store.sqlite import ReadOnlyIndex

    with tmpfs(tmp_path / "mnt", "1m") as mount:
        live = diskcache.Cache(str(mount / "live"), disk=diskcache.JSONDisk)
        live.set("a", {"kind": "json", "value": 1})
        (mount / "index").mkdir()
        for name in ("cache.db", "cache.db-wal"):  # a crash's state: no checkpoint, no -shm
            shutil.copy(mount / "live" / name, mount / "index" / name)
        live.close()
        _fill(mount)
        index = ReadOnlyIndex(mount / "index")
        try:
            assert index.get("a") == {"kind": "json", "value": 1} and len(index) == 1
        finally:
            index.close()
    COUNTS["faults handled"] += 1


# -- 4. an OS refusal while writing outputs ---------------------------------------------------


def test_full_disk_writing_outputs_is_one_error(llama_pair, tmp_path, monkeypatch):
    out = tmp_path / "out"
    _no_space_payloads(monkeypatch, out)
    result = invoke(*_svd(llama_pair, tmp_path / "cache", out))
    assert_user_error(result, "could not write", "no space left on device", "free space on")
    assert f"could not write {out}" in result.stderr
    assert not _temp_files(out)
    COUNTS["faults handled"] += 1


def test_a_failed_atomic_write_names_the_space_needed_and_leaves_no_temp_file(
    tmp_path, monkeypatch
):
    from svdlora_cli.errors import OutputWriteError
    from svdlora_cli.files import write_json

    _no_space_payloads(monkeypatch, tmp_path)
    with pytest.raises(OutputWriteError) as caught:
        write_json(tmp_path / "doc.json", {"values": list(range(1000))})
    error = caught.value
    assert error.errno == errno.ENOSPC and error.needed and error.path.endswith("doc.json")
    assert f"about {error.needed} B needed" in error.hint or "KiB needed" in error.hint
    assert list(tmp_path.iterdir()) == []


def test_full_tmpfs_as_output_dir(llama_pair, tmp_path):
    with tmpfs(tmp_path / "mnt", "16k") as mount:
        result = invoke(
            *_svd(llama_pair, tmp_path / "cache", mount / "out", plot=True), "--no-cache"
        )
        assert_user_error(result, "no space left on device", f"free space on {mount}")
        assert not _temp_files(mount)
        for path in (mount / "out").rglob("*.json"):
            json.loads(path.read_text())  # what was written is whole
    COUNTS["faults handled"] += 1


@pytest.mark.parametrize(
    ("error", "fragments"),
    [
        (
            OSError(errno.ENOSPC, "No space left on device", "/data/x.bin"),
            ["/data/x.bin", "free space"],
        ),
        (
            OSError(errno.EDQUOT, "Disk quota exceeded", "/data/x.bin"),
            ["disk quota exceeded", "quota"],
        ),
        (OSError(errno.EROFS, "Read-only file system", "/data/x.bin"), ["read-only file system"]),
        (OSError(errno.EACCES, "Permission denied", "/data/x.bin"), ["permission denied"]),
        (
            RuntimeError(
                "Error while serializing: I/O error: No space left on device (os error 28)"
            ),
            ["a write failed: no space left on device"],
        ),
    ],
    ids=["ENOSPC", "EDQUOT", "EROFS", "EACCES", "rust"],
)
def test_os_refusals_anywhere_map_to_one_error(error, fragments, tmp_path, monkeypatch):
    from svdlora_cli.store.cache import ArtifactCache

    def fail(self):
        raise error

    monkeypatch.setattr(ArtifactCache, "info", fail)
    assert_user_error(invoke("cache", "info", "--cache-dir", tmp_path / "c"), *fragments)
    COUNTS["faults handled"] += 1


def test_other_errors_are_not_mapped(tmp_path, monkeypatch):
    from svdlora_cli.store.cache import ArtifactCache

    def fail(self):
        raise OSError(errno.ENOENT, "No such file or directory", "/x")

    monkeypatch.setattr(ArtifactCache, "info", fail)
    result = invoke("cache", "info", "--cache-dir", tmp_path / "c")
    assert result.exit_code == 1 and isinstance(result.exception, FileNotFoundError)


# -- 5. logs and records cut off mid-write ----------------------------------------------------


def _write_log(path: Path, losses: list[float]) -> Path:
    rows = [StepRow(step=i, epoch=i / 4, loss=v, tokens=10 * i) for i, v in enumerate(losses)]
    return write_step_log(path, rows)


@pytest.mark.parametrize(
    "tail",
    ["4,1.0,0.5", "4,1.0,0.5,,,,40,x.y", "\0\0\0\0"],
    ids=["fields", "nonnumeric", "nul"],
)
def test_partial_last_line_is_skipped_with_a_warning(tail, tmp_path, caplog):
    path = _write_log(tmp_path / "training_log_a.csv", [2.0, 1.5, 1.0, 0.8])
    text = path.read_text() + tail
    path.write_text(text)
    with caplog.at_level(logging.WARNING, logger="svdlora"):
        rows = read_step_log(path)
    assert [r.step for r in rows] == [0, 1, 2, 3]
    assert f"{path} line 6" in caplog.text and "partial last line" in caplog.text
    COUNTS["faults handled"] += 1


def test_malformed_line_before_the_last_is_an_error(tmp_path):
    path = _write_log(tmp_path / "training_log_a.csv", [2.0, 1.5, 1.0, 0.8])
    lines = path.read_text().splitlines()
    lines[2] = "1,0.25,oops,,,,10,0,0"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(StepLogError, match=r"line 3: loss 'oops' is not a number"):
        read_step_log(path)
    path.write_text("epoch,loss\n0,1\n")
    with pytest.raises(StepLogError, match="line 1: the header lacks step"):
        read_step_log(path)


def _run_dir(root: Path) -> Path:
    (root / "teacher").mkdir(parents=True)
    _write_log(root / "teacher" / "training_log_teacher.csv", [2.0, 1.0, 0.5])
    _write_log(root / "training_log_random_seed0.csv", [2.0, 1.6, 1.2])
    _write_log(root / "training_log_svd_seed0.csv", [1.0, 0.7, 0.6])
    return root


def test_compare_skips_a_cut_off_log_line_and_record(tmp_path):
    run_dir = _run_dir(tmp_path / "runs")
    log_file = run_dir / "training_log_svd_seed0.csv"
    log_file.write_text(log_file.read_text() + "3,0.75,0.5")
    record = run_dir / "final_model_svd_seed0" / "svdlora_run.json"
    record.parent.mkdir()
    record.write_text(json.dumps({"seed": 0, "arm": "svd", "lr": 0.001}, indent=2)[:-12])
    result = invoke("compare", run_dir, "-o", tmp_path / "out", "--json")
    doc = _ok(result)
    assert {a["arm"] for a in doc["arms"]} >= {"random", "svd"}
    warnings = _warnings(result)
    assert any(f"{log_file} line 5" in w for w in warnings), result.stderr
    assert any(f"{record} line" in w for w in warnings), result.stderr
    COUNTS["faults handled"] += 1


def test_compare_refuses_a_damaged_log_or_record(tmp_path):
    run_dir = _run_dir(tmp_path / "runs")
    log_file = run_dir / "training_log_svd_seed0.csv"
    lines = log_file.read_text().splitlines()
    lines[1] = "0,0,"
    log_file.write_text("\n".join(lines) + "\n")
    assert_user_error(
        invoke("compare", run_dir, "-o", tmp_path / "out"), f"{log_file} line 2", "rerun"
    )
    _write_log(log_file, [1.0, 0.7, 0.6])
    record = run_dir / "final_model_svd_seed0" / "svdlora_run.json"
    record.parent.mkdir()
    record.write_text('{\n  "seed": 0,\n  "arm" svd,\n  "lr": 0.001\n}\n')
    assert_user_error(invoke("compare", run_dir, "-o", tmp_path / "out"), f"{record} line 3")
    COUNTS["faults handled"] += 2
