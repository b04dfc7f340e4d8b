"""The spec table behind the rule sweep: every registered rule, checked the same way.

Each :class:`RuleSpec` names a registered rule and a small JAX function whose jaxpr holds
that rule's equation (``jax.lax`` functions for primitives, ``jnp`` indexing for gather and
scatter, ``handgrad.ops`` for layer-level operations), the argument shapes to try (scalars,
size-1 dimensions, broadcasting pairs for binary primitives, empty batches), a sampler for
each argument's values (a domain away from the rule's singularities unless the spec is an
explicit edge case), the dtypes, and whether finite differences apply.  In the style of
jax's ``lax_autodiff_test.py`` and autograd's ``combo_check``.

:func:`check_rule` runs one spec: ``handgrad.vjp`` against ``jax.vjp`` for every shape case
(tolerances of :func:`handgrad._src.check.tolerance`: float64 1e-7 / 1e-7, float32
1e-5 / 1e-5), against central finite differences of a random projection
``Σ out · ct`` in float64, that the engine really applied the rule, and, for a rule that
passes no gradient, that the rule itself returns ``None`` for every input (the engine may
never call such a rule: a comparison's boolean output never carries blame).
:func:`check_all_rules` gives the worst report per rule and column (dtype, or float64
finite differences), the table the ``handgrad check`` command prints.

Each spec and dtype runs as one jitted program holding every shape case, the reference
and the hand pass (see "Running a spec" below for why).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import zlib
from typing import Any, Callable, Iterable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.ad_checkpoint import checkpoint_name
from jax.extend.core import primitives

from handgrad._src.rules import layers as ops  # the layer-level ops handgrad.ops re-exports
from handgrad._src import api
from handgrad._src import check
from handgrad._src import engine
from handgrad._src import jaxpr as hj
from handgrad._src import registry
from handgrad._src.rules.layers import _attention_with_weights

Shape = tuple[int, ...]
#: ``sampler(rng, shape, dtype) -> np.ndarray``; ``dtype`` is the dtype under test (a
#: sampler of indices or masks returns its own integer or boolean dtype instead).
Sampler = Callable[[np.random.Generator, Shape, np.dtype], np.ndarray]

DTYPES = ("float32", "float64")
#: Complex dtypes a spec may list too: its samplers draw real and imaginary parts, its
#: cotangents are complex, and complex128 has finite differences along both parts.
COMPLEX_DTYPES = ("complex64", "complex128")
# Central differences with eps = 1e-6 are accurate to O(eps²) plus rounding
# O(1e-16 · |f| / eps): these bounds, the ones of check_grad, hold for every spec.
FD_EPS, FD_RTOL, FD_ATOL = 1e-6, 1e-5, 1e-6
# The sweep's programs are small and run once: XLA's backend optimisations would cost
# more time than they could save (results are compared within the same settings).
_QUICK_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}
#: The column of :func:`check_all_rules` that holds the finite-difference reports.
FD_COLUMN = "fd (float64)"


# -------------------------------------------------------------------------------------
# Samplers.

def _as(values, dtype, own_dtype):
  return np.asarray(values, dtype=own_dtype or dtype)


def _parts(draw, dt, own_dtype):
  """``draw()`` as real values, or, when the dtype under test is complex (and the
  sampler has no dtype of its own), ``draw() + i·draw()``: both parts in the domain."""
  if own_dtype is None and np.issubdtype(dt, np.complexfloating):
    return draw() + 1j * draw()
  return draw()


def normal(scale: float = 1.0, dtype: str | None = None) -> Sampler:
  """Standard normal values times ``scale`` (real and imaginary parts for complex)."""
  return lambda rng, shape, dt: _as(
      _parts(lambda: scale * rng.standard_normal(shape), dt, dtype), dt, dtype)


def uniform(lo: float, hi: float, dtype: str | None = None) -> Sampler:
  """Uniform values in ``[lo, hi)``: a domain away from a rule's singularities (for a
  complex dtype, each part in ``[lo, hi)``)."""
  return lambda rng, shape, dt: _as(
      _parts(lambda: rng.uniform(lo, hi, shape), dt, dtype), dt, dtype)


def away_from_zero(lo: float = 0.5, hi: float = 2.0) -> Sampler:
  """Values with ``lo ≤ |x| < hi`` and random sign (denominators, kinks at 0); for a
  complex dtype, each part so."""
  return lambda rng, shape, dt: _as(_parts(
      lambda: rng.choice([-1.0, 1.0], shape) * rng.uniform(lo, hi, shape), dt, None), dt, None)


def distinct(lo: float = -2.0, hi: float = 2.0) -> Sampler:
  """Values in ``[lo, hi)`` without ties, at least ``(hi − lo)/(2n)`` apart (max, sort)."""
  def sample(rng, shape, dt):
    n = math.prod(shape)
    slots = rng.permutation(n) + 0.25 + 0.5 * rng.uniform(size=n)
    return _as((lo + (hi - lo) * slots / max(n, 1)).reshape(shape), dt, None)
  return sample


def integers(lo: int, hi: int) -> Sampler:
  """int32 values in ``[lo, hi)`` (indices, labels, integer exponents)."""
  return lambda rng, shape, dt: rng.integers(lo, hi, shape).astype(np.int32)


def permutation() -> Sampler:
  """A random permutation of ``0 … n−1`` as int32 (unique scatter indices)."""
  return lambda rng, shape, dt: rng.permutation(math.prod(shape)).reshape(shape).astype(np.int32)


def booleans(p: float = 0.5) -> Sampler:
  """Booleans, True with probability ``p`` (predicates, masks)."""
  return lambda rng, shape, dt: rng.uniform(size=shape) < p


def choice(values: Sequence[float]) -> Sampler:
  """Values drawn from ``values`` (edge values: kinks, ties, 0, ±inf)."""
  return lambda rng, shape, dt: _as(rng.choice(np.asarray(values, np.float64), shape), dt, None)


def fixed(value: float) -> Sampler:
  """Every element equal to ``value`` (a constant row)."""
  return lambda rng, shape, dt: np.full(shape, value, dtype=dt)


# -------------------------------------------------------------------------------------
# The spec type.

@dataclasses.dataclass(frozen=True)
class RuleSpec:
  """One way of checking the registered rule ``name``.

  Attributes:
    name: registry key of the rule (a primitive or layer-level operation name).
    fun: a small JAX function whose jaxpr holds an equation of that rule.
    shapes: argument shape cases, one shape per positional argument of ``fun``.
    sampler: a :data:`Sampler` for every argument, or a tuple with one per argument.
    dtypes: the float dtypes to check in.
    fd: whether central finite differences (float64) apply: not at kinks, steps or
      non-finite values.
    float32_tol: ``(rtol, atol)`` replacing the float32 tolerance; ``note`` must say
      why.  float64 tolerances are never loosened.
    no_gradient: the rule passes no gradient: it returns ``None`` for every input.
    label: tells apart several specs of one rule.
    note: the numerics or the convention the spec pins down.
    reference: a function equal to ``fun`` that ``jax.vjp`` differentiates in its
      place, for a primitive that JAX's reverse mode cannot differentiate (generic
      ``reduce_window``); ``note`` must say why.
  """
  name: str
  fun: Callable[..., Any]
  shapes: tuple[tuple[Shape, ...], ...]
  sampler: Sampler | tuple[Sampler, ...] = normal()
  dtypes: tuple[str, ...] = DTYPES
  fd: bool = True
  float32_tol: tuple[float, float] | None = None
  no_gradient: bool = False
  label: str = ""
  note: str = ""
  reference: Callable[..., Any] | None = None

  def __post_init__(self):
    if not self.shapes:
      raise ValueError(f"{self.id}: needs at least one shape case")
    arity = len(self.shapes[0])
    if any(len(case) != arity for case in self.shapes):
      raise ValueError(f"{self.id}: every shape case needs {arity} shapes")
    if isinstance(self.sampler, tuple) and len(self.sampler) != arity:
      raise ValueError(f"{self.id}: {len(self.sampler)} samplers for {arity} arguments")
    if self.reference is not None and not self.note:
      raise ValueError(f"{self.id}: a reference function needs a note saying why")
    if self.float32_tol is not None and not self.note:
      raise ValueError(f"{self.id}: a float32 tolerance override needs a note saying why")
    if not set(self.dtypes) <= set(DTYPES + COMPLEX_DTYPES):
      raise ValueError(f"{self.id}: dtypes must be among {DTYPES + COMPLEX_DTYPES}, "
                       f"got {self.dtypes}")

  @property
  def id(self) -> str:
    """``name`` or ``name[label]``: a readable test id."""
    return f"{self.name}[{self.label}]" if self.label else self.name

  def sample(self, dtype: str, case: int, seed: int = 0) -> list[np.ndarray]:
    """Deterministic arguments for shape case ``case`` in ``dtype``."""
    rng = np.random.default_rng([seed, case, zlib.crc32(self.id.encode())])
    samplers = self.sampler if isinstance(self.sampler, tuple) else (
        (self.sampler,) * len(self.shapes[case]))
    return [s(rng, tuple(shape), np.dtype(dtype)) for s, shape in zip(samplers, self.shapes[case])]

  def tolerance(self, dtype: str) -> tuple[float | None, float | None]:
    """(rtol, atol) for the comparison against ``jax.vjp``; ``None`` means the default
    of each compared value's dtype."""
    if dtype in ("float32", "complex64") and self.float32_tol is not None:
      return self.float32_tol
    return None, None


