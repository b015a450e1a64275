"""Engines: the SimPy reference (`des`) and the numba fast engine (`fast`), over one shared core."""
