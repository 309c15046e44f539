"""A scheduled kernel's weight stage split off: "<op>_prepack" computes it, "<op>_packed" takes its
result as a parameter in the weight's place.

The direct schedules compute the weight in the layout their micro-kernel reads, as root stages
that read nothing but `w` (schedules/cpu/direct.py: channels-first forward repacks OIHW into
blocks of HWIO, grad_input flips the filter, swaps its channels and blocks it the same way). Here
those stages are cut out of the *scheduled* function, so the pair keeps whatever schedule the
kernel has (a tuning record's or a rule's, its tile sizes and its layout) and the packed call is
the kernel minus the weight stage, nothing else:

    prepack(w, pack)      the weight stages alone, writing the one buffer the rest reads
    packed(.., pack, ..)  the other stages, with that buffer as a parameter (w no longer read)

`split_weight_stage` declines (None) where there is nothing to split: a kernel reading w as given
(channels-last forward, 1x1 grad_input with the filter read in place), one whose weight stage
sits inside another loop nest, or one that reads w elsewhere too.
"""

from __future__ import annotations

from tvm.s_tir.stmt import SBlock, SBlockRealize
from tvm.tirx import PrimFunc
from tvm.tirx.stmt import SeqStmt, Stmt

from ..ops.common import relax_alignment


def _blocks(stmt) -> list:
    """Every SBlock under `stmt`."""
    found, stack = [], [stmt]
    while stack:
        node = stack.pop()
        if isinstance(node, SeqStmt):
            stack.extend(node.seq)
            continue
        if isinstance(node, SBlockRealize):
            node = node.block
        if isinstance(node, SBlock):
            found.append(node)
        for attr in ("body", "init", "then_case", "else_case"):
            child = getattr(node, attr, None)
            if isinstance(child, Stmt):
                stack.append(child)
    return found


def _buffers(blocks, kind: str) -> list:
    return [region.source for block in blocks for region in getattr(block, kind)]


def _has(buffers, buffer) -> bool:
    return any(b.same_as(buffer) for b in buffers)


def split_weight_stage(func: PrimFunc, weight: str = "w", name: str = "op"):
    """(prepack PrimFunc, packed PrimFunc, the pack's shape, dtype) for a scheduled convc
    function whose root stages compute one buffer from the parameter `weight` alone that the
    other stages read in its place; None where there is no such split (see the module
    docstring). The functions are named `<name>_prepack` / `<name>_packed` (global symbol and
    "convc.op"); their buffer parameters assume element alignment only (make_func's rule)."""
    w = next((p for p in func.params if p.name == weight), None)
    realize = func.body
    if w is None or not isinstance(realize, SBlockRealize):
        return None
    root = realize.block
    stmts = list(root.body.seq) if isinstance(root.body, SeqStmt) else [root.body]
    allocated = list(root.alloc_buffers)
    derived, weight_stmts, rest = [], [], []
    for stmt in stmts:
        blocks = _blocks(stmt)
        reads, writes = _buffers(blocks, "reads"), _buffers(blocks, "writes")
        inner = [b for block in blocks for b in block.alloc_buffers]
        reads = [b for b in reads if not _has(inner, b)]
        writes = [b for b in writes if not _has(inner, b)]
        # A stage with no reads belongs when it writes weight-derived buffers only: the zeros
        # transform_layout's pad_value adds past a partial last channel block.
        from_weight = all(b.same_as(w) or _has(derived, b) for b in reads) and (
            reads or writes and all(_has(derived, b) for b in writes))
        if from_weight and writes and all(_has(allocated, b) for b in writes):
            derived += writes
            weight_stmts.append(stmt)
        else:
            rest.append(stmt)
    if not weight_stmts or not rest:
        return None
    rest_reads = _buffers([b for stmt in rest for b in _blocks(stmt)], "reads")
    if _has(rest_reads, w):
        return None
    needed = [b for b in derived if _has(rest_reads, b)]
    needed = [b for i, b in enumerate(needed) if not _has(needed[:i], b)]
    if len(needed) != 1 or _has(_buffers([b for s in rest for b in _blocks(s)], "writes"),
                                needed[0]):
        return None
    pack = needed[0]
    scratch = [b for b in derived if not b.same_as(pack)]
    scratch = [b for i, b in enumerate(scratch) if not _has(scratch[:i], b)]
    kept = [b for b in allocated if not _has(derived, b)]

    def function(params, body, allocs, suffix):
        block = SBlock([], [], [], "root", _seq(body), alloc_buffers=allocs)
        made = PrimFunc(params, SBlockRealize([], True, block), attrs=func.attrs)
        symbol = f"{name}_{suffix}"
        return relax_alignment(made.with_attr("global_symbol", symbol)
                               .with_attr("convc.op", symbol))

    prepack = function([w, pack], weight_stmts, scratch, "prepack")
    packed = function([pack if p.same_as(w) else p for p in func.params], rest, kept, "packed")
    shape = tuple(int(s) for s in pack.ty.shape)
    return prepack, packed, shape, str(pack.ty.dtype)


def _seq(stmts):
    return stmts[0] if len(stmts) == 1 else SeqStmt(stmts)