# -------------------------------------------------------------------------------------
# Shape cases.

UNARY = (((),), ((2, 3),), ((1, 3, 1),))
SAME = (((), ()), ((2, 3), (2, 3)))
# Binary primitives broadcast scalars and size-1 dimensions inside the jaxpr itself
# (``add f32[2,3] f32[1,3]``), in either order and on both sides at once.
BINARY = SAME + (((), (2, 3)), ((2, 3), ()), ((2, 3), (1, 3)), ((2, 1), (1, 3)))
VECTORS = (((3,),), ((2, 3),), ((1, 4),), ((2, 1, 3),))  # a last axis to reduce over
# Scan lengths 1 to 7 reach every branch of the prefix-scan tree (odd and even levels).
CUMULATIVE = (((1,),), ((5,),), ((7, 2),), ((2, 6),))
ALL_RANKS = (((),), ((1,),), ((2, 3),), ((2, 1, 2),), ((0, 3),))


# -------------------------------------------------------------------------------------
# Small functions holding one rule's equation.

def _add_any(x, y):
  # add_any is the primitive that sums cotangents (jaxprs of jax.grad hold it wherever a
  # value is used twice); bound directly so no JAX autodiff runs inside the hand pass.
  return primitives.add_jaxvals_p.bind(lax.sin(x), y)


def _gate(compare):
  """x·[compare(x, y)]: the comparison's output is boolean and carries no blame."""
  return lambda x, y: lax.mul(x, lax.convert_element_type(compare(x, y), x.dtype))


def _gate_logic(logic):
  return lambda x, y: lax.mul(x, lax.convert_element_type(
      logic(lax.gt(x, lax.full_like(x, 0)), lax.gt(y, lax.full_like(y, 0))), x.dtype))


def _times(f):
  """x·f(x) for a piecewise-constant f whose own derivative is zero."""
  return lambda x: lax.mul(x, f(x))


def _single_device(x):
  return lax.with_sharding_constraint(x, jax.sharding.SingleDeviceSharding(jax.devices()[0]))


def _all_axes(reduce):
  return lambda x: reduce(x, tuple(range(x.ndim)))


def _last_axis(reduce):
  return lambda x: reduce(x, (x.ndim - 1,))


def _masked(softmax):
  return lambda x, mask: softmax(jnp.where(mask, x, -jnp.inf))


# -------------------------------------------------------------------------------------
# The table.

