"""Computation-graph pictures: structure, backward norms against jax.grad, rendering."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import handgrad as hg
import handgrad.nn
from handgrad._src.inspect import graph as graph_lib
from handgrad._src import render


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


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_size(data: bytes) -> tuple[int, int]:
  """Width and height from a PNG's IHDR chunk (right after the signature)."""
  assert data[:8] == PNG_SIGNATURE and data[12:16] == b"IHDR"
  return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


@pytest.fixture(scope="module")
def graph():
  loss, params, x, y = mlp_setup()
  return graph_lib.make_graph(loss, params, x, y)


def fake_dot(tmp_path, monkeypatch, script: str):
  """Puts an executable ``dot`` running ``script`` first on PATH."""
  folder = tmp_path / "fakebin"
  folder.mkdir()
  exe = folder / "dot"
  exe.write_text("#!/bin/sh\n" + script + "\n")
  exe.chmod(0o755)
  monkeypatch.setenv("PATH", f"{folder}{os.pathsep}{os.environ.get('PATH', '')}")
  return exe


def test_save_renders_png_and_svg_with_graphviz_pure(tmp_path, graph):
  # Forced even where Graphviz's dot exists: the pip-installed renderer must work alone.
  written = graph.save(tmp_path / "graph", format="png", renderer="graphviz-pure")
  assert written == [tmp_path / "graph.dot", tmp_path / "graph.png"]
  assert written[0].read_text(encoding="utf-8") == graph.to_dot()
  data = written[1].read_bytes()
  assert data[:8] == PNG_SIGNATURE
  width, height = png_size(data)
  assert width > 300 and height > 500  # a picture of 13 nodes, not an empty canvas
  assert len(data) > 20_000
  svg = graph.save(tmp_path / "graph2.svg", format="svg", renderer="graphviz-pure")[1]
  assert svg == tmp_path / "graph2.svg"
  text = svg.read_text(encoding="utf-8")
  assert "<svg" in text and "layers/1" in text and "softmax_cross_entropy" in text
  assert "‖∂L‖" in text  # the backward norms' labels survive rendering


def test_repr_svg_for_notebooks(graph):
  svg = graph._repr_svg_()
  assert isinstance(svg, str) and "<svg" in svg and "layers/0" in svg


def test_auto_prefers_system_dot_and_quotes_its_failure(tmp_path, monkeypatch, graph):
  fake_dot(tmp_path, monkeypatch, 'echo "Warning: something minor" >&2\n'
                                  'echo "Error: <stdin>: fake dot broke" >&2; exit 3')
  assert render.find_renderer()[0] == "dot"
  with pytest.raises(graph_lib.RenderError) as info:
    graph.save(tmp_path / "g", format="png")
  assert str(info.value) == (f"cannot render {tmp_path / 'g.dot'} as png: dot exited with "
                             f"status 3: Error: <stdin>: fake dot broke")
  assert (tmp_path / "g.dot").exists() and not (tmp_path / "g.png").exists()
  # Forcing the pure renderer bypasses the (broken) system dot.
  assert render.find_renderer("graphviz-pure")[0] == "graphviz-pure"


def test_graphviz_pure_error_is_one_line_with_its_message():
  with pytest.raises(render.RenderError, match=r"^cannot render <graph> as png: "
                                               r"graphviz-pure exited with status 1: "
                                               r"Error: .*syntax error") as info:
    render.render("digraph { a -> }", "png", renderer="graphviz-pure")
  assert "\n" not in str(info.value)


def test_no_renderer_and_unsupported_choices(tmp_path, monkeypatch, graph):
  monkeypatch.setattr(render.shutil, "which", lambda name, path=None: None)
  with pytest.raises(render.RenderError, match="^cannot render the graph: neither Graphviz's "
                                               "`dot` nor `graphviz-pure` is installed"):
    graph.save(tmp_path / "g")
  with pytest.raises(render.RenderError, match="`dot` is not installed"):
    render.find_renderer("dot")
  with pytest.raises(ValueError, match="format must be one of png, svg, got 'pdf'"):
    graph.save(tmp_path / "g", format="pdf")
  with pytest.raises(ValueError, match="renderer must be one of auto, dot, graphviz-pure"):
    render.find_renderer("neato")


def test_backward_graph_needs_scalar_output():
  with pytest.raises(TypeError, match="scalar"):
    graph_lib.make_graph(lambda p, x: x @ p, jnp.ones((3, 2)), jnp.ones((1, 3)))


def test_cli_graph_command(tmp_path, capsys):
  from handgrad.cli import main
  args = ["graph", "--layers", "784,32,10", "--batch", "8"]
  assert main(args + ["--out", str(tmp_path / "g")]) == 0
  assert (tmp_path / "g.dot").exists()
  assert (tmp_path / "g.png").read_bytes()[:8] == PNG_SIGNATURE
  assert f"wrote {tmp_path / 'g.png'}" in capsys.readouterr().out
  assert main(args + ["--out", str(tmp_path / "s"), "--format", "svg",
                      "--renderer", "graphviz-pure"]) == 0
  assert "<svg" in (tmp_path / "s.svg").read_text()
  assert main(["graph", "--layers", "784,x", "--out", str(tmp_path / "bad")]) == 2
  assert "--layers" in capsys.readouterr().err
  assert not list(tmp_path.glob("bad*"))
  with pytest.raises(SystemExit) as exit_info:
    main(["graph", "--format", "pdf"])
  assert exit_info.value.code == 2
  assert "invalid choice: 'pdf' (choose from 'png', 'svg')" in capsys.readouterr().err


def test_cli_graph_render_failure_is_one_line_and_nonzero(tmp_path, monkeypatch, capsys):
  from handgrad.cli import main
  fake_dot(tmp_path, monkeypatch, 'echo "Error: fake dot broke" >&2; exit 1')
  code = main(["graph", "--layers", "784,32,10", "--batch", "8", "--no-backward",
               "--out", str(tmp_path / "g"), "--renderer", "dot"])
  assert code == 1
  err = capsys.readouterr().err
  assert err == (f"handgrad graph: error: cannot render {tmp_path / 'g.dot'} as png: dot "
                 f"exited with status 1: Error: fake dot broke\n")
