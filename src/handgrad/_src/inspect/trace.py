"""The seed's ``trace_backward``: how much blame reaches each layer, from output to input.

PyTorch gets this from backward hooks on leaf modules, which fire on the host and do
not exist under ``jax.jit``; ``jax.grad`` exposes no intermediate cotangent at all.
The hand engine computes every cotangent anyway, so :func:`trace_backward` attaches an
observer to its backward pass and returns, next to the gradients, the norm of the
cotangent arriving at each layer's output and leaving through its input.  The norms
are ordinary arrays of the same computation: under ``jax.jit`` the observer runs once,
at trace time, and the trace costs a few reductions in the compiled step (no host
callback).

What a *layer* is (``by="layer"``, the default):

* every named scope, cut at ``depth`` levels: ``handgrad.nn`` runs layer ``i`` of an
  MLP under ``jax.named_scope("layers/i")``, a residual block under ``"blocks/i"``;
  any ``jax.named_scope`` in user code works the same way;
* every layer-level operation outside any scope (``handgrad.ops.softmax_cross_entropy``
  applied to the logits, say) on its own.

Primitives outside every scope (``jnp.sum`` of a loss, say) belong to no layer.  With
``by="op"`` every layer-level operation (``hg.dense``, ``hg.relu`` ...) is its own
entry, named by its scope and op (``"layers/2 dense"``), like PyTorch's hooks on leaf
modules.

The two norms of a layer ``S`` (a set of equations; nested ``jit`` and ``checkpoint``
regions are looked into, other nested equations count as one):

* ``grad_out`` is the L2 norm, taken over all of them together, of the total
  cotangent of every value produced inside ``S`` and used outside it (or returned):
  the blame arriving at the layer's output(s);
* ``grad_in`` is the L2 norm of the cotangent that ``S`` sends to the values it reads
  from outside, restricted to values that depend on the data (the non-parameter
  arguments): the blame leaving through the layer's input(s).  For ``dense`` that is
  ``dx``, not ``dW`` or ``db``; for a residual block it includes the skip path.

A value that received no blame counts as zero.  For a chain of layers ``grad_in`` of
one layer is ``grad_out`` of the layer before it, and both equal the norm of
``jax.grad`` with respect to that activation.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
from jax import lax

from handgrad._src import engine
from handgrad._src import jaxpr as hj
from handgrad._src.api import TracedProgram
from handgrad._src.inspect._tree import l2_norm
from handgrad._src.types import Array, PyTree

Path = tuple[int, ...]


# --- a static view of the jaxpr: equations, values and which layer owns them ----------

@dataclasses.dataclass
class Leaf:
  """An equation that the analysis does not look into: a primitive, a layer-level op or
  an opaque nested equation (``custom_jvp``, ``custom_vjp``, ``cond``)."""
  path: Path  # equation indices from the outer jaxpr inwards (engine.current_path())
  eqn: Any
  scope: tuple[str, ...]  # named scopes, outermost first
  op: str | None  # layer-level op name
  ins: list  # value id per invar (None for a literal)
  outs: list  # value id per outvar


@dataclasses.dataclass
class Graph:
  """Values (ids) connecting the leaves; nested jaxprs' variables alias the outer ones."""
  leaves: dict = dataclasses.field(default_factory=dict)  # Path -> Leaf
  data: list = dataclasses.field(default_factory=list)  # value id -> depends on data
  producer: list = dataclasses.field(default_factory=list)  # value id -> Path | None
  consumers: list = dataclasses.field(default_factory=list)  # value id -> [Path]
  outputs: set = dataclasses.field(default_factory=set)  # value ids returned

  def new(self, data: bool, producer: Path | None = None) -> int:
    self.data.append(data)
    self.producer.append(producer)
    self.consumers.append([])
    return len(self.data) - 1


def build_graph(jaxpr, data_in: Sequence[bool], n_consts: int) -> Graph:
  """The leaf graph of ``jaxpr``; ``data_in[i]`` says whether input ``i`` is data."""
  g = Graph()
  consts = [g.new(False) for _ in range(n_consts)]
  ins = [g.new(bool(d)) for d in data_in]
  outs = _walk(g, jaxpr, consts, ins, (), ())
  g.outputs = {o for o in outs if o is not None}
  return g


