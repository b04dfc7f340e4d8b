"""The public entry points carry return types (the package ships py.typed), and the ops
and layers carry the shapes of their arrays (jaxtyping), checked here on real calls."""

import inspect
import pathlib
import pydoc
import re
import subprocess
import sys
import tomllib
import typing
import warnings

import jax
import jax.numpy as jnp
import jaxtyping
import numpy as np
import pytest
import beartype
import beartype.roar

import handgrad as hg
import handgrad.nn


@pytest.mark.parametrize("fn", [hg.grad, hg.value_and_grad, hg.vjp, hg.defvjp, hg.defvjp_unary,
                                hg.defvjp_each, hg.hessian, hg.hvp, hg.hvp_reverse],
                         ids=lambda f: f.__name__)
def test_public_functions_have_return_types(fn):
  hints = typing.get_type_hints(fn)
  assert "return" in hints, f"{fn.__name__} has no return annotation"


# --- shapes in the signatures of ops and layers (jaxtyping) --------------------------


def checked(fn):
  """``fn`` with its jaxtyping annotations enforced (the tests' checker; handgrad itself
  never checks them at run time)."""
  with warnings.catch_warnings():
    # beartype's advice to write ``collections.abc.Sequence`` for ``typing.Sequence``.
    warnings.simplefilter("ignore", beartype.roar.BeartypeDecorHintPep585DeprecationWarning)
    return jaxtyping.jaxtyped(typechecker=beartype.beartype)(fn)


def _r(*shape, seed=0):
  return jax.random.normal(jax.random.key(seed), shape)


_LABELS = jnp.array([0, 2, 1, 2])

# A real call of every public op: (name, arrays, static keyword arguments).
OP_CALLS = [
    ("dense", (_r(4, 3), _r(3, 5), _r(5)), {}),
    ("dense", (_r(2, 4, 3), _r(3, 5), _r(5)), {}),  # two batch axes
    ("relu", (_r(2, 3),), {}),
    ("sigmoid", (_r(3),), {}),
    ("tanh", (_r(2, 2, 2),), {}),
    ("softmax", (_r(4, 3),), {"axis": 0}),
    ("log_softmax", (_r(4, 3),), {}),
    ("softmax_cross_entropy", (_r(4, 3), _LABELS), {}),
    ("mse", (_r(4, 3), _r(4, 3, seed=1)), {}),
    ("layer_norm", (_r(4, 6), jnp.ones(6), jnp.zeros(6)), {"eps": 1e-6}),
    ("attention", (_r(2, 5, 2, 4), _r(2, 7, 2, 4), _r(2, 7, 2, 4)), {}),
    ("attention", (_r(5, 2, 4), _r(5, 2, 4), _r(5, 2, 4)), {"causal": True}),
    ("conv2d", (_r(2, 8, 8, 3), _r(3, 3, 3, 4), _r(4)), {"strides": (2, 2), "padding": "VALID"}),
    ("max_pool", (_r(2, 8, 8, 3),), {}),
    ("avg_pool", (_r(2, 8, 6, 3),), {"window": (2, 3), "strides": (2, 3)}),
    ("flatten", (_r(2, 4, 4, 3),), {}),
    ("batch_norm", (_r(8, 4, 4, 3), jnp.ones(3), jnp.zeros(3), jnp.zeros(3), jnp.ones(3)), {}),
    ("batch_norm", (_r(8, 3), jnp.ones(3), jnp.zeros(3), jnp.zeros(3), jnp.ones(3)),
     {"train": False}),
    ("embedding", (_r(10, 4), jnp.array([[1, 9], [0, 3]])), {}),
]

# A call whose shapes disagree with the signature: (name, arrays, the parameter and the
# dimension, as bound by the other arguments, that the checker must name).
MISMATCHES = [
    ("dense", (_r(4, 3), _r(2, 5), _r(5)), "W", "in=3"),
    ("dense", (_r(4, 3), _r(3, 5), _r(4)), "b", "out=5"),
    ("softmax_cross_entropy", (_r(4, 3), jnp.array([0, 1])), "labels", "batch=(4,)"),
    ("mse", (_r(4, 3), _r(4, 2)), "target", "shape=(4, 3)"),
    ("layer_norm", (_r(4, 6), jnp.ones(5), jnp.zeros(5)), "gamma", "features=6"),
    ("attention", (_r(5, 2, 4), _r(6, 3, 4), _r(6, 3, 4)), "k", "heads=2"),
    ("conv2d", (_r(2, 8, 8, 3), _r(3, 3, 2, 4), _r(4)), "W", "in=3"),
    ("batch_norm", (_r(8, 3), jnp.ones(3), jnp.zeros(3), jnp.zeros(2), jnp.ones(3)), "mean",
     "features=3"),
    ("embedding", (_r(10, 4), jnp.array([1.0, 2.0])), "ids", "Int["),  # float ids: the dtype
]


