"""Tuning records: MetaSchedule JSON databases, keyed by target, TVM version and workload.

Layout of a log directory (the shipped ``tuning_logs/`` or the user's)::

    <root>/<target key>/tvm-<TVM version>/<workload key>/
        meta.json                     what the directory holds: target, TVM, workload, and per
                                      kernel the hand-written baseline and the verdict
        database_workload.json        MetaSchedule JSONDatabase: one line per kernel (workload)
        database_tuning_record.json   one line per measured candidate, appended as measured

``<target key>`` is :attr:`convc.target.TargetInfo.key` (kind, triple, CPU or CUDA arch, cores);
``<workload key>`` is :attr:`convc.spec.ConvSpec.key`: the three ops of a layer share one
database.  MetaSchedule's database is not target-aware (TVM issue #15549): records of two targets
in one database mix silently.  Here the directory says what a record is for, ``meta.json`` says
it again, and every record carries its own target: all three must agree with the target asked
for, or the records are refused with a message that says which disagrees.

Both database files are append-only, one JSON document per line, so a run killed at any moment
(even ``kill -9``) leaves at worst one partial last line; :meth:`RecordStore.repair` cuts it off
(keeping the bytes in ``*.damaged``) and every complete record survives.  ``meta.json`` is only
ever replaced atomically.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import json
import logging
import os
import tempfile
import warnings
from pathlib import Path

import tvm
import tvm_ffi

from .files import write_text_atomic
from .ops import kernel_of, spec_of
from .target import info, resolved

FORMAT = 1
META = "meta.json"
WORKLOADS = "database_workload.json"
RECORDS = "database_tuning_record.json"
ENV_LOG_DIR = "CONVC_TUNING_LOGS"
# Target attributes that decide whether a schedule measured on one machine holds on another.
IDENTITY_ATTRS = ("kind", "mtriple", "mcpu", "mattr", "num-cores", "arch")

log = logging.getLogger("convc.tuning")


class RecordError(ValueError):
    """Records exist but may not be used here (other target or TVM, damaged metadata)."""


class RecordMismatchWarning(UserWarning):
    """Tuning records were found for this workload but refused; the message says why."""


# --- keys --------------------------------------------------------------------------------------

def tvm_version() -> str:
    return str(tvm.__version__)


def target_key(target) -> str:
    return info(target).key


def target_identity(target) -> dict:
    """The target attributes a record must match: kind, triple, CPU/arch, features, cores."""
    config = {"kind": target.kind.name}
    for name in IDENTITY_ATTRS[1:]:
        if name in target.attrs:
            value = target.attrs[name]
            config[name] = [str(v) for v in value] if name == "mattr" else value
    return _identity(config)


def _identity(config: dict) -> dict:
    """The identity attributes of a target given as a JSON-like dict, normalized."""
    identity = {}
    for name in IDENTITY_ATTRS:
        value = config.get(name)
        if value in (None, "", [], ()):
            continue
        if name == "mattr":
            identity[name] = sorted(str(v) for v in value)
        elif name == "num-cores":
            identity[name] = int(value)
        else:
            identity[name] = str(value)
    return identity


def canonical_module(func) -> tvm.IRModule:
    """The module a kernel is tuned and looked up as: one function "main", attrs as in TVM's
    ``tune_tir`` (so structural hashes agree whatever global symbol the caller gave it)."""
    func = func.with_attr("global_symbol", "main").with_attr("tirx.noalias", True)
    return tvm.IRModule({"main": func})


def workload_of(func) -> tuple[str, str]:
    """(workload key, kernel name) of a PrimFunc: ``(spec.key, op)`` for convc declarations,
    ``("tir-<structural hash>", "main")`` for anything else."""
    spec, _ = spec_of(func)
    if spec is not None:
        return spec.key, kernel_of(func)
    return f"tir-{tvm_ffi.structural_hash(canonical_module(func)):016x}", "main"


# --- where logs live ---------------------------------------------------------------------------

def user_log_dir() -> Path:
    """``$CONVC_TUNING_LOGS``, else ``$XDG_DATA_HOME/convc/tuning_logs`` (~/.local/share/...)."""
    if os.environ.get(ENV_LOG_DIR):
        return Path(os.environ[ENV_LOG_DIR]).expanduser()
    data = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return Path(data) / "convc" / "tuning_logs"


def shipped_log_dir() -> Path | None:
    """The records shipped with convc (the ``convc.tuning_logs`` package), if installed."""
    try:
        import convc.tuning_logs as shipped  # noqa: PLC0415
    except ImportError:
        return None
    paths = list(getattr(shipped, "__path__", []))
    return Path(paths[0]) if paths else None


def search_roots(log_dir=None) -> list[Path]:
    """Log directories searched for records, first match wins: ``log_dir`` (or the user's
    default), then the shipped ``tuning_logs/``."""
    roots = [Path(log_dir).expanduser() if log_dir else user_log_dir()]
    shipped = shipped_log_dir()
    if shipped is not None and shipped.resolve() not in [r.resolve() for r in roots]:
        roots.append(shipped)
    return roots


def layer_path(root, target, workload: str) -> Path:
    return Path(root) / target_key(target) / f"tvm-{tvm_version()}" / workload


# --- one directory -----------------------------------------------------------------------------

class RecordStore:
    """The tuning records of one workload (a layer: up to three kernels) for one target and TVM.

    ``RecordStore.open(root, target, workload)`` checks the directory against the target and the
    running TVM; ``RecordStore.create(...)`` makes it first if needed.
    """

    def __init__(self, path: Path):
        self.path = Path(path)

    # construction ---------------------------------------------------------------------------
    @classmethod
    def create(cls, root, target, workload: str, spec=None) -> RecordStore:
        store = cls(layer_path(root, target, workload))
        store.path.mkdir(parents=True, exist_ok=True)
        if not (store.path / META).exists():
            store.write_meta({
                "format": FORMAT,
                "tvm": tvm_version(),
                "target_key": target_key(target),
                "target": target_identity(target),
                "workload": workload,
                "spec": spec.to_dict() if spec is not None else None,
                "kernels": {},
            })
        store.check(target)
        return store

    @classmethod
    def open(cls, root, target, workload: str) -> RecordStore | None:
        """The store for (target, TVM, workload) under ``root``, checked; None if absent."""
        path = layer_path(root, target, workload)
        if not (path / META).exists():
            return None
        store = cls(path)
        store.check(target)
        return store

    # metadata -------------------------------------------------------------------------------
    @property
    def meta(self) -> dict:
        try:
            return json.loads((self.path / META).read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise RecordError(f"{self.path / META} is unreadable ({err}): records in "
                              f"{self.path} are not used") from None

    def write_meta(self, meta: dict) -> None:
        """Replace meta.json atomically (write, fsync, rename)."""
        write_text_atomic(self.path / META, json.dumps(meta, indent=1, sort_keys=True) + "\n",
                          fsync=True)

    def update_kernel(self, kernel: str, **fields) -> None:
        meta = self.meta
        meta.setdefault("kernels", {}).setdefault(kernel, {}).update(fields)
        self.write_meta(meta)

    def kernel(self, kernel: str) -> dict:
        return dict(self.meta.get("kernels", {}).get(kernel, {}))

    def check(self, target) -> None:
        """Raise :class:`RecordError` unless the directory is for ``target`` and this TVM."""
        meta = self.meta
        want = target_identity(target)
        problems = []
        if meta.get("format") != FORMAT:
            problems.append(f"format {meta.get('format')!r} (this convc reads {FORMAT})")
        if meta.get("tvm") != tvm_version():
            problems.append(f"tuned with TVM {meta.get('tvm')} (this is TVM {tvm_version()})")
        if meta.get("target") != want:
            problems.append(f"tuned for target {json.dumps(meta.get('target'), sort_keys=True)} "
                            f"(asked for {json.dumps(want, sort_keys=True)})")
        if problems:
            raise RecordError(f"tuning records in {self.path} are refused: " + "; ".join(problems))

    # the two database files -----------------------------------------------------------------
    def repair(self) -> int:
        """Cut a partial last line off both database files (a killed writer leaves at most
        one); the cut bytes go to ``<file>.damaged``. Returns the number of lines dropped."""
        dropped = 0
        for name in (WORKLOADS, RECORDS):
            dropped += _cut_partial_tail(self.path / name)
        return dropped

    def check_records(self, target) -> int:
        """Raise :class:`RecordError` if any record names another target; returns the count."""
        want = target_identity(target)
        count = 0
        for number, record in enumerate(_json_lines(self.path / RECORDS), start=1):
            count += 1
            got = _identity(record[1][2]) if len(record) > 1 and len(record[1]) > 2 else None
            if got != want:
                raise RecordError(
                    f"{self.path / RECORDS} line {number} was measured on target "
                    f"{json.dumps(got, sort_keys=True)}, not {json.dumps(want, sort_keys=True)}: "
                    "TVM's database does not tell targets apart (TVM issue #15549), so convc "
                    "refuses the whole file; move the records to their own target's directory")
        return count

    def database(self):
        """The MetaSchedule JSONDatabase over this directory, for the writer holding
        :meth:`lock` (repaired first; every record MetaSchedule commits is appended)."""
        from tvm.s_tir.meta_schedule.database import JSONDatabase  # noqa: PLC0415

        self.repair()
        return JSONDatabase(str(self.path / WORKLOADS), str(self.path / RECORDS),
                            allow_missing=True)

    def snapshot(self):
        """The complete records as they are now, in memory: for readers, which never write
        (a tuner may be appending at this moment, or the directory may be read-only)."""
        return _read_only_database(self.path)

    def trials_done(self) -> dict[str, int]:
        """Measured candidates (valid or not) per workload line index."""
        done: dict[str, int] = {}
        for record in _json_lines(self.path / RECORDS):
            done[record[0]] = done.get(record[0], 0) + 1
        return done

    def compact(self, keep: int = 1) -> tuple[int, int]:
        """Keep only the ``keep`` fastest valid records of each kernel (for shipping logs; the
        trial counts stay in meta.json, so a rerun still continues). Hold :meth:`lock`.
        Returns (records before, records after)."""
        if keep < 1:
            raise ValueError(f"keep={keep!r}: expected at least 1 record per kernel")
        lines = list(_json_lines(self.path / RECORDS))
        best: dict[int, list] = {}
        for line in lines:
            secs = line[1][1]
            if secs and max(secs) < 1e9:
                best.setdefault(line[0], []).append((sum(secs) / len(secs), line))
        kept = [line for index in sorted(best)
                for _, line in sorted(best[index], key=lambda pair: pair[0])[:keep]]
        write_text_atomic(self.path / RECORDS, "".join(
            json.dumps(line, separators=(",", ":")) + "\n" for line in kept), fsync=True)
        return len(lines), len(kept)

    def workload_index(self) -> dict[str, int]:
        """Structural hash string -> line index in database_workload.json."""
        return {line[0]: i for i, line in enumerate(_json_lines(self.path / WORKLOADS))}

    @contextlib.contextmanager
    def lock(self):
        """Hold the directory for one writer; a second raises at once instead of interleaving."""
        with open(self.path / ".lock", "w") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as err:
                if err.errno in (errno.EAGAIN, errno.EACCES):
                    raise RecordError(
                        f"another convc tune is writing {self.path}; wait for it to finish or "
                        "give this run another --log-dir") from None
                raise
            try:
                yield self
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)


def _json_lines(path: Path):
    """Complete JSON lines of an append-only file (a partial last line is skipped)."""
    if not path.exists():
        return
    with open(path, "rb") as handle:
        for raw in handle:
            if not raw.endswith(b"\n"):
                return
            try:
                yield json.loads(raw)
            except json.JSONDecodeError:
                return


def _cut_partial_tail(path: Path) -> int:
    if not path.exists():
        return 0
    data = path.read_bytes()
    good = 0
    for line in data.splitlines(keepends=True):
        if not line.endswith(b"\n"):
            break
        try:
            json.loads(line)
        except json.JSONDecodeError:
            break
        good += len(line)
    if good == len(data):
        return 0
    with open(path.with_name(path.name + ".damaged"), "ab") as out:
        out.write(data[good:] + b"\n")
    with open(path, "r+b") as handle:
        handle.truncate(good)
    log.warning("%s: cut %d damaged byte(s) after the last complete record (kept in %s.damaged)",
                path, len(data) - good, path.name)
    return data.count(b"\n", good) + (0 if data.endswith(b"\n") else 1)


def _read_only_database(path: Path):
    """A MemoryDatabase holding the complete lines of the directory's two files."""
    from tvm.s_tir.meta_schedule.database import (  # noqa: PLC0415
        JSONDatabase,
        MemoryDatabase,
        TuningRecord,
    )

    workloads = list(_json_lines(path / WORKLOADS))
    # A record appended after the workload file was read may name a workload not read yet.
    records = [r for r in _json_lines(path / RECORDS) if 0 <= r[0] < len(workloads)]
    memory = MemoryDatabase()
    with tempfile.TemporaryDirectory(prefix="convc-records-") as tmp:
        for name, lines in ((WORKLOADS, workloads), (RECORDS, records)):
            Path(tmp, name).write_text("".join(json.dumps(line) + "\n" for line in lines))
        database = JSONDatabase(str(Path(tmp) / WORKLOADS), str(Path(tmp) / RECORDS),
                                allow_missing=False)
        for record in database.get_all_tuning_records():
            memory.commit_tuning_record(TuningRecord(
                record.trace, memory.commit_workload(record.workload.mod), record.run_secs,
                record.target, record.args_info))
    return memory


