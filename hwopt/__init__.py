"""hwopt: a hardware-aware, compiler-style optimizer that makes PyTorch models small and fast for embedded devices."""
from .errors import BudgetError, HwoptError, IRError, PassError, ShapeError, TargetError, UnsupportedOpError
from .ir import OPS, Graph, Node, TensorSpec
from .frontend import lift
from .lower import lower
from .channels import ChannelGroup, channel_groups, remove_channels, resize_groups
from .passmanager import Instrument, Pass, PassContext, PassManager, StatsInstrument, make_pass, register_pass

__version__ = "0.1.0"
