"""Collectives: the VJPs of the communication primitives of ``shard_map``, ``jax.pmap``
and ``vmap`` with ``axis_name``.

Every collective here is linear, so its VJP is its transpose, itself a collective over
the same axes (the conventions of ``jax/_src/lax/parallel.py``):

* ``psum`` (``check_vma=False``: ``pmap``, ``shard_map(check_vma=False)``): JAX treats
  ``psum`` as a sum followed by a broadcast to every member, so its transpose is a
  ``psum`` again over the named axes (after broadcasting back along positional axes).
* with ``check_vma=True`` the type system tells the two halves apart: ``pvary`` (an
  invariant value used as a varying one) transposes to ``psum_invariant`` (the sum of a
  varying value, invariant) and back.  ``lax.pmean`` is ``psum`` then a division.
* ``all_gather`` ↔ ``reduce_scatter`` (``lax.psum_scatter``); ``all_gather_invariant``
  transposes to taking this member's slice.
* ``ppermute`` with pairs ``(src, dst)`` transposes to the inverse permutation.
* ``all_to_all`` transposes to the ``all_to_all`` with ``split_axis`` and
  ``concat_axis`` swapped.
* ``axis_index`` has no inputs: the engine never differentiates it (no rule needed).

``pmax``/``pmin`` and ``ragged_all_to_all``: JAX differentiates none of them in reverse
mode, so neither does handgrad; they have no rule (the missing-rule error names them).
``pbroadcast`` has no rule either: XLA:CPU cannot run it (nor its ``vmap``), so a rule
could not be checked against JAX here.
The transposes bind the primitives directly (:func:`handgrad._src.jaxpr.collective`)
with exactly the equation's params: the ``lax`` wrappers would re-read axis names and
insert casts of their own.
"""

from __future__ import annotations

import jax
import numpy as np
from jax import lax

from handgrad._src import jaxpr as hj
from handgrad._src import nested
from handgrad._src.registry import defvjp


def _bind(name, x, **params):
  return hj.collective(name).bind(x, **params)


def _split_axes(axes):
  """``(named, positional)``: ``psum`` over an int axis sums an array dimension."""
  named = tuple(a for a in axes if not isinstance(a, int))
  positional = tuple(a for a in axes if isinstance(a, int))
  return named, positional


# z = Σ_members x (every member gets z):  dx = Σ_members dz  (JAX's psum-then-broadcast)
@defvjp("psum")
def _psum_vjp(g, ans, *xs, axes, axis_index_groups):
  # jax 0.10 to 0.12 bind one psum per array (psum_p has a single result).
  if len(xs) != 1:
    raise NotImplementedError(f"psum with {len(xs)} operands in one equation is not supported")
  x, = xs
  named, positional = _split_axes(axes)
  if positional:
    # Summed array dimensions: broadcast the cotangent back along them.
    keep = tuple(d for d in range(x.ndim) if d not in positional)
    g = lax.broadcast_in_dim(g, x.shape, keep)
  if named:
    g = _bind("psum", g, axes=named, axis_index_groups=axis_index_groups)
  return (g,)


# z = Σ_members x, invariant:  dx = pvary(dz)  (each member's x receives dz)
@defvjp("psum_invariant")
def _psum_invariant_vjp(g, ans, x, *, axes):
  return (_bind("pvary", g, axes=tuple(axes)),)


# z = x used as varying along axes:  dx = Σ_members dz, invariant again
@defvjp("pvary")
def _pvary_vjp(g, ans, x, *, axes):
  if not axes:
    return (g,)
  return (_bind("psum_invariant", g, axes=tuple(axes)),)


# z = concat_members(x) along all_gather_dimension (stacked if not tiled):
#   dx = this member's block of Σ_members dz = reduce_scatter(dz)
@defvjp("all_gather")
def _all_gather_vjp(g, ans, x, *, all_gather_dimension, axis_name, axis_index_groups,
                    axis_size, tiled):
  return (_bind("reduce_scatter", g, scatter_dimension=all_gather_dimension,
                axis_name=axis_name, axis_index_groups=axis_index_groups,
                axis_size=axis_size, tiled=tiled),)


# z = Σ_members x, member k keeping block k:  dx = concat_members(dz) = all_gather(dz)
@defvjp("reduce_scatter")
def _reduce_scatter_vjp(g, ans, x, *, scatter_dimension, axis_name, axis_index_groups,
                        axis_size, tiled):
  return (_bind("all_gather", g, all_gather_dimension=scatter_dimension,
                axis_name=axis_name, axis_index_groups=axis_index_groups,
                axis_size=axis_size, tiled=tiled),)


# z = concat_members(x), invariant (every member holds all of it):
#   dx = block k of dz on member k (the cotangent is the same on every member)
@defvjp("all_gather_invariant")
def _all_gather_invariant_vjp(g, ans, x, *, all_gather_dimension, axis_name, axis_size,
                              tiled):
  size = g.shape[all_gather_dimension] // axis_size
  index = hj.collective("axis_index").bind(axis_name=axis_name)
  start = lax.mul(lax.convert_element_type(index, np.int32), np.int32(size))
  starts = [np.int32(0)] * g.ndim
  starts[all_gather_dimension] = start
  sizes = list(g.shape)
  sizes[all_gather_dimension] = size
  # The slice varies along axis_name: pvary the cotangent first, as x does.
  block = lax.dynamic_slice(_bind("pvary", g, axes=_names(axis_name)), starts, sizes)
  return (block if tiled else lax.squeeze(block, (all_gather_dimension,)),)


def _names(axis_name) -> tuple:
  return tuple(axis_name) if isinstance(axis_name, (tuple, list)) else (axis_name,)


# z on member dst = x on member src, for (src, dst) in perm (0 where no src):
#   dx on member src = dz on member dst: the inverse permutation
@defvjp("ppermute")
def _ppermute_vjp(g, ans, x, *, axis_name, perm):
  inverse = tuple((dst, src) for src, dst in perm)
  return (_bind("ppermute", g, axis_name=axis_name, perm=inverse),)


# z = x split along split_axis, chunks exchanged, concatenated along concat_axis:
#   dx = the same exchange with the two axes swapped
@defvjp("all_to_all")
def _all_to_all_vjp(g, ans, x, *, axis_name, split_axis, concat_axis, axis_index_groups,
                    tiled):
  return (_bind("all_to_all", g, axis_name=axis_name, split_axis=concat_axis,
                concat_axis=split_axis, axis_index_groups=axis_index_groups, tiled=tiled),)


# Collectives JAX does not differentiate in reverse mode: an error naming the
# convention instead of the generic missing-rule message.
def _not_differentiated(eqn) -> str:
  name = eqn.primitive.name
  return (f"reverse-mode differentiation of '{name}' is not supported (nor by jax.grad: "
          f"JAX defines no differentiation rule for it); a max or min over the members "
          f"can be written as all_gather then a max/min reduction, which is differentiable")


for _name in ("pmax", "pmin"):
  nested.register(_name, unsupported=_not_differentiated)