# --- lookup ------------------------------------------------------------------------------------

@dataclasses.dataclass
class Lookup:
    """What a lookup found: the schedule (or None), where from, and why."""

    schedule: object | None
    path: Path | None
    reason: str
    seconds: float | None = None


_DATABASES: dict = {}
_WARNED: set = set()


def lookup(func, target, log_dir=None) -> Lookup:
    """The best usable tuning record for ``func`` on ``target``, with the reason for the answer.

    Searches :func:`search_roots` in order; the first directory that knows the kernel decides.
    A record is used only if it beat the hand-written schedule measured in the same run.
    ``target``: as for :func:`convc.compile` (a resolved Target passes as it is).
    """
    target = resolved(target)
    workload, kernel = workload_of(func)
    elsewhere = []
    for root in search_roots(log_dir):
        try:
            store = RecordStore.open(root, target, workload)
        except RecordError as err:
            _warn(str(err))
            continue
        if store is None:
            elsewhere += _other_directories(root, target, workload)
            continue
        found = _from_store(store, func, target, kernel)
        if found is not None:
            return found
    if elsewhere:
        reason = (f"tuning records for {workload} exist only for other targets or TVM versions "
                  f"({', '.join(elsewhere)}); this is {target_key(target)} with TVM "
                  f"{tvm_version()}: not applied")
        _warn(reason)
        return Lookup(None, None, reason)
    return Lookup(None, None, f"no tuning record for {kernel} of {workload}")