def _newer_primitive_specs() -> list[RuleSpec]:
  """Specs of elementwise primitives newer than jax 0.10 (``log2`` and
  ``one_minus_square`` since 0.11, ``polynomial`` since 0.12), where they exist: their
  rules are registered only there."""
  S, out = RuleSpec, []
  if hj.has_primitive("log2"):
    out += [S("log2", lax.log2, UNARY, uniform(0.1, 3.0)),
            S("log2", lax.log2, UNARY, uniform(0.1, 3.0), dtypes=COMPLEX_DTYPES,
              label="complex")]
  if hj.has_primitive("one_minus_square"):
    out += [S("one_minus_square", lax.one_minus_square, UNARY),
            S("one_minus_square", lax.one_minus_square, UNARY, choice((1e-30, -1e-20)),
              fd=False, label="tiny x", note="−2x·g, not the (1−x) − (1+x) that rounds to 0"),
            S("one_minus_square", lax.one_minus_square, UNARY, dtypes=COMPLEX_DTYPES,
              label="complex")]
  if hj.has_primitive("polynomial"):
    poly = lambda x, c0, c1, c2, c3: lax.polynomial(x, [c0, c1, c2, c3])
    out += [
        S("polynomial", poly, (((),) * 5, ((2, 3),) * 5, ((2, 3), (), (1, 3), (2, 1), ()),
                               ((1, 3), (2, 3), (), (), (2, 3)))),
        S("polynomial", lambda x: lax.polynomial(x, [0.5, -1.0, 2.0]), UNARY,
          label="literal coefficients"),
        S("polynomial", lambda x, c0, c1: lax.polynomial(x, [c0, c1, c0, c1, c0, c1, c0, c1,
                                                             c0, c1], unroll=2),
          (((2, 3), (), ()),), uniform(-1.0, 1.0), label="degree 9, unroll=2"),
        S("polynomial", lambda x, c: jnp.polyval(c, x), (((2, 3), (4,)), ((), (2,))),
          label="jnp.polyval"),
        S("polynomial", jnp.sinc, UNARY, away_from_zero(0.1, 3.0), label="jnp.sinc"),
        S("polynomial", poly, (((2, 3),) * 5,), dtypes=COMPLEX_DTYPES, label="complex"),
    ]
  return out


