"""Convolution: ``conv_general_dilated``, every parameter.

A convolution is a matmul per window, so its VJP is the dense rule's two formulas,
each again a convolution.  Ignoring the spatial axes, with batch ``n``, input features
``c`` and output features ``o``::

    y[n, o] = Σ_c x[n, c] · w[o, c]          (the forward pass: y = x·Wᵀ per window)
    dx[n, c] = Σ_o dy[n, o] · w[o, c]        dx = dy·W   (as dense's dx = dZ·Wᵀ)
    dw[o, c] = Σ_n dy[n, o] · x[n, c]        dW = dyᵀ·x  (as dense's dW = xᵀ·dZ)

Along a spatial axis, ``y[i] = Σ_j w[j]·x̃[i·s + j·d]`` where ``x̃`` is the input
dilated by ``a`` (``lhs_dilation``: a − 1 zeros between elements) and padded by
``(lo, hi)``, ``s`` the window stride and ``d`` the kernel dilation (``rhs_dilation``).
Hence

* the input gradient is the output cotangent, dilated by the stride ``s``, correlated
  with the spatially flipped kernel whose in/out features are swapped, at stride ``a``;
* the kernel gradient correlates the input with the output cotangent: the cotangent
  plays the kernel, dilated by ``s``, and the kernel dilation ``d`` becomes the stride.

The padding arithmetic of both is in :func:`_input_grad_padding` and
:func:`_kernel_grad_padding`.  Conventions (layouts as ``ConvDimensionNumbers``,
feature groups and batch groups split their axis group-major) are those of
``jax.lax.conv_general_dilated``; the rule was written from the math and checked
against ``jax.vjp`` in every configuration of the spec table.
"""

from __future__ import annotations

import jax
import numpy as np
from jax import lax

from handgrad._src.registry import defvjp


def _zeros(x):
  # full_like keeps x's sharding: a cotangent carries its primal's sharding.
  return lax.full_like(x, 0)


# --- padding arithmetic --------------------------------------------------------------
#
# Along one spatial axis: n input elements, lhs dilation a, padding (lo, hi), kernel
# size k, kernel dilation d, stride s, o outputs.  The dilated input has
# n_d = (n − 1)·a + 1 elements, the dilated kernel spans k_d = (k − 1)·d + 1, the padded
# input has P = n_d + lo + hi, and o = ⌊(P − k_d)/s⌋ + 1.  The last window ends at
# (o − 1)·s + k_d − 1, so the last t = P − k_d − (o − 1)·s padded positions are never
# read: no gradient flows to them.

def _dilated(size: int, dilation: int) -> int:
  return (size - 1) * dilation + 1 if size else 0


def _unread_tail(n, a, lo, hi, k, d, s, o) -> int:
  """t: padded positions past the last window (0 ≤ t < s)."""
  return _dilated(n, a) + lo + hi - _dilated(k, d) - (o - 1) * s


def _input_grad_padding(n, a, lo, hi, k, d, s, o) -> tuple[int, int]:
  """Padding of the (s-dilated) output cotangent for the input gradient.

  dx̃[p] = Σ_j w[j]·dỹ[p − j·d] is a true convolution of the dilated cotangent with the
  dilated kernel; with the kernel flipped it is a correlation whose window must start
  k_d − 1 positions before dỹ's first element.  The input was padded by ``lo`` in front,
  so x[0] sits at p = lo: pad dỹ by k_d − 1 − lo in front.  At the back, by the same
  count k_d − 1 − hi, plus the t unread positions (they belong to x̃ but no output
  read them).  Either may be negative (negative forward padding cropped the input,
  or more padding than kernel).
  """
  kd = _dilated(k, d)
  return kd - 1 - lo, kd - 1 - hi + _unread_tail(n, a, lo, hi, k, d, s, o)


def _kernel_grad_padding(n, a, lo, hi, k, d, s, o) -> tuple[int, int]:
  """Padding of the input for the kernel gradient: the forward's, less the t unread
  trailing positions, so the (s-dilated) cotangent slides over exactly k positions
  at stride d: ((o − 1)·s + k_d − (o − 1)·s − 1)/d + 1 = k."""
  return lo, hi - _unread_tail(n, a, lo, hi, k, d, s, o)


# --- moving a group axis -------------------------------------------------------------

