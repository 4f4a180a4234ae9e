"""The exceptions hwopt raises. Each names what is wrong and where (node, module path, field, option)."""


class HwoptError(Exception):
    """Base class of every error hwopt raises on purpose."""


class IRError(HwoptError, ValueError):
    """A graph breaks an invariant of the IR. `node` names the offending node (or None)."""

    def __init__(self, message: str, node: str | None = None):
        self.node = node
        super().__init__(f"node {node!r}: {message}" if node is not None else message)


class UnsupportedOpError(HwoptError, NotImplementedError):
    """The front end met an operation outside hwopt's closed op set. `found` lists every such error of
    the model (this one first), so one run names all the ops that stop it."""

    def __init__(self, op: str, module_path: str, detail: str = "", found: list | None = None):
        self.op, self.module_path = op, module_path
        self.found = list(found) if found else [self]
        where = f"module {module_path!r}" if module_path else "the model's top-level forward"
        super().__init__(f"unsupported op {op} in {where}" + (f": {detail}" if detail else ""))


class ShapeError(HwoptError, ValueError):
    """Example inputs do not fit the model (wrong rank, channels, or spatial size)."""


class PassError(HwoptError, ValueError):
    """An unknown pass, an unknown or badly typed option, or a pass that failed its checks."""


class TargetError(HwoptError, ValueError):
    """A target description is missing, unreadable or invalid. `field` names the bad field."""

    def __init__(self, message: str, field: str | None = None, path: str | None = None):
        self.field, self.path = field, path
        where = " ".join(p for p in (f"in {path}" if path else "", f"field {field!r}" if field else "") if p)
        super().__init__(f"{where}: {message}" if where else message)


class BudgetError(HwoptError, ValueError):
    """A budget no reachable configuration meets; `closest` holds the closest reachable figures."""

    def __init__(self, message: str, closest: dict | None = None):
        self.closest = closest or {}
        super().__init__(message)
