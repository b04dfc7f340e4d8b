"""Importing this package registers every built-in rule, one module per family."""

from handgrad._src.rules import arithmetic  # noqa: F401
from handgrad._src.rules import indexing  # noqa: F401
from handgrad._src.rules import layers  # noqa: F401
from handgrad._src.rules import linalg  # noqa: F401
from handgrad._src.rules import reductions  # noqa: F401
from handgrad._src.rules import structural  # noqa: F401
from handgrad._src.rules import transcendental  # noqa: F401
