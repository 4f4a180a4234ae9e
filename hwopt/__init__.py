"""hwopt: a hardware-aware, compiler-style optimizer that makes PyTorch models small and fast for embedded devices."""
from .errors import BudgetError, HwoptError, IRError, PassError, ShapeError, TargetError, UnsupportedOpError
from .ir import OPS, Graph, Node, TensorSpec
from .frontend import lift
from .lower import lower
from .channels import ChannelGroup, channel_groups, remove_channels, resize_groups
from .passmanager import Instrument, Pass, PassContext, PassManager, StatsInstrument, make_pass, register_pass

__version__ = "0.1.0"


def __getattr__(name):
    # Lazy: targets, TVM and optimize() pull in more than the IR; importing hwopt stays cheap.
    if name == "optimize":
        from .optimizer import optimize
        return optimize
    if name == "Result":
        from .optimizer import Result
        return Result
    if name == "load_target":
        from .targets import load_target
        return load_target
    if name == "compile":
        from .deploy import compile
        return compile
    raise AttributeError(f"module 'hwopt' has no attribute {name!r}")
