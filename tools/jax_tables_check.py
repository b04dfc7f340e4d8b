"""Run the cases of JAX's own autodiff test tables through handgrad and compare with JAX.

The cases are rebuilt from the gradient tests of JAX's ``tests/lax_autodiff_test.py``,
``nn_test.py``, ``lax_numpy_test.py``, ``linalg_test.py``, ``eigh_test.py`` and
``fft_test.py`` (ops, shapes, dtypes, params, and the order JAX checks to).  Each case is
a function of its differentiable arguments; it is run through

* order 1: ``handgrad.vjp`` vs ``jax.vjp`` with a random cotangent;
* order 3 (reduce_window and tile, as in JAX): hand reverse three times;
* order 2 (where JAX checks order >= 2): hand reverse over hand reverse
  (``handgrad.vjp`` of the hand VJP) vs ``jax.vjp`` of JAX's VJP, and forward over hand
  reverse (``jax.jvp`` of the hand VJP) vs ``jax.jvp`` of JAX's VJP;
* order k for scalar functions with ``nest=k``: ``handgrad.grad`` nested k times vs
  ``jax.grad`` nested k times.

and classified as pass / wrong (hand differs from JAX) / error (hand raised) / missing
(no rule) / jaxfail (JAX itself raises: hand must raise too, or it is reported as
``answers-where-jax-raises``).

  python tools/jax_tables_check.py [--table lax] [-k substring] [--sample N] [-v]

The same case builders drive ``tests/_src/rules/test_jax_tables.py``.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import functools
import hashlib
import itertools
import sys
import traceback
from typing import Any, Callable

import numpy as np

import jax
import jax.numpy as jnp
import jax.scipy as jsp
from jax import lax

import handgrad as hg

F32, F64, C64, C128 = np.float32, np.float64, np.complex64, np.complex128
FLOAT = [F32, F64]
COMPLEX = [C64, C128]
INEXACT = FLOAT + COMPLEX


@dataclasses.dataclass
class Case:
  table: str
  name: str
  fn: Callable[..., Any]
  args: tuple
  order: int = 1
  nest: int = 0          # scalar -> scalar: compare k-th derivatives by nested grad
  tol: float | None = None

  @property
  def id(self) -> str:
    return f"{self.table}:{self.name}"


# ---------------------------------------------------------------- random inputs

def _rng(name: str) -> np.random.Generator:
  return np.random.default_rng(int(hashlib.md5(name.encode()).hexdigest()[:8], 16))


def _cast(x, dtype):
  return np.asarray(x).astype(dtype)


def rand(r, shape, dtype, kind="default"):
  """Inputs in the domains of JAX's jtu.rand_* factories (same names)."""
  def real(shape):
    if kind == "default":
      return r.standard_normal(shape) * 2
    if kind == "small":
      return r.standard_normal(shape) * 0.3
    if kind == "positive":
      return r.uniform(0.3, 3.0, shape)
    if kind == "not_small":
      return r.uniform(1.0, 3.0, shape) * r.choice([-1, 1], shape)
    if kind == "unit":  # inside (-0.9, 0.9)
      return r.uniform(-0.9, 0.9, shape)
    if kind == "tanlike":
      return r.uniform(-1.3, 1.3, shape)
    if kind == "round":
      return r.uniform(0.1, 0.4, shape)
    if kind == "unique":
      n = int(np.prod(shape))
      return (r.permutation(n).reshape(shape) - n / 2).astype(float)
    raise ValueError(kind)
  x = real(shape)
  if np.issubdtype(dtype, np.complexfloating):
    x = x + 1j * real(shape)
  return _cast(x, dtype)


def _dn(d) -> str:
  return np.dtype(d).name


# ---------------------------------------------------------------- lax_autodiff_test

