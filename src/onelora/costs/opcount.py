"""How many ops a training step dispatches: the one cost figure of a GPU that a CPU measures exactly.

On a GPU every top-level aten op is at least one kernel launch (a few µs), whatever the layer width, so at the
paper's widths in bf16 an adapter's extra ops cost time that the GEMMs no longer hide. The count is the same
on every device and does not depend on the machine's load, so the tests bound it (tests/test_onelora_fast.py).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections import Counter
from collections.abc import Callable, Iterator

from torch.profiler import ProfilerActivity, profile


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
    """The profiler's C++ side prints start/stop lines to file descriptor 2 (no setting turns them off)."""
    saved = os.dup(2)
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def top_level_ops(fn: Callable[[], object]) -> Counter[str]:
    """The aten ops `fn()` dispatches that no other aten op called (backward's included), counted by name."""
    with _quiet_stderr(), profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    names: Counter[str] = Counter()
    for event in prof.events():
        if not event.name.startswith("aten::"):
            continue
        parent = event.cpu_parent
        while parent is not None and not parent.name.startswith("aten::"):
            parent = parent.cpu_parent
        if parent is None:
            names[event.name] += 1
    return names
