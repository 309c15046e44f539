"""Register only the tensor intrinsics a target can use, before MetaSchedule asks for all of them.

``TuneContext.__init__`` runs ``import tvm.s_tir.tensor_intrin``, which parses every intrinsic of
every backend as TVMScript: 20 s here, 34-44 s with PyTorch imported (the parser calls
``inspect.stack()``).  Nearly all of it is the CUDA tensor-core set (16 s of it measured with torch
imported); the x86 set (VNNI, AMX) takes 0.2 s.  :func:`load_for` installs the package as a lazy
package (its real ``__path__``, its ``__init__`` not run) and imports the submodule for the
target's architecture, so the ``import`` inside ``TuneContext`` finds it done.  Any submodule can
still be imported explicitly later; for CUDA targets the whole package is imported as usual.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys

from ..target import host_triple

PACKAGE = "tvm.s_tir.tensor_intrin"
# LLVM triple prefix -> intrinsic submodules MetaSchedule's CPU rules may use there.
CPU_MODULES = {"x86_64": ("x86",), "i686": ("x86",), "aarch64": ("arm_cpu",),
               "arm": ("arm_cpu",), "riscv": ("riscv_cpu",)}


def load_for(target) -> tuple[str, ...]:
    """Make the intrinsics ``target`` can use importable-and-registered; returns the submodules
    imported (empty when the full package was already loaded)."""
    if target.kind.name != "llvm":
        importlib.import_module(PACKAGE)
        return ()
    triple = str(target.attrs.get("mtriple", "")) or host_triple()
    modules = next((mods for prefix, mods in CPU_MODULES.items() if triple.startswith(prefix)),
                   None)
    package = sys.modules.get(PACKAGE)
    if modules is None:
        importlib.import_module(PACKAGE)
        return ()
    if package is None:
        _install_lazy_package()
    elif not getattr(package, "__convc_lazy__", False):
        return ()  # the real package ran: everything is registered
    for name in modules:
        importlib.import_module(f"{PACKAGE}.{name}")
    return modules


def _install_lazy_package() -> None:
    import tvm.s_tir  # noqa: PLC0415

    directory = os.path.join(os.path.dirname(tvm.s_tir.__file__), "tensor_intrin")
    spec = importlib.util.spec_from_file_location(
        PACKAGE, os.path.join(directory, "__init__.py"), submodule_search_locations=[directory])
    module = importlib.util.module_from_spec(spec)
    module.__convc_lazy__ = True
    sys.modules[PACKAGE] = module
    setattr(tvm.s_tir, "tensor_intrin", module)

