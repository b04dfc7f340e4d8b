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
from handgrad._src.api import value_and_grad
from handgrad._src.api import vjp
from handgrad._src.registry import RuleError
from handgrad._src.registry import NotDifferentiable
from handgrad._src.registry import defvjp
from handgrad._src.registry import defvjp_each
from handgrad._src.registry import defvjp_unary
from handgrad._src.second_order import hessian
from handgrad._src.second_order import hvp
from handgrad._src.second_order import hvp_reverse
from handgrad._src.inspect.residuals import print_saved_residuals
from handgrad._src.inspect.residuals import saved_residuals
from handgrad._src.inspect.spectrum import top_hessian_eigenvalues
from handgrad._src.registry import registry
from handgrad import ops
from handgrad import data
from handgrad import nn
from handgrad import inspect
from handgrad import train

__version__ = "0.1.0"

__all__ = [
    "CheckReport", "data", "inspect", "nn", "train", "NotDifferentiable", "RuleError",
    "check_grad", "check_vjp", "defvjp", "defvjp_each", "defvjp_unary", "grad",
    "gradient_check", "hessian", "hvp", "hvp_reverse", "numerical_gradient", "ops",
    "print_saved_residuals", "registry", "saved_residuals", "top_hessian_eigenvalues",
    "value_and_grad", "vjp",
]
