"""Computation-graph pictures (the seed's ``make_dot``), from the traced program.

``make_graph(fun, *args)`` traces ``fun`` to a jaxpr and draws it at layer level: every
layer-level operation (``hg.dense``, ``hg.softmax_cross_entropy``, ...) and every
``jax.named_scope`` is one node, parameters are coloured leaves named by their path
(``layers/0/W``), and edges carry the shapes that flow along them.  With
``backward=True`` the hand engine also runs the backward pass and each edge is labelled
and coloured by the norm of the cotangent flowing back along it, so the picture shows
where the gradient vanishes (blue) or explodes (red).

``ComputationGraph.save("graph")`` writes ``graph.dot`` and renders ``graph.png`` (or
``.svg``) with Graphviz's ``dot`` when it is installed, else with ``graphviz-pure`` (a
self-contained port of ``dot`` that pip installs with handgrad).  In a notebook a
``ComputationGraph`` shows itself as SVG.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import pathlib
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from handgrad._src import api
from handgrad._src import engine
from handgrad._src import jaxpr as hj
from handgrad._src import layer_ops
from handgrad._src.inspect.health import EXPLODING_NORM  # noqa: F401  (norm_colour's bounds)
from handgrad._src.inspect.health import VANISHING_NORM  # noqa: F401
from handgrad._src.inspect.health import Status
from handgrad._src.inspect.health import norm_status
from handgrad._src.nn.base import path_str
from handgrad._src.render import RenderError  # noqa: F401  (raised by save, _repr_svg_)
from handgrad._src.render import check_format
from handgrad._src.render import render

# Edge colour of a cotangent by the health status of its norm (thresholds in health.py).
_STATUS_COLOURS = {Status.NONFINITE: "#d62728", Status.EXPLODING: "#d62728",
                   Status.VANISHING: "#1f77b4", Status.OK: "#404040"}


@dataclasses.dataclass
class Node:
  id: str
  label: str
  kind: str  # "param", "input", "op", "output"
  members: list[str] = dataclasses.field(default_factory=list)  # primitives inside


@dataclasses.dataclass
class Edge:
  src: str
  dst: str
  shape: str  # "f32[784,256]"
  cotangent_norm: float | None = None


@dataclasses.dataclass
class ComputationGraph:
  nodes: list[Node]
  edges: list[Edge]

  def node(self, label_prefix: str) -> Node:
    for n in self.nodes:
      if n.label.split("\n")[0] == label_prefix:
        return n
    raise KeyError(label_prefix)

  def to_dot(self, *, show_members: bool = False) -> str:
    lines = ["digraph handgrad {", '  rankdir=TB;',
             '  node [fontname="Helvetica", fontsize=10];',
             '  edge [fontname="Helvetica", fontsize=9];']
    styles = {
        "param": 'shape=ellipse, style=filled, fillcolor="#a6d8f0"',
        "input": 'shape=ellipse, style=filled, fillcolor="#e8e8e8"',
        "op": 'shape=box, style="rounded,filled", fillcolor="#fff2cc"',
        "output": 'shape=doubleoctagon, style=filled, fillcolor="#d9ead3"',
    }
    for n in self.nodes:
      label = n.label
      if show_members and n.members:
        label += "\n(" + ", ".join(n.members) + ")"
      lines.append(f'  {n.id} [label="{_escape(label)}", {styles[n.kind]}];')
    for e in self.edges:
      label = e.shape
      attrs = ""
      if e.cotangent_norm is not None:
        label += f"\n‖∂L‖={e.cotangent_norm:.2e}"
        attrs = f', color="{norm_colour(e.cotangent_norm)}", penwidth={_pen(e.cotangent_norm)}'
      lines.append(f'  {e.src} -> {e.dst} [label="{_escape(label)}"{attrs}];')
    lines.append("}")
    return "\n".join(lines) + "\n"

  def save(self, path: str | pathlib.Path, *, format: str = "png",
           show_members: bool = False, renderer: str = "auto") -> list[pathlib.Path]:
    """Writes ``path.dot`` and renders it to ``path.<format>`` (``png`` or ``svg``).

    ``renderer`` is ``"auto"`` (Graphviz's ``dot`` when installed, else
    ``graphviz-pure``), ``"dot"`` or ``"graphviz-pure"``.  Returns the two files
    written.  Raises :class:`RenderError` (one line quoting the renderer) when no
    renderer is found or it fails; the ``.dot`` file is written first either way.
    """
    check_format(format)
    base = pathlib.Path(path)
    base = base.with_suffix("") if base.suffix in (".dot", ".png", ".svg", ".pdf") else base
    base.parent.mkdir(parents=True, exist_ok=True)
    dot_path = base.with_suffix(".dot")
    source = self.to_dot(show_members=show_members)
    dot_path.write_text(source, encoding="utf-8")
    out = base.with_suffix("." + format)
    out.write_bytes(render(source, format, renderer=renderer, name=str(dot_path)))
    return [dot_path, out]

  def _repr_svg_(self) -> str:
    """The picture as SVG, for notebooks (IPython's rich display)."""
    return render(self.to_dot(), "svg").decode("utf-8")


def _escape(s: str) -> str:
  return s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def norm_colour(norm: float) -> str:
  """Red for a non-finite or exploding norm (> ``EXPLODING_NORM``), blue for a vanishing
  one (< ``VANISHING_NORM``), grey between: ``health.norm_status`` decides."""
  return _STATUS_COLOURS[norm_status(norm)]


def _pen(norm: float) -> str:
  if not math.isfinite(norm) or norm <= 0:
    return "1.0"
  return f"{min(4.0, max(0.6, 1.0 + 0.3 * math.log10(norm))):.2f}"


def _shape_str(aval) -> str:
  return f"{aval.dtype.name.replace('float', 'f').replace('int', 'i')}[{','.join(map(str, aval.shape))}]"


def make_graph(fun: Callable, *args: Any, backward: bool = True, collapse: bool = True,
               arg_names: Sequence[str] | None = None) -> ComputationGraph:
  """The layer-level computation graph of ``fun(*args)``.

  ``args[0]`` is taken to be the parameters (coloured leaves named by path); the other
  arguments are inputs.  ``collapse=True`` makes every named scope and layer-level op
  one node (the primitives inside are listed in ``Node.members``); ``collapse=False``
  gives one node per top-level equation.  ``backward=True`` (scalar ``fun`` only) adds
  each edge's cotangent norm from the hand backward pass.
  """
  leaves_with_paths, _ = jax.tree_util.tree_flatten_with_path(args)
  try:
    fun_args = list(inspect.signature(fun).parameters)
  except (TypeError, ValueError):
    fun_args = []
  names = list(arg_names) if arg_names is not None else [
      _path_name(p, fun_args) for p, _ in leaves_with_paths]
  n_params = len(jax.tree.leaves(args[0])) if args else 0
  closed = jax.make_jaxpr(fun)(*args)
  jaxpr = closed.jaxpr

  nodes: list[Node] = []
  producer: dict = {}  # Var -> node id
  for k, v in enumerate(jaxpr.invars):
    nid = f"in{k}"
    kind = "param" if k < n_params else "input"
    nodes.append(Node(nid, f"{names[k]}\n{_shape_str(v.aval)}", kind))
    producer[v] = nid

  # Group top-level equations: one node per layer-level op, and per run of equations
  # that share a named scope (when collapsing).
  group_of_eqn: list[str] = []
  scoped_ids: set[str] = set()
  current_key, current_id = None, None
  steps = hj.top_level_equations(jaxpr)
  for step in steps:
    i, scope = step.index, step.scope
    if collapse and scope:
      key = ("scope", scope)
    elif step.is_layer_op or not collapse:
      key = ("eqn", i)
    else:
      key = ("prim", i)
    if key != current_key or not collapse:
      current_key, current_id = key, f"op{i}"
      scoped = collapse and bool(scope)
      label = scope if scoped else (f"{scope}\n" if scope else "") + step.name
      nodes.append(Node(current_id, label, "op"))
      if scoped:
        scoped_ids.add(current_id)
    group_of_eqn.append(current_id)
    node = nodes[-1]
    node.members.append(step.name)
    for v in step.writes:
      producer[v] = current_id
  # Label a collapsed scope by the layer ops it holds, e.g. "layers/0\ndense, relu".
  for node in nodes:
    if node.id in scoped_ids:
      ops = [m for m in dict.fromkeys(node.members) if m in _layer_names()]
      node.label += "\n" + ", ".join(ops or list(dict.fromkeys(node.members))[:3])

  out_ids = []
  for k, v in enumerate(jaxpr.outvars):
    nid = f"out{k}"
    nodes.append(Node(nid, f"output {k}\n{_shape_str(v.aval)}", "output"))
    out_ids.append(nid)

  edges: list[Edge] = []
  edge_index: dict = {}  # (src id, dst id, Var) -> edge index
  uses: dict[int, list[tuple[int, int]]] = {}  # edge index -> [(eqn index, input index)]
  for step, gid in zip(steps, group_of_eqn):
    i = step.index
    for k, v in step.reads:
      if v not in producer or producer[v] == gid:
        continue
      key = (producer[v], gid, v)
      if key not in edge_index:
        edge_index[key] = len(edges)
        edges.append(Edge(producer[v], gid, _shape_str(v.aval)))
      uses.setdefault(edge_index[key], []).append((i, k))
  for v, nid in zip(jaxpr.outvars, out_ids):
    if not hj.is_literal(v) and v in producer:
      edges.append(Edge(producer[v], nid, _shape_str(v.aval), 1.0 if backward else None))

  if backward:
    contributions = _cotangent_contributions(fun, args)
    for idx, positions in uses.items():
      parts = [contributions[pos] for pos in positions if pos in contributions]
      if parts:
        total = parts[0] if len(parts) == 1 else sum(parts[1:], parts[0])
        edges[idx].cotangent_norm = float(jnp.linalg.norm(jnp.ravel(total)))
  return ComputationGraph(nodes, edges)


def _layer_names() -> set[str]:
  return layer_ops.rule_names()


def _path_name(path, fun_args: Sequence[str]) -> str:
  """``layers/0/W`` for a parameter leaf; the argument's name (``x``) for an input."""
  arg = path[0].idx
  if arg == 0 and len(path) > 1:
    return path_str(path[1:])
  head = fun_args[arg] if arg < len(fun_args) else f"arg{arg}"
  return "/".join([head, path_str(path[1:])]) if len(path) > 1 else head


def _cotangent_contributions(fun: Callable, args: tuple) -> dict:
  """Each top-level equation's cotangent contribution to each of its inputs.

  Keyed by (equation index, input index) in the jaxpr of ``fun``: the blame the hand
  engine sends back along that edge.  ``make_graph`` traces ``fun`` separately, so
  positions, not variables, connect the two traces.
  """
  traced = api.Traced(fun, args, False)
  if len(traced.out_flat) != 1 or np.shape(traced.out_flat[0]) != ():
    raise TypeError("make_graph(backward=True) needs a scalar-output function")
  eqn_index = hj.equation_positions(traced.frame.jaxpr)
  contributions: dict[tuple[int, int], Any] = {}

  def on_eqn(eqn, layer_name, cts_out, cts_in):
    if len(engine.current_path()) != 1 or id(eqn) not in eqn_index:
      return
    for k, ct in enumerate(cts_in):
      if ct is not None:
        contributions[(eqn_index[id(eqn)], k)] = ct

  with engine.observe(engine.Observer(on_eqn)):
    traced.raw_vjp([jnp.ones((), traced.out_avals[0].dtype)])
  return contributions
