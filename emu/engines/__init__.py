"""Engines: the numba fast engine (`fast`) and the SimPy engine (`des`) over one time core (core.py) and one
decision layer (decisions.py), and the independent SimPy model of the contract (`reference`) that checks them."""

#: the values of a scenario's `engine.kind` ("auto": fast for long traces, des otherwise)
ENGINES = ("des", "fast", "reference", "auto")
