"""hwopt's pass library: one technique per module. Importing this package registers every pass."""
from . import canonicalize, dce, fold_bn  # noqa: F401
