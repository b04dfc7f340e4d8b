"""``handgrad check``: every registered rule against ``jax.vjp``, then the seed's example."""

from __future__ import annotations

import argparse
import sys

import jax
import jax.numpy as jnp

DESCRIPTION = ("Check every registered VJP rule against jax.vjp (and float64 finite "
               "differences), then run the seed's example by hand.")


def add_parser(sub) -> None:
  p = sub.add_parser("check", help="check every hand-written VJP rule against jax.vjp",
                     description=DESCRIPTION)
  p.add_argument("--dtype", choices=["float32", "float64", "both"], default="both",
                 help="dtypes to check in (default: both)")
  p.add_argument("--no-fd", action="store_true",
                 help="skip the float64 finite-difference checks")
  p.add_argument("--rules", default=None, metavar="NAMES",
                 help="comma-separated rule names to check (default: every registered rule)")
  p.set_defaults(run=run)


def _seed_example(out) -> bool:
  """The seed's scalar example: z = w·x + b, loss = (relu(z) − 5)² at x=2, w=3, b=1."""
  from handgrad._src.api import grad

  def loss(w, b, x):
    z = w * x + b
    return (jax.nn.relu(z) - 5.0) ** 2

  dw, db, dx = grad(loss, argnums=(0, 1, 2))(3.0, 1.0, 2.0)
  rw, rb, rx = jax.grad(loss, argnums=(0, 1, 2))(3.0, 1.0, 2.0)
  print("\nThe seed's example, by hand: z = w·x + b, loss = (relu(z) − 5)², x=2, w=3, b=1",
        file=out)
  print("  forward: z = 7, relu(z) = 7, loss = 4", file=out)
  print("  backward: dL/drelu = 2·(7 − 5) = 4; relu'(7) = 1; dz/dw = x, dz/db = 1, dz/dx = w",
        file=out)
  ok = True
  for name, hand, ref, expected in (("dL/dw", dw, rw, 8.0), ("dL/db", db, rb, 4.0),
                                    ("dL/dx", dx, rx, 12.0)):
    good = float(hand) == expected == float(ref)
    ok &= good
    print(f"  {name} = {float(hand):g}   (jax.grad: {float(ref):g}, expected {expected:g})"
          f"  {'ok' if good else 'MISMATCH'}", file=out)
  return ok


def run(args: argparse.Namespace, out=None) -> int:
  from handgrad._src import specs

  out = out or sys.stdout
  from handgrad._src.registry import registry

  dtypes = ("float32", "float64") if args.dtype == "both" else (args.dtype,)
  names = None
  if args.rules:
    names = [n.strip() for n in args.rules.split(",") if n.strip()]
    unknown = [n for n in names if n not in registry]
    if unknown:
      raise ValueError(f"--rules: no registered rule named {', '.join(map(repr, unknown))}")
  rows = specs.check_all_rules(dtypes=dtypes, finite_differences=not args.no_fd, names=names)
  by_rule: dict[str, dict[str, object]] = {}
  for name, dtype, report in rows:
    by_rule.setdefault(name, {})[dtype] = report
  cols = list(dtypes) + (["fd (float64)"] if "float64" in dtypes and not args.no_fd else [])
  width = max(len(n) for n in by_rule) + 2
  print(f"{'rule':<{width}}" + "".join(f"{c:>22}" for c in cols) + "  status", file=out)
  failed = []
  for name in sorted(by_rule):
    cells, ok = [], True
    for c in cols:
      r = by_rule[name].get(c)
      if r is None:
        cells.append(f"{'-':>22}")
        continue
      ok &= r.passed
      cells.append(f"{r.max_abs_err:>10.1e} / {r.max_rel_err:>8.1e} ")
    if not ok:
      failed.append(name)
    print(f"{name:<{width}}" + "".join(cells) + ("  ok" if ok else "  FAILED"), file=out)
  print(f"\n{len(by_rule)} rules, largest error as max abs / max rel against "
        f"jax.vjp (and central finite differences in float64); {len(failed)} failed"
        + (f": {', '.join(failed)}" if failed else ""), file=out)
  seed_ok = _seed_example(out)
  return 0 if not failed and seed_ok else 1
