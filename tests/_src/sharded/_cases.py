"""Shared by the case scripts (run in a subprocess on 8 CPU devices, see _devices8)."""

from __future__ import annotations

import json
import sys
import traceback

import jax
import numpy as np


def sharding_str(x) -> str:
  """The sharding of a value as its spec (mesh-independent), or its repr."""
  s = getattr(x, "sharding", None)
  spec = getattr(s, "spec", None)
  if spec is not None:
    return str(tuple(spec) + (None,) * (np.ndim(x) - len(spec)))
  if s is not None and getattr(s, "is_fully_replicated", False):
    return str((None,) * np.ndim(x))
  return repr(s)


def compare(hand, ref) -> dict:
  """The worst relative error over the leaves, and each leaf's sharding, hand vs ref."""
  hl, rl = jax.tree.leaves(hand), jax.tree.leaves(ref)
  if jax.tree.structure(hand) != jax.tree.structure(ref):
    return {"error": f"structure {jax.tree.structure(hand)} != {jax.tree.structure(ref)}"}
  err = 0.0
  for h, r in zip(hl, rl):
    h64, r64 = np.asarray(h, np.float64), np.asarray(r, np.float64)
    scale = max(1.0, float(np.max(np.abs(r64)))) if r64.size else 1.0
    err = max(err, float(np.max(np.abs(h64 - r64))) / scale if r64.size else 0.0)
  return {"err": err,
          "hand_sharding": [sharding_str(h) for h in hl],
          "ref_sharding": [sharding_str(r) for r in rl]}


def main(cases: dict) -> None:
  """Runs every case (or those named on the command line) and prints one JSON line."""
  names = sys.argv[1:] or list(cases)
  out = {}
  for name in names:
    try:
      out[name] = cases[name]()
    except Exception as e:  # reported to the test, which fails on it
      out[name] = {"error": f"{type(e).__name__}: {str(e)[:2000]}",
                   "traceback": traceback.format_exc()[-3000:]}
  print(json.dumps(out))
