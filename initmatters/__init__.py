"""The edge: command-line tools (run, sweep, deploy, report), Hydra composition, Flower processes
and the message protocol of the apps. The science lives in `initmatters_core`.

Importing this package sets OPENBLAS_NUM_THREADS=1 unless the user chose otherwise, before any
entry point imports numpy: NumPy's OpenBLAS shuts its thread pool down in a pthread_atfork
handler, so a threaded BLAS call that overlaps a fork (ray.init) spins forever; this hung a run
once (benchmarks/README.md, recommendation 5). Child processes (SuperLink, SuperNodes) inherit it.
"""

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
