"""Compiled (numba) CPU kernels shared by the aggregators and the attacks.

``numba_setup``: the numba set-up every kernel shares (threading layer, launch lock, which
tensors a kernel accepts). One module per kernel, the torch path left to its caller:
``gram`` (Gram matrices of a few wide rows), ``coordinate`` (coordinate-wise median, trimmed
mean, mean around the median), ``moments`` (per-coordinate mean and standard deviation), each
with its "use the kernel?" test (``use_*_kernel``, and a ``_kernel_enabled`` switch for the
tests); ``nearest`` (nearest-neighbour averaging weights from a Gram matrix, called by
``aggregators._distances.nearest_weights``, which decides). numba is a required dependency; the
torch paths remain for what the kernels do not take (other devices and dtypes, autograd, small
inputs).
"""
