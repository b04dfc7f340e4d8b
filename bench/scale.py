"""Scale-out: data-parallel and FSDP training steps on 8 devices, handgrad vs jax.grad.

For each step, compiled (not run) on 8 forced CPU devices, both engines side by side:
the compiled memory per device (XLA's ``memory_analysis`` of the SPMD program: one
device's arguments, outputs and temporaries), the parameter + optimizer-state bytes one
device holds, and the bytes the collectives move, read from the compiled HLO: for every
``all-reduce``, ``all-gather``, ``reduce-scatter``, ``collective-permute`` and
``all-to-all`` (and their async ``-start`` forms) the sizes of its operands.

* data parallel: batch sharded along ``data``, parameters and Adam state replicated;
  the gradient is all-reduced.
* FSDP: parameters and Adam state sharded along ``data`` (each weight's first
  dimension), gathered for compute; the batch sharded along ``data`` too.

The steps use ``Auto`` mesh axes (XLA partitions the program from the argument
shardings); data parallelism once more with ``Explicit`` axes (sharding in types).  Targets: hand = jax in collective bytes and within 5% in memory; FSDP's
per-device parameter + optimizer memory ≈ 1/8 of data parallel's.  Step time cannot be
measured meaningfully with 8 devices forced onto 2 shared CPU cores, and is not.

    python bench/scale.py [--batch 256] [--dims 512,1024,1024,10]
"""

from __future__ import annotations

import os

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                           + " --xla_force_host_platform_device_count=8").strip()

import argparse  # noqa: E402
import collections  # noqa: E402
import re  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P  # noqa: E402

import handgrad as hg  # noqa: E402
from handgrad import nn, ops  # noqa: E402

DEVICES = 8
COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "collective-permute", "all-to-all")
_DEF = re.compile(r"^\s*(?:ROOT\s+)?%(?P<name>[\w.\-]+)\s*=\s*(?P<type>.*?)\s(?P<op>[a-z][\w\-]*)\((?P<args>.*)$")
_ARRAY = re.compile(r"\b(pred|s8|u8|s16|u16|s32|u32|s64|u64|f16|bf16|f32|f64)\[([\d,]*)\]")
_OPERAND = re.compile(r"%([\w.\-]+)")
_BYTES = {"pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2, "bf16": 2,
          "s32": 4, "u32": 4, "f32": 4, "s64": 8, "u64": 8, "f64": 8}


def _array_bytes(text: str) -> int:
  total = 0
  for dtype, dims in _ARRAY.findall(text):
    total += _BYTES[dtype] * int(np.prod([int(d) for d in dims.split(",") if d] or [1]))
  return total


def collective_bytes(hlo: str) -> dict[str, int]:
  """Bytes of the operands of each kind of collective in an HLO module's text.

  The compiled text names operands (``all-reduce(%dot.5, %fusion)``) without their
  types, so every instruction's result type is read first and each collective's
  operands are looked up by name.
  """
  types, uses = {}, []
  for line in hlo.splitlines():
    m = _DEF.match(line)
    if not m:
      continue
    types[m.group("name")] = m.group("type")
    op = m.group("op").removesuffix("-start")
    if op in COLLECTIVES:
      args = m.group("args").split("),")[0]
      uses.append((op, _OPERAND.findall(args)))
  out: dict[str, int] = collections.Counter()
  for op, operands in uses:
    out[op] += sum(_array_bytes(types.get(o, "")) for o in operands)
  return dict(out)


def loss_fn(params, x, y):
  return ops.softmax_cross_entropy(nn.mlp.apply(params, x), y)


def make_step(grad_fn, optimizer):
  def step(params, opt_state, x, y):
    loss, grads = grad_fn(loss_fn)(params, x, y)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss
  return step


def fsdp_spec(leaf) -> P:
  """Shard a leaf's first dimension along ``data`` when it divides; else replicate."""
  if np.ndim(leaf) >= 1 and np.shape(leaf)[0] % DEVICES == 0:
    return P("data")
  return P()