def find_record(func, target, log_dir=None):
    """The tuned ``tvm.s_tir.Schedule`` for ``func`` on ``target``, or None (see :func:`lookup`).

    This is the first thing ``convc.dispatch.choose`` asks.
    """
    return lookup(func, target, log_dir).schedule


def _from_store(store: RecordStore, func, target, kernel: str) -> Lookup | None:
    info = store.kernel(kernel)
    if info.get("verdict") == "hand-written":
        return Lookup(None, store.path, f"{kernel}: the tuned schedule did not beat the "
                      f"hand-written one ({info.get('tuned_us')} us vs {info.get('hand_written_us')}"
                      " us, measured side by side); the hand-written schedule is used")
    if info and info.get("verdict") != "tuned":
        # An interrupted run: its records were never timed beside the hand-written schedule
        # (the yardstick taken before the search may have been measured under another load:
        # seen here, c3 3x3 at 30 GFLOP/s against its usual 250, which let a 134 GFLOP/s record
        # through). Run the same `convc tune` again to finish it.
        return Lookup(None, store.path, f"{kernel}: the tuning run in {store.path} has not "
                      "finished (no side-by-side verdict yet): the hand-written schedule is used; "
                      "run the same `convc tune` command again to finish it")
    try:
        database = _database(store, target)
    except RecordError as err:
        _warn(str(err))
        return None
    mod = canonical_module(func)
    if not database.has_workload(mod):
        if info:
            reason = (f"{kernel}: records in {store.path} are for another declaration of this "
                      "kernel (its TIR changed since it was tuned): re-tune")
            _warn(reason)
            return Lookup(None, store.path, reason)
        return None
    top = database.get_top_k(database.commit_workload(mod), 1)
    if not top:
        return Lookup(None, store.path, f"{kernel}: no valid record in {store.path}")
    record = top[0]
    seconds = sum(float(s) for s in record.run_secs) / len(record.run_secs)
    # Judged on the side-by-side pair (tuned_us against hand_written_us, the same load for both):
    # the record's own run_secs were measured during the search, under whatever load the machine
    # had then (seen: 1836 us in the search against 36 us side by side, two test workers sharing
    # the cores), so comparing them with the side-by-side yardstick refused a record the verdict
    # had kept.
    baseline, tuned_us = info.get("hand_written_us"), info.get("tuned_us")
    judged = float(tuned_us) if tuned_us is not None else seconds * 1e6
    if baseline is not None and judged >= float(baseline):
        return Lookup(None, store.path, f"{kernel}: best record ({judged:.1f} us) is not "
                      f"faster than the hand-written schedule ({baseline} us)", seconds)
    return Lookup(replay(mod, record), store.path, f"{kernel}: tuned record from {store.path}",
                  seconds)


