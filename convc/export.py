"""Export several kernels of one convolution (or one pooling) into one shared library plus a JSON
manifest, and load them back as validating callables.

    convc.export.export_library(spec, "lib.so")     # or a list of Kernels; writes lib.so, lib.json
    lib = convc.load("lib.so")                      # checks the manifest and the hash
    y = lib.forward(x, w)                           # validates the arguments, allocates y

The library needs neither TVM nor convc at run time: `tvm_ffi.load_module("lib.so")["forward"]`
(Python) or `tvm::ffi::Module::LoadFromFile` (C++) runs it with only apache-tvm-ffi. Its functions
are destination-passing, named by op: forward(x, w[, b], y), grad_input(dy, w, dx),
grad_weight(x, dy, dw); a transposed convolution's conv_transpose(x, w[, b], y),
conv_transpose_grad_input(dy, w, dx), conv_transpose_grad_weight(dy, x, dw) (dy first: see
convc.transpose), their entries carrying "transpose" (the op's own stride, padding,
output_padding, groups, dilation and shapes); a pooling's as PoolSpec.signature lists them (max:
forward(x, y), forward_indices(x, y, indices), grad_input(x, dy, dx), grad_input_indices(dy,
indices, dx); avg and adaptive avg: forward(x, y), grad_input(dy, dx)). Their parameters assume
only element alignment (see convc.ops.common.
make_func), so a raw call with an unaligned array is computed in place, and one with the wrong
shape, dtype or strides raises instead of crashing. The library carries its own thread pool
(convc/export_runtime.py), so parallel kernels run without libtvm_runtime too.

Manifest (lib.json beside lib.so), format FORMAT:
    convc, tvm, tvm_ffi     versions that wrote it
    target                  the TVM target as JSON; cpu_features: ISA features the code may use
    library, artifact       file name and "shared-library" or "object" (cross compile, no linker)
    sha256                  of the library file
    functions               name -> {op, how, spec, flops, args: [{name, role, shape, dtype, layout}]}
                            (prepacked=True: "<op>_prepack" / "<op>_packed" entries add
                            pack: {of, kind, shape, dtype}; their pack argument is "pack")
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import re
import shutil
import tempfile
import uuid
import warnings
from collections.abc import Mapping
from pathlib import Path

import tvm
import tvm_ffi
from tvm.support import cc as tvm_cc

from . import export_runtime
from .build import PackedFunctions, cuda, packed_functions, schedule
from .export_runtime import LINK_OPTIONS
from .files import sha256, write_text_atomic
from .kernel import CudaKernel, Kernel
from .ops import SAVED, arguments, check_kernel_op, dtypes, kernel_ops, outputs, shapes
from .pool_spec import PoolSpec, spec_from_dict
from .spec import OPS, TRANSPOSE_OPS, ConvSpec
from .transpose import TRANSPOSE_WEIGHT_LAYOUTS, transposed_of
from .target import resolve, resolved
from .version import __version__

FORMAT = "convc-library/1"
# Ops whose weight a library can prepack (export_library(..., prepacked=True)).
PACKABLE_OPS = ("forward", "grad_input")

# Features LLVM lists for a CPU include tuning hints ("slow-3ops-lea", "fast-gather"): only these
# name instructions whose absence makes the code fault.
_ISA_FEATURE = re.compile(
    r"^(avx|sse|ssse|fma|f16c|bmi|amx|aes|sha|vaes|vpclmulqdq|gfni|popcnt|lzcnt|movbe|adx|"
    r"sve|sme|neon|fp-armv8|fullfp16|fp16fml|dotprod|i8mm|bf16|rdm|lse|crc)")


class LibraryError(ValueError):
    """A library or manifest that convc cannot use, with the reason and what to do."""


class CrossCompileWarning(UserWarning):
    """No linker for the target's CPU: an object file was written instead of a shared library."""


# --- export ------------------------------------------------------------------------------------