def _walk(g: Graph, jaxpr, consts: list, ins: list, path: Path,
          scope: tuple[str, ...]) -> list:
  """Gives every value of ``jaxpr`` an id (``None`` for a literal), entering inline
  regions (plain ``jit``, checkpoint) and recording every other equation as a leaf."""

  def eval_eqn(i, eqn, ids):
    sc = scope + hj.scope_names(eqn)
    body = hj.inline_body(eqn)
    if body is not None:
      inner, inner_consts = body
      return _walk(g, inner, [g.new(False) for _ in inner_consts],
                   [g.new(False) if n is None else n for n in ids], path + (i,), sc)
    p = path + (i,)
    data = any(n is not None and g.data[n] for n in ids)
    outs = [g.new(data, p) for _ in eqn.outvars]
    g.leaves[p] = Leaf(p, eqn, sc, hj.layer_op_name(eqn), ids, outs)
    for n in ids:
      if n is not None:
        g.consumers[n].append(p)
    return outs

  return hj.interpret(jaxpr, consts, ins, eval_eqn, literal=lambda v: None)


def group_layers(g: Graph, by: str, depth: int) -> list[tuple[str, tuple[str, ...], list]]:
  """``[(name, ops, leaf paths)]``, one per layer, in forward order."""
  if by not in ("layer", "op"):
    raise ValueError(f"by must be 'layer' or 'op', got {by!r}")
  if depth < 1:
    raise ValueError(f"depth must be at least 1, got {depth}")
  groups: dict[Any, list] = {}
  names: dict[Any, str] = {}
  for p in sorted(g.leaves):
    leaf = g.leaves[p]
    if by == "op" or not leaf.scope:
      if leaf.op is None:
        continue
      key = ("op", p)
      base = " ".join(x for x in ("/".join(leaf.scope), leaf.op) if x)
    else:
      key = ("scope", leaf.scope[:depth])
      base = "/".join(leaf.scope[:depth])
    if key not in groups:
      groups[key] = []
      taken = set(names.values())
      name, k = base, 1
      while name in taken:
        name, k = f"{base} #{k + 1}", k + 1
      names[key] = name
    groups[key].append(p)
  out = []
  for key, paths in groups.items():
    ops = tuple(g.leaves[p].op for p in paths if g.leaves[p].op is not None)
    out.append((names[key], ops, paths))
  return out


# --- the trace ---------------------------------------------------------------------------

@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class BackwardTrace:
  """Per-layer cotangent norms in backward order (output layer first).

  A pytree: ``names`` and ``ops`` are static, ``grad_out``/``grad_in`` (float32
  ``[num_layers]``) and ``loss`` (the function's value) are arrays, so a trace can be
  returned from a jitted step and printed on the host with :meth:`table`.
  """
  names: tuple[str, ...] = dataclasses.field(metadata=dict(static=True))
  ops: tuple[tuple[str, ...], ...] = dataclasses.field(metadata=dict(static=True))
  grad_out: Array
  grad_in: Array
  loss: Array

  def __len__(self) -> int:
    return len(self.names)

  def ratios(self) -> Array:
    """``grad_in / grad_out`` per layer: below 1 the layer shrinks blame, above 1 it
    grows it (NaN where nothing arrived)."""
    return self.grad_in / self.grad_out

  def table(self) -> str:
    """The seed's printout, one line per layer::

        === backward flow (output → input) ===
        0. output [dense]: grad_out=0.500000 → grad_in=0.731004
    """
    lines = ["=== backward flow (output → input) ==="]
    for i, (name, ops) in enumerate(zip(self.names, self.ops)):
      go, gi = float(self.grad_out[i]), float(self.grad_in[i])
      label = name if not ops or (len(ops) == 1 and ops[0] in name.split()) else (
          f"{name} [{', '.join(ops)}]")
      lines.append(f"{i}. {label}: grad_out={go:.6f} → grad_in={gi:.6f}")
    return "\n".join(lines)

  def __str__(self) -> str:
    return self.table()


