"""Computation-graph pictures: structure, backward norms against jax.grad, rendering."""

import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import handgrad as hg
import handgrad.nn
from handgrad._src import graph as graph_lib


def mlp_setup(dims=(20, 16, 8, 4), activation="relu"):
  params = hg.nn.mlp.init(list(dims), key=jax.random.key(0), activation=activation)
  x = jax.random.uniform(jax.random.key(1), (6, dims[0]))
  y = jnp.arange(6) % dims[-1]
  loss = lambda params, x, y: hg.ops.softmax_cross_entropy(
      hg.nn.mlp.apply(params, x, activation=activation), y)
  return loss, params, x, y


def test_layer_level_structure_names_and_shapes():
  loss, params, x, y = mlp_setup()
  g = graph_lib.make_graph(loss, params, x, y, backward=False)
  labels = [n.label for n in g.nodes]
  assert labels[:6] == ["layers/0/W\nf32[20,16]", "layers/0/b\nf32[16]", "layers/1/W\nf32[16,8]",
                        "layers/1/b\nf32[8]", "layers/2/W\nf32[8,4]", "layers/2/b\nf32[4]"]
  assert [n.kind for n in g.nodes[:6]] == ["param"] * 6
  ops = [n for n in g.nodes if n.kind == "op"]
  assert [o.label for o in ops] == ["layers/0\ndense, relu", "layers/1\ndense, relu",
                                    "layers/2\ndense", "softmax_cross_entropy"]
  by_id = {n.id: n.label.split("\n")[0] for n in g.nodes}
  chain = [(by_id[e.src], by_id[e.dst], e.shape) for e in g.edges if e.src.startswith("op")]
  assert chain == [("layers/0", "layers/1", "f32[6,16]"), ("layers/1", "layers/2", "f32[6,8]"),
                   ("layers/2", "softmax_cross_entropy", "f32[6,4]"),
                   ("softmax_cross_entropy", "output 0", "f32[]")]
  assert all(e.cotangent_norm is None for e in g.edges)
  dot = g.to_dot()
  assert dot.startswith("digraph handgrad {") and dot.count("->") == len(g.edges)


def test_expanded_graph_has_one_node_per_equation():
  loss, params, x, y = mlp_setup()
  collapsed = graph_lib.make_graph(loss, params, x, y, backward=False)
  expanded = graph_lib.make_graph(loss, params, x, y, backward=False, collapse=False)
  n_eqns = len(jax.make_jaxpr(loss)(params, x, y).jaxpr.eqns)
  assert sum(n.kind == "op" for n in expanded.nodes) == n_eqns
  assert sum(n.kind == "op" for n in collapsed.nodes) < n_eqns


def test_edge_norms_equal_jax_gradients():
  loss, params, x, y = mlp_setup()
  g = graph_lib.make_graph(loss, params, x, y)
  norm_of = {(g.nodes[[n.id for n in g.nodes].index(e.src)].label.split("\n")[0],
              g.nodes[[n.id for n in g.nodes].index(e.dst)].label.split("\n")[0]): e.cotangent_norm
             for e in g.edges}
  grads = jax.grad(loss)(params, x, y)
  for i in range(3):
    for name in ("W", "b"):
      expected = float(jnp.linalg.norm(grads["layers"][i][name]))
      dst = f"layers/{i}"
      assert norm_of[(f"layers/{i}/{name}", dst)] == pytest.approx(expected, rel=1e-5)
  # The blame arriving at the logits: gradient of the loss with respect to them.
  logits = hg.nn.mlp.apply(params, x)
  d_logits = jax.grad(lambda z: hg.ops.softmax_cross_entropy(z, y))(logits)
  assert norm_of[("layers/2", "softmax_cross_entropy")] == pytest.approx(
      float(jnp.linalg.norm(d_logits)), rel=1e-5)
  assert norm_of[("softmax_cross_entropy", "output 0")] == 1.0
  assert norm_of[("y", "softmax_cross_entropy")] is None  # integer labels get no blame


def test_vanishing_edges_are_coloured():
  assert graph_lib.norm_colour(1e-9) == "#1f77b4"
  assert graph_lib.norm_colour(1e3) == "#d62728"
  assert graph_lib.norm_colour(float("nan")) == "#d62728"
  assert graph_lib.norm_colour(0.5) == "#404040"
  loss, params, x, y = mlp_setup(dims=(20,) + (16,) * 12 + (4,), activation="sigmoid")
  g = graph_lib.make_graph(loss, params, x, y)
  first = [e for e in g.edges if e.dst == g.nodes[[n.label.split("\n")[0] for n in g.nodes].index("layers/0")].id
           and e.src.startswith("in0")][0]
  assert first.cotangent_norm < 1e-5  # the seed's vanishing gradient through sigmoid layers


def test_save_renders_with_graphviz_or_explains(tmp_path, monkeypatch, capsys):
  loss, params, x, y = mlp_setup()
  g = graph_lib.make_graph(loss, params, x, y)
  if shutil.which("dot"):
    written = g.save(tmp_path / "graph", format="png")
    assert [p.suffix for p in written] == [".dot", ".png"]
    assert written[1].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    svg = g.save(tmp_path / "graph2", format="svg")[1].read_text()
    assert "layers/1" in svg and "softmax_cross_entropy" in svg
  monkeypatch.setattr(graph_lib.shutil, "which", lambda name: None)
  written = g.save(tmp_path / "nodot")
  assert [p.suffix for p in written] == [".dot"]
  assert "dot -Tpng" in capsys.readouterr().out


def test_backward_graph_needs_scalar_output():
  with pytest.raises(TypeError, match="scalar"):
    graph_lib.make_graph(lambda p, x: x @ p, jnp.ones((3, 2)), jnp.ones((1, 3)))


def test_cli_graph_command(tmp_path, capsys):
  from handgrad.cli import main
  assert main(["graph", "--out", str(tmp_path / "g"), "--layers", "784,32,10", "--batch", "8"]) == 0
  assert (tmp_path / "g.dot").exists()
  assert main(["graph", "--layers", "784,x"]) == 2
  assert "--layers" in capsys.readouterr().err
