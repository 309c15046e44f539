"""The disk cache survives its faults: a damaged entry (truncated library, garbage metadata, a
library that does not load) is removed, said once, and rebuilt; a cache directory that cannot be
used is said once, and kernels are built in memory. Every time the answer is right."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings

import pytest

import convc
from conftest import assert_close, make_spec
from convc.build import cache
from convc.check import kernel_inputs, operands, reference
from convc.files import sha256


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    """Each test its own cache directory, nothing compiled in memory, no warning said yet."""
    monkeypatch.setenv("CONVC_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(cache, "_WARNED", set())
    monkeypatch.setattr(cache, "_UNWRITABLE", set())
    convc.kernel.clear_memory_cache()
    yield
    convc.kernel.clear_memory_cache()


SPEC = make_spec((1, 3, 7, 7), (4, 3, 3, 3), 1, 1)


def compiled(spec=SPEC, op="forward"):
    """(kernel, [CacheWarning messages]) of a compile with nothing in memory; its answer checked."""
    convc.kernel.clear_memory_cache()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        kernel = convc.compile(spec, op)
    data = operands(spec)
    assert_close(kernel(*kernel_inputs(spec, op, data)), reference(spec, op, **data), spec.dtype,
                 f"{op} {spec.key}")
    return kernel, [str(w.message) for w in caught if issubclass(w.category, cache.CacheWarning)]


def entry(kernel):
    return kernel.library, kernel.library.with_suffix(".json")


def test_entries_record_the_size_and_hash_of_their_library():
    kernel, said = compiled()
    assert not said
    library, meta = entry(kernel)
    recorded = json.loads(meta.read_text())
    assert recorded["size"] == library.stat().st_size and recorded["sha256"] == sha256(library)
    again, said = compiled()
    assert again is not kernel and again.library == library and not said   # served from disk


def built_elsewhere(spec=SPEC, op="forward"):
    """(library, metadata) paths of the cache entry of `op` of `spec`, written by another
    process. Damage happens between processes: a library this process has loaded is mapped
    code, and rewriting its file in place rewrites that code (the loader, which finds a loaded
    library by name, would hand the mapping back)."""
    script = ("import json, sys, convc; from convc.spec import ConvSpec; "
              "k = convc.compile(ConvSpec.from_dict(json.loads(sys.argv[1])), sys.argv[2]); "
              "print(k.library)")
    done = subprocess.run([sys.executable, "-c", script, json.dumps(spec.to_dict()), op],
                          capture_output=True, text=True, check=True, env=os.environ.copy())
    library = cache.location() / os.path.basename(done.stdout.strip())
    assert library.exists(), done.stdout
    return library, library.with_suffix(".json")


def _damaged(damage, words):
    library, meta = built_elsewhere()
    damage(library, meta)
    again, said = compiled()
    assert len(said) == 1 and "damaged" in said[0] and words in said[0], said
    recorded = json.loads(meta.read_text())                       # rebuilt, and whole again
    assert recorded["sha256"] == sha256(library) == sha256(again.library)
    _, said = compiled()
    assert not said


def test_a_truncated_library_is_rebuilt():
    def truncate(library, meta):
        data = library.read_bytes()
        library.write_bytes(data[:len(data) // 2])

    _damaged(truncate, "bytes, its metadata records")


def test_a_library_of_the_right_size_but_other_bytes_is_rebuilt():
    def scribble(library, meta):
        data = bytearray(library.read_bytes())
        data[len(data) // 2] ^= 0xFF
        library.write_bytes(bytes(data))

    _damaged(scribble, "sha256 differs")


def test_garbage_metadata_is_rebuilt():
    _damaged(lambda library, meta: meta.write_bytes(b"\x00\xffnot json"), "metadata is unreadable")


def test_metadata_without_size_and_hash_is_rebuilt():
    def strip(library, meta):
        recorded = json.loads(meta.read_text())
        del recorded["sha256"]
        meta.write_text(json.dumps(recorded))

    _damaged(strip, "no library size and hash")


def test_a_library_that_does_not_load_is_rebuilt():
    """Metadata and library agree, but the loader refuses the file (not a shared library)."""
    def replace(library, meta):
        library.write_bytes(b"this is not an ELF file\n" * 64)
        recorded = json.loads(meta.read_text())
        recorded.update(size=library.stat().st_size, sha256=sha256(library))
        meta.write_text(json.dumps(recorded))

    _damaged(replace, "does not load")


def test_a_library_deleted_by_hand_is_rebuilt_quietly():
    kernel, _ = compiled()
    kernel.library.unlink()
    again, said = compiled()
    assert not said and again.library.exists()


def _unusable(monkeypatch, root):
    monkeypatch.setenv("CONVC_CACHE_DIR", str(root))
    kernels, said = [], []
    for op in ("forward", "grad_input", "grad_weight"):
        kernel, words = compiled(op=op)
        kernels.append(kernel)
        said += words
    assert len(said) == 1, said
    assert all(k.library is None for k in kernels)
    return kernels, said[0]


def test_a_cache_under_a_regular_file_builds_in_memory(tmp_path, monkeypatch):
    (tmp_path / "a-file").write_text("not a directory")
    kernels, said = _unusable(monkeypatch, tmp_path / "a-file" / "cache")
    assert "cannot be created" in said and "built in memory" in said
    path = convc.export_library(kernels, tmp_path / "lib.so")      # export needs no cached file
    lib = convc.load(path)
    data = operands(SPEC)
    assert_close(lib.grad_weight(data["x"], data["dy"]), reference(SPEC, "grad_weight", **data),
                 "float32", "exported from in-memory kernels")


def test_a_read_only_cache_builds_in_memory(tmp_path, monkeypatch):
    root = tmp_path / "read-only"
    root.mkdir()
    root.chmod(0o555)
    try:
        probe = root / "probe"
        try:
            probe.write_text("")
        except OSError:
            pass
        else:
            probe.unlink()
            pytest.skip("this user writes into read-only directories (root)")
        _, said = _unusable(monkeypatch, root)
        assert "cannot be written" in said
    finally:
        root.chmod(0o755)


def test_an_unwritable_cache_still_serves_what_it_holds(tmp_path, monkeypatch):
    """Entries made before the directory became unwritable are still read (and checked)."""
    kernel, _ = compiled()

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(cache.tempfile, "mkstemp", refuse)
    again, said = compiled()
    assert not said and again.library == kernel.library
    other, said = compiled(op="grad_input")
    assert other.library is None and len(said) == 1 and "cannot be written" in said[0]


def test_cuda_kernels_build_beside_an_unusable_cache(tmp_path, monkeypatch):
    from convc.build import cuda

    try:
        cuda.find_nvcc()
    except cuda.NvccNotFound:
        pytest.skip("nvcc (the CUDA toolkit) is not installed")
    (tmp_path / "a-file").write_text("")
    monkeypatch.setenv("CONVC_CACHE_DIR", str(tmp_path / "a-file" / "cache"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        kernel = convc.compile(make_spec((1, 2, 5, 5), (2, 2, 3, 3)), "forward", target="cuda")
    assert [w for w in caught if issubclass(w.category, cache.CacheWarning)]
    assert kernel.library.exists() and kernel.stats["kernels"]
    assert not str(kernel.library).startswith(str(tmp_path))


def test_no_temporary_files_are_left_behind():
    compiled()
    compiled(op="grad_weight")
    leftovers = [p.name for p in cache.location().iterdir() if p.name.startswith(".")]
    assert not leftovers
    files = list(cache.location().iterdir())
    assert sorted(p.suffix for p in files) == [".json", ".json", ".so", ".so"]
    assert all(os.path.getsize(p) for p in files)


def test_an_entry_rebuilt_after_this_process_loaded_it_is_loaded_afresh():
    """Loaded here, then its metadata damaged and the entry rebuilt (a new file at the same
    path): the loader would hand back the old mapping by name, so the new file is loaded from a
    private copy, which leaves nothing behind."""
    from convc.build import llvm

    kernel, _ = compiled()
    library, meta = entry(kernel)
    meta.write_text("{ not json")
    again, said = compiled()
    assert len(said) == 1 and "damaged" in said[0]
    assert again.library == library and os.stat(library).st_ino != llvm._LOADED[library][1]
    copies = [p for p in llvm._LOADED if p.name.startswith(f".{library.stem}.")]
    assert copies and not any(p.exists() for p in copies)
    assert not [p.name for p in cache.location().iterdir() if p.name.startswith(".")]
