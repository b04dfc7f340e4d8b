"""Specs of the collectives and sharding casts.

A collective needs a mesh axis bound, so each spec runs its equation inside a
``shard_map`` over a one-device mesh (axis ``i`` of size 1, where every collective is
an identity up to its shape change): the rule's code path runs under ``jax.jit`` and
its result is compared with ``jax.vjp`` like every other spec.  The same rules on 8
devices, where members really exchange data, are checked by
``tests/_src/sharded/test_sharded_collectives.py``.
"""

from __future__ import annotations

import functools

import jax
import numpy as np
from jax import lax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from handgrad._src.specs import RuleSpec, UNARY


@functools.lru_cache(maxsize=None)
def _mesh(explicit: bool = False) -> Mesh:
  kind = jax.sharding.AxisType.Explicit if explicit else jax.sharding.AxisType.Auto
  return Mesh(np.array(jax.devices()[:1]), ("i",), axis_types=(kind,))


def _smap(body, in_spec, out_spec, check_vma=True):
  """``x ↦ shard_map(body)(sin(x))`` on the one-device mesh (sin: the collective's
  input is an intermediate, so its cotangent flows on)."""
  def fun(x):
    return jax.shard_map(body, mesh=_mesh(), in_specs=in_spec, out_specs=out_spec,
                         check_vma=check_vma)(lax.sin(x))
  return fun


def _reshard(x):
  return jax.sharding.reshard(lax.sin(x), NamedSharding(_mesh(True), P()))


RANKED = (((3,),), ((2, 3),), ((1, 3, 1),))  # a leading axis to shard along
# Gathered / scattered dimension 1 of [2, 4, …].
GATHERED = (((2, 4),), ((3, 4, 2),))


def table() -> list[RuleSpec]:
  S = RuleSpec
  i = "i"
  return [
      S("psum", _smap(lambda x: lax.psum(x, i), P(), P(), check_vma=False), UNARY,
        label="pmap convention", note="check_vma=False: psum transposes to psum"),
      S("psum", _smap(lambda x: lax.psum(x, (i, 0)), P(), P(), check_vma=False), RANKED,
        label="positional axis", note="an int axis sums an array dimension too"),
      S("psum_invariant", _smap(lambda x: lax.psum(x, i), P(i), P()), RANKED,
        note="check_vma=True: a varying value summed to an invariant one"),
      S("pvary", _smap(lambda x: lax.pcast(x, i, to="varying"), P(), P(i)), RANKED,
        note="an invariant value used as a varying one; transposes to psum_invariant"),
      S("all_gather", _smap(lambda x: lax.all_gather(x, i, axis=1, tiled=True), P(i), P(i)),
        GATHERED, label="tiled"),
      S("all_gather", _smap(lambda x: lax.all_gather(x, i, axis=1), P(i), P(i)),
        GATHERED, label="stacked"),
      S("reduce_scatter",
        _smap(lambda x: lax.psum_scatter(x, i, scatter_dimension=1, tiled=True), P(i), P(i)),
        GATHERED, label="tiled"),
      S("reduce_scatter",
        _smap(lambda x: lax.psum_scatter(x, i, scatter_dimension=1), P(i), P(i)),
        (((2, 1, 3),),), label="stacked", note="untiled: the scattered dimension has the axis size"),
      S("all_gather_invariant",
        _smap(lambda x: _all_gather_invariant(x, i, axis=1, tiled=True), P(i), P()),
        GATHERED, note="varying to invariant; transposes to this member's block"),
      S("ppermute", _smap(lambda x: lax.ppermute(x, i, [(0, 0)]), P(i), P(i)), RANKED,
        note="the inverse permutation; on one member the identity"),
      S("all_to_all",
        _smap(lambda x: lax.all_to_all(x, i, 1, 0, tiled=True), P(i), P(i)), GATHERED,
        note="split and concat axes swapped"),
      S("reshard", _reshard, UNARY + (((0, 3),),),
        note="the cotangent goes back to the operand's sharding"),
  ]


def _all_gather_invariant(x, axis_name, *, axis, tiled):
  # Not re-exported by jax.lax: jax 0.10 names it all_gather_invariant, jax 0.12
  # _all_gather_invariant.
  from jax._src.lax import parallel
  fn = getattr(parallel, "all_gather_invariant", None) or getattr(parallel, "_all_gather_invariant")
  return fn(x, axis_name, axis=axis, tiled=tiled)
