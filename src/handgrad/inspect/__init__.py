"""Gradient diagnostics that work inside ``jax.jit``.

PyTorch's hooks and ``param.grad`` are host-side; ``jax.grad`` returns only the final
gradient.  The hand engine sees every cotangent, so these tools compute their numbers
as part of the (jitted) step:

* :func:`gradient_stats`, :class:`GradientMonitor`, :func:`check_health`,
  :func:`plot_gradient_flow`: per-parameter statistics, history and health rules
  (:class:`EveryKSteps`, :func:`gradient_stats_every`: on one step in k);
* :func:`trace_backward`: the norm of the blame arriving at and leaving each layer,
  from output to input (:class:`BackwardTrace`);
* :func:`find_zero_gradients`, :func:`dead_relu_report`: missing versus zero
  gradients, and dead ReLU units;
* :func:`find_nonfinite` (:class:`NonFiniteReport`): the first equation, forward or
  backward, that made a NaN or inf, with its source line and a diagnosis;
* :func:`intermediate_grads`, :func:`per_example_grad_norms`: the cotangent of every
  named intermediate and layer output;
* :func:`rank_gradients`, :func:`explain_exploding`: the largest gradients and what
  to do about them;
* :func:`safe_optimizer` (an optax ``GradientTransformation``), :func:`clip_grad_norm`,
  :func:`clip_grad_value`: recovering from explosions and NaNs.
"""

from handgrad._src.train.clipping import clip_grad_norm
from handgrad._src.train.clipping import clip_grad_value
from handgrad._src.inspect.graph import ComputationGraph
from handgrad._src.inspect.graph import make_graph
from handgrad._src.train.clipping import total_norm
from handgrad._src.inspect.exploding import GradRank
from handgrad._src.inspect.exploding import explain_exploding
from handgrad._src.inspect.exploding import gradient_norms
from handgrad._src.inspect.exploding import rank_gradients
from handgrad._src.inspect.health import GradStats
from handgrad._src.inspect.health import Status
from handgrad._src.inspect.health import check_health
from handgrad._src.inspect.health import classify
from handgrad._src.inspect.intermediates import intermediate_grads
from handgrad._src.inspect.intermediates import per_example_grad_norms
from handgrad._src.inspect.monitor import EveryKSteps
from handgrad._src.inspect.monitor import GradientMonitor
from handgrad._src.inspect.monitor import gradient_stats
from handgrad._src.inspect.monitor import gradient_stats_every
from handgrad._src.inspect.nonfinite import ArrayStats
from handgrad._src.inspect.nonfinite import NonFiniteReport
from handgrad._src.inspect.nonfinite import find_nonfinite
from handgrad._src.inspect.plots import bar_colours
from handgrad._src.inspect.plots import plot_gradient_flow
from handgrad._src.train.safe_optimizer import SafeOptimizerState
from handgrad._src.train.safe_optimizer import safe_optimizer
from handgrad._src.inspect.trace import BackwardTrace
from handgrad._src.inspect.trace import trace_backward
from handgrad._src.inspect.zero_grads import DeadReLU
from handgrad._src.inspect.zero_grads import ZeroGradReport
from handgrad._src.inspect.zero_grads import dead_relu_report
from handgrad._src.inspect.zero_grads import find_zero_gradients
from handgrad._src.inspect.zero_grads import format_zero_gradients
from handgrad._src.inspect.residuals import Residual
from handgrad._src.inspect.spectrum import Spectrum
from handgrad._src.inspect.residuals import print_saved_residuals
from handgrad._src.inspect.residuals import saved_residuals
from handgrad._src.inspect.spectrum import top_hessian_eigenvalues

__all__ = [
    "ArrayStats", "BackwardTrace", "ComputationGraph", "DeadReLU", "EveryKSteps", "GradRank",
    "GradStats",
    "GradientMonitor", "NonFiniteReport", "Residual", "SafeOptimizerState", "Spectrum",
    "Status", "ZeroGradReport", "bar_colours", "check_health", "classify",
    "clip_grad_norm", "clip_grad_value", "dead_relu_report", "explain_exploding",
    "find_nonfinite", "find_zero_gradients", "format_zero_gradients", "gradient_norms",
    "gradient_stats", "gradient_stats_every", "intermediate_grads", "make_graph",
    "per_example_grad_norms", "plot_gradient_flow", "print_saved_residuals", "rank_gradients", "safe_optimizer",
    "saved_residuals", "top_hessian_eigenvalues", "total_norm", "trace_backward",
]