# Positional parameters that are settings, not arrays.
_SETTINGS = {"params", "rate", "approximate", "axis", "window", "strides", "padding"}


def _array_params(fn):
  sig = inspect.signature(fn)
  return [name for name, p in sig.parameters.items()
          if p.kind is not p.KEYWORD_ONLY and name not in _SETTINGS]


def _is_shaped(hint) -> bool:
  if typing.get_origin(hint) is tuple:
    return all(_is_shaped(h) or h is dict for h in typing.get_args(hint))
  return isinstance(hint, type) and issubclass(hint, jaxtyping.AbstractArray)


PUBLIC_OPS = [n for n in hg.ops.__all__ if n != "layer_op"]
LAYERS = sorted(n for n in dir(hg.nn) if isinstance(getattr(hg.nn, n), hg.nn.Layer))
NN_FUNCTIONS = ["relu", "sigmoid", "tanh", "gelu", "softmax", "dropout", "max_pool",
                "avg_pool", "flatten"]


@pytest.mark.parametrize("fn", [getattr(hg.ops, n) for n in PUBLIC_OPS]
                         + [getattr(hg.nn, n).apply for n in LAYERS]
                         + [getattr(hg.nn, n) for n in NN_FUNCTIONS],
                         ids=PUBLIC_OPS + [f"nn.{n}.apply" for n in LAYERS]
                         + [f"nn.{n}" for n in NN_FUNCTIONS])
def test_array_arguments_and_result_carry_shapes(fn):
  hints = typing.get_type_hints(fn)
  unshaped = [n for n in _array_params(fn) + ["return"]
              if n in hints and not _is_shaped(hints[n])]
  missing = [n for n in _array_params(fn) + ["return"] if n not in hints]
  assert not missing and not unshaped, (missing, unshaped)


def test_every_public_op_has_a_checked_call():
  assert {name for name, _, _ in OP_CALLS} == set(PUBLIC_OPS)


@pytest.mark.parametrize("name,arrays,static", OP_CALLS, ids=[c[0] for c in OP_CALLS])
def test_op_shapes_hold_on_real_calls(name, arrays, static):
  op = getattr(hg.ops, name)
  out = checked(op)(*arrays, **static)
  plain = op(*arrays, **static)
  jax.tree.map(np.testing.assert_array_equal, out, plain)


@pytest.mark.parametrize("name,arrays,param,dim", MISMATCHES,
                         ids=[f"{m[0]}-{m[2]}" for m in MISMATCHES])
def test_a_mismatched_shape_is_caught_naming_the_dimension(name, arrays, param, dim):
  with pytest.raises(jaxtyping.TypeCheckError) as info:
    checked(getattr(hg.ops, name))(*arrays)
  message = str(info.value)
  assert f"parameter '{param}'" in message and dim in message


def _layer_calls():
  k = jax.random.key(0)
  x = _r(4, 6)
  img = _r(2, 8, 8, 3)
  seq = _r(2, 5, 8)
  return [
      ("dense", hg.nn.dense.init(6, 3, key=k), x, {}, (4, 3)),
      ("mlp", hg.nn.mlp.init([6, 5, 2], key=k), _r(3, 4, 6), {}, (3, 4, 2)),
      ("residual_block", hg.nn.residual_block.init(6, key=k), x, {}, (4, 6)),
      ("residual_mlp", hg.nn.residual_mlp.init(6, 8, 2, 2, key=k), x, {}, (4, 2)),
      ("layer_norm", hg.nn.layer_norm.init(6, key=k), x, {}, (4, 6)),
      ("conv2d", hg.nn.conv2d.init(3, 4, key=k), img, {"strides": 2}, (2, 4, 4, 4)),
      ("batch_norm", hg.nn.batch_norm.init(3, key=k), img,
       {"state": hg.nn.batch_norm_state(3), "train": True}, (2, 8, 8, 3)),
      ("embedding", hg.nn.embedding.init(10, 4, key=k), jnp.array([[1, 2, 3]]), {}, (1, 3, 4)),
      ("cnn", hg.nn.cnn.init(key=k, channels=(4,), image_shape=(8, 8, 3), num_classes=5), img,
       {"image_shape": (8, 8, 3)}, (2, 5)),
      ("cnn", hg.nn.cnn.init(key=k, channels=(4,), image_shape=(8, 8, 3), num_classes=5),
       jnp.reshape(img, (2, -1)), {"image_shape": (8, 8, 3)}, (2, 5)),
      ("multi_head_attention", hg.nn.multi_head_attention.init(8, 2, key=k), seq,
       {"num_heads": 2}, (2, 5, 8)),
      ("feed_forward", hg.nn.feed_forward.init(8, 16, key=k), seq, {}, (2, 5, 8)),
      ("transformer_block", hg.nn.transformer_block.init(8, 2, key=k), seq, {"num_heads": 2},
       (2, 5, 8)),
      ("transformer_classifier", hg.nn.transformer_classifier.init(
          key=k, in_features=8, seq_len=5, dim=8, num_heads=2, num_blocks=1, num_classes=3),
       seq, {"num_heads": 2}, (2, 3)),
  ]