def _table() -> list[RuleSpec]:
  S = RuleSpec
  pos, unit = uniform(0.1, 3.0), uniform(-0.9, 0.9)
  return [
      # --- arithmetic.py -----------------------------------------------------------
      S("add", lax.add, BINARY),
      S("add", lambda x: x + 2.0, UNARY, label="literal"),
      S("add_any", _add_any, SAME),
      S("sub", lax.sub, BINARY),
      S("neg", lax.neg, UNARY),
      S("mul", lax.mul, BINARY),
      S("mul", lambda x: x * 3.0, UNARY, label="literal"),
      S("div", lax.div, BINARY, (normal(), away_from_zero())),
      S("div", lambda y: 2.0 / y, UNARY, away_from_zero(), label="literal numerator"),
      S("max", lax.max, BINARY),
      S("max", lambda x: jnp.maximum(x, 0.0), UNARY, away_from_zero(), label="literal"),
      S("min", lax.min, BINARY),
      S("abs", lax.abs, UNARY, away_from_zero()),
      S("square", lax.square, UNARY),
      S("integer_pow", lambda x: lax.integer_pow(x, 0), UNARY, label="y=0"),
      S("integer_pow", lambda x: lax.integer_pow(x, 1), UNARY, label="y=1"),
      S("integer_pow", lambda x: lax.integer_pow(x, 2), UNARY, label="y=2"),
      S("integer_pow", lambda x: lax.integer_pow(x, 3), UNARY, label="y=3"),
      S("integer_pow", lambda x: lax.integer_pow(x, -2), UNARY, away_from_zero(), label="y=-2"),
      S("pow", lax.pow, BINARY, (uniform(0.5, 2.0), normal())),
      S("pow", lax.pow, BINARY, (away_from_zero(), integers(-2, 4)), label="int32 exponent"),
      S("pow", lambda y: lax.pow(2.0, y), UNARY, label="literal base"),
      S("pow", lambda x: lax.pow(x, 2.5), UNARY, uniform(0.5, 2.0), label="literal exponent"),
      S("rem", lax.rem, BINARY, (normal(3.0), away_from_zero())),
      S("sign", _times(lax.sign), UNARY, away_from_zero(), no_gradient=True),
      S("floor", _times(lax.floor), UNARY, normal(3.0), no_gradient=True),
      S("ceil", _times(lax.ceil), UNARY, normal(3.0), no_gradient=True),
      S("round", _times(lax.round), UNARY, normal(3.0), no_gradient=True),
      S("is_finite", lambda x: lax.select(lax.is_finite(x), x, lax.full_like(x, 0)), UNARY,
        choice((0.5, -1.5, np.inf, -np.inf, np.nan)), fd=False, no_gradient=True),
      S("eq", _gate(lax.eq), BINARY, choice((-1.0, 0.5, 2.0)), fd=False, no_gradient=True,
        note="values drawn with ties, where x·[x = y] jumps: no FD"),
      S("ne", _gate(lax.ne), BINARY, choice((-1.0, 0.5, 2.0)), fd=False, no_gradient=True),
      S("lt", _gate(lax.lt), BINARY, no_gradient=True),
      S("le", _gate(lax.le), BINARY, no_gradient=True),
      S("gt", _gate(lax.gt), BINARY, no_gradient=True),
      S("ge", _gate(lax.ge), BINARY, no_gradient=True),
      S("not", lambda x: lax.mul(x, lax.convert_element_type(
          lax.bitwise_not(lax.gt(x, lax.full_like(x, 0))), x.dtype)), UNARY, no_gradient=True),
      S("and", _gate_logic(lax.bitwise_and), BINARY, no_gradient=True),
      S("or", _gate_logic(lax.bitwise_or), BINARY, no_gradient=True),
      S("xor", _gate_logic(lax.bitwise_xor), BINARY, no_gradient=True),
      S("argmax", lambda x: lax.mul(jnp.max(x), lax.convert_element_type(
          lax.argmax(x, 0, jnp.int32), x.dtype)), VECTORS, distinct(), no_gradient=True),
      S("argmin", lambda x: lax.mul(jnp.min(x), lax.convert_element_type(
          lax.argmin(x, 0, jnp.int32), x.dtype)), VECTORS, distinct(), no_gradient=True),
      S("iota", lambda x: lax.mul(x, lax.broadcasted_iota(x.dtype, x.shape, 0)), VECTORS,
        no_gradient=True),
      S("population_count", _times(lambda x: lax.convert_element_type(
          lax.population_count(lax.convert_element_type(x, jnp.int32)), x.dtype)), UNARY,
        normal(5.0), no_gradient=True),
      S("stop_gradient", lambda x: lax.mul(x, lax.stop_gradient(x)), UNARY, fd=False,
        no_gradient=True, note="stop_gradient is not the derivative of anything: no FD"),
      S("select_n", lax.select_n, (((2, 3),) * 3, ((),) * 3, ((), (2, 3), (2, 3))),
        (booleans(), normal(), normal()), label="bool predicate"),
      S("select_n", lax.select_n, (((2, 3),) * 4, ((),) * 4, ((), (2, 3), (2, 3), (2, 3))),
        (integers(0, 3), normal(), normal(), normal()), label="int32 index, 3 cases"),
      S("select_n", lambda x: jnp.where(x > 0, x, 0.5 * x), UNARY, away_from_zero(),
        label="jnp.where"),
      S("clamp", lax.clamp, (((2, 3),) * 3, ((),) * 3, ((1,),) * 3),
        (uniform(-1.0, -0.2), normal(1.5), uniform(0.2, 1.0)),
        note="jax.vjp itself fails for scalar bounds of an array (its JVP selects between "
             "a scalar and an array); tests/_src/rules/test_kinks.py checks those"),
      S("clamp", lambda x: lax.clamp(-0.5, x, 0.5), UNARY, normal(), label="literal bounds"),
      S("convert_element_type", lambda x: lax.convert_element_type(
          lax.convert_element_type(x, jnp.bfloat16), x.dtype), UNARY, fd=False,
        label="via bfloat16", note="rounding to bfloat16 is a step function: no FD"),
      S("convert_element_type", lambda x: lax.convert_element_type(x, jnp.float32), UNARY,
        dtypes=("float64",), fd=False, label="float64 to float32",
        note="the float32 output is too coarse for central differences"),
      S("convert_element_type", lambda x: lax.convert_element_type(x, jnp.float64), UNARY,
        normal(dtype="float32"), dtypes=("float64",), fd=False, label="float32 to float64",
        note="the input is float32 in both dtypes: float32 tolerance for its cotangent"),
      S("copy", lambda x: jnp.array(x, copy=True), UNARY),
      S("name", lambda x: checkpoint_name(lax.sin(x), "h"), UNARY),
      S("sharding_constraint", _single_device, UNARY),
      S("reduce_precision", lambda x: lax.reduce_precision(x, exponent_bits=5,
                                                            mantissa_bits=10), UNARY,
        fd=False, note="rounding to a 10-bit mantissa is a step function: no FD"),
      S("optimization_barrier", lambda x, y: lax.optimization_barrier((x, lax.mul(x, y))),
        SAME),
      S("optimization_barrier", lambda x, i: lax.optimization_barrier((lax.sin(x), i)),
        (((2, 3), (2,)),), (normal(), integers(0, 5)), label="with an int32 operand"),
      # --- transcendental.py -------------------------------------------------------
      S("exp", lax.exp, UNARY),
      S("exp2", lax.exp2, UNARY),
      S("log", lax.log, UNARY, pos),
      S("log", lax.log, UNARY, choice((1e-30, 1e-20, 1e-12)), fd=False, label="near 0",
        note="g/x at x = 1e-30 is 1e30·g: finite in both dtypes, no FD step fits"),
      S("log1p", lax.log1p, UNARY, uniform(-0.5, 2.0)),
      S("expm1", lax.expm1, UNARY),
      S("tanh", lax.tanh, UNARY, normal(2.0)),
      S("logistic", lax.logistic, UNARY, normal(3.0)),
      S("sqrt", lax.sqrt, UNARY, pos),
      S("rsqrt", lax.rsqrt, UNARY, pos),
      S("cbrt", lax.cbrt, UNARY, away_from_zero(0.2, 3.0)),
      S("sin", lax.sin, UNARY, normal(2.0)),
      S("cos", lax.cos, UNARY, normal(2.0)),
      S("tan", lax.tan, UNARY, uniform(-1.2, 1.2)),
      S("asin", lax.asin, UNARY, unit),
      S("acos", lax.acos, UNARY, unit),
      S("atan", lax.atan, UNARY, normal(2.0)),
      S("atan2", lax.atan2, BINARY, away_from_zero(0.3, 2.0)),
      S("sinh", lax.sinh, UNARY),
      S("cosh", lax.cosh, UNARY),
      S("asinh", lax.asinh, UNARY, normal(2.0)),
      S("acosh", lax.acosh, UNARY, uniform(1.1, 3.0)),
      S("atanh", lax.atanh, UNARY, unit),
      S("erf", lax.erf, UNARY),
      S("erfc", lax.erfc, UNARY),
      S("erf_inv", lax.erf_inv, UNARY, unit),
      *_newer_primitive_specs(),
      # --- reductions.py -----------------------------------------------------------
      S("reduce_sum", _all_axes(lax.reduce_sum), ALL_RANKS, label="all axes"),
      S("reduce_sum", _last_axis(lax.reduce_sum), VECTORS + (((2, 0),), ((0, 2),)),
        label="last axis"),
      S("reduce_sum", lambda x: lax.reduce_sum(x, (0, 2)), (((2, 3, 4),), ((1, 2, 1),)),
        label="axes (0, 2)"),
      S("reduce_max", _all_axes(lax.reduce_max), ALL_RANKS, distinct(), label="all axes"),
      S("reduce_max", _last_axis(lax.reduce_max), VECTORS + (((0, 2),),), distinct(),
        label="last axis"),
      S("reduce_min", _all_axes(lax.reduce_min), ALL_RANKS, distinct(), label="all axes"),
      S("reduce_min", lambda x: lax.reduce_min(x, (0,)), VECTORS + (((0, 2),),), distinct(),
        label="axis 0"),
      S("reduce_prod", _all_axes(lax.reduce_prod), ALL_RANKS, uniform(0.5, 1.5),
        label="all axes"),
      S("reduce_prod", _last_axis(lax.reduce_prod), VECTORS + (((0, 2),), ((2, 0),)),
        uniform(0.5, 1.5), label="last axis"),
      S("reduce_prod", lambda x: lax.reduce_prod(x, (0, 2)), (((3, 2, 2),), ((2, 1, 3),)),
        choice((0.0, 0.0, -0.7, 1.3, 2.0)), label="with zeros",
        note="exact with zeros: products of the other factors, no division"),
      S("cumsum", lambda x: lax.cumsum(x, 0), VECTORS),
      S("cumsum", lambda x: lax.cumsum(x, x.ndim - 1, reverse=True), VECTORS, label="reverse"),
      S("cumprod", lambda x: lax.cumprod(x, 0), CUMULATIVE, uniform(0.5, 1.5)),
      S("cumprod", lambda x: lax.cumprod(x, x.ndim - 1, reverse=True), CUMULATIVE,
        choice((0.0, -0.7, 1.3, 2.0)), label="reverse, with zeros"),
      S("cummax", lambda x: lax.cummax(x, 0), CUMULATIVE, distinct()),
      S("cummax", lambda x: lax.cummax(x, x.ndim - 1, reverse=True), CUMULATIVE, distinct(),
        label="reverse"),
      S("cummin", lambda x: lax.cummin(x, 0), CUMULATIVE, distinct()),
      S("cumlogsumexp", lambda x: lax.cumlogsumexp(x, 0), CUMULATIVE, normal(2.0)),
      S("cumlogsumexp", lambda x: lax.cumlogsumexp(x, x.ndim - 1, reverse=True),
        CUMULATIVE, normal(2.0), label="reverse"),
      S("sort", lambda x: lax.sort(x, dimension=0), VECTORS + (((1,),),), distinct()),
      S("sort", lambda x: lax.sort(x, dimension=x.ndim - 1, is_stable=False), VECTORS,
        distinct(), label="unstable"),
      S("sort", lambda k, v: lax.sort((k, v), dimension=0, num_keys=1), (((5,), (5,)),),
        (choice((0.0, 1.0, 2.0)), normal()), fd=False, label="key and value",
        note="ties among the keys (no FD there): the values keep the stable order"),
      S("sort", lambda k, v: lax.sort((k, v), dimension=1, num_keys=1)[1],
        (((2, 4), (2, 4)),), (integers(0, 3), normal()), label="int32 keys"),
      # --- structural.py -----------------------------------------------------------
      S("broadcast_in_dim", lambda x: jnp.broadcast_to(x, (2, 3)),
        (((),), ((3,),), ((1, 3),), ((2, 1),), ((1, 1),))),
      S("broadcast_in_dim", lambda x: lax.broadcast_in_dim(x, (2, 3, 4), (0, 2)),
        (((2, 4),), ((1, 4),), ((2, 1),), ((1, 1),)), label="new middle axis"),
      S("reshape", lambda x: lax.reshape(x, (1, x.size)), UNARY + (((0, 3),),)),
      S("reshape", lambda x: lax.reshape(x, (x.size,), dimensions=(1, 0)),
        (((2, 3),), ((3, 1),), ((1, 4),)), label="dimensions=(1, 0)",
        note="reshape with dimensions= transposes first (ravel in Fortran order)"),
      S("squeeze", lambda x: lax.squeeze(x, (0,)), (((1,),), ((1, 3),), ((1, 2, 1),))),
      S("transpose", lambda x: lax.transpose(x, (1, 0)), (((2, 3),), ((1, 3),), ((2, 1),))),
      S("transpose", lambda x: lax.transpose(x, (1, 2, 0)), (((2, 3, 4),), ((1, 3, 1),)),
        label="3-d"),
      S("rev", lambda x: lax.rev(x, (0,)), VECTORS),
      S("rev", lambda x: lax.rev(x, (0, x.ndim - 1)), (((2, 3),), ((2, 1, 3),)),
        label="two axes"),
      S("concatenate", lambda x, y, z: lax.concatenate([x, y, z], 1),
        (((2, 1), (2, 3), (2, 2)), ((1, 2), (1, 1), (1, 0)))),
      S("split", lambda x: lax.split(x, (1, 2), axis=1), (((2, 3),), ((1, 3),))),
      S("split", lambda x: lax.split(x, (1, 2, 1), axis=0)[1], (((4, 2),), ((4,),)),
        label="one output used",
        note="the unused outputs get zero cotangents (the engine instantiates them)"),
      S("slice", lambda x: lax.slice(x, (0, 1), (2, 3)), (((2, 3),), ((2, 4),), ((3, 3),))),
      S("slice", lambda x: lax.slice(x, (0, 1), x.shape, (2, 2)),
        (((3, 5),), ((1, 4),), ((2, 2),)), label="strided"),
      S("slice", lambda x: lax.slice(x, (1,), (1,)), (((3,),),), label="empty"),
      S("dynamic_slice",
        lambda x, i: lax.dynamic_slice(x, (i, jnp.zeros_like(i)), (2, x.shape[1])),
        (((4, 3), ()), ((2, 1), ())), (normal(), integers(-2, 6)),
        note="out-of-range starts are clamped, in the forward and the backward pass"),
      S("dynamic_update_slice",
        lambda x, u, i: lax.dynamic_update_slice(x, u, (i, jnp.zeros_like(i))),
        (((4, 3), (2, 3), ()), ((3, 1), (1, 1), ())), (normal(), normal(), integers(-1, 5))),
      S("pad", lambda x, v: lax.pad(x, v, ((1, 2, 0), (0, 1, 1))), (((2, 3), ()), ((1, 1), ()))),
      S("pad", lambda x, v: lax.pad(x, v, ((-1, 1, 0), (1, -2, 1))), (((3, 4), ()),),
        label="negative and interior"),
      S("pad", lambda x: jnp.pad(x, 1), (((2, 3),), ((1,),)), label="literal padding value"),
      S("tile", lambda x: jnp.tile(x, (2, 3)), (((2, 3),), ((1, 1),), ((2,),))),
      # --- indexing.py -------------------------------------------------------------
      S("gather", lambda x, i: x[i], (((5,), (4,)), ((4, 3), (2,)), ((4, 3), (1,))),
        (normal(), integers(-4, 4)), note="repeated and negative indices"),
      S("gather", lambda x, i: x[:, i], (((2, 4), (5,)), ((1, 3), (2, 2))),
        (normal(), integers(0, 3)), label="second axis"),
      S("gather", lambda x, i: jnp.take_along_axis(x, i, axis=1), (((2, 3), (2, 4)),),
        (normal(), integers(0, 3)), label="take_along_axis"),
      S("gather", lambda x, i: jnp.take(x, i, mode="fill", fill_value=0.0), (((5,), (6,)),),
        (normal(), integers(0, 8)), label="out of bounds, fill",
        note="a filled read drops its cotangent"),
      S("gather", lambda x, i: jnp.take(x, i, mode="clip"), (((5,), (6,)),),
        (normal(), integers(0, 8)), label="out of bounds, clip"),
      S("scatter-add", lambda x, i, u: x.at[i].add(u),
        (((5,), (4,), (4,)), ((4, 3), (3,), (3, 3)), ((3,), (), ())),
        (normal(), integers(0, 3), normal()), note="repeated indices accumulate"),
      S("scatter-add", lambda x, i, u: x.at[i].add(u, mode="drop"), (((5,), (6,), (6,)),),
        (normal(), integers(0, 8), normal()), label="out of bounds, drop"),
      S("scatter", lambda x, i, u: x.at[i].set(u),
        (((5,), (4,), (4,)), ((4, 3), (3,), (3, 3)), ((3,), (), ())),
        (normal(), integers(0, 3), normal()),
        note="with repeated indices only the update that won gets blame"),
      S("scatter", lambda x, i, u: x.at[i].set(u, unique_indices=True),
        (((5,), (5,), (5,)), ((4, 3), (4,), (4, 3))), (normal(), permutation(), normal()),
        label="unique indices"),
      S("scatter", lambda x, i, u: x.at[i].set(u, mode="drop"), (((5,), (6,), (6,)),),
        (normal(), integers(0, 8), normal()), label="out of bounds, drop"),
      # --- linalg.py ---------------------------------------------------------------
      S("dot_general", jnp.matmul, (((2, 3), (3, 4)), ((3,), (3,)), ((2, 3), (3,)),
                                    ((3,), (3, 2)), ((1, 1), (1, 1)), ((2, 2, 3), (2, 3, 1)),
                                    ((0, 3), (3, 2)))),
      S("dot_general", lambda x, y: jnp.einsum("bik,bjk->bij", x, y),
        (((2, 3, 4), (2, 1, 4)),), label="einsum bik,bjk->bij"),
      S("dot_general", lambda x, y: lax.dot_general(x, y, (((0, 2), (2, 1)), ((1,), (0,)))),
        (((3, 2, 4), (2, 4, 3)), ((1, 1, 2), (1, 2, 1))), label="permuted contraction"),
      S("dot_general", lambda x, y: lax.dot_general(
          x, y, (((1,), (0,)), ((), ())), preferred_element_type=x.dtype),
        (((2, 3), (3, 2)),), label="preferred_element_type"),
      S("dot_general", lambda x, y: lax.dot_general(
          x, y, (((x.ndim - 1,), (0,)), ((), ())), preferred_element_type=jnp.float32),
        (((2, 3), (3, 2)), ((4,), (4,))), normal(dtype="bfloat16"), dtypes=("float32",),
        fd=False, label="bfloat16 inputs, float32 accumulation",
        note="mixed precision: the inputs' cotangents are bfloat16, compared at bfloat16 "
             "tolerance (1.6e-2 / 1e-3)"),
      # --- layers.py ---------------------------------------------------------------
      S("dense", ops.dense, (((4, 3), (3, 2), (2,)), ((3,), (3, 2), (2,)),
                             ((2, 2, 3), (3, 1), (1,)), ((0, 3), (3, 2), (2,)))),
      S("relu", ops.relu, UNARY, away_from_zero()),
      S("relu", ops.relu, (((6,),),), choice((0.0, -1.0, 1.0)), fd=False, label="at 0",
        note="relu'(0) = 0, the convention of jax.nn.relu"),
      S("sigmoid", ops.sigmoid, UNARY, normal(3.0)),
      S("tanh", ops.tanh, UNARY, normal(2.0), label="handgrad.ops.tanh",
        note="the layer op and the primitive share the key and the rule"),
      S("softmax", ops.softmax, VECTORS + (((1, 1),),)),
      S("softmax", functools.partial(ops.softmax, axis=0), VECTORS, label="axis=0"),
      S("softmax", ops.softmax, (((2, 4),),), normal(1e4), label="logits ±1e4",
        note="the max is subtracted first: no overflow"),
      S("softmax", _masked(ops.softmax), (((3, 4), (3, 4)),), (normal(), booleans(0.7)),
        fd=False, label="-inf mask",
        note="masked logits are -inf; a fully masked row is NaN in the output"),
      S("log_softmax", ops.log_softmax, VECTORS + (((1, 1),),)),
      S("log_softmax", functools.partial(ops.log_softmax, axis=0), VECTORS, label="axis=0"),
      S("log_softmax", ops.log_softmax, (((2, 4),),), normal(1e4), fd=False,
        label="logits ±1e4",
        note="outputs of size 1e4 round to 1e-12, over a 1e-6 step: FD error 1e-6"),
      S("log_softmax", _masked(ops.log_softmax), (((3, 4), (3, 4)),),
        (normal(), booleans(0.7)), fd=False, label="-inf mask"),
      S("softmax_cross_entropy", ops.softmax_cross_entropy,
        (((4, 3), (4,)), ((1, 3), (1,)), ((2, 3, 3), (2, 3)), ((0, 3), (0,))),
        (normal(), integers(0, 3)), note="integer labels; an empty batch has a NaN loss"),
      S("softmax_cross_entropy", ops.softmax_cross_entropy, (((2, 1), (2,)),),
        (normal(), integers(0, 1)), label="one class"),
      S("softmax_cross_entropy", ops.softmax_cross_entropy, (((4, 3), (4,)),),
        (normal(1e4), integers(0, 3)), label="logits ±1e4"),
      S("mse", ops.mse, (((4, 3), (4, 3)), ((), ()), ((1,), (1,)), ((0, 3), (0, 3)))),
      S("layer_norm", ops.layer_norm, (((4, 3), (3,), (3,)), ((3,), (3,), (3,)),
                                       ((2, 1, 4), (4,), (4,)), ((1, 1), (1,), (1,)),
                                       ((0, 3), (3,), (3,)))),
      S("layer_norm", ops.layer_norm, (((2, 4), (4,), (4,)),), (fixed(0.3), normal(), normal()),
        label="constant row", note="x̂ = 0, the rsqrt(ε) factor is finite"),
      S("attention_weights", ops.attention,
        (((3, 2, 4), (5, 2, 4), (5, 2, 4)), ((1, 1, 1),) * 3, ((2, 3, 1, 2),) * 3)),
      S("attention_weights", functools.partial(ops.attention, causal=True),
        (((3, 2, 4),) * 3, ((2, 1, 2), (3, 1, 2), (3, 1, 2))), label="causal"),
      S("attention_weights", functools.partial(ops.attention, causal=True),
        (((4, 1, 2), (2, 1, 2), (2, 1, 2)),), fd=False, label="causal, unseen queries",
        note="T > S: the first queries see no key, NaN rows; dq and dk stay finite"),
      S("attention_weights", _attention_with_weights, (((3, 2, 2), (4, 2, 2), (4, 2, 2)),),
        label="weights output", note="blame arrives at both outputs, out and weights"),
  ]


