"""A test-only family whose import fails in the measuring process only, as a worker that
runs out of memory while it starts would: --family_modules=tests.unstartable_family."""

import dataclasses
import sys

from batchlab import workloads
from batchlab.workloads import mlp

main = sys.modules.get("__main__")
if getattr(getattr(main, "__spec__", None), "name", "") == "batchlab.worker":
    raise MemoryError("std::bad_alloc while starting (deliberate)")

workloads.register(dataclasses.replace(mlp.FAMILY, name="unstartable"))
