"""Imported before FFCV, by every module of ours that imports it.

FFCV's import builds a numba typed dict (`IMAGE_MODES`), and compiling numba's typed-dict
functions took about 2 s of every process's start (of 7 s to a tiny training's first step).
They are plain module-level numba functions, so numba can keep their machine code on disk
as it does for any `cache=True` function: beside numba's own files, else in the user's
cache folder (NUMBA_CACHE_DIR moves it), keyed by numba's version and file and rebuilt when
either changes. Where no cache folder is writable they compile in each process, as before.
"""

from __future__ import annotations

from numba.core.registry import CPUDispatcher
from numba.typed import typeddict


def _cache_typed_dict_compiles() -> None:
    for function in vars(typeddict).values():
        if isinstance(function, CPUDispatcher):
            try:
                function.enable_caching()
            except RuntimeError:  # numba found no writable cache folder
                return


_cache_typed_dict_compiles()