@functools.lru_cache(maxsize=None)
def _specs() -> tuple[RuleSpec, ...]:
  # Imported here: the family tables import this module's RuleSpec and samplers.
  from handgrad._src.spec_tables import family_tables
  return tuple(_table()) + tuple(family_tables())


def all_specs() -> list[RuleSpec]:
  """Every spec of the table, in table order."""
  return list(_specs())


def covered_rules() -> set[str]:
  """Rule names with at least one spec."""
  return {s.name for s in _specs()}


# -------------------------------------------------------------------------------------
# Running a spec.
#
# XLA compiles every primitive that runs eagerly on its own (tens of milliseconds each on
# CPU, far more than the arithmetic of a whole spec), so a spec runs, per dtype, as one
# jitted program holding every shape case: the reference (``jax.vjp``), the hand pass
# (``handgrad.vjp``, whose rules run at trace time exactly as under a user's
# ``jax.jit``) and the finite-difference evaluations.  Cotangents are drawn on the host
# with numpy, so no random-number program is compiled per shape.

def precision(dtype: str):
  """Context in which ``dtype`` exists: 64-bit JAX for float64 and complex128, else as
  it is."""
  return jax.enable_x64(True) if dtype in _X64 else contextlib.nullcontext()


_X64 = ("float64", "complex128")


