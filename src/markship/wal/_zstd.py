"""The zstandard C backend, loaded without the package's `__init__` on the WAL path.

On Python 3.11 `import zstandard` also imports `platform`, `typing` and `re` (about 12–25 ms
here), only to pick a backend and to name a type alias. `wal-push` runs once per 16 MB
segment, so it loads the C extension module the package itself would re-export. Anything
unexpected (another layout, a CFFI-only build) falls back to the normal import; the classes are
the same objects either way, because the package's `__init__` star-imports this very module.
"""

from __future__ import annotations

import os
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from types import ModuleType

_NAME = "zstandard.backend_c"


def load() -> ModuleType:
    """The module holding ZstdCompressor, ZstdDecompressor and ZstdError."""
    loaded = sys.modules.get(_NAME)
    if loaded is not None:
        return loaded
    try:
        return _load_extension()
    except (ImportError, OSError, StopIteration):
        import zstandard

        return zstandard


def _load_extension() -> ModuleType:
    # importlib.machinery re-exports these from the import system's own bootstrap modules,
    # which are always loaded: taking them from there saves importing importlib (~1 ms).
    try:
        import _imp

        ExtensionFileLoader = sys.modules["_frozen_importlib_external"].ExtensionFileLoader
        ModuleSpec = sys.modules["_frozen_importlib"].ModuleSpec
        suffixes = _imp.extension_suffixes()
    except (ImportError, KeyError, AttributeError):
        from importlib.machinery import EXTENSION_SUFFIXES as suffixes
        from importlib.machinery import ExtensionFileLoader, ModuleSpec

    for entry in sys.path:
        folder = os.path.join(entry or ".", "zstandard")
        for suffix in suffixes:
            path = os.path.join(folder, "backend_c" + suffix)
            if os.path.isfile(path):
                loader = ExtensionFileLoader(_NAME, path)
                spec = ModuleSpec(_NAME, loader, origin=path)
                module: ModuleType = loader.create_module(spec)
                loader.exec_module(module)
                sys.modules[_NAME] = module
                return module
    raise ImportError("zstandard C backend not found")
