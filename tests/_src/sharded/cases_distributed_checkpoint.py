"""Checkpoints of a two-process run (jax.distributed, 4 CPU devices each), through the
Checkpointer API: run as ``python cases_distributed_checkpoint.py PORT PROCESS DIR`` by
test_distributed_train.py, once per process; each prints one JSON line of results.

The state is FSDP-sharded over data=8, so no process holds its large leaves whole.
"""

from __future__ import annotations

import json
import pathlib
import sys
import traceback

import jax
import numpy as np

port, process, directory = int(sys.argv[1]), int(sys.argv[2]), pathlib.Path(sys.argv[3])
jax.config.update("jax_cpu_collectives_implementation", "gloo")
jax.distributed.initialize(f"127.0.0.1:{port}", num_processes=2, process_id=process,
                           initialization_timeout=120)

from handgrad import nn  # noqa: E402
from handgrad import train  # noqa: E402
from handgrad._src.train import mesh as train_mesh  # noqa: E402
from handgrad._src.train import processes  # noqa: E402
from handgrad._src.train.checkpoint import quiet_orbax  # noqa: E402

quiet_orbax()
TX = train.make_optimizer("adam", 1e-3)
DIMS = [784, 64, 10]


def _state(shift: float = 0.0):
  params = jax.tree.map(lambda x: x + shift, nn.mlp.init(DIMS, key=jax.random.key(0)))
  return train.TrainState.create(params, TX, key=0)


def _placed(state, spec="data=8", sharding="fsdp"):
  mesh = train.make_mesh(spec)
  return train_mesh.put(state, train_mesh.state_shardings(state, mesh, sharding))


def _host(tree):
  return [processes.host_value(x) for x in jax.tree.leaves(tree)]


def _equal(a, b) -> bool:
  return all(np.array_equal(x, y) for x, y in zip(_host(a), _host(b)))


def _error(fn) -> str:
  try:
    fn()
  except Exception as e:  # noqa: BLE001 - the test reads the class and message
    return f"{type(e).__name__}: {e}"
  return "no error"


def run() -> dict:
  out = {}
  ckdir = directory / "checkpoints"
  good = _placed(_state())
  out["w0_sharded"] = not good.params["layers"][0]["W"].is_fully_addressable
  with train.Checkpointer(ckdir) as ck:
    ck.save(good, {"note": "good"})
    for step in (1, 2):
      ck.save(_placed(_state(float(step))._replace(step=np.int32(step))))
    out["steps"] = ck.all_steps()
  if processes.is_primary():
    # Step 2: the checksum written no longer matches its arrays (tampered metadata),
    # which every process finds.  Step 1: the pieces process 1 wrote are truncated;
    # a process reading one fails alone, and shares it.
    meta_file = ckdir / "2" / "meta" / "metadata"
    meta = json.loads(meta_file.read_text())
    meta["_integrity"]["sha256"] = "0" * 64
    meta_file.write_text(json.dumps(meta))
    pieces = [p for p in (ckdir / "1" / "state").rglob("*")
              if p.is_file() and p.parent.name == "d" and p.parent.parent.name == "ocdbt.process_1"]
    out["truncated"] = len(pieces)
    for p in pieces:
      p.write_bytes(p.read_bytes()[:p.stat().st_size // 2])
  processes.barrier("damaged")
  warnings = []
  with train.Checkpointer(ckdir) as ck:
    state, meta, step = ck.restore_intact(_placed(_state()), warn=warnings.append)
    out["fallback_step"] = step
    out["fallback_meta"] = meta
    out["fallback_equal"] = _equal(state, good)
    out["fallback_sharded"] = not state.params["layers"][0]["W"].is_fully_addressable
    out["warnings"] = warnings
    out["set_aside"] = sorted(p.name for p in (directory / "checkpoints.damaged").iterdir())
    out["steps_after"] = ck.all_steps()
    # A NaN in a piece that only process 1's devices hold: found by both processes.
    w = np.array(processes.host_value(good.params["layers"][0]["W"]))
    w[-1, 0] = np.nan
    params = {**good.params, "layers": [{**good.params["layers"][0], "W": w},
                                        *good.params["layers"][1:]]}
    ck.save(_placed(good._replace(step=np.int32(5), params=params)))
    out["nonfinite"] = _error(lambda: ck.restore(_placed(_state()), step=5))
    # Onto another mesh shape, still checked against the checksum of step 0.
    other = _placed(_state(), "data=4,model=2", "fsdp")
    state, _ = ck.restore(other, step=0)
    out["other_mesh_equal"] = _equal(state, good)
    out["other_mesh_spec"] = str(state.params["layers"][0]["W"].sharding.spec)
  return out


if __name__ == "__main__":
  try:
    result = run()
  except Exception as e:  # noqa: BLE001 - reported to the test, which fails on it
    result = {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()[-3000:]}
  print(json.dumps(result))
  sys.stdout.flush()