def _is_float(x) -> bool:
  return jnp.issubdtype(jnp.result_type(x), jnp.inexact)


def _plain_jit(eqn):
  """The body of a plain ``jit`` (not a layer op), which the sites descend into."""
  return hj.inline_body(eqn) if hj.rule_name(eqn) == "jit" else None


def _sites(jaxpr, consts, args, found: list) -> list:
  """Evaluates ``jaxpr`` and appends ``(rule name, eqn, invals, outs)`` for every
  equation, descending into nested ``jit``s that are not layer-level operations."""

  def eval_eqn(i, eqn, invals):  # literals arrive as the engine passes them to rules
    body = _plain_jit(eqn)
    if body is not None:
      _sites(body[0], body[1], invals, found)
    outs = hj.bind(eqn, invals)
    found.append((hj.rule_name(eqn), eqn, invals, outs))
    return outs

  hj.interpret(jaxpr, consts, args, eval_eqn)
  return found


def rule_sites(fun: Callable, *args) -> list[tuple[str, Any, list, list]]:
  """Every equation ``fun(*args)`` evaluates, as ``(rule name, eqn, invals, outs)``.

  The rule name is the layer-level operation's name for a layer op, else the
  primitive's.  Equations inside nested ``jit`` are included (``jit`` itself too).
  Evaluates eagerly; inside a trace the values are tracers.
  """
  closed = jax.make_jaxpr(fun)(*args)
  return _sites(closed.jaxpr, closed.consts, list(jax.tree.leaves(args)), [])