def test_every_layer_has_a_checked_call():
  assert {c[0] for c in _layer_calls()} == set(LAYERS)


@pytest.mark.parametrize("case", range(len(_layer_calls())))
def test_layer_shapes_hold_on_real_calls(case):
  name, params, x, static, shape = _layer_calls()[case]
  out = checked(getattr(hg.nn, name).apply)(params, x, **static)
  y = out[0] if name == "batch_norm" else out
  assert np.shape(y) == shape


def test_a_layer_input_of_the_wrong_rank_is_caught():
  params = hg.nn.conv2d.init(3, 4, key=jax.random.key(0))
  with pytest.raises(jaxtyping.TypeCheckError, match="parameter 'x'"):
    checked(hg.nn.conv2d.apply)(params, _r(8, 8, 3))


def test_nn_functions_keep_their_shapes_when_checked():
  x = _r(2, 8, 8, 3)
  assert np.shape(checked(hg.nn.max_pool)(x)) == (2, 4, 4, 3)
  assert np.shape(checked(hg.nn.avg_pool)(x, 4)) == (2, 2, 2, 3)
  assert np.shape(checked(hg.nn.flatten)(x)) == (2, 192)
  for f in (hg.nn.relu, hg.nn.sigmoid, hg.nn.tanh, hg.nn.gelu, hg.nn.softmax):
    assert np.shape(checked(f)(x)) == np.shape(x)
  y = checked(hg.nn.dropout)(x, 0.5, key=jax.random.key(1))
  assert np.shape(y) == np.shape(x)


def _loss(ops, p, x, y):
  h = ops["relu"](ops["dense"](x, p["W1"], p["b1"]))
  h = ops["layer_norm"](h, p["g"], p["beta"])
  return ops["softmax_cross_entropy"](ops["dense"](h, p["W2"], p["b2"]), y)


def _setup():
  p = {"W1": _r(3, 5) * 0.5, "b1": jnp.full(5, 0.1), "g": jnp.ones(5), "beta": jnp.zeros(5),
       "W2": _r(5, 4, seed=2) * 0.5, "b2": jnp.zeros(4)}
  return p, _r(6, 3, seed=3), jnp.array([0, 1, 2, 3, 0, 1])


_NAMES = ("dense", "relu", "layer_norm", "softmax_cross_entropy")
PLAIN = {n: getattr(hg.ops, n) for n in _NAMES}
CHECKED = {n: checked(getattr(hg.ops, n)) for n in _NAMES}


def test_checked_ops_trace_under_jit_vmap_and_hand_grad():
  p, x, y = _setup()
  close = lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  expected = jax.grad(lambda p: _loss(PLAIN, p, x, y))(p)
  jax.tree.map(close, hg.grad(lambda p: _loss(CHECKED, p, x, y))(p), expected)
  jitted = jax.jit(hg.grad(lambda p, x, y: _loss(CHECKED, p, x, y)))(p, x, y)
  jax.tree.map(close, jitted, expected)
  # Per-example losses: under vmap each call sees one example (x: [3], labels: []).
  per_example = jax.vmap(lambda xi, yi: _loss(CHECKED, p, xi, yi))(x, y)
  np.testing.assert_allclose(
      per_example, [_loss(PLAIN, p, x[i], y[i]) for i in range(6)], rtol=1e-5, atol=1e-6)


def test_annotations_are_not_enforced_at_run_time():
  # Annotations document shapes; the ops never pay for checking them.  An int array is
  # not a Float array, yet relu runs on it as jax.nn.relu does.
  np.testing.assert_array_equal(hg.ops.relu(jnp.array([-1, 2])), [0, 2])
  # No runtime checker is loaded by the library itself.
  code = "import sys, handgrad; print(sorted({'beartype', 'typeguard'} & set(sys.modules)))"
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
  assert out.stdout.strip() == "[]"


def test_ops_show_their_public_names():
  assert repr(hg.ops.dense).startswith("<function dense ")
  doc = pydoc.render_doc(hg.ops.dense, renderer=pydoc.plaintext)
  assert "dense(x: " in doc and "'*batch in'" in doc
  assert "op(*arrays" not in doc
  assert "softmax_cross_entropy(logits: " in pydoc.render_doc(
      hg.ops.softmax_cross_entropy, renderer=pydoc.plaintext)


def test_jaxtyping_is_a_dependency_and_beartype_a_test_one():
  project = tomllib.loads((pathlib.Path(__file__).parents[1] / "pyproject.toml").read_text())
  names = lambda reqs: {re.split(r"[<>=!~ ;\[]", r, maxsplit=1)[0].lower() for r in reqs}
  assert "jaxtyping" in names(project["project"]["dependencies"])
  assert "beartype" in names(project["project"]["optional-dependencies"]["test"])
  assert "beartype" not in names(project["project"]["dependencies"])