def export_library(kernels, path, ops=None, target=None, *, log_dir=None, cc=None,
                   prepacked: bool = False) -> Path:
    """Compile kernels into one library at `path` and write its manifest beside it (same name,
    suffix .json). Returns the path of what was written (the library, or the object file).

    kernels: a ConvSpec or a PoolSpec, whose `ops` (default: all its kernels: a ConvSpec's three,
    PoolSpec.ops) are scheduled and compiled for `target`; or Kernels from convc.compile (one per op, one target), whose scheduled TIR is compiled again
    into one library, so each keeps its schedule.
    target: None (this CPU), "llvm", "cuda", a dict, a JSON string or a resolved Target
    (convc.target.resolve).
    A CPU target for another architecture (e.g. {"kind": "llvm", "mtriple": "aarch64-linux-gnu"})
    links with `<triple>-g++` when it exists; otherwise the object file (suffix .o) and the
    runtime's C source are written, with a CrossCompileWarning that gives the link command.
    log_dir: a directory of tuning records to consult (a spec only).
    cc: the compiler that links the library (default: $CXX, g++, ... for this CPU;
    `<triple>-g++` / `<triple>-gcc` for another one).
    prepacked: also export "<op>_prepack" (w -> pack) and "<op>_packed" (the op with the pack in
    w's place) for every forward and grad_input of a convolution (CPU targets; see
    convc.kernel.prepack): pack a weight once, then run packed calls. The manifest lists them
    with the pack's kind, shape and dtype.
    """
    path = Path(path)
    if path.suffix in (".json", ".o"):
        raise ValueError(f"output path {str(path)!r} must not end in {path.suffix}: the manifest "
                         "and object file take that name (give e.g. lib.so)")
    if log_dir is not None and not Path(log_dir).is_dir():
        raise ValueError(f"log_dir={str(log_dir)!r} is not a directory")
    entries, code, target = _collect(kernels, ops, target, log_dir)
    if prepacked:
        entries, code = _with_packs(entries, code, target, log_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    link, extra = None, {}
    if target.is_gpu:
        extra["cuda"] = _export_cuda(code, target, path)
        artifact = "shared-library"
    else:
        artifact, link = _export_cpu(code, target, path, cc)
        if artifact == "object":
            path = path.with_suffix(".o")
    manifest = _manifest(entries, target, path, artifact, link, extra)
    write_text_atomic(manifest_path(path), dumps(manifest))
    if link:
        warnings.warn(link["message"], CrossCompileWarning, stacklevel=2)
    return path


def _collect(kernels, ops, target, log_dir):
    """-> ([(name, spec, op, how)], one IRModule of the scheduled functions, each named by its
    op, Target)."""
    if isinstance(kernels, (ConvSpec, PoolSpec)):
        spec = kernels
        if spec.batch == 0:
            raise ValueError(f"spec has batch 0: an exported library needs a positive batch "
                             f"({spec.key})")
        target = resolved(target)
        ops = _check_ops(kernel_ops(spec) if ops is None else ops, spec)
        mod, hows = _scheduled_module(spec, ops, target, log_dir)
        return [(op, spec, op, how) for op, how in hows.items()], mod, target
    kernels = _check_kernels(kernels, ops, target, log_dir)
    return _entries(kernels), _module_of(kernels), kernels[0].target


def _with_packs(entries, code, target, log_dir):
    """entries and module with "<op>_prepack" / "<op>_packed" beside every forward and
    grad_input of a convolution (convc.build.packed_functions, from the scheduled function
    itself, so the pack has that schedule's layout)."""
    if target.is_gpu:
        raise ValueError("prepacked=True: prepacked weights are implemented for CPU (LLVM) "
                         "targets only")
    functions = {name: func for name, func in code.functions_items()}
    functions = {str(getattr(name, "name_hint", name)): func for name, func in functions.items()}
    more = []
    for name, spec, op, how in entries:
        if not isinstance(spec, ConvSpec) or op not in PACKABLE_OPS:
            continue
        made = packed_functions(spec, op, target, func=functions[name], log_dir=log_dir)
        pack = {"of": name, "kind": made.kind, "shape": list(made.shape), "dtype": made.dtype}
        for suffix, func in (("prepack", made.prepack), ("packed", made.packed)):
            functions[f"{name}_{suffix}"] = func.with_attr("global_symbol", f"{name}_{suffix}")
            more.append((f"{name}_{suffix}", spec, op, how, pack))
    return [*entries, *more], tvm.IRModule(functions)


def _entries(kernels) -> list:
    return [(k.op, k.spec, k.op, k.how) for k in kernels]


def _check_kernels(kernels, ops, target, log_dir) -> list:
    if isinstance(kernels, Kernel):
        kernels = [kernels]
    try:
        kernels = list(kernels)
    except TypeError:
        raise TypeError(f"kernels={kernels!r}: expected a ConvSpec or PoolSpec, or Kernels from "
                        "convc.compile") from None
    if not kernels or not all(isinstance(k, Kernel) for k in kernels):
        raise TypeError(f"kernels={kernels!r}: expected a ConvSpec or PoolSpec, or a non-empty "
                        "list of Kernels from convc.compile")
    if ops is not None or log_dir is not None:
        raise ValueError("ops and log_dir apply to a spec; Kernels are already compiled")
    for k in kernels:
        check_kernel_op(k.spec, k.op)
    _check_ops([k.op for k in kernels], None)
    targets = {k.target.json for k in kernels}
    if len(targets) > 1 or (target is not None and resolved(target).json not in targets):
        raise ValueError(f"the kernels were compiled for {sorted(targets)}"
                         + (f" and target={target!r}" if target is not None else "")
                         + ": one library holds kernels of one target")
    for k in kernels:
        if not k.tir:
            raise ValueError(f"{k!r} has no scheduled TIR to export (batch 0 or a loaded library)")
    return kernels


def _module_of(kernels):
    """The Kernels' scheduled functions in one IRModule, each named by its op."""
    functions = {}
    for k in kernels:
        (_, func), = tvm.script.from_source(k.tir).functions_items()
        functions[k.op] = func.with_attr("global_symbol", k.op)
    return tvm.IRModule(functions)


def _check_ops(kernels, spec) -> tuple:
    """The op names asked for, checked against `spec`'s kernels (None: checked by the caller)."""
    if isinstance(kernels, str):
        kernels = [k.strip() for k in kernels.split(",") if k.strip()]
    ops = tuple(kernels)
    if not ops:
        raise ValueError(f"kernels={kernels!r} is empty: expected some of "
                         f"{OPS if spec is None else kernel_ops(spec)}")
    for op in ops if spec is not None else ():
        check_kernel_op(spec, op)
    if len(set(ops)) != len(ops):
        raise ValueError(f"kernels={list(ops)} names a kernel twice: one function per op")
    return ops


def _scheduled_module(spec, ops, target, log_dir):
    """One IRModule holding every op's scheduled function (named by op), and how each was chosen."""
    functions, hows = {}, {}
    for op in ops:
        mod, how = schedule(spec, op, target, log_dir=log_dir)
        functions[op] = mod[op]
        hows[op] = how
    return tvm.IRModule(functions), hows


def _export_cpu(mod, target, path: Path, cc):
    executable = tvm.compile(mod, target=target)
    triple = str(target.attrs.get("mtriple", ""))
    native = _same_arch(_arch(triple), _arch(platform.machine()))
    linker = cc or (tvm_cc.get_cc() if native else _cross_linker(triple))
    with tempfile.TemporaryDirectory(prefix="convc-export-") as work:
        runtime_c = export_runtime.write_source(work)
        if linker is None or shutil.which(linker) is None:
            if native:
                raise RuntimeError(f"no C++ compiler{f' {linker!r}' if linker else ''} found to "
                                   "link the library: install g++ or set $CXX")
            return "object", _write_object(executable, path, runtime_c, triple, linker)
        fcompile = tvm_cc.cross_compiler(linker, options=list(LINK_OPTIONS))
        with _replacing(path) as tmp:
            executable.export_library(str(tmp), fcompile=fcompile, addons=[str(runtime_c)],
                                      workspace_dir=work)
    return "shared-library", None


def _write_object(executable, path: Path, runtime_c: Path, triple: str, linker) -> dict:
    """No linker for `triple` here: write the object file and the runtime source beside it."""
    obj = path.with_suffix(".o")
    source = path.with_name(f"{path.stem}_runtime.c")
    executable.mod.write_to_file(str(obj))
    shutil.copyfile(runtime_c, source)
    wanted = linker or f"{triple}-g++"
    command = (f"{wanted} -shared -fPIC {' '.join(LINK_OPTIONS)} -o {path.name} "
               f"{obj.name} {source.name}")
    message = (f"no linker for {triple} on this machine ({wanted} not found): wrote the object "
               f"file {obj} and the runtime source {source} instead of {path}. Link them on a "
               f"machine that has one: {command}  (on Debian/Ubuntu: apt-get install "
               f"g++-{triple})")
    return {"command": command, "object": obj.name, "runtime_source": source.name,
            "message": message}


def _arch(name: str) -> str:
    arch = (name or "").split("-")[0].lower()
    return {"amd64": "x86_64", "x64": "x86_64", "arm64": "aarch64"}.get(arch, arch)


def _same_arch(a: str, b: str) -> bool:
    return a == b or not a


def _cross_linker(triple: str):
    """`<triple>-g++` (or -gcc), also without a vendor field (aarch64-unknown-linux-gnu)."""
    parts = triple.split("-")
    names = [triple]
    if len(parts) == 4:
        names.append("-".join([parts[0], *parts[2:]]))
    for name in names:
        for tool in (f"{name}-g++", f"{name}-gcc"):
            if shutil.which(tool):
                return tool
    return None


def _export_cuda(mod, target, path: Path) -> dict:
    """CUDA: convc.build.cuda turns the functions' device code and host launchers into one
    library with nvcc. Returns what it reports (arch, nvcc, per-kernel resources) for the
    manifest."""
    with _replacing(path) as tmp:
        return cuda.export_cuda_library(mod, target, str(tmp))


def _cpu_features(target) -> list:
    if target.kind.name != "llvm":
        return []
    try:
        features = tvm.target.codegen.llvm_get_cpu_features(target)
    except Exception:  # noqa: BLE001 - an LLVM without this CPU's backend
        return []
    return sorted(str(f) for f in features if _ISA_FEATURE.match(str(f)))


def _manifest(entries, target, path: Path, artifact, link, extra) -> dict:
    functions = {}
    for name, spec, op, how, *pack in entries:
        if pack:
            functions[name] = _pack_entry(name, spec, op, how, pack[0])
            continue
        names, arg_shapes, arg_dtypes = arguments(spec, op), shapes(spec, op), dtypes(spec, op)
        first_output = len(names) - outputs(spec, op)
        functions[name] = {
            "op": op, "how": how, "spec": spec.to_dict(), "flops": spec.flops,
            "args": [_arg(spec, arg, shape, dtype, "output" if i >= first_output else "input", op)
                     for i, (arg, shape, dtype) in enumerate(zip(names, arg_shapes, arg_dtypes))],
        }
        if op == "forward" and not isinstance(spec, PoolSpec):
            functions[name]["epilogue"] = _epilogue(spec)
        elif isinstance(spec, ConvSpec) and spec.prologue:
            functions[name]["prologue"] = _prologue(spec)
        if op in TRANSPOSE_OPS:
            # spec is the equivalent convolution (convc.transpose); this is the transposed op's
            # own description, as F.conv_transposeNd takes it
            functions[name]["transpose"] = transposed_of(spec).to_dict()
        if op == "conv_transpose":
            functions[name]["epilogue"] = ["bias (b)"] if spec.bias else []
    manifest = {
        "format": FORMAT, "convc": __version__, "tvm": tvm.__version__,
        "tvm_ffi": tvm_ffi.__version__, "target": json.loads(target.json),
        "cpu_features": _cpu_features(target), "library": path.name, "artifact": artifact,
        "sha256": sha256(path), "functions": functions,
    }
    if link:
        manifest["link"] = {k: v for k, v in link.items() if k != "message"}
    manifest.update(extra)
    return manifest


def _pack_entry(name: str, spec, op: str, how: str, pack: dict) -> dict:
    """The manifest entry of "<op>_prepack" (w in, pack out) or "<op>_packed" (the op's
    arguments with the pack in w's place)."""
    pack_arg = {"name": "pack", "role": "input", "shape": pack["shape"], "dtype": pack["dtype"],
                "layout": f"packed ({pack['kind']})"}
    weight = _arg(spec, "w", spec.weight_shape, spec.dtype, "input", op)
    if name.endswith("_prepack"):
        args = [weight, {**pack_arg, "role": "output"}]
    else:
        first_output = len(arguments(spec, op)) - outputs(spec, op)
        args = [pack_arg if arg == "w" else
                _arg(spec, arg, shape, dtype, "output" if i >= first_output else "input", op)
                for i, (arg, shape, dtype) in enumerate(zip(arguments(spec, op), shapes(spec, op),
                                                            dtypes(spec, op)))]
    return {"op": f"{op}_{name.rsplit('_', 1)[1]}", "how": how, "spec": spec.to_dict(),
            "pack": pack, "args": args}


def _epilogue(spec: ConvSpec) -> list:
    """What forward's write-back computes after the convolution, in order, with its parameters."""
    steps = (["bias (b)"] if spec.bias else []) \
        + (["* scale + shift (per output channel)"] if spec.scale_shift else []) \
        + (["+ residual"] if spec.residual else [])
    if spec.activation == "leaky_relu":
        steps.append(f"leaky_relu(negative_slope={spec.negative_slope!r})")
    elif spec.activation:
        steps.append(spec.activation)
    return steps


def _prologue(spec: ConvSpec) -> list:
    """What an adjoint computes on dy before its convolution (spec.prologue), with its parameters."""
    act = (f"leaky_relu(negative_slope={spec.negative_slope!r})"
           if spec.activation == "leaky_relu" else spec.activation)
    return [f"dy * {act}'({SAVED[spec.derivative_from]})"]


def _arg(spec, name: str, shape, dtype: str, role: str, op: str = "forward") -> dict:
    if isinstance(spec, PoolSpec):
        weights = {}
    else:
        weight = (TRANSPOSE_WEIGHT_LAYOUTS[spec.layout] if op in TRANSPOSE_OPS
                  else spec.weight_layout)
        weights = {"w": weight, "dw": weight, "b": "O", "scale": "O", "shift": "O"}
    return {"name": name, "role": role, "shape": list(shape), "dtype": dtype,
            "layout": weights.get(name, spec.layout)}


# --- load --------------------------------------------------------------------------------------

def manifest_path(path) -> Path:
    """lib.so -> lib.json."""
    return Path(path).with_suffix(".json")


def read_manifest(path) -> tuple[Path, dict]:
    """(library path, manifest) for `path` (the library or its manifest), checked against this
    convc and the library's hash. Raises FileNotFoundError or LibraryError."""
    path = Path(path)
    if path.suffix == ".json":
        meta_path = path
        manifest = _parse_manifest(meta_path)
        if not isinstance(manifest.get("library"), str) or not manifest["library"]:
            raise LibraryError(f"{str(meta_path)!r} names no library file")
        library = meta_path.with_name(manifest["library"])
    else:
        library, meta_path = path, manifest_path(path)
        if not library.is_file():
            raise FileNotFoundError(f"library {str(library)!r} not found")
        if not meta_path.is_file():
            raise FileNotFoundError(
                f"manifest {str(meta_path)!r} not found beside {str(library)!r}: convc.load needs "
                "the .json that `convc compile` writes (tvm_ffi.load_module loads the library "
                "alone, unchecked)")
        manifest = _parse_manifest(meta_path)
    if not library.is_file():
        raise FileNotFoundError(f"library {str(library)!r} named by {str(meta_path)!r} not found")
    _check_versions(manifest, meta_path)
    digest = sha256(library)
    if digest != manifest.get("sha256"):
        raise LibraryError(
            f"{str(library)!r} does not match its manifest {str(meta_path)!r}: sha256 {digest[:16]}... "
            f"!= {str(manifest.get('sha256'))[:16]}...: the library was modified or replaced after it "
            "was exported; export it again")
    if manifest.get("artifact") != "shared-library":
        link = manifest.get("link", {}).get("command", "")
        raise LibraryError(f"{str(library)!r} is an object file, not a loadable library: link it on "
                           f"a machine of its target ({link})")
    return library, manifest


def _parse_manifest(meta_path: Path) -> dict:
    if not meta_path.is_file():
        raise FileNotFoundError(f"manifest {str(meta_path)!r} not found")
    try:
        manifest = json.loads(meta_path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise LibraryError(f"{str(meta_path)!r} is not a convc manifest: invalid JSON ({err})") from None
    if not isinstance(manifest, dict) or "format" not in manifest:
        raise LibraryError(f"{str(meta_path)!r} is not a convc manifest: no 'format' field")
    return manifest


def _check_versions(manifest: dict, meta_path: Path) -> None:
    if manifest["format"] != FORMAT:
        raise LibraryError(f"{str(meta_path)!r} has format {manifest['format']!r}: this convc "
                           f"{__version__} reads {FORMAT!r}; export the library again")
    if manifest.get("convc") != __version__:
        raise LibraryError(
            f"{str(meta_path)!r} was written by convc {manifest.get('convc')}, this is convc "
            f"{__version__}: export the library again with this version (`convc compile ...`), "
            "or load it unchecked with tvm_ffi.load_module")
    theirs, ours = str(manifest.get("tvm_ffi", "")), tvm_ffi.__version__
    if theirs.split(".")[:2] != ours.split(".")[:2]:
        raise LibraryError(f"{str(meta_path)!r}: the library was built against apache-tvm-ffi "
                           f"{theirs}, this process has {ours} (another ABI): export it again")
    functions = manifest.get("functions")
    if not isinstance(functions, dict) or not functions:
        raise LibraryError(f"{str(meta_path)!r} lists no functions")


def _check_cpu(manifest: dict, library: Path) -> None:
    """Refuse a CPU library built for another architecture or for instructions this CPU lacks."""
    target = manifest.get("target", {})
    if target.get("kind") != "llvm":
        return
    theirs, ours = _arch(target.get("mtriple", "")), _arch(platform.machine())
    if not _same_arch(theirs, ours):
        raise LibraryError(f"{str(library)!r} was compiled for {target.get('mtriple')}; this "
                           f"machine is {platform.machine()}: load it on a machine of that architecture")
    host = set(_cpu_features(resolve(None)))
    missing = sorted(set(manifest.get("cpu_features", [])) - host) if host else []
    if missing:
        raise LibraryError(
            f"{str(library)!r} was compiled for the CPU {target.get('mcpu')!r} and uses "
            f"{', '.join(missing)}, which this CPU ({tvm.target.codegen.llvm_get_system_cpu()}) "
            "lacks: export it for this CPU (--target llvm) or an older one")


class LoadedKernel(Kernel):
    """A Kernel whose code comes from an exported CPU library: same validation, same call."""

    def __init__(self, name: str, spec, op: str, how: str, target, module, library):
        super().__init__(spec, op, target, module=None, how=how, tir="", library=library)
        self.name, self.module = name, module
        self.function = _lookup(module, name, library)

    @property
    def source(self) -> str:
        """An exported library keeps no source: compile the spec again for its code."""
        return ""

    def prepack(self, weight):
        """The weight packed by the library's "<op>_prepack" (a PackedWeight that this
        kernel's calls take in w's place, run by "<op>_packed"); ValueError for a library
        exported without them (export_library(..., prepacked=True), `convc compile
        --prepacked`)."""
        if getattr(self, "_packed_functions", None) is None:
            raise ValueError(f"{self!r}: the library has no {self.name}_prepack / "
                             f"{self.name}_packed: export it with prepacked=True "
                             "(convc compile --prepacked)")
        return super().prepack(weight)

    def __repr__(self) -> str:
        return f"<convc.LoadedKernel {self.name}: {self.op} {self.spec.key} ({self.how})>"


def _loaded_kernel(name: str, entry: dict, manifest: dict, target, module, library: Path):
    """The callable for one function of a loaded library: a LoadedKernel on CPUs, a CudaKernel
    (NumPy in and out through the GPU, or CUDA DLPack tensors in place) on GPUs."""
    try:
        spec = spec_from_dict(entry["spec"])
        op = check_kernel_op(spec, entry["op"])
    except (KeyError, TypeError, ValueError) as err:
        raise LibraryError(f"{str(library)!r}: the manifest's entry for {name} is not valid: "
                           f"{err}") from None
    expected = [a.get("name") for a in entry.get("args", [])]
    if expected and list(arguments(spec, op)) != expected:
        raise LibraryError(f"{str(library)!r}: function {name} takes {expected}, expected "
                           f"{list(arguments(spec, op))} for {op}: the manifest is inconsistent")
    how = str(entry.get("how", ""))
    if not target.is_gpu:
        return LoadedKernel(name, spec, op, how, target, module, library)
    function = _lookup(module, name, library)
    stats = manifest.get("cuda", {}).get("functions", {}).get(name, {})
    kernel = CudaKernel(spec, op, target, module, how, "", library, stats)
    kernel.function = function
    return kernel


def _lookup(module, name: str, library: Path):
    try:
        return module[name]
    except Exception:  # noqa: BLE001 - tvm-ffi raises its own AttributeError/TVMError
        raise LibraryError(f"{str(library)!r} has no function {name!r} although its manifest "
                           "lists it") from None


class Library(Mapping):
    """The functions of an exported library, by name: lib["forward"] or lib.forward.

    Each is a LoadedKernel (a CudaKernel for a CUDA library): call it with the op's inputs; it
    checks their shapes and dtypes, copies an input whose memory the kernel cannot read in place,
    and returns the output, allocated unless `out=` is given.
    """

    def __init__(self, path: Path, manifest: dict, module, functions: dict):
        self.path, self.manifest, self.module = path, manifest, module
        self._functions = functions

    def __getitem__(self, name: str) -> LoadedKernel:
        try:
            return self._functions[name]
        except KeyError:
            raise KeyError(f"{str(self.path)!r} has no function {name!r}: it has "
                           f"{sorted(self._functions)}") from None

    def __getattr__(self, name: str) -> LoadedKernel:
        functions = self.__dict__.get("_functions", {})
        if name in functions:
            return functions[name]
        raise AttributeError(f"{type(self).__name__} has no attribute or function {name!r}")

    def __iter__(self):
        return iter(self._functions)

    def __len__(self) -> int:
        return len(self._functions)

    def __repr__(self) -> str:
        return f"<convc.Library {self.path.name}: {', '.join(self._functions)}>"


def load(path) -> Library:
    """Load a library written by `convc compile` / export_library, after checking its manifest
    (format, convc and tvm-ffi versions, target CPU, sha256). Raises FileNotFoundError for a
    missing file and LibraryError for one convc cannot use. A path is taken as the user means
    it: a bare file name is a file in the current directory (dlopen would search the system's
    library paths for it)."""
    library, manifest = read_manifest(path)
    _check_cpu(manifest, library)
    try:
        module = tvm_ffi.load_module(str(library.absolute()))
    except Exception as err:  # noqa: BLE001 - dlopen failures come back as TVM/runtime errors
        raise LibraryError(f"{str(library)!r} could not be loaded: {err}") from None
    try:
        target = resolve(manifest["target"])
    except ValueError as err:
        raise LibraryError(f"{str(library)!r}: its manifest's target is not usable here: {err}") from None
    entries = manifest["functions"]
    functions = {name: _loaded_kernel(name, entry, manifest, target, module, library)
                 for name, entry in entries.items() if "pack" not in entry}
    for name, entry in entries.items():
        if "pack" in entry and name.endswith("_prepack"):
            _attach_pack(functions, name, entry["pack"], module, library)
    return Library(library, manifest, module, functions)


def _attach_pack(functions: dict, name: str, pack: dict, module, library: Path) -> None:
    """Give the loaded kernel `pack["of"]` the library's prepack / packed pair."""
    of = pack.get("of")
    kernel = functions.get(of)
    if kernel is None or kernel.target.is_gpu:
        raise LibraryError(f"{str(library)!r}: {name} packs the weight of {of!r}, which the "
                           "manifest does not list as a CPU function")
    made = PackedFunctions(str(pack["kind"]), None, None, tuple(pack["shape"]), str(pack["dtype"]))
    kernel._packed_functions = (_lookup(module, name, library),
                                _lookup(module, f"{of}_packed", library), made)


def dumps(manifest: dict) -> str:
    """The manifest as indented JSON; lists of scalars and objects of scalars (an argument)
    are kept on one line."""
    scalar = r'(?:"[^"\n]*"|-?\d+(?:\.\d+)?|true|false|null)'
    flat_list = re.compile(r"\[\s*(" + scalar + r"(?:\s*,\s*" + scalar + r")*)\s*\]")
    member = r'"[^"\n]+": (?:' + scalar + r"|\[[^\[\]\n]*\])"
    flat_object = re.compile(r"\{\s*(" + member + r"(?:,\s*" + member + r")*)\s*\}")
    text = json.dumps(manifest, indent=1)
    text = flat_list.sub(lambda m: "[" + re.sub(r"\s*,\s*", ", ", m.group(1)) + "]", text)
    text = flat_object.sub(lambda m: "{" + re.sub(r",\s*(?=\")", ", ", m.group(1)) + "}", text)
    if json.loads(text) != manifest:  # a string the patterns misread: keep the plain layout
        text = json.dumps(manifest, indent=1)
    return text + "\n"


@contextlib.contextmanager
def _replacing(path: Path):
    """A temporary path beside `path`, renamed onto it when the block succeeds: a reader never
    sees half a library, and a failed export leaves the old one (or nothing)."""
    tmp = path.with_name(f".{path.stem}.{uuid.uuid4().hex[:12]}{path.suffix}")  # the tool creates it
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


__all__ = ["FORMAT", "CrossCompileWarning", "Library", "LibraryError", "LoadedKernel",
           "export_library", "load", "manifest_path", "read_manifest", "sha256"]
