"""Triton kernels of Hermes, installed as ``hermes.kernels``.

Only kernels and their launch helpers live here; autograd glue and dispatch live in
``hermes.ops``. Importing this package imports Triton; set ``TRITON_INTERPRET=1`` before the
import to run the kernels on the CPU.
"""

from triton import knobs as _knobs

# Triton decides at ``@triton.jit`` time whether a kernel runs in its CPU interpreter; this is
# the same switch, read when the kernel modules are imported.
INTERPRET: bool = bool(_knobs.runtime.interpret)
