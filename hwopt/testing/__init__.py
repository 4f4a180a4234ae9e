"""Tools for testing passes: hypothesis strategies (`hwopt.testing.strategies`) and graph checks."""
from .checks import assert_close_outputs, fingerprint

__all__ = ["assert_close_outputs", "fingerprint"]