def _split_groups(x, axis: int, groups: int):
  """Splits ``axis`` of size G·m into two axes (G, m), group-major (``axis`` then holds
  the group index, ``axis + 1`` the index within the group)."""
  shape = list(x.shape)
  shape[axis:axis + 1] = [groups, shape[axis] // groups]
  return lax.reshape(x, tuple(shape))


def _fold_into(x, src: int, dst: int):
  """Removes axis ``src`` and folds it into axis ``dst`` (numbered without ``src``) as
  its major factor: sizes (G at src, m at dst) become G·m at dst."""
  perm = [i for i in range(x.ndim) if i != src]
  perm.insert(dst, src)
  x = lax.transpose(x, tuple(perm))
  shape = list(x.shape)
  shape[dst:dst + 2] = [shape[dst] * shape[dst + 1]]
  return lax.reshape(x, tuple(shape))


def _flipped_transposed_kernel(w, rhs_spec, groups: int):
  """The kernel of the input gradient, in ``w``'s layout with the roles of its feature
  axes swapped: ``rhs_spec[1]`` now holds the output features (the forward's input
  features) and ``rhs_spec[0]`` the input features.

  With G groups (feature or batch groups), w's output features are G blocks of O/G;
  block g serves input features g·C/G … (g + 1)·C/G − 1 (feature groups) or the g-th
  block of the batch (batch groups).  Moving the block index from the output-feature
  axis into the input-feature axis (group-major) gives a kernel with G·(C/G) outputs
  of O/G inputs each: a feature-grouped convolution of the cotangent.  The spatial
  axes are reversed: correlation with the flipped kernel is convolution.
  """
  out_axis, in_axis = rhs_spec[0], rhs_spec[1]
  if groups > 1:
    w = _fold_into(_split_groups(w, out_axis, groups), out_axis, in_axis)
  return lax.rev(w, tuple(rhs_spec[2:]))


def _swap(spec):
  """The spec with its first two roles (batch and feature, or out and in) swapped."""
  return (spec[1], spec[0]) + tuple(spec[2:])


def _sharding_of(x):
  # A cotangent carries its primal's sharding (under a mesh with Explicit axes the
  # transposed convolutions cannot infer it: their contraction runs over sharded axes).
  return jax.typeof(x).sharding


# --- the rule ------------------------------------------------------------------------

@defvjp("conv_general_dilated")
def _conv_general_dilated_vjp(dy, y, x, w, *, window_strides, padding, lhs_dilation,
                              rhs_dilation, dimension_numbers, feature_group_count,
                              batch_group_count, precision, preferred_element_type,
                              out_sharding=None, **unknown):
  # out_sharding is the forward's own; the cotangents take their primals' shardings.
  """y = conv(x, w):   dx = conv(dilate_s(dy), flip(wᵀ)),   dw = corr(x, dilate_s(dy)).

  x: lhs in ``lhs_spec`` layout [N, C, spatial…] (any axis order), w: [O, C/G, k…] in
  ``rhs_spec``, y: [N/B, O, o…] in ``out_spec``; G = feature_group_count,
  B = batch_group_count (at most one of them is > 1).
  """
  if unknown:
    raise NotImplementedError(
        f"conv_general_dilated: the rule does not know the param(s) {sorted(unknown)}")
  lhs_spec, rhs_spec, out_spec = dimension_numbers
  # per spatial axis: (n, a, lo, hi, k, d, s, o) as in the padding arithmetic above
  dims = [(x.shape[li], a, lo, hi, w.shape[ri], d, s, y.shape[oi])
          for li, ri, oi, a, (lo, hi), d, s in zip(lhs_spec[2:], rhs_spec[2:], out_spec[2:],
                                                   lhs_dilation, padding, rhs_dilation,
                                                   window_strides)]
  if dy.size == 0 or x.size == 0 or w.size == 0:
    # An empty output, or nothing to sum over (zero features or an empty kernel): the
    # output does not depend on x or w.
    return _zeros(x), _zeros(w)
  G, B = feature_group_count, batch_group_count
  groups = max(G, B)

  # dx = dy · W: the s-dilated cotangent correlated with the flipped, feature-swapped
  # kernel at stride a (the input's dilation).  With batch groups the result has B
  # blocks of C features, block b belonging to the b-th block of the batch.
  kernel = _flipped_transposed_kernel(w, rhs_spec, groups)
  if kernel.dtype != dy.dtype:
    kernel = lax.convert_element_type(kernel, dy.dtype)
  dx = lax.conv_general_dilated(
      dy, kernel, window_strides=tuple(lhs_dilation),
      padding=tuple(_input_grad_padding(*d) for d in dims),
      lhs_dilation=tuple(window_strides), rhs_dilation=tuple(rhs_dilation),
      dimension_numbers=lax.ConvDimensionNumbers(out_spec, _swap(rhs_spec), lhs_spec),
      feature_group_count=groups, batch_group_count=1, precision=precision,
      preferred_element_type=preferred_element_type,
      out_sharding=_sharding_of(x))
  if B > 1:
    dx = _fold_into(_split_groups(dx, lhs_spec[1], B), lhs_spec[1], lhs_spec[0])
  dx = dx.astype(x.dtype)

  # dw = dyᵀ · x: batch and features of x and dy swap roles, the s-dilated cotangent is
  # the kernel, d the stride.  Feature groups of the forward become batch groups here
  # (input-feature block g pairs with output-feature block g) and batch groups become
  # feature groups (batch block b pairs with output-feature block b).
  lhs = x if x.dtype == dy.dtype else lax.convert_element_type(x, dy.dtype)
  dw = lax.conv_general_dilated(
      lhs, dy, window_strides=tuple(rhs_dilation),
      padding=tuple(_kernel_grad_padding(*d) for d in dims),
      lhs_dilation=tuple(lhs_dilation), rhs_dilation=tuple(window_strides),
      dimension_numbers=lax.ConvDimensionNumbers(_swap(lhs_spec), _swap(out_spec),
                                                 _swap(rhs_spec)),
      feature_group_count=B, batch_group_count=G, precision=precision,
      preferred_element_type=preferred_element_type,
      out_sharding=_sharding_of(w))
  return dx, dw.astype(w.dtype)
