"""The tuning records shipped in tuning_logs/ still fit the kernels convc declares today.

A record is looked up by the structural hash of the kernel's TIR, which carries the spec as an
attribute: a new ConvSpec field serialized at its default, or any change to a declaration,
silently retires every shipped record (seen 2026-12-02: the padding-mode/epilogue fields had done
that to all 72 directories; `convc bench` fell back to the hand-written schedules with a
RecordMismatchWarning each). Cheap: declaring a kernel compiles nothing."""

import json
from pathlib import Path

import pytest
import tvm_ffi

from convc.ops import declare
from convc.records import canonical_module
from convc.spec import ConvSpec

LOGS = Path(__file__).resolve().parents[1] / "tuning_logs"


def shipped():
    for meta_path in sorted(LOGS.glob("*/*/*/meta.json")):
        if meta_path.parent.name.startswith("topi-"):
            continue  # the topi peer's records: TVM's declarations, not convc's
        meta = json.loads(meta_path.read_text())
        for op, kernel in sorted(meta.get("kernels", {}).items()):
            if kernel.get("verdict") == "tuned":
                name = f"{meta_path.parts[-4]}/{meta_path.parts[-2]}/{op}"
                yield pytest.param(meta["spec"], op, kernel["workload_hash"], id=name)


SHIPPED = list(shipped())


def test_some_records_are_shipped():
    assert len(SHIPPED) > 50, f"only {len(SHIPPED)} tuned kernels found under {LOGS}"


@pytest.mark.parametrize("spec, op, workload_hash", SHIPPED)
def test_tuned_record_matches_todays_declaration(spec, op, workload_hash):
    func = declare(ConvSpec.from_dict(spec), op)
    found = tvm_ffi.structural_hash(canonical_module(func))
    assert str(found) == str(workload_hash), (
        f"{op} of {spec}: today's declaration hashes to {found}, the record to {workload_hash}: "
        "a change to the declaration or to ConvSpec.to_dict() retired this record")
