"""Policy kernels (numba) and their registry; see docs/policies.md."""
