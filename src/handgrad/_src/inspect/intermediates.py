"""The gradient of the loss with respect to intermediate values, inside ``jax.jit``.

``jax.grad`` returns gradients of inputs only; the usual workaround is the
perturbation trick (add a zero at the point of interest and differentiate with
respect to it).  The hand engine holds every intermediate cotangent anyway, so
:func:`intermediate_grads` reads them off its backward pass with an observer:

* every value named with ``jax.ad_checkpoint.checkpoint_name(x, "h")`` (a ``name``
  equation in the jaxpr), under its name;
* every layer-level op's output (``hg.dense`` ...), under ``"<scope> <op>"`` like
  ``trace_backward(by="op")`` (``"layers/0 dense"``; ``#2`` for repeats).

The cotangents are ordinary arrays of the same computation (no host callback), so the
function jits and vmaps; :func:`per_example_grad_norms` vmaps it over the examples of a
batch.

Reachability: a value named inside a ``lax.scan`` body (or a ``cond`` branch, or a
``custom_jvp``/``custom_vjp`` function) is per-iteration state that lives only inside
the loop's own trace; its cotangent never exists outside it, and asking for it raises.
Name the scan's outputs (the stacked ``ys``, the final carry) instead: those are
reachable, as is everything outside the loop.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
from jax import lax

from handgrad._src import api, engine
from handgrad._src import jaxpr as jaxpr_util
from handgrad._src.inspect import trace as trace_mod
from handgrad._src.inspect._tree import l2_norm

_OPAQUE = ("scan", "cond", "custom_jvp_call", "custom_vjp_call", "while")


def intermediate_grads(f: Callable, *args: Any, names: Sequence[str] | None = None,
                       layers: bool = True, argnums: int | Sequence[int] | None = None
                       ) -> dict[str, Any]:
  """Cotangents of the named intermediates and layer-op outputs of ``f(*args)``.

  Args:
    f: a function returning a real scalar.
    *args: its arguments.  Every floating-point argument is differentiated unless
      ``argnums`` says which (an intermediate that depends on no differentiated
      argument receives no blame: zeros).
    names: the ``checkpoint_name`` names to return (default: every one found).
    layers: also return every layer-level op's output cotangent.

  Returns:
    ``{"names": {name: ct}, "layers": {"layers/0 dense": ct}}``: each ``ct`` has the
    shape and dtype of the value (a tuple for a multi-output op), summed over every
    use, equal to ``jax.grad`` with respect to a zero added at that point.  A name
    used several times returns the sum over its uses under ``name``, ``name#2``, …
    for each equation.
  """
  if argnums is None:
    argnums = tuple(k for k, a in enumerate(args)
                    if all(jnp.issubdtype(jnp.result_type(x), jnp.inexact)
                           for x in jax.tree.leaves(a)))
    if not argnums:
      raise TypeError("intermediate_grads: no floating-point argument to differentiate")
  traced, _ = api.traced_for_argnums(f, args, {}, argnums, has_aux=False)
  loss = traced.out
  api._check_scalar(loss)
  jaxpr = traced.frame.jaxpr
  hidden = jaxpr_util.names_in_regions(jaxpr, _OPAQUE)
  graph = trace_mod.build_graph(jaxpr, [True] * len(jaxpr.invars), len(jaxpr.constvars))
  wanted = None if names is None else list(names)
  for n in wanted or ():
    if n in hidden:
      raise ValueError(f"intermediate_grads: {n!r} is named inside a {hidden[n]}; its "
                       "cotangent exists only inside that region's own trace (per "
                       "iteration for a scan) and cannot be returned.  Name the region's "
                       "outputs instead")

  # Static keys, in forward order.
  named: dict[tuple, str] = {}
  layer_keys: dict[tuple, str] = {}
  for p in sorted(graph.leaves):
    leaf = graph.leaves[p]
    if leaf.eqn.primitive.name == "name":
      base = leaf.eqn.params["name"]
      if wanted is None or base in wanted:
        key, k = base, 1
        while key in named.values():
          k += 1
          key = f"{base}#{k}"
        named[p] = key
    elif layers and leaf.op is not None:
      base = " ".join(x for x in ("/".join(leaf.scope), leaf.op) if x)
      key, k = base, 1
      while key in layer_keys.values():
        k += 1
        key = f"{base} #{k}"
      layer_keys[p] = key
  missing = [n for n in wanted or () if n not in {v.split("#")[0] for v in named.values()}]
  if missing:
    have = sorted({leaf.eqn.params["name"] for leaf in graph.leaves.values()
                   if leaf.eqn.primitive.name == "name"})
    raise KeyError(f"intermediate_grads: no value named {missing} (named values: "
                   f"{', '.join(have) or 'none'})")

  got: dict[tuple, list] = {}

  def on_eqn(eqn, layer_name, cts_out, cts_in):
    p = engine.current_path()
    leaf = graph.leaves.get(p)
    if leaf is None or leaf.eqn is not eqn:
      return
    if p in named or p in layer_keys:
      got[p] = list(cts_out)

  with engine.observe(engine.Observer(on_eqn)):
    traced.raw_vjp([lax.full((), 1, jnp.result_type(loss))])

  def value(p):
    leaf = graph.leaves[p]
    avals = [v.aval for v in leaf.eqn.outvars]
    cts = got.get(p, [None] * len(avals))
    cts = [engine.zeros(a) if ct is None else ct for ct, a in zip(cts, avals)]
    return cts[0] if len(cts) == 1 else tuple(cts)

  return {"names": {key: value(p) for p, key in named.items()},
          "layers": {key: value(p) for p, key in layer_keys.items()}}


def per_example_grad_norms(f: Callable, *args: Any, batch_argnums: Sequence[int] = (1,),
                           names: Sequence[str] | None = None, layers: bool = True,
                           argnums: int | Sequence[int] | None = None) -> dict[str, Any]:
  """Per-example L2 norms of :func:`intermediate_grads`, by ``jax.vmap`` over examples.

  Each example ``i`` (row ``i`` of every argument in ``batch_argnums``) runs ``f`` as
  a batch of one, so a mean-over-batch loss is the example's own loss.  Returns the
  structure of :func:`intermediate_grads` with a float32 ``[B]`` array per entry.
  """
  batch_argnums = tuple(batch_argnums)

  def one(*examples):
    full = list(args)
    for k, ex in zip(batch_argnums, examples):
      full[k] = jax.tree.map(lambda x: x[None], ex)
    cts = intermediate_grads(f, *full, names=names, layers=layers, argnums=argnums)
    return jax.tree.map(lambda ct: l2_norm(list(ct) if isinstance(ct, tuple) else [ct]),
                        cts, is_leaf=lambda x: isinstance(x, tuple))

  return jax.vmap(one)(*[args[k] for k in batch_argnums])
