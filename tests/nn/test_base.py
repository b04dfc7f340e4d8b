"""The layer protocol: public names in reprs and errors, parameter paths."""

import collections
import pickle

import jax
import jax.numpy as jnp
import pytest

import handgrad as hg
from handgrad._src.nn import base

LAYERS = [name for name in hg.nn.__all__ if isinstance(getattr(hg.nn, name), hg.nn.Layer)]


def test_every_layer_is_found():
  assert {"dense", "layer_norm", "mlp", "residual_block", "residual_mlp",
          "multi_head_attention", "feed_forward", "transformer_block",
          "transformer_classifier"} <= set(LAYERS)


@pytest.mark.parametrize("name", LAYERS)
def test_layers_show_their_public_names(name):
  layer = getattr(hg.nn, name)
  text = repr(layer)
  assert text.startswith(f"Layer(init={name}.init(") and f"apply={name}.apply(params, " in text
  assert "<function" not in text and "_init" not in text.replace(f"{name}.init", "")
  assert layer.init.__qualname__ == f"{name}.init"
  assert pickle.loads(pickle.dumps(layer.init)) is layer.init


def test_print_mlp_and_a_missing_key_name_mlp_init():
  assert str(hg.nn.mlp) == ("Layer(init=mlp.init(layer_dims, *, key, init, activation, dtype), "
                            "apply=mlp.apply(params, x, *, activation, path))")
  with pytest.raises(TypeError, match=r"^mlp\.init\(\) missing 1 required keyword-only "
                                      r"argument: 'key'$"):
    hg.nn.mlp.init([3, 4])
  with pytest.raises(TypeError, match=r"^dense\.init\(\) missing 1 required keyword-only"):
    hg.nn.dense.init(3, 4)


def test_a_plain_layer_keeps_its_functions_names():
  def my_init(n, *, key):
    return {"w": jax.random.normal(key, (n,))}

  def my_apply(params, x):
    return x * params["w"]

  assert repr(hg.nn.Layer(my_init, my_apply)) == (
      "Layer(init=test_a_plain_layer_keeps_its_functions_names.<locals>.my_init(n, *, key), "
      "apply=test_a_plain_layer_keeps_its_functions_names.<locals>.my_apply(params, x))")


def test_param_paths_name_every_kind_of_key():
  P = collections.namedtuple("P", "W b")
  tree = {"layers": [{"W": jnp.ones(2), "b": jnp.ones(1)}], "head": P(jnp.ones(1), jnp.ones(1)),
          "pair": (jnp.ones(1), {7: jnp.ones(1)})}
  assert [p for p, _ in hg.nn.param_paths(tree)] == [
      "head/W", "head/b", "layers/0/W", "layers/0/b", "pair/0", "pair/1/7"]
  assert base.path_str(()) == ""
  assert [p for p, _ in hg.nn.param_paths(jnp.ones(2))] == [""]
