"""handgrad: backpropagation by hand on JAX.

``handgrad.grad`` traces a function to a jaxpr and runs the chain rule backwards over
it with a registry of hand-written VJP rules, each checked against ``jax.grad``.
"""

from handgrad._src import rules as _rules  # noqa: F401  (registers the built-in rules)
from handgrad._src.api import grad
from handgrad._src.check import CheckReport
from handgrad._src.check import check_grad
from handgrad._src.check import check_vjp
from handgrad._src.check import gradient_check
from handgrad._src.check import numerical_gradient
from handgrad._src.api import hessian
from handgrad._src.api import value_and_grad
from handgrad._src.api import vjp
from handgrad._src.registry import RuleError
from handgrad._src.registry import defvjp
from handgrad._src.registry import registry
from handgrad import ops

__version__ = "0.1.0"

__all__ = [
    "CheckReport", "RuleError", "check_grad", "check_vjp", "defvjp", "grad",
    "gradient_check", "hessian", "numerical_gradient", "ops", "registry",
    "value_and_grad", "vjp",
]