def trace_backward(loss_fn: Callable[..., Array], params: PyTree, *args: Any,
                   by: str = "layer", depth: int = 1,
                   wrt_inputs: bool = True) -> tuple[PyTree, BackwardTrace]:
  """Gradients of ``loss_fn(params, *args)`` with respect to ``params``, and the trace.

  Runs the hand engine once; works inside ``jax.jit`` (the trace's norms are outputs
  of the same computation as the gradients).

  Args:
    loss_fn: ``loss_fn(params, *args) -> scalar``.
    params: the parameter pytree (differentiated).
    *args: the data (inputs, labels ...).  Values computed from them are what
      ``grad_in`` measures.
    by: ``"layer"`` (named scopes, and layer-level ops outside scopes) or ``"op"``
      (every layer-level op); see the module docstring.
    depth: how many levels of nested scopes make a layer name (``by="layer"``):
      with 1, ``blocks/0`` covers ``blocks/0/linear1`` and ``blocks/0/linear2``.
    wrt_inputs: also differentiate with respect to the floating-point ``args``, so
      that the first layer's ``grad_in`` (the blame reaching the input) is computed;
      with ``False`` it reads 0.  Cost: the data gradient is one more matrix product
      per layer that reads the data (``dx = dy·Wᵀ`` of the first dense layer), which
      a training step never needs.  Inside a jitted SGD step of the seed's MLP
      [784, 256, 128, 10] at batch 128 on CPU (``bench/diagnostics.py``), the step
      with ``trace_backward`` took 1.31–1.34× the plain hand step with
      ``wrt_inputs=True`` (the first layer's input gradient is about 28% of the
      step's floating-point work) and 1.01–1.04× with ``wrt_inputs=False`` (the
      norms only; quiet machine, 2026-12-02).  Use ``False`` in a training loop.

  Returns:
    ``(grads, trace)``: ``grads`` shaped like ``params`` (zeros where no blame
    arrived, as ``jax.grad``), and a :class:`BackwardTrace`.
  """
  n_params = len(jax.tree.leaves(params))

  def fun(params, *args):
    if not wrt_inputs:
      args = jax.tree.map(lax.stop_gradient, args)
    return loss_fn(params, *args)

  traced = TracedProgram(fun, (params, *args), has_aux=False)
  loss = traced.out
  if jnp.shape(loss) != () or not jnp.issubdtype(jnp.result_type(loss), jnp.floating):
    raise TypeError(f"trace_backward needs a real scalar loss, got shape "
                    f"{jnp.shape(loss)} and dtype {jnp.result_type(loss)}")
  data_in = [i >= n_params for i in range(len(traced.in_avals))]
  jaxpr = traced.frame.jaxpr
  graph = build_graph(jaxpr, data_in, len(jaxpr.constvars))

  total: dict[int, Array] = {}  # value id -> total cotangent
  sent: dict[tuple[Path, int], Array] = {}  # (leaf, invar index) -> its contribution

  def on_eqn(eqn, layer_name, cts_out, cts_in):
    leaf = graph.leaves.get(engine.current_path())
    if leaf is None or leaf.eqn is not eqn:
      return  # a nested equation, or one inside an opaque region (cond, custom_jvp)
    for n, ct in zip(leaf.outs, cts_out):
      if ct is not None:
        total[n] = ct
    for k, ct in enumerate(cts_in):
      if ct is not None:
        sent[(leaf.path, k)] = ct

  with engine.observe(engine.Observer(on_eqn)):
    cts = traced.raw_vjp([lax.full((), 1, jnp.result_type(loss))])

  names, ops, outs, ins = [], [], [], []
  layers = group_layers(graph, by, depth)
  # Backward order: the layer whose last equation comes latest goes first.
  layers.sort(key=lambda layer: max(layer[2]), reverse=True)
  for name, layer_ops_, paths in layers:
    members = set(paths)
    out_ids = sorted({n for p in paths for n in graph.leaves[p].outs
                      if n in graph.outputs or any(c not in members
                                                   for c in graph.consumers[n])})
    in_cts: dict[int, list] = {}
    for p in paths:
      for k, n in enumerate(graph.leaves[p].ins):
        if (n is None or not graph.data[n] or graph.producer[n] in members):
          continue
        in_cts.setdefault(n, [])
        if (p, k) in sent:
          in_cts[n].append(sent[(p, k)])
    names.append(name)
    ops.append(layer_ops_)
    outs.append(l2_norm([total.get(n) for n in out_ids]))
    ins.append(l2_norm([sum(v) if v else None for v in in_cts.values()]))

  f32 = jnp.float32
  trace = BackwardTrace(
      names=tuple(names), ops=tuple(ops),
      grad_out=jnp.stack(outs).astype(f32) if outs else jnp.zeros((0,), f32),
      grad_in=jnp.stack(ins).astype(f32) if ins else jnp.zeros((0,), f32),
      loss=loss)
  grads_flat = [engine.zeros(a) if ct is None else ct
                for ct, a in zip(cts[:n_params], traced.in_avals[:n_params])]
  grads = jax.tree.unflatten(jax.tree.structure(params), grads_flat)
  return grads, trace
