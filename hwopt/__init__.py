"""hwopt: a hardware-aware, compiler-style optimizer that makes PyTorch models small and fast for embedded devices."""
from .errors import BudgetError, HwoptError, IRError, PassError, ShapeError, TargetError, UnsupportedOpError
from .ir import OPS, Graph, Node, TensorSpec
from .frontend import lift
from .lower import lower

__version__ = "0.1.0"
