"""Jitted training with optax and a choice of gradient backend (hand rules or ``jax.grad``).

::

    import handgrad as hg
    from handgrad import train

    params = hg.nn.mlp.init([784, 256, 128, 10], key=jax.random.key(0))
    tx = train.make_optimizer("adam", 1e-3, clip_norm=1.0)
    state = train.TrainState.create(params, tx, key=1)
    step = train.make_train_step(train.classification_loss(hg.nn.mlp.apply), tx,
                                 backend="hand", accumulate=2)
    state, metrics = step(state, batch)          # jitted, donates `state`

``fit`` runs epochs with a progress bar, ``metrics.jsonl``, a PNG of the curves and
orbax checkpoints, and resumes bitwise.  Mixed precision: ``classification_loss(apply,
precision="bf16")``; for float16 also ``loss_scale=DynamicLossScale()`` in
``TrainState.create`` and ``make_train_step``.

``handgrad.train.value_and_grad(fun, backend)`` (also ``backend_value_and_grad``) is not
``handgrad.value_and_grad``: it picks the gradient backend (``"hand"`` or ``"jax"``) and
defaults to ``has_aux=True``, the shape of a training loss ``(loss, aux)``.

Library notices (resumes, skipped steps, damaged checkpoints) go to the
``logging.getLogger("handgrad")`` logger; ``fit(log=...)`` sends them to a function
instead.
"""

from handgrad._src.train.checkpoint import CheckpointError
from handgrad._src.train.checkpoint import Checkpointer
from handgrad._src.train.clipping import clip_grad_norm
from handgrad._src.train.clipping import clip_grad_value
from handgrad._src.train.checkpoint import quiet_orbax
from handgrad._src.train.labels import check_labels
from handgrad._src.train.lock import RunLockedError
from handgrad._src.train.loop import FitResult
from handgrad._src.train.loop import Interrupted
from handgrad._src.train.loop import NonFiniteError
from handgrad._src.train.loop import RunExistsError
from handgrad._src.train.loop import fit
from handgrad._src.train.loop import plot_curves
from handgrad._src.train.loop import previous_run
from handgrad._src.train.loop import read_metrics
from handgrad._src.train.mesh import STRATEGIES
from handgrad._src.train.mesh import check_strategy
from handgrad._src.train.mesh import make_mesh
from handgrad._src.train.mesh import state_shardings
from handgrad._src.train.mixed_precision import DynamicLossScale
from handgrad._src.train.mixed_precision import LossScaleState
from handgrad._src.train.mixed_precision import Policy
from handgrad._src.train.mixed_precision import get_policy
from handgrad._src.train.mixed_precision import guarded_update
from handgrad._src.train.safe_optimizer import SafeOptimizerState
from handgrad._src.train.safe_optimizer import safe_optimizer
from handgrad._src.train.state import TrainState
from handgrad._src.train.state import create_train_state
from handgrad._src.train.step import BACKENDS
from handgrad._src.train.step import backend_value_and_grad
from handgrad._src.train.step import classification_eval
from handgrad._src.train.step import classification_loss
from handgrad._src.train.step import evaluate
from handgrad._src.train.step import make_eval_step
from handgrad._src.train.step import make_train_step
from handgrad._src.train.step import value_and_grad
from handgrad._src.train.transforms import OPTIMIZERS
from handgrad._src.train.transforms import clipping
from handgrad._src.train.transforms import combine
from handgrad._src.train.transforms import freeze
from handgrad._src.train.transforms import frozen_mask
from handgrad._src.train.transforms import frozen_paths
from handgrad._src.train.transforms import make_optimizer
from handgrad._src.train.transforms import partition
from handgrad._src.train.trees import all_finite

__all__ = [
    "BACKENDS", "CheckpointError", "Checkpointer", "DynamicLossScale", "FitResult",
    "Interrupted", "LossScaleState", "NonFiniteError", "OPTIMIZERS", "Policy",
    "RunExistsError", "RunLockedError", "SafeOptimizerState", "TrainState", "all_finite",
    "backend_value_and_grad", "check_labels", "clip_grad_norm", "clip_grad_value",
    "get_policy", "guarded_update", "safe_optimizer",
    "classification_eval", "classification_loss", "clipping", "combine",
    "create_train_state", "evaluate", "fit", "freeze", "frozen_mask", "frozen_paths",
    "make_eval_step", "make_optimizer", "make_train_step", "partition", "plot_curves",
    "previous_run", "STRATEGIES", "check_strategy", "make_mesh", "state_shardings",
    "quiet_orbax", "read_metrics", "value_and_grad",
]