def rule_names(fun: Callable, *args) -> set[str]:
  """Names of the rules ``fun(*args)``'s jaxpr calls for, nested ``jit`` included
  (nothing is evaluated)."""
  return _rule_names_of(jax.make_jaxpr(fun)(*args).jaxpr)


def _rule_names_of(jaxpr) -> set[str]:
  return {hj.rule_name(eqn) for eqn in hj.equations(jaxpr, descend=_jit_or_shard_map)}


def _jit_or_shard_map(eqn):
  """A plain ``jit``'s body, or a ``shard_map``'s (the collectives' specs put their
  equation in one); names only, nothing is evaluated."""
  if eqn.primitive.name == "shard_map":
    return hj.shard_map_params(eqn.params)["body"], []
  return _plain_jit(eqn)


def _failed(name: str, reference: str) -> check.CheckReport:
  return check.CheckReport(name, reference, math.inf, math.inf, 0.0, 0.0, False)


def _cotangents(out_shapes, rng: np.random.Generator) -> list:
  """Standard-normal cotangents for the float leaves of ``out_shapes`` (both parts
  standard normal for complex leaves)."""
  return [_parts(lambda: rng.standard_normal(o.shape), o.dtype, None).astype(o.dtype)
          for o in jax.tree.leaves(out_shapes) if _is_float(o)]


def _full_cotangents(out_tree, float_cts: Sequence) -> Any:
  """The cotangent pytree for ``out_tree``: ``float_cts`` in order for float leaves,
  float0 zeros for integer and boolean ones."""
  leaves, treedef = jax.tree.flatten(out_tree)
  it = iter(float_cts)
  return jax.tree.unflatten(treedef, [
      next(it) if _is_float(o) else np.zeros(np.shape(o), jax.dtypes.float0) for o in leaves])


def _returns_none(spec: RuleSpec, args: Sequence) -> bool:
  """Calls the no-gradient rule ``spec.name`` on each of its equations in ``spec.fun``."""
  rule = registry.registry[spec.name]
  sites = [s for s in rule_sites(spec.fun, *args) if s[0] == spec.name]
  passed = bool(sites)
  for _, eqn, invals, outs in sites:
    g = [jnp.zeros_like(o) for o in outs]
    g, ans = (g, outs) if eqn.primitive.multiple_results else (g[0], outs[0])
    cts = rule(g, ans, *invals, **eqn.params)
    passed &= len(cts) == len(invals) and all(ct is None for ct in cts)
  return passed


def _perturbed(x: np.ndarray, eps: float) -> np.ndarray:
  """``[x + eps·e_0, …, x + eps·e_{n−1}, x − eps·e_0, …]``, stacked on a new axis 0.

  For a complex ``x`` the steps go along the real and the imaginary parts:
  ``[x + eps·e_k]ₖ, [x + i·eps·e_k]ₖ, [x − eps·e_k]ₖ, [x − i·eps·e_k]ₖ``.
  """
  n = x.size
  steps = (eps * np.eye(n, dtype=np.float64)).reshape((n,) + x.shape)
  if np.iscomplexobj(x):
    steps = np.concatenate([steps, 1j * steps])
    return np.concatenate([x + steps, x - steps]).astype(np.complex128)
  return np.concatenate([x + steps, x - steps]).astype(np.float64)


def _numeric(v: np.ndarray, x: np.ndarray) -> np.ndarray:
  """The central-difference gradient of argument ``x`` from the projections ``v`` at
  :func:`_perturbed` inputs.  JAX's cotangent of a complex input is
  ``∂p/∂Re x − i·∂p/∂Im x`` for the real projection ``p`` (the transpose under
  ``⟨a, b⟩ = Re Σ a·b``)."""
  half = v.size // 2
  d = (v[:half] - v[half:]) / (2 * FD_EPS)
  if np.iscomplexobj(x):
    d = d[:x.size] - 1j * d[x.size:]
  return d.reshape(x.shape)