def algorithm_verdict(workload: str, kernel: str, target, log_dir=None):
    """(verdict, path) of the tuner's direct/Winograd verdict for ``kernel`` of ``workload`` on
    ``target`` (meta.json's ``kernels[kernel]["algorithm"]``, written by convc.tuning.algorithm),
    from the first of :func:`search_roots` that holds one; None where none does. The verdict is
    returned as stored: the caller checks it still makes sense (convc.dispatch)."""
    target = resolved(target)
    for root in search_roots(log_dir):
        try:
            store = RecordStore.open(root, target, workload)
            verdict = None if store is None else store.kernel(kernel).get("algorithm")
        except RecordError as err:
            _warn(str(err))
            continue
        except (AttributeError, TypeError, ValueError):  # meta.json of another shape
            _warn(f"{layer_path(root, target, workload)}/{META} is damaged (kernels is not a "
                  "mapping of mappings): its algorithm verdicts are not used")
            continue
        if verdict is not None:
            return verdict, store.path
    return None


def best_record(database, mod):
    """The fastest valid record of ``mod`` in ``database``, or None."""
    if not database.has_workload(mod):
        return None
    top = database.get_top_k(database.commit_workload(mod), 1)
    return top[0] if top else None


def replay(mod, record):
    """``record``'s schedule of ``mod``: its trace replayed as measured (postprocessing kept)."""
    from tvm.s_tir import Schedule  # noqa: PLC0415

    sch = Schedule(mod)
    record.trace.apply_to_schedule(sch, remove_postproc=False)
    return sch