def lax_cases():
  cases = []
  compat = [[(3,)], [(), (3, 4), (3, 1), (1, 4)], [(2, 3, 4), (2, 1, 4)]]
  ops = [
      ("neg", lax.neg, 1, 2, "default", INEXACT),
      ("floor", lax.floor, 1, 2, "round", FLOAT),
      ("ceil", lax.ceil, 1, 2, "round", FLOAT),
      ("round", lax.round, 1, 2, "round", FLOAT),
      ("exp", lax.exp, 1, 2, "small", INEXACT),
      ("exp2", lax.exp2, 1, 2, "small", INEXACT),
      ("expm1", lax.expm1, 1, 2, "default", INEXACT),
      ("log", lax.log, 1, 2, "positive", INEXACT),
      ("log1p", lax.log1p, 1, 2, "positive", INEXACT),
      ("sinh", lax.sinh, 1, 2, "default", FLOAT + [C64]),
      ("cosh", lax.cosh, 1, 2, "default", INEXACT),
      ("tanh", lax.tanh, 1, 2, "default", INEXACT),
      ("sin", lax.sin, 1, 2, "default", INEXACT),
      ("cos", lax.cos, 1, 2, "default", INEXACT),
      ("tan", lax.tan, 1, 2, "tanlike", INEXACT),
      ("asin", lax.asin, 1, 2, "unit", FLOAT),
      ("acos", lax.acos, 1, 2, "unit", FLOAT),
      ("atan", lax.atan, 1, 2, "default", FLOAT),
      ("atan2", lax.atan2, 2, 2, "default", FLOAT),
      ("erf", lax.erf, 1, 2, "small", FLOAT),
      ("erfc", lax.erfc, 1, 2, "small", FLOAT),
      ("erf_inv", lax.erf_inv, 1, 2, "small", FLOAT),
      ("lgamma", lax.lgamma, 1, 2, "positive", FLOAT),
      ("digamma", lax.digamma, 1, 1, "positive", FLOAT),
      ("bessel_i0e", lax.bessel_i0e, 1, 2, "default", FLOAT),
      ("bessel_i1e", lax.bessel_i1e, 1, 2, "default", FLOAT),
      ("real", lax.real, 1, 2, "default", COMPLEX),
      ("imag", lax.imag, 1, 2, "default", COMPLEX),
      ("complex", lax.complex, 2, 2, "default", FLOAT),
      ("conj", lax.conj, 1, 2, "default", INEXACT),
      ("abs", lax.abs, 1, 2, "positive", INEXACT),
      ("pow", lax.pow, 2, 2, "positive", INEXACT),
      ("sqrt", lax.sqrt, 1, 2, "positive", FLOAT),
      ("sqrt_c", lax.sqrt, 1, 2, "default", COMPLEX),
      ("rsqrt", lax.rsqrt, 1, 2, "positive", FLOAT),
      ("rsqrt_c", lax.rsqrt, 1, 2, "default", COMPLEX),
      ("cbrt", lax.cbrt, 1, 2, "not_small", FLOAT),
      ("logistic", lax.logistic, 1, 2, "default", INEXACT),
      ("add", lax.add, 2, 2, "default", INEXACT),
      ("sub", lax.sub, 2, 2, "default", INEXACT),
      ("mul", lax.mul, 2, 2, "default", INEXACT),
      ("div", lax.div, 2, 1, "not_small", INEXACT),
      ("max", lax.max, 2, 2, "default", FLOAT),
      ("min", lax.min, 2, 2, "default", FLOAT),
      ("square", lax.square, 1, 2, "default", INEXACT),
      ("integer_pow3", lambda x: lax.integer_pow(x, 3), 1, 2, "default", INEXACT),
      ("integer_pow-2", lambda x: lax.integer_pow(x, -2), 1, 2, "not_small", INEXACT),
      ("sign", lax.sign, 1, 2, "not_small", INEXACT),
      ("rem", lax.rem, 2, 2, "not_small", FLOAT),
      ("stop_gradient_mul", lambda x: lax.stop_gradient(x) * x, 1, 2, "default", FLOAT),
  ]
  for name, op, nargs, order, kind, dtypes in ops:
    for group in compat:
      for shapes in itertools.combinations_with_replacement(group, nargs):
        for dt in dtypes:
          nm = f"{name}/{shapes}/{_dn(dt)}"
          r = _rng(nm)
          args = tuple(rand(r, s, dt, kind) for s in shapes)
          cases.append(Case("lax", nm, op, args, order))
  # mul with an out dtype (preferred element type)
  for dt, odt in itertools.product(FLOAT, FLOAT):
    if not hasattr(lax, "mul") or "out_dtype" not in lax.mul.__code__.co_varnames:
      break
    nm = f"mul_out_dtype/{_dn(dt)}->{_dn(odt)}"
    r = _rng(nm)
    cases.append(Case("lax", nm, functools.partial(lax.mul, out_dtype=odt),
                      (rand(r, (3, 4), dt), rand(r, (3, 4), dt)), 2))
  # special values
  for name, op, vals in [
      ("sinh", lax.sinh, [0.]), ("cosh", lax.cosh, [0.]), ("tanh", lax.tanh, [0., 1000.]),
      ("sin", lax.sin, [0., np.pi, np.pi / 2, np.pi / 4]),
      ("cos", lax.cos, [0., np.pi, np.pi / 2, np.pi / 4]),
      ("tan", lax.tan, [0.]), ("asin", lax.asin, [0.]), ("acos", lax.acos, [0.]),
      ("atan", lax.atan, [0., 1000.]), ("erf", lax.erf, [0., 10.]),
      ("erfc", lax.erfc, [0., 10.]), ("abs", lax.abs, [0.]), ("sqrt", lax.sqrt, [0.]),
      ("max0", lambda x: lax.max(x, 0.), [0.]), ("sign", lax.sign, [0.]),
  ]:
    for v in vals:
      for dt in FLOAT:
        cases.append(Case("lax", f"special/{name}/{v}/{_dn(dt)}", op,
                          (np.asarray(v, dt),), 2, nest=2))
  cases.append(Case("lax", "special/abs_c0", lax.abs, (np.asarray(0j, C128),), 1))
  # convert_element_type
  for f, t in itertools.product(INEXACT, INEXACT):
    nm = f"convert/{_dn(f)}->{_dn(t)}"
    cases.append(Case("lax", nm, lambda x, t=t: lax.convert_element_type(x, t),
                      (rand(_rng(nm), (2, 3), f),), 2))
  # clamp
  for shape, dt in itertools.product([(), (2, 3)], FLOAT):
    nm = f"clamp/{shape}/{_dn(dt)}"
    x = rand(_rng(nm), shape, dt)
    lo, hi = x - dt(10), x + dt(10)
    cases.append(Case("lax", nm + "/x", lambda x, lo=lo, hi=hi: lax.clamp(lo, x, hi), (x,), 2))
    cases.append(Case("lax", nm + "/all", lax.clamp, (lo, x, hi), 2))
    cases.append(Case("lax", nm + "/lo_active", lax.clamp, (x, lo, hi), 2))
    cases.append(Case("lax", nm + "/hi_active", lax.clamp, (lo, hi, x), 2))
    cases.append(Case("lax", nm + "/ties", lax.clamp, (x, x, x + 1), 2))
  # concatenate / split
  for base in [(4,), (3, 4), (2, 3, 4)]:
    for dim in range(len(base)):
      for dt in FLOAT:
        nm = f"concatenate/{base}/{dim}/{_dn(dt)}"
        r = _rng(nm)
        shapes = [base[:dim] + (s,) + base[dim + 1:] for s in (3, 1, 4)]
        cases.append(Case("lax", nm, lambda *a, dim=dim: lax.concatenate(a, dim),
                          tuple(rand(r, s, dt) for s in shapes), 2))
        if hasattr(lax, "split"):
          nm = f"split/{base}/{dim}/{_dn(dt)}"
          sizes = (2, 0, 3)
          shape = list(base); shape[dim] = sum(sizes)
          cases.append(Case("lax", nm, lambda x, dim=dim: lax.split(x, sizes, dim),
                            (rand(_rng(nm), tuple(shape), dt),), 2))
  # conv (lax.conv, conv_with_general_padding, conv_general_dilated)
  for b, i, j in itertools.product([2, 3], repeat=3):
    for strides in [(1, 1), (1, 2), (2, 1)]:
      for padding in ["VALID", "SAME"]:
        dt = F64 if (b + i + j) % 2 else F32
        nm = f"conv/{b}{i}{j}/{strides}/{padding}/{_dn(dt)}"
        r = _rng(nm)
        cases.append(Case("lax", nm, functools.partial(
            lax.conv, window_strides=strides, padding=padding,
            precision=lax.Precision.HIGHEST),
            (rand(r, (b, i, 3, 4), dt, "small"), rand(r, (j, i, 1, 2), dt, "small")), 2))
  for (lhs_shape, rhs_shape, all_strides, all_pads, lhs_dils, rhs_dils) in [
      ((2, 3, 3, 4), (3, 3, 1, 2), [(1, 1), (1, 2), (2, 1)],
       [((0, 0), (0, 0)), ((-1, 0), (0, -1)), ((1, 0), (0, 1))], [(1, 1), (2, 1)], [(1, 1)]),
      ((4, 2, 1), (3, 2, 1), [(1,)], [((1, 1),), ((0, 0),)], [(1,), (2,)], [(1,), (2,)])]:
    for strides, pad, ld, rd in itertools.product(all_strides, all_pads, lhs_dils, rhs_dils):
      for dt in FLOAT:
        nm = f"conv_general_padding/{lhs_shape}/{strides}/{pad}/{ld}/{rd}/{_dn(dt)}"
        r = _rng(nm)
        cases.append(Case("lax", nm, functools.partial(
            lax.conv_with_general_padding, window_strides=strides, padding=pad,
            lhs_dilation=ld, rhs_dilation=rd, precision=lax.Precision.HIGHEST),
            (rand(r, lhs_shape, dt, "small"), rand(r, rhs_shape, dt, "small")), 2))
  dnums_perms = [(("NCHW", "OIHW", "NCHW"), ([0, 1, 2, 3], [0, 1, 2, 3])),
                 (("NHWC", "HWIO", "NHWC"), ([0, 2, 3, 1], [2, 3, 1, 0])),
                 (("NHWC", "OIHW", "NCHW"), ([0, 2, 3, 1], [0, 1, 2, 3]))]
  k = 0
  for bgc, fgc in [(1, 1), (2, 1), (1, 2)]:
    for b, i, j in itertools.product([1, 2], repeat=3):
      for lhs_shape in [(b * bgc, i * fgc, 6, 7), (b * bgc, i * fgc, 0, 4)]:
        rhs_shape = (j * bgc * fgc, i, 1, 2)
        for strides, rd, ld in itertools.product([(1, 1), (1, 2), (2, 1)],
                                                 [(1, 1), (2, 2)], [(1, 1), (2, 1)]):
          pads = [((0, 0), (0, 0)), ((1, 0), (0, 1))] + (
              [((0, -1), (0, 0))] if lhs_shape[2] != 0 else [])
          for pad in pads:
            for dn, (lp, rp) in dnums_perms:
              k += 1
              if k % 13:   # a deterministic thirteenth of the product
                continue
              for dt in (FLOAT[(k // 13) % 2], COMPLEX[(k // 26) % 2]):
                nm = (f"conv_general_dilated/{bgc},{fgc}/{lhs_shape}/{rhs_shape}/{strides}/"
                      f"{pad}/{ld}/{rd}/{dn[0]}{dn[1]}{dn[2]}/{_dn(dt)}")
                r = _rng(nm)
                lhs = rand(r, tuple(np.take(lhs_shape, lp)), dt)
                rhs = rand(r, tuple(np.take(rhs_shape, rp)), dt)
                cases.append(Case("lax", nm, functools.partial(
                    lax.conv_general_dilated, window_strides=strides, padding=pad,
                    lhs_dilation=ld, rhs_dilation=rd, dimension_numbers=dn,
                    feature_group_count=fgc, batch_group_count=bgc,
                    precision=lax.Precision.HIGHEST), (lhs, rhs), 2))
  # conv with preferred_element_type, 1-D NLC
  for dt in FLOAT:
    nm = f"conv_preferred/{_dn(dt)}"
    r = _rng(nm)
    cases.append(Case("lax", nm, lambda x, w: lax.conv_general_dilated(
        x, w, (1,), "VALID", rhs_dilation=(1,), dimension_numbers=("NLC", "LIO", "NLC"),
        preferred_element_type=F64), (rand(r, (1, 8, 4), dt), rand(r, (3, 4, 8), dt)), 2))
  cases.append(Case("lax", "conv_preferred/bf16->f32", lambda x, w: lax.conv_general_dilated(
      x, w, (1,), "VALID", dimension_numbers=("NLC", "LIO", "NLC"),
      preferred_element_type=F32).sum(),
      (jnp.ones((1, 8, 4), jnp.bfloat16), jnp.ones((3, 4, 8), jnp.bfloat16)), 1))
  cases.append(Case("lax", "conv_transpose/2d", lambda x, w: lax.conv_transpose(
      x, w, (2, 2), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")),
      (rand(_rng("ct"), (2, 5, 5, 3), F64), rand(_rng("ct2"), (3, 3, 3, 4), F64)), 2))
  # dot, dot_general
  for ls, rs in itertools.product([(2,), (3, 2)], [(2,), (2, 4)]):
    for dt in FLOAT:
      nm = f"dot/{ls}/{rs}/{_dn(dt)}"
      r = _rng(nm)
      cases.append(Case("lax", nm, functools.partial(lax.dot, precision=lax.Precision.HIGHEST),
                        (rand(r, ls, dt), rand(r, rs, dt)), 2))
  for ls, rs, dn in [((3, 2), (2, 4), (([1], [0]), ([], []))),
                     ((3, 5), (2, 5), (([1], [1]), ([], []))),
                     ((5, 3), (5, 2), (([0], [0]), ([], []))),
                     ((3, 3, 2), (3, 2, 4), (([2], [1]), ([0], [0]))),
                     ((3, 5, 2), (2, 4, 5), (([2], [0]), ([1], [2]))),
                     ((7, 3, 5, 2), (2, 2, 4, 5), (([3], [0]), ([2], [3])))]:
    for dt in INEXACT:
      nm = f"dot_general/{ls}/{rs}/{dn}/{_dn(dt)}"
      r = _rng(nm)
      cases.append(Case("lax", nm, functools.partial(lax.dot_general, dimension_numbers=dn,
                                                     precision=lax.Precision.HIGHEST),
                        (rand(r, ls, dt), rand(r, rs, dt)), 2))
  cases.append(Case("lax", "dot_general/preferred_f16->f32", lambda x: lax.dot_general(
      x, x, (((), ()), ((), ())), preferred_element_type=F32), (np.ones((), np.float16),), 1))
  cases.append(Case("lax", "dot_general/preferred_f32->f64", lambda x, y: lax.dot_general(
      x, y, (((1,), (0,)), ((), ())), preferred_element_type=F64),
      (rand(_rng("dp"), (3, 4), F32), rand(_rng("dp2"), (4, 2), F32)), 2))
  # broadcast, broadcast_in_dim, reshape, pad, rev, transpose, select
  for shape, bs, dt in itertools.product([(), (2, 3)], [(), (2,), (1, 2)], FLOAT):
    nm = f"broadcast/{shape}/{bs}/{_dn(dt)}"
    cases.append(Case("lax", nm, lambda x, bs=bs: lax.broadcast(x, bs),
                      (rand(_rng(nm), shape, dt),), 2))
  for ins, outs, dims in [([2], [2, 2], [0]), ([2], [2, 2], [1]), ([2], [2, 3], [0]),
                          ([], [2, 3], []), ([1, 3], [4, 3], [0, 1])]:
    for dt in FLOAT:
      nm = f"broadcast_in_dim/{ins}/{outs}/{dims}/{_dn(dt)}"
      cases.append(Case("lax", nm, lambda x, o=outs, d=dims: lax.broadcast_in_dim(x, o, d),
                        (rand(_rng(nm), tuple(ins), dt),), 2))
  for a, o, p in [[(3, 4), (12,), None], [(2, 1, 4), (8,), None], [(2, 2, 4), (2, 8), None],
                  [(3, 4), (12,), (0, 1)], [(3, 4), (12,), (1, 0)], [(2, 1, 4), (8,), (0, 2, 1)],
                  [(2, 1, 4), (8,), (2, 0, 1)], [(2, 2, 4), (2, 8), (0, 2, 1)],
                  [(2, 2, 4), (2, 8), (2, 0, 1)]]:
    for dt in FLOAT:
      nm = f"reshape/{a}/{o}/{p}/{_dn(dt)}"
      cases.append(Case("lax", nm, lambda x, o=o, p=p: lax.reshape(x, o, p),
                        (rand(_rng(nm), a, dt),), 2))
  for shape, pads in [((), ()), ((2, 3), ((1, 2, 1), (0, 1, 0))),
                      ((2, 3), ((-1, 0, 0), (-1, 0, 2))), ((4,), ((-2, -1, 1),))]:
    for dt in FLOAT:
      nm = f"pad/{shape}/{pads}/{_dn(dt)}"
      r = _rng(nm)
      x = rand(r, shape, dt, "small")
      cases.append(Case("lax", nm, lambda x, p=pads, dt=dt: lax.pad(x, np.array(0, dt), p),
                        (x,), 2))
      cases.append(Case("lax", nm + "/value", lambda x, v, p=pads: lax.pad(x, v, p),
                        (x, np.array(0.5, dt)), 2))
  for dims, x in [([0], np.array([3., 2., 1.])), ([0, 1], np.arange(6.).reshape(2, 3))]:
    cases.append(Case("lax", f"rev/{dims}", lambda x, d=dims: lax.rev(x, d), (x,), 2))
  for shape, perm in [[(3, 4), (1, 0)], [(3, 4), (0, 1)], [(3, 4, 5), (2, 1, 0)],
                      [(3, 4, 5), (1, 0, 2)]]:
    for dt in FLOAT:
      nm = f"transpose/{shape}/{perm}/{_dn(dt)}"
      cases.append(Case("lax", nm, lambda x, p=perm: lax.transpose(x, p),
                        (rand(_rng(nm), shape, dt),), 2))
  for arg_shape in [(), (3,), (2, 3)]:
    for pred_shape in ([(), arg_shape] if arg_shape else [()]):
      for dt in FLOAT:
        nm = f"select/{pred_shape}/{arg_shape}/{_dn(dt)}"
        r = _rng(nm)
        pred = r.random(pred_shape) > 0.5
        cases.append(Case("lax", nm, lambda a, b, p=pred: lax.select(p, a, b),
                          (rand(r, arg_shape, dt), rand(r, arg_shape, dt)), 2))
  cases.append(Case("lax", "select_n/3", lambda a, b, c: lax.select_n(
      np.array([0, 2, 1, 2], np.int32), a, b, c),
      tuple(rand(_rng(f"sn{i}"), (4,), F64) for i in range(3)), 2))
  # slice, dynamic_slice, dynamic_update_slice
  for shape, st, li, sd in [[(3,), (1,), (2,), None], [(7,), (4,), (7,), None],
                            [(5,), (1,), (5,), (2,)], [(8,), (1,), (6,), (2,)],
                            [(5, 3), (1, 1), (3, 2), None], [(5, 3), (1, 1), (3, 1), None],
                            [(7, 5, 3), (4, 0, 1), (7, 1, 3), None],
                            [(5, 3), (1, 1), (2, 1), (1, 1)], [(5, 3), (1, 1), (5, 3), (2, 1)],
                            [(3, 3, 5), (0, 2, 0), (3, 2, 5), (1, 2, 1)]]:
    for dt in FLOAT:
      nm = f"slice/{shape}/{st}/{li}/{sd}/{_dn(dt)}"
      cases.append(Case("lax", nm, lambda x, a=st, b=li, c=sd: lax.slice(x, a, b, c),
                        (rand(_rng(nm), shape, dt),), 2))
  for shape, st, sz in [[(3,), (1,), (1,)], [(5, 3), (1, 1), (3, 1)],
                        [(7, 5, 3), (4, 1, 0), (2, 0, 1)], [(5, 5), (-8, 0), (1, 5)],
                        [(5, 5), (4, 3), (3, 3)], [(5,), (-1,), (2,)]]:
    for dt in FLOAT:
      nm = f"dynamic_slice/{shape}/{st}/{sz}/{_dn(dt)}"
      cases.append(Case("lax", nm, lambda x, s=st, z=sz: lax.dynamic_slice(x, s, z),
                        (rand(_rng(nm), shape, dt),), 2))
      nm = f"dynamic_update_slice/{shape}/{st}/{sz}/{_dn(dt)}"
      r = _rng(nm)
      x, u = rand(r, shape, dt), rand(r, sz, dt)
      idx = np.array(st)
      cases.append(Case("lax", nm, lambda x, y, i=idx: lax.dynamic_update_slice(x, y, i),
                        (x, u), 2))
  for dt in FLOAT:
    x = rand(_rng("dii"), (5, 5), dt)
    cases.append(Case("lax", f"dynamic_index_in_dim/-8/{_dn(dt)}",
                      lambda x: lax.dynamic_index_in_dim(x, -8, 0), (x,), 2))
    cases.append(Case("lax", f"dynamic_update_index_in_dim/-8/{_dn(dt)}",
                      lambda x, y: lax.dynamic_update_index_in_dim(x, y, -8, 0),
                      (x, rand(_rng("dui"), (1, 5), dt)), 2))
    cases.append(Case("lax", f"dynamic_index_in_dim/traced_oob/{_dn(dt)}",
                      lambda x: jax.jit(lambda x, i: lax.dynamic_index_in_dim(
                          x, i, 0, keepdims=False))(x, 7), (x,), 2))
  # reduce
  red_shapes = [[(), ()], [(3, 4, 5), ()], [(3, 4, 5), (0,)], [(3, 4, 5), (1, 2)],
                [(3, 4, 5), (0, 2)], [(3, 4, 5), (0, 1, 2)], [(3, 1), (1,)], [(3, 0, 5), (1,)]]
  for opname, init, op, dtypes, kind in [("add", 0, lax.add, INEXACT, "default"),
                                         ("max", -np.inf, lax.max, INEXACT, "unique"),
                                         ("min", np.inf, lax.min, INEXACT, "unique"),
                                         ("mul", 1, lax.mul, FLOAT, "default")]:
    for (shape, dims), dt in itertools.product(red_shapes, dtypes):
      if opname in ("max", "min") and not all(d > 0 for d in shape):
        continue
      nm = f"reduce_{opname}/{shape}/{dims}/{_dn(dt)}"
      iv = np.asarray(init, dtype=dt)
      cases.append(Case("lax", nm, lambda x, iv=iv, op=op, d=dims: lax.reduce(x, iv, op, d),
                        (rand(_rng(nm), shape, dt, kind),), 2))
  for shape, dims in red_shapes[1:]:
    for dt in FLOAT:
      nm = f"reduce_pair/{shape}/{dims}/{_dn(dt)}"
      r = _rng(nm)
      ivs = (np.array(0, dt), np.array(1, dt))
      cases.append(Case("lax", nm, lambda a, b, ivs=ivs, d=dims: lax.reduce(
          (a, b), ivs, lambda xs, ys: (xs[0] + ys[0], xs[1] * ys[1]), d),
          (rand(r, shape, dt, "small"), rand(r, shape, dt, "small")), 2))
  # reduce_window
  for opname, init, op, kind in [("add", 0, lax.add, "small"), ("max", -np.inf, lax.max, "unique"),
                                 ("min", np.inf, lax.min, "unique")]:
    prods = itertools.chain(
        itertools.product([(4, 6)], [(2, 1), (1, 2)], [(1, 1), (2, 1), (1, 2)],
                          ["VALID", "SAME", [(0, 3), (1, 2)]], [(1, 1), (2, 3)],
                          [(1, 1)] + ([(1, 2)] if opname == "add" else [])),
        itertools.product([(3, 2, 4, 6)], [(1, 1, 2, 1), (2, 1, 2, 1)],
                          [(1, 2, 2, 1), (1, 1, 1, 1)],
                          ["VALID", "SAME", [(0, 1), (1, 0), (2, 3), (0, 2)]],
                          [(1, 1, 1, 1), (2, 1, 3, 2)],
                          [(1, 1, 1, 1)] + ([(1, 2, 2, 1)] if opname == "add" else [])))
    for n, (shape, dims, strides, padding, bd, wd) in enumerate(prods):
      for dt in FLOAT:
        if len(shape) == 4 and (n + (dt == F64)) % 2:
          continue
        nm = f"reduce_window_{opname}/{shape}/{dims}/{strides}/{padding}/{bd}/{wd}/{_dn(dt)}"
        iv = np.asarray(init, dt)
        cases.append(Case("lax", nm, lambda x, iv=iv, op=op, d=dims, s=strides, p=padding,
                          b=bd, w=wd: lax.reduce_window(x, iv, op, d, s, p, b, w),
                          (rand(_rng(nm), shape, dt, kind),), 3))
  # reduce_window max with ties (max pooling of a constant image)
  for dt in FLOAT:
    cases.append(Case("lax", f"reduce_window_max/ties/{_dn(dt)}", lambda x: lax.reduce_window(
        x, -np.inf, lax.max, (2, 2), (1, 1), "VALID"), (np.ones((3, 4), dt),), 2))
  # cumulative reductions
  for opname in ["cumsum", "cumprod", "cummax", "cummin", "cumlogsumexp"]:
    op = getattr(lax, opname)
    for shape in [(10,), (3, 4, 5)]:
      for axis in range(len(shape)):
        for reverse in [False, True]:
          for dt in FLOAT:
            nm = f"{opname}/{shape}/{axis}/{reverse}/{_dn(dt)}"
            kind = "unique" if opname in ("cummax", "cummin") else "small"
            cases.append(Case("lax", nm, lambda x, op=op, a=axis, rv=reverse: op(
                x, axis=a, reverse=rv), (rand(_rng(nm), shape, dt, kind),), 2))
  # sort, sort_key_val, top_k
  for shape in [(0,), (5,), (5, 7), (4, 9, 3)]:
    for stable in [False, True]:
      for dt in FLOAT:
        nm = f"sort/{shape}/{stable}/{_dn(dt)}"
        cases.append(Case("lax", nm, lambda x, s=stable, a=len(shape) - 1: lax.sort(
            x, dimension=a, is_stable=s), (rand(_rng(nm), shape, dt, "unique"),), 2))
  for shape in [(3,), (5, 3), (4, 9, 3)]:
    for stable in [False, True]:
      nm = f"sort_key_val/{shape}/{stable}"
      r = _rng(nm)
      keys = r.permutation(int(np.prod(shape))).reshape(shape).astype(F32)
      cases.append(Case("lax", nm, lambda k, v, s=stable, a=len(shape) - 1: lax.sort_key_val(
          k, v, a, s), (keys, rand(r, shape, F32)), 2))
  cases.append(Case("lax", "sort/num_keys2", lambda a, b: lax.sort(
      (a, b), num_keys=2), (np.array([1., 1., 0.]), np.array([3., 2., 5.])), 2))
  cases.append(Case("lax", "sort/ties", lambda x: lax.sort(x), (np.array([2., 1., 2., 1.]),), 2))
  for shape in [(4,), (5, 5), (3, 1, 4)]:
    for kk in [1, 3]:
      for axis in [0, -1]:
        nm = f"top_k/{shape}/{kk}/{axis}"
        vals = _rng(nm).permutation(int(np.prod(shape))).reshape(shape).astype(F32)
        try:
          lax.top_k(vals, k=kk, axis=axis)
          f = lambda v, kk=kk, a=axis: lax.top_k(v, k=kk, axis=a)[0]
        except TypeError:
          if axis != -1:
            continue
          f = lambda v, kk=kk: lax.top_k(v, kk)[0]
        if shape[axis] < kk:
          continue
        cases.append(Case("lax", nm, f, (vals,), 2))
  cases.append(Case("lax", "top_k/ties", lambda v: lax.top_k(v, 2)[0],
                    (np.array([1., 3., 3., 2.]),), 2))
  # index_take, gather, scatter
  for shape, idxs, axes in [[(3, 4, 5), (np.array([0, 2, 1]),), (0,)],
                            [(3, 4, 5), (np.array([-1, -2]),), (0,)],
                            [(3, 4, 5), (np.array([0, 2]), np.array([1, 3])), (0, 1)],
                            [(3, 4, 5), (np.array([0, 2]), np.array([1, 3])), (0, 2)]]:
    for dt in FLOAT:
      nm = f"index_take/{[list(i) for i in idxs]}/{axes}/{_dn(dt)}"
      cases.append(Case("lax", nm, lambda x, i=idxs, a=axes: lax.index_take(x, i, a),
                        (rand(_rng(nm), shape, dt),), 2))
  gdn = lax.GatherDimensionNumbers
  for shape, ishape, dnums, ss, mx in [
      ((5,), (2, 1), gdn(offset_dims=(), collapsed_slice_dims=(0,), start_index_map=(0,)), (1,), 5),
      ((10,), (3, 1), gdn(offset_dims=(1,), collapsed_slice_dims=(), start_index_map=(0,)), (2,), 9),
      ((10, 5), (3, 1), gdn(offset_dims=(1,), collapsed_slice_dims=(0,), start_index_map=(0,)),
       (1, 3), 3)]:
    for mode in ["clip", "fill", "promise_in_bounds"]:
      for it in range(3):
        for dt in FLOAT:
          nm = f"gather/{shape}/{ishape}/{ss}/{mode}/{it}/{_dn(dt)}"
          r = _rng(nm)
          if mode == "promise_in_bounds":
            idx = r.integers(0, mx, ishape).astype(np.int32)
          else:
            idx = r.integers(-mx, 2 * mx, ishape).astype(np.int32)
          cases.append(Case("lax", nm, lambda x, i=idx, d=dnums, s=ss, m=mode: lax.gather(
              x, i, dimension_numbers=d, slice_sizes=s, mode=m, fill_value=-1),
              (rand(r, shape, dt),), 2))
  sdn = lax.ScatterDimensionNumbers
  scatter_specs = [
      ((5,), (2, 1), (2,), sdn(update_window_dims=(), inserted_window_dims=(0,),
                               scatter_dims_to_operand_dims=(0,)), 4, 1),
      ((10,), (3, 1), (3, 2), sdn(update_window_dims=(1,), inserted_window_dims=(),
                                  scatter_dims_to_operand_dims=(0,)), 9, 2),
      ((10, 5), (3, 1), (3, 3), sdn(update_window_dims=(1,), inserted_window_dims=(0,),
                                    scatter_dims_to_operand_dims=(0,)), 3, 1)]
  for shape, ishape, ushape, dnums, mx, mult in scatter_specs:
    for dt in FLOAT:
      for mode in ["clip", "fill", "promise_in_bounds"]:
        for it in range(3):
          nm = f"scatter_add/{shape}/{ushape}/{mode}/{it}/{_dn(dt)}"
          r = _rng(nm)
          if mode == "promise_in_bounds":
            idx = r.integers(0, mx, ishape).astype(np.int32)
          else:
            idx = r.integers(-mx, 2 * mx, ishape).astype(np.int32)
          cases.append(Case("lax", nm, lambda x, y, i=idx, d=dnums, m=mode: lax.scatter_add(
              x, i, y, dimension_numbers=d, mode=m), (rand(r, shape, dt), rand(r, ushape, dt)), 2))
      for it in range(2):
        nm = f"scatter/{shape}/{ushape}/{it}/{_dn(dt)}"
        r = _rng(nm)
        mx2 = {4: 4, 9: 4, 3: 9}[mx]
        idx = (r.permutation(mx2)[:ishape[0]].reshape(ishape) * mult).astype(np.int32)
        cases.append(Case("lax", nm, lambda x, y, i=idx, d=dnums: lax.scatter(
            x, i, y, dimension_numbers=d), (rand(r, shape, dt), rand(r, ushape, dt)), 2))
        for kind, op in [("max", lax.scatter_max), ("min", lax.scatter_min),
                         ("mul", lax.scatter_mul)]:
          nm = f"scatter_{kind}/{shape}/{ushape}/{it}/{_dn(dt)}"
          r = _rng(nm)
          idx = r.integers(0, max(shape), ishape).astype(np.int32)
          cases.append(Case("lax", nm, lambda x, y, i=idx, d=dnums, op=op: op(x, i, y, d),
                            (rand(r, shape, dt), rand(r, ushape, dt)), 2))
  n = 5
  cases.append(Case("lax", "scatter/symbolic_zero_update", lambda x: jax.device_put(x).at[
      np.diag_indices(n)].set(np.arange(n, dtype=x.dtype)), (rand(_rng("szu"), (5, 5), F32),), 2))
  cases.append(Case("lax", "scatter_apply/sin", lambda x: x.at[1].apply(jnp.sin),
                    (np.array([1.0, 2.0]),), 1))
  cases.append(Case("lax", "scatter_max/ties", lambda x, y: x.at[np.array([0, 0, 1])].max(y),
                    (np.array([1., 2., 3.]), np.array([1., 1., 2.])), 2))
  cases.append(Case("lax", "segment_max", lambda x: jax.ops.segment_max(
      x, np.array([0, 0, 1, 2]), 3), (np.array([1., 1., 3., 4.]),), 2))
  cases.append(Case("lax", "segment_prod", lambda x: jax.ops.segment_prod(
      x, np.array([0, 0, 1, 2]), 3), (np.array([1., 2., 3., 4.]),), 2))
  # stop_gradient, rem, reciprocal to order 6, tile
  cases.append(Case("lax", "stop_gradient", lambda x: lax.sin(x) * lax.cos(lax.stop_gradient(x)),
                    (np.array(3.14),), 2, nest=2))
  r = np.random.default_rng(0)
  for xs, ys in [((5, 8), (1, 8)), ((1, 8), (5, 8))]:
    x = r.uniform(-9, 9, xs)
    y = r.uniform(0.1, 5, ys) * r.choice([-1, 1], ys)
    cases.append(Case("lax", f"rem/{xs}/{ys}", lax.rem, (x, y), 2))
  cases.append(Case("lax", "reciprocal/order6", lambda x: 1 / x, (np.float32(4.),), 1, nest=6))
  cases.append(Case("lax", "pow/second/4,0", lax.pow, (np.float64(4.), np.float64(0.)), 2))
  cases.append(Case("lax", "pow/0^0", lax.pow, (np.float64(0.), np.float64(0.)), 1))
  cases.append(Case("lax", "pow/int_power_at_zero", lambda x: x ** 0 + x ** 1 + x ** 2,
                    (np.float64(0.),), 1, nest=3))
  cases.append(Case("lax", "pow/jit_int", lambda x: jax.jit(lambda x, n: x ** n)(x, 0),
                    (np.float64(0.),), 1))
  cases.append(Case("lax", "pow/arange_exponent", lambda z: jnp.sum(z ** jnp.arange(0, 2)),
                    (np.float64(3.14),), 1, nest=2))
  cases.append(Case("lax", "pow/shape_mismatch", lambda x: jax.jit(lax.pow)(x, 2),
                    (np.arange(4.),), 2))
  for shape, reps in [[(3,), (2,)], [(2, 3), (1, 2)], [(1, 1, 4), (1, 3, 1)]]:
    for dt in FLOAT:
      nm = f"tile/{shape}/{reps}/{_dn(dt)}"
      if hasattr(lax, "tile"):
        tile = lambda x, r=reps: lax.tile(x, r)
      else:
        tile = lambda x, r=reps: jnp.tile(x, r)
      cases.append(Case("lax", nm, tile, (rand(_rng(nm), shape, dt),), 3))
  cases.append(Case("lax", "reduce_precision", lambda x: lax.reduce_precision(x, 5, 10),
                    (rand(_rng("rp"), (4,), F32),), 2))
  cases.append(Case("lax", "argmax_take", lambda x: x[jnp.argmax(x)] * jnp.argmin(x),
                    (np.array([1., 5., 2.]),), 2))
  cases.append(Case("lax", "copy", lambda x: jnp.array(x, copy=True) * 2, (np.ones(3),), 2))
  cases.append(Case("lax", "iota_mul", lambda x: x * lax.iota(x.dtype, 3), (np.ones(3),), 2))
  cases.append(Case("lax", "expand_squeeze", lambda x: lax.squeeze(
      lax.expand_dims(x, (0, 2)), (0,)), (np.ones((3, 2)),), 2))
  return cases


# ---------------------------------------------------------------- nn_test

def nn_cases():
  import jax.nn as nn
  cases = []
  for name, f, vals, nest in [
      ("softplus", nn.softplus, [1e-8, 0., -np.inf, 3.], 4),
      ("sparse_plus", getattr(nn, "sparse_plus", None), [-2., 0., 0.5, 2.], 2),
      ("squareplus", getattr(nn, "squareplus", None), [1e-8, 0., -np.inf], 4),
      ("mish", getattr(nn, "mish", None), [1e-8, 0., -np.inf], 4),
      ("relu", nn.relu, [1., -1., 0.], 3), ("relu6", nn.relu6, [1., -1., 0., 6.], 3),
      ("elu", nn.elu, [1e4, 0., -1.], 4), ("celu", nn.celu, [0., -1., 2.], 2),
      ("selu", nn.selu, [0., -1., 2.], 2), ("gelu_tanh", functools.partial(nn.gelu, approximate=True),
                                            [0., -1., 2.], 3),
      ("gelu_erf", functools.partial(nn.gelu, approximate=False), [0., -1., 2.], 3),
      ("silu", nn.silu, [0., -1., 2.], 3), ("sigmoid", nn.sigmoid, [0., -3., 2.], 3),
      ("log_sigmoid", nn.log_sigmoid, [0., -3., 2.], 3),
      ("leaky_relu", nn.leaky_relu, [0., -3., 2.], 2),
      ("hard_tanh", nn.hard_tanh, [0., -1., 1., 3.], 2),
      ("hard_sigmoid", nn.hard_sigmoid, [0., -3., 3., 1.], 2),
      ("hard_silu", nn.hard_silu, [0., -3., 3., 1.], 2),
      ("soft_sign", nn.soft_sign, [0., -3., 2.], 2),
      ("identity", getattr(nn, "identity", None), [6.], 2),
      ("log1mexp", getattr(nn, "log1mexp", None), [-1., -1e-3, -10.], 2),
      ("tanh", nn.tanh, [0.5], 3)]:
    if f is None:
      continue
    for v in vals:
      for dt in FLOAT:
        cases.append(Case("nn", f"{name}/{v}/{_dn(dt)}", f, (np.asarray(v, dt),), 1, nest=nest))
  for name, f in [("softmax", nn.softmax), ("log_softmax", nn.log_softmax),
                  ("logsumexp", jax.nn.logsumexp), ("standardize", nn.standardize),
                  ("glu", nn.glu), ("one_hot_ce", lambda x: -jnp.sum(
                      nn.one_hot(np.array([1, 3, 0]), 4) * nn.log_softmax(x), -1)),
                  ("softmax_axis0", functools.partial(nn.softmax, axis=0)),
                  ("logsumexp_b", lambda x: jax.nn.logsumexp(x, axis=-1, b=np.array(
                      [1., 2., 0., 1.]))),
                  ("logsumexp_return_sign", lambda x: jax.nn.logsumexp(
                      x, axis=0, b=np.array([[1.], [-2.], [1.]]), return_sign=True)),
                  ("softmax_where", lambda x: nn.softmax(x, where=np.array(
                      [True, False, True, True]))),
                  ("log_softmax_where", lambda x: nn.log_softmax(x, where=np.array(
                      [True, False, True, True]))),
                  ("standardize_where", lambda x: nn.standardize(x, where=np.array(
                      [True, False, True, True]))),
                  ("logmeanexp", getattr(nn, "logmeanexp", None))]:
    if f is None:
      continue
    for dt in FLOAT:
      nm = f"{name}/{_dn(dt)}"
      cases.append(Case("nn", nm, f, (rand(_rng(nm), (3, 4), dt),), 2))
  cases.append(Case("nn", "softmax_grad_masked", lambda x: nn.softmax(
      x, where=np.array([False, False, False, False])), (np.ones(4),), 1))
  # dot_product_attention
  B, S, T, N, H = 2, 5, 4, 4, 6
  for dt in FLOAT:
    for G in [1, 2, 4]:
      nm = f"dot_product_attention/G{G}/{_dn(dt)}"
      r = _rng(nm)
      q = rand(r, (B, T, N, H), dt, "small")
      k = rand(r, (B, S, N // G, H), dt, "small")
      v = rand(r, (B, S, N // G, H), dt, "small")
      cases.append(Case("nn", nm, lambda q, k, v: nn.dot_product_attention(
          q, k, v, implementation="xla"), (q, k, v), 2))
      cases.append(Case("nn", nm + "/residual", lambda q, k, v: nn.dot_product_attention(
          q, k, v, implementation="xla", return_residual=True), (q, k, v), 1))
    for mode in ["bias", "causal", "padding", "custom", "causal+padding", "custom+padding",
                 "bias+causal", "causal+sliding_window", "sliding_window", "scale"]:
      nm = f"dot_product_attention/{mode}/{_dn(dt)}"
      r = _rng(nm)
      q = rand(r, (B, T, N, H), dt, "small")
      k = rand(r, (B, T, N, H), dt, "small")
      v = rand(r, (B, T, N, H), dt, "small")
      bias = rand(r, (1, N, T, T), dt, "small")
      kw = dict(is_causal="causal" in mode)
      if "padding" in mode:
        kw["query_seq_lengths"] = np.array([T // 2, T], np.int32)
        kw["key_value_seq_lengths"] = np.array([T, T // 2], np.int32)
      if "custom" in mode:
        kw["mask"] = np.tril(np.ones((T, T), bool))[None, None]
      if "sliding_window" in mode:
        kw["local_window_size"] = (2, 1) if kw["is_causal"] else (2, 0)
      if "scale" in mode:
        kw["scale"] = 0.7
      if "bias" in mode:
        cases.append(Case("nn", nm, lambda q, k, v, b, kw=kw: nn.dot_product_attention(
            q, k, v, bias=b, implementation="xla", **kw), (q, k, v, bias), 2))
      else:
        cases.append(Case("nn", nm, lambda q, k, v, kw=kw: nn.dot_product_attention(
            q, k, v, implementation="xla", **kw), (q, k, v), 2))
    nm = f"dot_product_attention/self_bias_grad/{_dn(dt)}"
    r = _rng(nm)
    x = rand(r, (2, 4, 2, 3), dt, "small")
    b = rand(r, (2, 2, 4, 4), dt, "small")
    cases.append(Case("nn", nm, lambda x, b: nn.dot_product_attention(
        x, x, x, bias=b, mask=np.ones((1, 1, 4), bool), implementation="xla"), (x, b), 2))
    nm = f"dot_product_attention/unbatched/{_dn(dt)}"
    r = _rng(nm)
    cases.append(Case("nn", nm, lambda q, k, v: nn.dot_product_attention(q, k, v), (
        rand(r, (4, 2, 3), dt), rand(r, (5, 1, 3), dt), rand(r, (5, 1, 3), dt)), 2))
  cases.append(Case("nn", "dot_product_attention/bf16", lambda q, k, v: nn.dot_product_attention(
      q, k, v, implementation="xla").astype(F32),
      tuple(jnp.asarray(rand(_rng(f"bf{i}"), (1, 4, 2, 8), F32), jnp.bfloat16)
            for i in range(3)), 1))
  # jax.nn.dot_product_attention's XLA path computes its logits in float32 whatever the
  # inputs' dtype, so its float64 cases agree to float32 rounding only.
  for c in cases:
    if c.name.startswith("dot_product_attention") and c.tol is None:
      c.tol = 2e-4
  return cases


# ---------------------------------------------------------------- lax_numpy_test

def numpy_cases():
  cases = []
  shapes = [(), (4,), (3, 4), (3, 1), (1, 4), (2, 1, 4), (2, 3, 4)]
  for name, op, nargs, order, kind, dtypes in [
      ("arcsinh", jnp.arcsinh, 1, 2, "positive", [F64, C64]),
      ("arccosh", jnp.arccosh, 1, 1, "positive", [F64, C64]),
      ("arctanh", jnp.arctanh, 1, 2, "unit", [F64, C64]),
      ("logaddexp", jnp.logaddexp, 2, 1, "unit", [F64]),
      ("logaddexp2", jnp.logaddexp2, 2, 2, "unit", [F64]),
      ("logaddexp_c", jnp.logaddexp, 2, 1, "default", [C128]),
      ("logaddexp2_c", jnp.logaddexp2, 2, 1, "default", [C128])]:
    for ss in itertools.combinations_with_replacement(shapes, nargs):
      try:
        np.broadcast_shapes(*ss)
      except ValueError:
        continue
      for dt in dtypes:
        nm = f"{name}/{ss}/{_dn(dt)}"
        r = _rng(nm)
        cases.append(Case("numpy", nm, op, tuple(rand(r, s, dt, kind) for s in ss), order))
  for name, op, vals, order in [("arcsinh", jnp.arcsinh, [0., 1000.], 2),
                                ("arccosh", jnp.arccosh, [1000.], 2),
                                ("arctanh", jnp.arctanh, [0.], 2), ("sinc", jnp.sinc, [0.], 4)]:
    for v in vals:
      cases.append(Case("numpy", f"special/{name}/{v}", op, (np.float64(v),), 1, nest=order))
  cases.append(Case("numpy", "sinc/array", lambda x: jnp.sinc(x), (np.arange(10.),), 2))
  idx = np.repeat(np.arange(3), 10).reshape((30, 1))
  cases.append(Case("numpy", "take_along_axis/1521", lambda x: jnp.take_along_axis(
      x * jnp.arange(3.).reshape((1, 3)), idx, -1).sum(), (np.float64(1.),), 1))
  for n in range(-4, 5):
    for dt in FLOAT:
      nm = f"ldexp/{n}/{_dn(dt)}"
      cases.append(Case("numpy", nm, lambda x, n=n: jnp.ldexp(x, n), (rand(_rng(nm), (10,), dt),), 1))
      nm = f"frexp/{n}/{_dn(dt)}"
      cases.append(Case("numpy", nm, lambda x: jnp.frexp(x)[0],
                        (rand(_rng(nm), (10,), dt) * 2. ** n,), 1))
  for dt in FLOAT:
    for kw in [dict(), dict(period=0.59), dict(left=0, right=1)]:
      x = np.exp(np.linspace(-90, -20, 50)).astype(dt)
      cases.append(Case("numpy", f"interp/{kw}/{_dn(dt)}", lambda z, kw=kw: jnp.interp(
          z, z, jnp.ones_like(z), **kw), (x,), 1))
      xs = np.sort(rand(_rng("interp"), (6,), dt))
      cases.append(Case("numpy", f"interp_all/{kw}/{_dn(dt)}", lambda x, xp, fp, kw=kw: jnp.interp(
          x, xp, fp, **kw), (rand(_rng("ix"), (5,), dt), xs, rand(_rng("ifp"), (6,), dt)), 1))
  cases.append(Case("numpy", "relu_max", lambda z: jnp.sum(jnp.maximum(z, 0.)),
                    (np.array([-1., 0., 2.]),), 1, nest=0))
  # common compound jnp ops used by models
  for name, f in [("sort", jnp.sort), ("argsort_take", lambda x: x[jnp.argsort(x)]),
                  ("median", jnp.median), ("percentile", lambda x: jnp.percentile(x, 30.)),
                  ("quantile", lambda x: jnp.quantile(x, np.array([0.2, 0.7]))),
                  ("var", jnp.var), ("std", jnp.std), ("nanmean", jnp.nanmean),
                  ("cumsum", jnp.cumsum), ("cumprod", jnp.cumprod),
                  ("max", jnp.max), ("amin_axis", lambda x: jnp.min(x, axis=0)),
                  ("ptp", jnp.ptp), ("where", lambda x: jnp.where(x > 0, x, 2 * x)),
                  ("clip", lambda x: jnp.clip(x, -0.5, 0.5)), ("diff", jnp.diff),
                  ("trace", jnp.trace), ("diag", lambda x: jnp.diag(x)),
                  ("tril", jnp.tril), ("roll", lambda x: jnp.roll(x, 2)),
                  ("flip", jnp.flip), ("outer", lambda x: jnp.outer(x, x)),
                  ("einsum", lambda x: jnp.einsum("ij,jk->ik", x, x.T)),
                  ("kron", lambda x: jnp.kron(x, x[:2, :2])), ("convolve", lambda x: jnp.convolve(
                      x.ravel(), x[0], mode="same")),
                  ("correlate", lambda x: jnp.correlate(x.ravel(), x[0], mode="full")),
                  ("polyval", lambda x: jnp.polyval(x[0], x)), ("hypot", lambda x: jnp.hypot(x, 2 * x)),
                  ("arctan2", lambda x: jnp.arctan2(x, x[::-1])), ("fmod", lambda x: jnp.fmod(x, 0.7)),
                  ("mod", lambda x: jnp.mod(x, 0.7)), ("cbrt", jnp.cbrt), ("deg2rad", jnp.deg2rad),
                  ("log10", lambda x: jnp.log10(jnp.abs(x) + 1)), ("expm1", jnp.expm1),
                  ("logsumexp_axis", lambda x: jsp.special.logsumexp(x, axis=1)),
                  ("norm_vec", lambda x: jnp.linalg.norm(x.ravel())),
                  ("cross", lambda x: jnp.cross(x[:, :3], x.T[:4, :3] if x.shape[0] == 4 else x[:, :3])),
                  ("interp_linspace", lambda x: jnp.interp(jnp.linspace(-1, 1, 7), jnp.sort(x.ravel()),
                                                           x.ravel())),
                  ("searchsorted_take", lambda x: jnp.sort(x.ravel())[jnp.searchsorted(
                      jnp.sort(x.ravel()), 0.1)]),
                  ("unique_size", lambda x: jnp.unique(jnp.round(x), size=4, fill_value=0.)),
                  ("take", lambda x: jnp.take(x, np.array([0, -1, 7]), axis=1, mode="clip")),
                  ("take_fill", lambda x: jnp.take(x, np.array([0, -1, 7]), axis=1, mode="fill",
                                                   fill_value=0.)),
                  ("fancy_index", lambda x: x[np.array([0, 2, 0]), 1:]),
                  ("at_add", lambda x: x.at[np.array([0, 0, 1])].add(1.5 * x[0])),
                  ("at_mul", lambda x: x.at[np.array([0, 0, 1])].multiply(x[1])),
                  ("at_min", lambda x: x.at[np.array([0, 0, 1])].min(x[1])),
                  ("at_set", lambda x: x.at[1].set(x[0] * 2)),
                  ("at_divide", lambda x: x.at[0].divide(x[1] + 3))]:
    for dt in FLOAT:
      nm = f"jnp/{name}/{_dn(dt)}"
      cases.append(Case("numpy", nm, f, (rand(_rng(nm), (3, 4), dt, "unique") / 7,), 2))
  return cases


# ---------------------------------------------------------------- linalg_test / eigh_test

def _T(x):
  return np.swapaxes(x, -1, -2)


def _normalizing_svd(a, full_matrices):
  u, s, vt = jnp.linalg.svd(a, full_matrices=full_matrices, compute_uv=True)
  top = u[..., 0:1, :]
  if np.issubdtype(a.dtype, np.complexfloating):
    ang = -jnp.angle(top)
    ph = lax.complex(jnp.cos(ang), jnp.sin(ang))
    u = u * ph
    vt = vt * jnp.swapaxes(jnp.conj(ph), -1, -2)
  else:
    ph = jnp.sign(top)
    u = u * ph
    vt = vt * jnp.swapaxes(ph, -1, -2)
  return u, s, vt


def _normalizing_eigh(h, lower, symmetrize_input=True):
  e, v = jnp.linalg.eigh(h, UPLO="L" if lower else "U", symmetrize_input=symmetrize_input)
  top = v[..., 0:1, :]
  if np.issubdtype(h.dtype, np.complexfloating):
    ang = -jnp.angle(top)
    v = v * lax.complex(jnp.cos(ang), jnp.sin(ang))
  else:
    v = v * jnp.sign(top)
  return e, v


def linalg_cases():
  cases = []
  L = lambda nm, f, args, order=2: cases.append(Case("linalg", nm, f, args, order))
  for shape, dt, upper in itertools.product([(1, 1), (4, 4), (2, 5, 5)], INEXACT, [False, True]):
    nm = f"cholesky/{shape}/{_dn(dt)}/{upper}"
    a = rand(_rng(nm), shape[:-1] + (2 * shape[-1],), dt)
    a = np.matmul(a, np.conj(_T(a)))
    try:
      jnp.linalg.cholesky(a, upper=upper)
      f = lambda a, u=upper: jnp.linalg.cholesky(a, upper=u)
    except TypeError:
      if upper:
        continue
      f = jnp.linalg.cholesky
    L(nm, f, (a,))
  for shape, dt in itertools.product([(1, 1), (2, 2), (3, 3), (2, 2, 2), (2, 3, 3), (2, 4, 4),
                                      (5, 7, 7)], FLOAT + COMPLEX):
    nm = f"det/{shape}/{_dn(dt)}"
    a = rand(_rng(nm), shape, dt)
    L(nm, jnp.linalg.det, (a,))
    z = np.array(a)
    z[0] = 0
    L(nm + "/zeros", jnp.linalg.det, (np.zeros_like(a) if len(shape) == 2 else z,), 1)
  L("det/6121", lambda x: jnp.linalg.det(x).sum(), (np.ones((16, 1, 1)),))
  L("det/corank1", jnp.linalg.det, (np.array([[50, -30, 45], [-30, 90, -81], [45, -81, 81]],
                                             F32),), 1)
  L("det/corank2", jnp.linalg.det, (np.array([[36, -42, 18], [-42, 49, -21], [18, -21, 9]],
                                             F32),), 1)
  L("det/corank1_f64", jnp.linalg.det, (np.array([[50, -30, 45], [-30, 90, -81],
                                                  [45, -81, 81]], F64),), 1)
  for shape, dt in itertools.product([(1, 1), (4, 4), (5, 5), (2, 7, 7)], INEXACT):
    nm = f"slogdet/{shape}/{_dn(dt)}"
    L(nm, jnp.linalg.slogdet, (rand(_rng(nm), shape, dt),))
    nm = f"inv/{shape}/{_dn(dt)}"
    L(nm, jnp.linalg.inv, (rand(_rng(nm), shape, dt) + 3 * np.eye(shape[-1], dtype=dt),))
    nm = f"solve/{shape}/{_dn(dt)}"
    r = _rng(nm)
    L(nm, jnp.linalg.solve, (rand(r, shape, dt) + 3 * np.eye(shape[-1], dtype=dt),
                             rand(r, shape[:-1] + (2,), dt)))
  for shape, dt in itertools.product([(4, 4), (5, 5), (7, 6, 6)], INEXACT):
    nm = f"eigvals/{shape}/{_dn(dt)}"
    L(nm, jnp.linalg.eigvals, (rand(_rng(nm), shape, dt),), 1)
  for shape, dt, (left, right) in itertools.product([(4, 4), (5, 5)], INEXACT,
                                                    [(False, True), (True, False), (True, True)]):
    nm = f"eig/{shape}/{_dn(dt)}/{left}{right}"
    a = rand(_rng(nm), shape, dt)
    def f(a, left=left, right=right, real=np.issubdtype(dt, np.floating)):
      try:
        out = lax.linalg.eig(a, compute_left_eigenvectors=left,
                             compute_right_eigenvectors=right, enable_eigvec_derivs=True)
      except TypeError:
        out = lax.linalg.eig(a, compute_left_eigenvectors=left, compute_right_eigenvectors=right)
      return (out[0],) + tuple(v * v for v in out[1:]) if real else tuple(out)
    L(nm, f, (a,))
  L("eig/eigvals_only", lambda a: jnp.linalg.eig(a)[0], (rand(_rng("eo"), (4, 4), F64),), 1)
  for shape, dt, fm, cuv in itertools.product([(1, 1), (4, 4), (2, 5), (5, 2), (5, 5), (2, 5, 5)],
                                              INEXACT, [True, False], [True, False]):
    if not cuv and fm:
      continue
    if fm and shape[-1] != shape[-2]:
      continue
    nm = f"svd/{shape}/{_dn(dt)}/fm{fm}/uv{cuv}"
    a = rand(_rng(nm), shape, dt)
    if cuv:
      f = lambda a, fm=fm: _normalizing_svd(a, fm)
    else:
      f = lambda a: jnp.linalg.svd(a, full_matrices=False, compute_uv=False)
    L(nm, f, (a,))
  for shape, dt in itertools.product([(3, 3), (5, 3), (2, 4, 3), (3, 5)], INEXACT):
    for mode in ["reduced", "complete", "r"]:
      nm = f"qr/{shape}/{_dn(dt)}/{mode}"
      a = rand(_rng(nm), shape, dt)
      L(nm, lambda a, m=mode: jnp.linalg.qr(a, mode=m), (a,))
  for shape in [(1, 1), (4, 4), (3, 5, 5), (2, 7, 4), (7, 3)]:
    for herm in ([False, True] if shape[-1] == shape[-2] else [False]):
      for dt in INEXACT:
        nm = f"pinv/{shape}/{herm}/{_dn(dt)}"
        a = rand(_rng(nm), shape, dt)
        if herm:
          a = (a + np.conj(_T(a))) / 2
        L(nm, lambda a, h=herm: jnp.linalg.pinv(a, hermitian=h), (a,), 1)
  for ls, rs in [((4, 3), (4,)), ((4, 3), (4, 2)), ((3, 3), (3, 2))]:
    for dt in FLOAT:
      nm = f"lstsq/{ls}/{rs}/{_dn(dt)}"
      r = _rng(nm)
      L(nm, lambda a, b: jnp.linalg.lstsq(a, b)[0], (rand(r, ls, dt), rand(r, rs, dt)), 1)
  L("eigh/issue669", lambda x: jnp.real(jnp.sum(jnp.linalg.eigh(x)[0])),
    (np.eye(3, dtype=C64),), 1)
  for shape in [(1, 1), (4, 4), (2, 5, 5)]:
    for dt in FLOAT:
      nm = f"lu/{shape}/{_dn(dt)}"
      lu = jax.vmap(jsp.linalg.lu) if len(shape) > 2 else jsp.linalg.lu
      L(nm, lu, (rand(_rng(nm), shape, dt),))
  for shape in [(4, 5), (6, 4)]:
    for dt in INEXACT:
      nm = f"lu/{shape}/{_dn(dt)}"
      L(nm, jsp.linalg.lu, (rand(_rng(nm), shape, dt),))
  for shape in [(4, 4)]:
    for dt in COMPLEX:
      nm = f"lu/{shape}/{_dn(dt)}"
      L(nm, jsp.linalg.lu, (rand(_rng(nm), shape, dt),))
  for dt in FLOAT:
    nm = f"lu_factor_solve/{_dn(dt)}"
    r = _rng(nm)
    L(nm, lambda a, b: jsp.linalg.lu_solve(jsp.linalg.lu_factor(a), b),
      (rand(r, (4, 4), dt) + 4 * np.eye(4), rand(r, (4, 2), dt)))
    nm = f"cho_solve/{_dn(dt)}"
    r = _rng(nm)
    a = rand(r, (4, 8), dt); a = a @ a.T
    L(nm, lambda a, b: jsp.linalg.cho_solve(jsp.linalg.cho_factor(a), b), (a, rand(r, (4, 2), dt)))
    nm = f"solve_triangular/{_dn(dt)}"
    L(nm, lambda a, b: jsp.linalg.solve_triangular(a, b, lower=True, trans=1),
      (np.tril(rand(r, (4, 4), dt)) + 4 * np.eye(4), rand(r, (4, 2), dt)))
  for left_side, a_shape, b_shape in [(False, (4, 4), (4,)), (False, (4, 4), (1, 4)),
                                      (False, (3, 3), (4, 3)), (True, (4, 4), (4,)),
                                      (True, (4, 4), (4, 1)), (True, (4, 4), (4, 3)),
                                      (True, (2, 8, 8), (2, 8, 10))]:
    for dt in INEXACT:
      for conj in ([False] if np.issubdtype(dt, np.floating) else [False, True]):
        for lower, unit, trans in itertools.product([False, True], repeat=3):
          nm = f"triangular_solve/{left_side}/{a_shape}/{b_shape}/{_dn(dt)}/{conj}{lower}{unit}{trans}"
          r = _rng(nm)
          A = np.tril(rand(r, a_shape, dt) + 5 * np.eye(a_shape[-1], dtype=dt))
          A = A if lower else _T(A)
          B = rand(r, b_shape, dt)
          L(nm, lambda A, B, lo=lower, t=trans, c=conj, u=unit, ls=left_side:
            lax.linalg.triangular_solve(A, B, left_side=ls, lower=lo, transpose_a=t,
                                        conjugate_a=c, unit_diagonal=u), (A, B), 1)
  for n in [1, 4, 5]:
    for dt in INEXACT:
      norms = [1e-2, 2e-1, 9e-1, 2., 3.] if dt in (F64, C128) else [4e-1, 1., 3.]
      for nrm in norms:
        nm = f"expm/{n}/{_dn(dt)}/{nrm}"
        a = rand(_rng(nm), (n, n), dt, "small")
        a = a / np.linalg.norm(a, 1) * nrm
        L(nm, lambda x: jsp.linalg.expm(x, upper_triangular=False, max_squarings=16), (a,), 1)
  for shape in [(3,), (3, 4)]:
    for dt in INEXACT:
      for ps in [False, True]:
        nm = f"tridiagonal_solve/{shape}/{_dn(dt)}/{ps}"
        r = _rng(nm)
        d = 1.0 + rand(r, shape, dt, "positive")
        dl, du = rand(r, shape, dt), rand(r, shape, dt)
        b = rand(r, shape + (1,), dt)
        if ps:
          f = lambda dl, d, du, b: lax.linalg.tridiagonal_solve(dl, d, du, b, perturb_singular=True)
        else:
          f = lax.linalg.tridiagonal_solve
        L(nm, f, (dl, d, du, b))
  for shape, dt, lower in itertools.product([(1, 1), (4, 4), (5, 5), (2, 6, 6)], INEXACT,
                                            [True, False]):
    nm = f"eigh/{shape}/{_dn(dt)}/{lower}"
    a = rand(_rng(nm), shape, dt)
    a = (a + np.conj(_T(a))) / 2
    ones = np.ones((shape[-1], shape[-1]), dt)
    a = a * (np.tril(ones) if lower else np.triu(ones))
    L(nm, lambda a, lo=lower: _normalizing_eigh(a, lo), (a,))
    nm = f"eigvalsh/{shape}/{_dn(dt)}/{lower}"
    L(nm, lambda a, lo=lower: jnp.linalg.eigvalsh(a, UPLO="L" if lo else "U"), (a,))
  L("eigh/degenerate_eigvals", lambda a: jnp.linalg.eigvalsh(a), (np.eye(3),))
  L("eigh/degenerate_vecs_sym", lambda a: jnp.sum(jnp.linalg.eigh(a)[0] ** 2), (np.eye(3),))
  # other numpy.linalg entries models use
  for dt in INEXACT:
    r = _rng(f"misc{_dn(dt)}")
    a = rand(r, (4, 4), dt) + 3 * np.eye(4, dtype=dt)
    L(f"matrix_power/3/{_dn(dt)}", lambda a: jnp.linalg.matrix_power(a, 3), (a,))
    L(f"matrix_power/-2/{_dn(dt)}", lambda a: jnp.linalg.matrix_power(a, -2), (a,))
    L(f"tensorsolve/{_dn(dt)}", lambda a, b: jnp.linalg.tensorsolve(a, b),
      (rand(r, (2, 3, 6), dt) + np.eye(6, dtype=dt).reshape(2, 3, 6) * 3, rand(r, (2, 3), dt)))
    L(f"tensorinv/{_dn(dt)}", lambda a: jnp.linalg.tensorinv(a, ind=2),
      (rand(r, (2, 3, 6), dt) + np.eye(6, dtype=dt).reshape(2, 3, 6) * 3,))
    L(f"multi_dot/{_dn(dt)}", lambda a, b: jnp.linalg.multi_dot([a, b, a]), (a, rand(r, (4, 4), dt)))
    for ord_ in [None, "fro", "nuc", 1, -1, 2, -2, np.inf, -np.inf]:
      L(f"norm/matrix/{ord_}/{_dn(dt)}", lambda a, o=ord_: jnp.linalg.norm(a, ord=o), (a,))
    for ord_ in [None, 0.5, 1, 2, 3, np.inf, -np.inf]:
      L(f"norm/vector/{ord_}/{_dn(dt)}", lambda x, o=ord_: jnp.linalg.norm(x, ord=o, axis=-1),
        (rand(r, (3, 5), dt),))
    for p in [None, 2, "fro", 1, np.inf]:
      L(f"cond/{p}/{_dn(dt)}", lambda a, p=p: jnp.linalg.cond(a, p), (a,), 1)
    L(f"svdvals/{_dn(dt)}", lambda a: jnp.linalg.svd(a, compute_uv=False), (rand(r, (3, 5), dt),))
    L(f"vector_norm/{_dn(dt)}", lambda x: jnp.linalg.vector_norm(x), (rand(r, (3, 5), dt),))
    L(f"matrix_norm/{_dn(dt)}", lambda x: jnp.linalg.matrix_norm(x, ord="nuc"), (a,))
    if hasattr(jsp.linalg, "polar"):
      L(f"polar/{_dn(dt)}", lambda a: jsp.linalg.polar(a, method="svd")[0], (a,), 1)
    L(f"expm_frechet/{_dn(dt)}", lambda a, e: jsp.linalg.expm_frechet(a / 4, e, compute_expm=False),
      (a, rand(r, (4, 4), dt)), 1)
  return cases


# ---------------------------------------------------------------- fft_test

def fft_cases():
  cases = []
  norms = [None, "ortho", "forward"]
  k = 0
  for inverse in [False, True]:
    for real in [False, True]:
      dtypes = FLOAT if real and not inverse else INEXACT
      for shape in [(10,), (9,), (10, 10), (2, 3, 4), (2, 3, 4, 5)]:
        nd = len(shape)
        axes_list = [None] + [c for n in range(1, min(nd, 3) + 1)
                              for c in itertools.combinations(range(nd), n)] + [(-1,)]
        for axes in axes_list:
          s_list = [None]
          if axes is not None:
            s_list += [tuple(shape[a] + d for a in axes) for d in (-1, 1)]
          for s in s_list:
            for norm in norms:
              for dt in dtypes:
                k += 1
                if k % 5:
                  continue
                if inverse:
                  op = jnp.fft.irfftn if real else jnp.fft.ifftn
                else:
                  op = jnp.fft.rfftn if real else jnp.fft.fftn
                nm = f"{op.__name__}/{shape}/{axes}/{s}/{norm}/{_dn(dt)}"
                cases.append(Case("fft", nm, lambda a, op=op, s=s, axes=axes, norm=norm: op(
                    a, s=s, axes=axes, norm=norm), (rand(_rng(nm), shape, dt),), 2))
  for name in ["fft", "ifft", "rfft", "irfft", "hfft", "ihfft"]:
    op = getattr(jnp.fft, name)
    for shape, axis in [((10,), -1), ((4, 6), 0), ((3, 5, 4), 1)]:
      for n in [None, 3, 8]:
        for norm in norms:
          for dt in ([F64] if name in ("rfft", "ihfft") else [F64, C128]):
            nm = f"{name}/{shape}/{axis}/{n}/{norm}/{_dn(dt)}"
            cases.append(Case("fft", nm, lambda a, op=op, n=n, axis=axis, norm=norm: op(
                a, n=n, axis=axis, norm=norm), (rand(_rng(nm), shape, dt),), 2))
  for name in ["fft2", "ifft2", "rfft2", "irfft2"]:
    op = getattr(jnp.fft, name)
    for dt in ([F32, F64] if name == "rfft2" else INEXACT):
      for axes in [(-2, -1), (0, 2)]:
        nm = f"{name}/{axes}/{_dn(dt)}"
        cases.append(Case("fft", nm, lambda a, op=op, axes=axes: op(a, axes=axes),
                          (rand(_rng(nm), (3, 4, 5), dt),), 2))
  for name in ["fftshift", "ifftshift"]:
    op = getattr(jnp.fft, name)
    cases.append(Case("fft", name, op, (rand(_rng(name), (4, 5), C128),), 2))
  cases.append(Case("fft", "spectral_layer", lambda x, w: jnp.fft.irfft(
      jnp.fft.rfft(x, axis=-1)[..., :3] * w, n=x.shape[-1], axis=-1),
      (rand(_rng("sl"), (2, 8), F64), rand(_rng("slw"), (3,), C128)), 2))
  return cases


TABLES = {"lax": lax_cases, "nn": nn_cases, "numpy": numpy_cases, "linalg": linalg_cases,
          "fft": fft_cases}


def all_cases(tables=None):
  out = []
  for t in (tables or TABLES):
    out.extend(TABLES[t]())
  return out


# ---------------------------------------------------------------- running a case

def _inexact(x) -> bool:
  return jnp.issubdtype(jnp.result_type(x), jnp.inexact)


def _flat_inexact(fn):
  """fn with its outputs flattened to a tuple of the inexact leaves (int outputs dropped)."""
  def f(*args):
    return tuple(l for l in jax.tree.leaves(fn(*args)) if _inexact(l))
  return f


def _random_like(r, tree):
  def one(x):
    x = np.asarray(x)
    dt = x.dtype
    v = r.standard_normal(x.shape)
    if np.issubdtype(dt, np.complexfloating):
      v = v + 1j * r.standard_normal(x.shape)
    return jnp.asarray(v.astype(dt) if dt != jnp.bfloat16 else v, dtype=dt)
  return jax.tree.map(one, tree)


def _tol(dtypes) -> float:
  lo = min(jnp.finfo(d).bits for d in dtypes)
  return {16: 2e-2, 32: 2e-4}.get(lo, 1e-8)


def compare(h, j, tol):
  """Max relative error between the hand and the JAX trees (NaNs must coincide)."""
  hl, jl = jax.tree.leaves(h), jax.tree.leaves(j)
  if len(hl) != len(jl):
    return np.inf, f"{len(hl)} leaves vs {len(jl)}"
  worst, why = 0.0, ""
  for a, b in zip(hl, jl):
    a = np.asarray(a, dtype=np.complex128 if np.iscomplexobj(a) else np.float64)
    b = np.asarray(b, dtype=np.complex128 if np.iscomplexobj(b) else np.float64)
    if a.shape != b.shape:
      return np.inf, f"shape {a.shape} vs {b.shape}"
    if np.asarray(jax.tree.leaves(h)[0]).dtype != np.asarray(jax.tree.leaves(j)[0]).dtype:
      why = "dtype differs; "
    na, nb = np.isnan(a), np.isnan(b)
    if (na != nb).any():
      return np.inf, "NaN pattern differs"
    fa, fb = np.isfinite(a), np.isfinite(b)
    if (fa != fb).any() or (a[~fa & ~na] != b[~fb & ~nb]).any():
      return np.inf, "inf pattern differs"
    m = fa & fb
    if not m.any():
      continue
    scale = max(1.0, float(np.max(np.abs(b[m]))))
    err = float(np.max(np.abs(a[m] - b[m]))) / scale
    worst = max(worst, err)
  return worst, why


def _classify_exc(e):
  msg = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
  if isinstance(e, NotImplementedError) and "no VJP rule" in str(e):
    return "missing", msg
  return "error", msg


def _fd_vjp(f, args, ct, eps=1e-6):
  """Central differences of <ct, f(x)> in each element of each argument (real float64)."""
  fj = jax.jit(f)
  phi = lambda *a: sum(float(np.sum(np.asarray(c) * np.asarray(o)))
                       for c, o in zip(ct, fj(*a)))
  out = []
  for i, a in enumerate(args):
    a = np.asarray(a, np.float64)
    grad = np.zeros_like(a)
    for j in np.ndindex(a.shape):
      hi, lo = a.copy(), a.copy()
      hi[j] += eps
      lo[j] -= eps
      grad[j] = (phi(*args[:i], hi, *args[i + 1:]) - phi(*args[:i], lo, *args[i + 1:])) / (2 * eps)
    out.append(grad)
  return tuple(out)


def _stage(hand_fn, jax_fn, tol, fd=None):
  """-> (status, detail).  ``fd``: a finite-difference reference for where JAX raises."""
  try:
    ref = jax_fn()
  except Exception as e:  # noqa: BLE001
    jmsg = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    try:
      got = hand_fn()
    except Exception:  # noqa: BLE001
      return "jaxfail", jmsg
    if fd is not None:
      fd_tol = max(tol * 10, 1e-5)
      err, why = compare(got, fd(), fd_tol)
      if err <= fd_tol:
        return "pass-fd", f"JAX raises ({jmsg[:80]}); hand == finite differences ({err:.1e})"
    return "answers-where-jax-raises", jmsg
  try:
    got = hand_fn()
  except Exception as e:  # noqa: BLE001
    return _classify_exc(e)
  err, why = compare(got, ref, tol)
  if err > tol:
    return "wrong", f"{why}rel err {err:.2e}"
  return "pass", f"{err:.1e}"


def run_case(c: Case, second=True):
  """-> list of (stage, status, detail)."""
  r = _rng("ct:" + c.id)
  args = tuple(jnp.asarray(a) for a in c.args)
  dts = [a.dtype for a in args]
  tol = c.tol or _tol(dts)
  results = []
  if c.nest:
    gh, gj = c.fn, c.fn
    for k in range(1, c.nest + 1):
      gh, gj = hg.grad(gh), jax.grad(gj)
      results.append((f"grad^{k}", *_stage(lambda gh=gh: jax.jit(gh)(*args),
                                           lambda gj=gj: jax.jit(gj)(*args), tol)))
      if results[-1][1] != "pass":
        break
    return results
  f = _flat_inexact(c.fn)
  try:
    out = jax.eval_shape(f, *args)
  except Exception as e:  # noqa: BLE001
    return [("build", "jaxfail", f"{type(e).__name__}: {e}"[:200])]
  ct = _random_like(r, jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), out))
  vj = lambda *a: jax.vjp(f, *a)[1](ct)
  vh = lambda *a: hg.vjp(f, *a)[1](ct)
  real = all(a.dtype in (np.float32, np.float64) for a in args)
  fd = (lambda: _fd_vjp(f, tuple(np.asarray(a, np.float64) for a in args),
                        [np.asarray(c, np.float64) for c in ct])) if real else None
  results.append(("vjp", *_stage(lambda: jax.jit(vh)(*args), lambda: jax.jit(vj)(*args), tol,
                                 fd)))
  if not second or c.order < 2 or results[-1][1] != "pass":  # (pass-fd: JAX has no order 2)
    return results
  ct2 = _random_like(r, args)
  tan = _random_like(r, args)
  results.append(("rev/rev", *_stage(
      lambda: jax.jit(lambda *a: hg.vjp(vh, *a)[1](ct2))(*args),
      lambda: jax.jit(lambda *a: jax.vjp(vj, *a)[1](ct2))(*args), tol * 10)))
  results.append(("fwd/rev", *_stage(
      lambda: jax.jit(lambda *a: jax.jvp(vh, a, tan)[1])(*args),
      lambda: jax.jit(lambda *a: jax.jvp(vj, a, tan)[1])(*args), tol * 10)))
  if c.order >= 3 and all(r[1] == "pass" for r in results):
    ct3 = _random_like(r, args)
    vh2 = lambda *a: hg.vjp(vh, *a)[1](ct2)
    vj2 = lambda *a: jax.vjp(vj, *a)[1](ct2)
    results.append(("rev^3", *_stage(
        lambda: jax.jit(lambda *a: hg.vjp(vh2, *a)[1](ct3))(*args),
        lambda: jax.jit(lambda *a: jax.vjp(vj2, *a)[1](ct3))(*args), tol * 100)))
  return results


def main(argv=None):
  jax.config.update("jax_enable_x64", True)
  p = argparse.ArgumentParser()
  p.add_argument("--table", action="append")
  p.add_argument("-k", default=None)
  p.add_argument("--sample", type=int, default=0, help="run every N-th case")
  p.add_argument("--offset", type=int, default=0, help="with --sample: start at this case")
  p.add_argument("--first", action="store_true", help="first order only")
  p.add_argument("-v", action="store_true")
  a = p.parse_args(argv)
  cases = all_cases(a.table)
  if a.k:
    cases = [c for c in cases if a.k in c.id]
  if a.sample:
    cases = cases[a.offset::a.sample]
  counts = collections.defaultdict(collections.Counter)
  bad = []
  for c in cases:
    try:
      res = run_case(c, second=not a.first)
    except Exception as e:  # noqa: BLE001
      res = [("driver", "error", f"{type(e).__name__}: {e}"[:200])]
      if a.v:
        traceback.print_exc()
    worst = "pass"
    for stage, status, detail in res:
      if status not in ("pass", "pass-fd"):
        worst = status
        bad.append((c.id, stage, status, detail))
        if a.v:
          print(f"  {status:8s} {stage:8s} {c.id}  {detail[:160]}", flush=True)
        break
    counts[c.table][worst] += 1
  print(f"\njax {jax.__version__}, python {sys.version.split()[0]}")
  for t, cnt in counts.items():
    print(f"{t:8s} " + "  ".join(f"{k}={v}" for k, v in sorted(cnt.items())))
  print("\nnon-passing cases:")
  for row in bad:
    print("  " + " | ".join(str(x)[:200] for x in row))
  return 0


if __name__ == "__main__":
  sys.exit(main())