def _projection(fun: Callable, i: int, cts: Sequence) -> Callable:
  """``(args…) ↦ Re Σ fun(args…) · ct`` over the float outputs: a real scalar whose
  gradient with respect to argument ``i`` is the VJP of ``cts``."""
  def projection(*args):
    outs = [o for o in jax.tree.leaves(fun(*args)) if _is_float(o)]
    total = sum((jnp.sum(jnp.real(o * c)) for o, c in zip(outs, cts)),
                jnp.zeros((), jnp.real(jnp.zeros((), args[i].dtype)).dtype))
    return total
  return projection


def _central_differences(fun: Callable, args: Sequence, i: int, cts: Sequence,
                         steps: Any) -> Any:
  """The projection at every perturbed input ``steps`` of argument ``i`` (traced).

  Every argument is tiled along the batch axis, not only argument ``i``: a batching
  rule sees operands batched alike (``clamp``'s refuses a batched bound around an
  unbatched scalar operand).
  """
  n = steps.shape[0]
  if n == 0:
    return jnp.zeros((0,), steps.dtype)
  batched = [steps if j == i else jnp.broadcast_to(a, (n,) + jnp.shape(a))
             for j, a in enumerate(args)]
  return jax.vmap(_projection(fun, i, cts))(*batched)


def check_rule(spec: RuleSpec, dtype: str, *, seed: int = 0,
               finite_differences: bool = False) -> list[check.CheckReport]:
  """Checks ``spec`` in ``dtype`` over its shape cases.

  Per case: ``handgrad.vjp`` against ``jax.vjp`` on a random cotangent (outputs and
  input cotangents, tolerance of :func:`handgrad._src.check.tolerance` unless the spec
  overrides float32); in float64, when ``finite_differences`` is set and the spec allows
  it, the hand cotangents against central differences of ``Σ out · ct`` (the formula of
  :func:`handgrad._src.check.numerical_gradient`, eps = 1e-6, every perturbed input
  evaluated in the same program by ``vmap``); for a no-gradient rule, that the rule
  called directly returns ``None`` for every input ("rule returns None").  Last, a
  failing report "rule applied" when the engine never applied a gradient-passing rule,
  so the spec would test nothing.
  """
  dtype = jnp.dtype(dtype).name
  applied: set[str] = set()
  observer = engine.Observer(lambda eqn, layer, *_: applied.add(layer or eqn.primitive.name))
  with_fd = finite_differences and spec.fd and dtype in _X64
  names, cases, none_ok = [], [], []
  with precision(dtype):
    for case, shapes in enumerate(spec.shapes):
      names.append(f"{spec.id} {dtype} {', '.join(map(str, shapes))}")
      rng = np.random.default_rng([seed, case, 1 + zlib.crc32(spec.id.encode())])
      args = spec.sample(dtype, case, seed)
      out_tree = jax.eval_shape(spec.fun, *args)
      floats = [i for i, a in enumerate(args) if _is_float(a)]
      steps = [_perturbed(args[i], FD_EPS) for i in floats] if with_fd else []
      cases.append((out_tree, floats, (args, _cotangents(out_tree, rng), steps)))

    def program(inputs):
      results = []
      for k, ((out_tree, floats, _), (args, cts, steps)) in enumerate(zip(cases, inputs)):
        full_cts = _full_cotangents(out_tree, cts)
        out_ref, vjp_ref = jax.vjp(spec.reference or spec.fun, *args)
        with engine.observe(observer):
          out, vjp_hand = api.vjp(spec.fun, *args)
          hand = vjp_hand(full_cts)
        if spec.no_gradient:
          none_ok.append(k if _returns_none(spec, args) else None)
        ref = vjp_ref(full_cts)
        values = [_central_differences(spec.fun, args, i, cts, xs)
                  for i, xs in zip(floats, steps)]
        results.append(((out, [hand[i] for i in floats]), (out_ref, [ref[i] for i in floats]),
                        values))
      return results

    # All shape cases in one program: one compilation per spec and dtype.
    inputs = [inputs for *_, inputs in cases]
    results = jax.jit(program).lower(inputs).compile(_QUICK_COMPILE)(inputs)

  rtol, atol = spec.tolerance(dtype)
  reports = []
  for k, (name, (_, floats, (args, _, _)), (actual, expected, values)) in enumerate(
      zip(names, cases, results)):
    reports.append(check.compare(name, "jax.vjp", actual, expected, rtol, atol))
    if with_fd:
      numeric = [_numeric(v, a)
                 for v, a in zip(map(np.asarray, values), (args[i] for i in floats))]
      reports.append(check.compare(name, "finite differences", actual[1], numeric,
                                   rtol=FD_RTOL, atol=FD_ATOL))
    if spec.no_gradient:
      reports.append(check.CheckReport(name, "rule returns None", 0.0, 0.0, 0.0, 0.0,
                                       k in none_ok))
  if not spec.no_gradient and spec.name not in applied:
    reports.append(_failed(f"{spec.id} {dtype}", "rule applied"))
  return reports


def _severity(report: check.CheckReport) -> tuple:
  return (not report.passed, report.max_abs_err / max(report.atol, 1e-300))


def check_all_rules(dtypes: Iterable[str] = DTYPES, finite_differences: bool = True,
                    names: Iterable[str] | None = None,
                    ) -> list[tuple[str, str, check.CheckReport]]:
  """``(rule name, column, worst report)`` for every covered rule (or only ``names``),
  sorted by rule name: the table of ``handgrad check``.

  The column is a dtype (reports against ``jax.vjp``, and for no-gradient rules the
  direct call) or :data:`FD_COLUMN` (central differences, float64).  The worst report
  is a failing one if any, else the one whose largest error is the largest share of
  its absolute tolerance.
  """
  wanted = None if names is None else set(names)
  worst: dict[tuple[str, str], check.CheckReport] = {}
  for spec in _specs():
    if wanted is not None and spec.name not in wanted:
      continue
    for dtype in dtypes:
      dtype = jnp.dtype(dtype).name
      if dtype not in spec.dtypes:
        continue
      for report in check_rule(spec, dtype, finite_differences=finite_differences):
        fd_column = FD_COLUMN if dtype == "float64" else f"fd ({dtype})"
        key = (spec.name, fd_column if report.reference == "finite differences" else dtype)
        if key not in worst or _severity(report) > _severity(worst[key]):
          worst[key] = report
  return [(name, column, worst[name, column]) for name, column in sorted(worst)]