def _database(store: RecordStore, target):
    """The store's database, checked against ``target``; cached until either file changes."""
    stamp = (str(store.path), json.dumps(target_identity(target), sort_keys=True),
             *(_stat(store.path / name) for name in (WORKLOADS, RECORDS)))
    database = _DATABASES.get(stamp)
    if database is None:
        store.check_records(target)
        if (store.path / RECORDS).exists():
            database = store.snapshot()
        else:
            from tvm.s_tir.meta_schedule.database import MemoryDatabase  # noqa: PLC0415

            database = MemoryDatabase()
        _DATABASES[stamp] = database
    return database


def _stat(path: Path):
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size)


def _other_directories(root: Path, target, workload: str) -> list[str]:
    """``<target key>/tvm-<version>`` directories under ``root`` that hold ``workload``."""
    if not root.is_dir():
        return []
    here = f"{target_key(target)}/tvm-{tvm_version()}"
    found = []
    for meta in sorted(root.glob(f"*/tvm-*/{workload}/{META}")):
        where = f"{meta.parent.parent.parent.name}/{meta.parent.parent.name}"
        if where != here:
            found.append(where)
    return found


def warn_once(message: str) -> None:
    """Warn (RecordMismatchWarning) and log ``message``, once per process."""
    _warn(message)


def _warn(message: str) -> None:
    """Say it once per process, as a warning (loud) and in the log."""
    if message not in _WARNED:
        log.info("%s", message)
        _WARNED.add(message)
        warnings.warn(message, RecordMismatchWarning, stacklevel=3)