def per_device_bytes(tree) -> int:
  return sum(leaf.addressable_shards[0].data.nbytes for leaf in jax.tree.leaves(tree))


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--batch", type=int, default=256)
  parser.add_argument("--dims", default="512,1024,1024,10")
  args = parser.parse_args(argv)
  dims = [int(d) for d in args.dims.split(",")]
  optimizer = optax.adam(1e-3)
  params = nn.mlp.init(dims, key=jax.random.key(0))
  x = jax.random.normal(jax.random.key(1), (args.batch, dims[0]))
  y = jax.random.randint(jax.random.key(2), (args.batch,), 0, dims[-1])
  rows = []
  cases = (("data parallel", AxisType.Auto, lambda leaf: P()),
           ("data parallel, Explicit axes", AxisType.Explicit, lambda leaf: P()),
           ("FSDP", AxisType.Auto, fsdp_spec))
  for name, kind, spec_of in cases:
    mesh = jax.make_mesh((DEVICES,), ("data",), axis_types=(kind,))
    with jax.set_mesh(mesh):
      batch = NamedSharding(mesh, P("data"))
      xs, ys = jax.device_put(x, batch), jax.device_put(y, batch)
      shard = lambda tree: jax.tree.map(
          lambda leaf: jax.device_put(leaf, NamedSharding(mesh, spec_of(leaf))), tree)
      p = shard(params)
      s = shard(optimizer.init(params))
      state_bytes = per_device_bytes(p) + per_device_bytes(s)
      shardings = (jax.tree.map(lambda a: a.sharding, p), jax.tree.map(lambda a: a.sharding, s))
      result = {}
      for engine, grad_fn in (("hand", hg.value_and_grad), ("jax", jax.value_and_grad)):
        jitted = jax.jit(make_step(grad_fn, optimizer),
                         out_shardings=(*shardings, NamedSharding(mesh, P())))
        compiled = jitted.lower(p, s, xs, ys).compile()
        mem = compiled.memory_analysis()
        out_params, _, loss = compiled(p, s, xs, ys)
        result[engine] = dict(
            temp=mem.temp_size_in_bytes, args=mem.argument_size_in_bytes,
            out=mem.output_size_in_bytes, coll=collective_bytes(compiled.as_text()),
            params=out_params, loss=float(loss))
      h, j = result["hand"], result["jax"]
      # Gradients compared directly (Adam's normalised update magnifies float32 noise
      # in near-zero gradient entries): relative to each leaf's largest entry.
      gh = jax.jit(hg.grad(loss_fn))(p, xs, ys)
      gj = jax.jit(jax.grad(loss_fn))(p, xs, ys)
      diff = max(float(np.max(np.abs(np.asarray(a) - np.asarray(b))) / np.max(np.abs(np.asarray(b))))
                 for a, b in zip(jax.tree.leaves(gh), jax.tree.leaves(gj)))
      agree = diff <= 1e-5
      kinds = sorted(set(h["coll"]) | set(j["coll"]))
      mib = lambda b: f"{b / 2**20:.2f}"
      rows.append([
          name, mib(state_bytes),
          f"{mib(h['temp'])} / {mib(j['temp'])}",
          f"{mib(h['args'] + h['out'] + h['temp'])} / {mib(j['args'] + j['out'] + j['temp'])}",
          "; ".join(f"{k} {mib(h['coll'].get(k, 0))} / {mib(j['coll'].get(k, 0))}" for k in kinds),
          f"{'yes' if agree else 'NO'} (rel. {diff:.1e})",
      ])
      print(rows[-1], flush=True)
  headers = ["step", "params + Adam state MiB / device",
             "temp MiB / device hand / jax", "total MiB / device hand / jax",
             "collective operand MiB hand / jax", "gradients agree"]
  lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
  lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
  print("\n" + "\n".join(lines))
  print(f"\nMLP {dims}, batch {args.batch}, Adam, {DEVICES} forced CPU devices, "
        f"jax {jax.__version__}; memory from compiled.memory_analysis(), collectives from "
        "compiled.as_text(); step time not measured (8 devices forced on shared CPU cores).")


if __name__ == "__main__":
  main()
