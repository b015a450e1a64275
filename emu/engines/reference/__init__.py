"""The reference engine: docs/ARCHITECTURE.md's timing contract written again in SimPy (engine.py)."""

from .engine import ReferenceEngine, run_reference

__all__ = ["ReferenceEngine", "run_reference"]
