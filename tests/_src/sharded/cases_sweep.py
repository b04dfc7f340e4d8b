"""The spec table's rules on 8 CPU devices with sharded operands: handgrad.vjp against
jax.vjp in value and in the sharding of every input cotangent, Explicit and Auto meshes.

Each spec's shape cases are scaled up (every dimension d > 1 becomes 8·d, so equal
dimensions stay equal and broadcasting size-1 dimensions stay 1) and each operand is
sharded along dimension ``k`` (the same ``k`` for every operand that has it, for each
``k`` the largest operand has) over a mesh axis of 8 devices.  A configuration that
``jax.vjp`` itself rejects (under Explicit axes some ops refuse some shardings) or whose
function is tied to its spec's own shapes is recorded as skipped with the reason, never
as passed.

Under Explicit axes a cotangent's sharding is part of its type, and the hand pass must
give jax.vjp's exactly.  Under Auto axes the types carry no sharding: where a jitted
program's outputs live is chosen by XLA's sharding propagation over the whole program,
and the hand backward pass (another program than JAX's transposes) may be placed
differently by it.  Such a configuration, with equal values, is recorded as
``auto-layout`` with both placements, apart from passes; a value difference under
either kind is a failure.

``python cases_sweep.py --quick`` runs the core families, each rule's first spec on its
highest-rank shape case; without ``--quick`` every spec and shape case; ``--all`` every spec, printing a
per-rule and per-mesh-kind summary too; rule names on the command line select rules;
``--part=i/k`` runs part ``i`` of ``k`` of every rule (the committed test runs
``--quick --part=i/k`` for each ``i``); ``--progress`` prints each configuration as it
finishes.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import traceback

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

import handgrad as hg
from handgrad._src import jaxpr, specs

N = 8
RTOL, ATOL = 2e-5, 2e-5  # float32: the sharded programs sum in another order

#: The core families: elementwise, reductions, dot_general, broadcast/reshape/transpose.
CORE = (
    "exp", "log", "sin", "tanh", "logistic", "sqrt", "neg", "abs", "integer_pow",
    "add", "sub", "mul", "div", "max", "min", "pow", "select_n", "convert_element_type",
    "reduce_sum", "reduce_max", "reduce_min", "reduce_prod", "cumsum", "cumprod",
    "dot_general", "broadcast_in_dim", "reshape", "transpose", "squeeze", "expand_dims",
    "concatenate", "reshard", "softmax_cross_entropy", "dense", "relu", "log_softmax",
    "softmax", "layer_norm",
)


#: The rules whose programs call jaxlib's batched CPU LAPACK kernels.  On jaxlib 0.10
#: those kernels split the batch over the intra-op thread pool that all 8 forced devices'
#: programs share and block a pool thread until the pieces are done
#: (``jaxpr.LAPACK_BATCHES_BLOCK_THE_THREAD_POOL``): with a matrix axis sharded over an
#: Auto mesh, XLA gathers the matrices so every device solves the whole batch at once,
#: the pool runs out of threads and the program (jax.vjp's as much as handgrad's) never
#: finishes (stacks: every pool thread in ``jax::ParallelBatchMap`` ->
#: ``BlockingCounter::Wait`` or in ``CpuPjRtRawLoadedExecutable::Execute``).  On that
#: release those configurations are recorded as not run; on jaxlib 0.11 and later they run.
LAPACK_RULES = ("cholesky", "eigh", "qr", "svd", "lu", "eig", "triangular_solve",
                "custom_linear_solve", "tridiagonal_solve")


STATUSES = ("pass", "fail", "skip", "jax-wrong", "auto-layout", "float32-conditioning")
#: The statuses of a configuration whose cotangents were compared (not failed or skipped).
COMPARED = ("pass", "jax-wrong", "auto-layout", "float32-conditioning")


#: Configurations whose forward program alone aborts the process inside XLA (a fatal
#: CHECK, so no exception to record): ``lax.pad`` with a negative low edge and interior
#: padding, its operand sharded over an Auto mesh (spmd_partitioner.cc:
#: ``get_first_valid_element_offset_on_dilated_shard(0) == swd->padding_low()``), on
#: jax 0.10.2 and 0.12 alike.
XLA_ABORTS = {("pad[negative edges over interior padding]", AxisType.Auto):
              "not run: XLA's SPMD partitioner aborts on this pad's forward program"}


def _not_run(spec, kind, k, rank) -> str | None:
  if (spec.id, kind) in XLA_ABORTS:
    return XLA_ABORTS[spec.id, kind]
  if (jaxpr.LAPACK_BATCHES_BLOCK_THE_THREAD_POOL and spec.name in LAPACK_RULES
      and kind == AxisType.Auto and k >= rank - 2):
    return ("not run on jaxlib 0.10: its batched LAPACK kernels deadlock the thread pool "
            "that 8 forced CPU devices share (see LAPACK_RULES)")
  return None


def _scale(shape):
  return tuple(N * d if d > 1 else d for d in shape)


def _spec_for(arr, k):
  if arr.ndim > k and arr.shape[k] % N == 0 and arr.shape[k] > 0:
    return P(*([None] * k), "x")
  return P()


def _out_sharding(mesh, out, kind):
  spec = getattr(getattr(out, "sharding", None), "spec", None)
  if kind != AxisType.Explicit or spec is None:
    return NamedSharding(mesh, P())
  return NamedSharding(mesh, spec)


def _leaf_spec(x) -> str:
  s = getattr(x, "sharding", None)
  spec = getattr(s, "spec", None)
  if spec is None:
    return "?"
  parts = tuple(spec) + (None,) * (np.ndim(x) - len(spec))
  return str(parts)


def _run(spec, case, k, kind):
  """One configuration: ``(status, detail)``; status ``pass``, ``fail``, ``skip``,
  ``jax-wrong`` (the hand pass equals jax.vjp on one device, jax.vjp on the mesh
  does not), ``auto-layout`` (Auto axes only: the values agree, and XLA placed a
  cotangent of the hand program elsewhere than jax.vjp's) or ``float32-conditioning``
  (the values differ beyond float32 tolerance, but each pass equals its own one-device
  result, so the mesh changed nothing, and on one device the two agree in float64: an
  ill-conditioned derivative at the scaled shapes, such as eig's eigenvectors, computed
  by two different float32 programs)."""
  reason = _not_run(spec, kind, k, max(len(s) for s in spec.shapes[case]))
  if reason:
    return "skip", reason
  mesh = jax.make_mesh((N,), ("x",), axis_types=(kind,))
  scaled = dataclasses.replace(spec, shapes=tuple(
      tuple(_scale(s) for s in c) for c in spec.shapes))
  try:
    args = scaled.sample("float32", case)
  except Exception as e:  # a sampler tied to its own shapes (a fixed diagonal, ...)
    return "skip", f"the spec's sampler rejects the scaled shapes: {type(e).__name__}"
  if not any(a.ndim > k and a.shape[k] % N == 0 and a.shape[k] > 0 for a in args):
    return "none", ""
  with jax.set_mesh(mesh):
    put = [jax.device_put(a, NamedSharding(mesh, _spec_for(a, k))) for a in args]
    floats = [i for i, a in enumerate(args) if jnp.issubdtype(a.dtype, jnp.inexact)]
    try:
      out_shape = jax.eval_shape(spec.fun, *put)
    except Exception as e:  # the spec's function is tied to its own shapes
      return "skip", f"forward rejects the scaled shapes: {type(e).__name__}"
    rng = np.random.default_rng(case)
    out_leaves, out_tree = jax.tree.flatten(out_shape)
    # Cotangents live where their outputs do (under Explicit axes jax.vjp requires it).
    cts = [jax.device_put(np.asarray(rng.standard_normal(o.shape), o.dtype),
                          _out_sharding(mesh, o, kind))
           if jnp.issubdtype(o.dtype, jnp.inexact) else np.zeros(o.shape, jax.dtypes.float0)
           for o in out_leaves]

    # Each program finishes before the next starts, so that an error (or a hang) is
    # the program's that caused it.
    try:
      ref_out, ref_cts = jax.block_until_ready(_vjp_program(spec.fun, out_tree, jax.vjp)(put, cts))
    except Exception as e:
      return "skip", f"jax.vjp rejects it too: {type(e).__name__}: {str(e)[:120]}"
    try:
      hand_out, hand_cts = jax.block_until_ready(_vjp_program(spec.fun, out_tree, hg.vjp)(put, cts))
    except Exception as e:
      return "fail", (f"{type(e).__name__}: {str(e)[:300]}"
                      + (traceback.format_exc() if "--tb" in sys.argv else ""))
  problems, layout, jax_wrong, ill_conditioned = [], [], [], []
  single = None
  for i in floats:
    h, r = hand_cts[i], ref_cts[i]
    if not _close(h, r):
      if single is None:  # who is right: the same vjp on one device, no mesh
        single = _vjp_program(spec.fun, out_tree, jax.vjp)(
            list(args), [np.asarray(c) for c in cts])[1]
      if _close(h, single[i]):
        jax_wrong.append(f"arg {i}: jax.vjp on the mesh differs from jax.vjp on one device "
                         "(max {:.3g}); the hand pass matches one device".format(
                             np.nanmax(np.abs(np.asarray(r) - np.asarray(single[i])))))
      elif (conditioning := _float32_conditioning(spec.fun, out_tree, args, cts, i, h, r, single)):
        ill_conditioned.append(conditioning)
      else:
        problems.append(f"arg {i}: value differs (max {np.nanmax(np.abs(np.asarray(h) - np.asarray(r))):.3g})")
    if _leaf_spec(h) != _leaf_spec(r):
      (layout if kind == AxisType.Auto else problems).append(
          f"arg {i}: sharding {_leaf_spec(h)} vs jax {_leaf_spec(r)}")
  if problems:
    return "fail", "; ".join(problems + layout)
  if layout:  # Auto axes: the placement is XLA's propagation's, not the program's type
    return "auto-layout", "; ".join(layout + jax_wrong + ill_conditioned)
  if jax_wrong:
    return "jax-wrong", "; ".join(jax_wrong + ill_conditioned)
  return ("float32-conditioning", "; ".join(ill_conditioned)) if ill_conditioned else ("pass", "")


def _float32_conditioning(fun, out_tree, args, cts, i, hand, ref, ref_single) -> str | None:
  """Why the hand and the reference cotangent ``i`` of the mesh may differ in float32
  without either being wrong, or None: the hand pass on one device gives the hand pass
  on the mesh, jax.vjp on one device gives jax.vjp on the mesh (sharding changed
  neither), and on one device, in float64 from the same float32 values, the two agree."""
  cts1 = [np.asarray(c) for c in cts]
  hand_single = _vjp_program(fun, out_tree, hg.vjp)(list(args), cts1)[1][i]
  if not (_close(hand, hand_single) and _close(ref, ref_single[i])):
    return None
  widen = lambda a: np.asarray(a, np.float64) if np.issubdtype(a.dtype, np.floating) else a  # noqa: E731
  args64, cts64 = [widen(np.asarray(a)) for a in args], [widen(c) for c in cts1]
  with jax.enable_x64(True):
    h64 = _vjp_program(fun, out_tree, hg.vjp)(args64, cts64)[1][i]
    r64 = _vjp_program(fun, out_tree, jax.vjp)(args64, cts64)[1][i]
    scale = max(1.0, float(np.max(np.abs(np.asarray(r64)))))
    err64 = float(np.max(np.abs(np.asarray(h64) - np.asarray(r64)))) / scale
  if err64 > 1e-9:
    return None
  return (f"arg {i}: float32 values differ by {np.nanmax(np.abs(np.asarray(hand) - np.asarray(ref))):.3g} "
          f"(largest entry {np.nanmax(np.abs(np.asarray(ref))):.3g}); each pass equals its one-device "
          f"result; in float64 on one device they agree to {err64:.2g} (relative)")


def _vjp_program(fun, out_tree, vjp_of):
  """``jit((xs, cts) -> (fun(*xs), the input cotangents))`` by ``vjp_of`` (jax.vjp or
  handgrad.vjp); ``cts`` are the output leaves' cotangents, as arguments of the jitted
  program (closed-over arrays would become constants without their sharding)."""
  def program(xs, cts):
    out, vjp = vjp_of(fun, *xs)
    return out, vjp(jax.tree.unflatten(out_tree, cts))
  return jax.jit(program)


def _close(h, r) -> bool:
  return np.allclose(np.asarray(h), np.asarray(r), rtol=RTOL, atol=ATOL, equal_nan=True)


def _largest_case(spec) -> int:
  ranks = [max((len(s) for s in shapes), default=0) for shapes in spec.shapes]
  return ranks.index(max(ranks))


def _extra_specs() -> list:
  """Shape-generic functions for rules whose table specs fix their output shapes
  (``broadcast_in_dim``'s target shape, ``expand_dims``' result, ``split``'s sizes)."""
  from jax import lax
  S = specs.RuleSpec
  return [
      S("broadcast_in_dim", lambda x: lax.broadcast_in_dim(
          lax.sin(x), (4,) + x.shape, tuple(range(1, x.ndim + 1))),
        (((2, 3),), ((1, 3),)), label="sharded: new leading axis"),
      S("broadcast_in_dim", lambda x: lax.broadcast_in_dim(
          lax.sin(x), (x.shape[0], 4, x.shape[1]), (0, 2)),
        (((2, 3),),), label="sharded: new middle axis"),
      S("broadcast_in_dim", lambda x: lax.broadcast_in_dim(
          lax.sin(x), (x.shape[0], 5), (0, 1)),
        (((2, 1),),), label="sharded: size-1 axis grows"),
      S("expand_dims", lambda x: lax.expand_dims(lax.sin(x), (1,)),
        (((2, 3),),), label="sharded"),
      S("split", lambda x: lax.split(lax.sin(x), (x.shape[1] // 4, 3 * x.shape[1] // 4), axis=1),
        (((2, 4),),), label="sharded"),
      # The table's sharding casts name one device or a one-device mesh; on the
      # mesh they go to a replicated or a dimension-0 sharding of the current mesh.
      S("sharding_constraint", lambda x: lax.with_sharding_constraint(
          lax.sin(x), _on_mesh(x, False)), (((2, 3),), ((2, 1, 3),)), label="sharded: replicated"),
      S("sharding_constraint", lambda x: lax.with_sharding_constraint(
          lax.sin(x), _on_mesh(x, True)), (((2, 3),), ((2, 1, 3),)), label="sharded: dim 0"),
      S("reshard", lambda x: jax.sharding.reshard(lax.sin(x), _on_mesh(x, False)),
        (((2, 3),), ((2, 1, 3),)), label="sharded: replicated"),
      S("reshard", lambda x: jax.sharding.reshard(lax.sin(x), _on_mesh(x, True)),
        (((2, 3),), ((2, 1, 3),)), label="sharded: dim 0"),
      S("device_put", lambda x: jax.device_put(lax.sin(x), _on_mesh(x, False)),
        (((2, 3),), ((2, 1, 3),)), label="sharded: replicated"),
      S("device_put", lambda x: jax.device_put(lax.sin(x), _on_mesh(x, True)),
        (((2, 3),), ((2, 1, 3),)), label="sharded: dim 0"),
  ]


def _on_mesh(x, dim0: bool):
  """A sharding of the current mesh: replicated, or dimension 0 along ``x``."""
  mesh = jax.sharding.get_abstract_mesh()
  return NamedSharding(mesh, P("x") if dim0 else P())


def _collectives() -> set[str]:
  """The collectives' rules: their specs bind a mesh axis of a one-device mesh (in a
  shard_map), which an 8-device mesh rejects; test_sharded_collectives.py checks them
  on 8 devices.  ``reshard`` is not one of them (it has specs on the mesh here)."""
  from handgrad._src.spec_tables import collectives
  return {s.name for s in collectives.table()} - {"reshard"}


def rule_names() -> list[str]:
  """The rules the sweep differentiates: those with a float32 spec that has a gradient,
  the collectives apart."""
  return sorted({s.name for s in specs.all_specs() + _extra_specs()
                 if "float32" in s.dtypes and not s.no_gradient} - _collectives())


def part(i: int, k: int) -> list[str]:
  """Part ``i`` of ``k`` of :func:`rule_names` (round-robin, so the parts are alike)."""
  return rule_names()[i::k]


def sweep(names=None, quick=False) -> dict:
  """``{config id: [status, detail]}`` for every spec (of ``names``; with ``quick``,
  each rule's first spec that compares anything), shape case (with ``quick``, only
  the first of the highest rank), sharded dimension and mesh kind."""
  results, seen = {}, set()
  # The shape-generic specs first: with ``quick`` a rule runs specs until one of them
  # compares something (not all skipped).
  for spec in _extra_specs() + specs.all_specs():
    if names is not None and spec.name not in names:
      continue
    if "float32" not in spec.dtypes or spec.no_gradient or (quick and spec.name in seen):
      continue
    for case, shapes in enumerate(spec.shapes):
      if quick and case != _largest_case(spec):
        continue
      rank = max((len(s) for s in shapes), default=0)
      for k in range(rank):
        for kind in (AxisType.Explicit, AxisType.Auto):
          key = f"{spec.id} case{case} dim{k} {kind.name}"
          try:
            status, detail = _run(spec, case, k, kind)
          except Exception as e:
            status, detail = "fail", f"harness: {type(e).__name__}: {str(e)[:200]}"
          if status in COMPARED:
            seen.add(spec.name)
          if status != "none":
            results[key] = [status, detail]
            if "--progress" in sys.argv:
              print(status.upper(), key, detail, file=sys.stderr, flush=True)
  return results


if __name__ == "__main__":
  everything = "--all" in sys.argv
  only = [a for a in sys.argv[1:] if not a.startswith("--")]
  parts = [a.split("=", 1)[1] for a in sys.argv[1:] if a.startswith("--part=")]
  if parts:  # --part=i/k: part i of k of every rule, with the names it covers
    i, k = map(int, parts[0].split("/"))
    names = part(i, k)
    print(json.dumps({"names": names,
                      "results": sweep(set(names), quick="--quick" in sys.argv)}))
    sys.exit(0)
  res = sweep(set(only) if only else None if everything else set(CORE),
              quick="--quick" in sys.argv)
  if everything:
    for kind in ("Explicit", "Auto"):
      rows = [v[0] for key, v in res.items() if key.endswith(" " + kind)]
      print(kind, {s: rows.count(s) for s in STATUSES},
            file=sys.stderr)
    by_rule: dict = {}
    for key, (status, detail) in res.items():
      by_rule.setdefault(key.split(" ")[0], []).append((status, key, detail))
    for rule, rows in sorted(by_rule.items()):
      counts = {s: sum(r[0] == s for r in rows) for s in STATUSES}
      print(rule, counts, file=sys.stderr)
      for status, key, detail in rows:
        if status not in ("pass", "skip"):  # fail or one of the explained differences
          print("  ", status.upper(), key, detail, file=sys.stderr)
  print(json.dumps(res))
