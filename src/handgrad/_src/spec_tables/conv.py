"""Specs of ``conv_general_dilated`` (``rules/conv.py``): strides, explicit, SAME, VALID
and negative padding, lhs (transposed convolution) and rhs dilation, feature and batch
groups, 0-D/1-D/2-D/3-D, NCHW, NHWC and permuted layouts, preferred_element_type and
precision."""

from __future__ import annotations

import functools

from jax import lax

from handgrad._src.specs import RuleSpec, normal


def _conv(dn=None, **kw):
  def conv(x, w):
    return lax.conv_general_dilated(x, w, dimension_numbers=dn, **kw)
  return conv


def table() -> list[RuleSpec]:
  S = functools.partial(RuleSpec, "conv_general_dilated")
  nhwc = ("NHWC", "HWIO", "NHWC")
  return [
      S(_conv(window_strides=(1, 1), padding="VALID"),
        (((2, 3, 5, 4), (2, 3, 3, 2)), ((1, 1, 3, 3), (1, 1, 1, 1)),
         ((2, 2, 4, 4), (3, 2, 4, 4))), label="NCHW VALID"),
      S(_conv(window_strides=(2, 1), padding="SAME"),
        (((2, 3, 5, 4), (2, 3, 3, 2)), ((1, 2, 6, 7), (3, 2, 2, 3))), label="NCHW SAME strided"),
      S(_conv(nhwc, window_strides=(2, 3), padding=((1, 2), (0, 1))),
        (((2, 7, 8, 3), (3, 2, 3, 4)), ((1, 4, 4, 1), (2, 2, 1, 2))),
        label="NHWC explicit padding, strides"),
      S(_conv(nhwc, window_strides=(1, 2), padding=((-1, 2), (2, -1))),
        (((2, 6, 7, 2), (3, 2, 2, 3)),), label="negative padding"),
      S(_conv(window_strides=(3,), padding=((0, 0),)),
        (((1, 2, 8), (2, 2, 2)), ((2, 1, 9), (1, 1, 3))), label="1-D stride > kernel",
        note="positions between windows receive no gradient"),
      S(_conv(window_strides=(2,), padding=((1, 3),)),
        (((1, 2, 7), (2, 2, 3)),), label="1-D unread tail",
        note="the last padded positions past the final window are never read"),
      S(_conv(window_strides=(1, 1), padding="SAME", rhs_dilation=(2, 3)),
        (((2, 2, 7, 8), (3, 2, 3, 2)),), label="rhs dilation (atrous)"),
      S(_conv(window_strides=(1, 1), padding=((2, 2), (1, 1)), lhs_dilation=(2, 3)),
        (((1, 2, 3, 4), (2, 2, 3, 3)),), label="lhs dilation (transposed conv)"),
      S(lambda x, w: lax.conv_transpose(x, w, (2, 2), "SAME",
                                        dimension_numbers=("NHWC", "HWIO", "NHWC")),
        (((2, 3, 4, 2), (3, 3, 2, 3)),), label="conv_transpose SAME"),
      S(lambda x, w: lax.conv_transpose(x, w, (2,), "VALID", rhs_dilation=(2,),
                                        dimension_numbers=("NWC", "WIO", "NWC"),
                                        transpose_kernel=True),
        (((1, 4, 2), (3, 3, 2)),), label="conv_transpose transpose_kernel, dilated"),
      S(_conv(window_strides=(2, 1), padding=((1, 0), (0, 2)), lhs_dilation=(2, 1),
              rhs_dilation=(1, 2)),
        (((2, 2, 4, 5), (3, 2, 2, 2)),), label="both dilations, strides"),
      S(_conv(window_strides=(1, 1), padding="SAME", feature_group_count=2),
        (((2, 4, 5, 5), (6, 2, 3, 3)), ((1, 2, 3, 4), (2, 1, 2, 2))), label="feature groups"),
      S(_conv(nhwc, window_strides=(2, 2), padding="SAME", feature_group_count=3),
        (((2, 5, 5, 3), (3, 3, 1, 3)),), label="depthwise NHWC"),
      S(_conv(window_strides=(1, 2), padding=((0, 1), (1, 0)), batch_group_count=2),
        (((4, 3, 5, 4), (4, 3, 2, 2)), ((2, 1, 3, 3), (2, 1, 1, 2))), label="batch groups"),
      S(_conv(nhwc, window_strides=(1, 1), padding=((1, 0), (0, 1)), batch_group_count=3,
              lhs_dilation=(1, 2)),
        (((3, 4, 3, 2), (2, 2, 2, 6)),), label="batch groups NHWC, lhs dilation"),
      S(_conv(("NDHWC", "DHWIO", "NDHWC"), window_strides=(1, 2, 1), padding="SAME"),
        (((1, 3, 4, 3, 2), (2, 2, 2, 2, 2)),), label="3-D"),
      S(_conv(("NWC", "WIO", "NWC"), window_strides=(1,), padding="SAME",
              rhs_dilation=(2,), feature_group_count=2),
        (((2, 6, 4), (3, 2, 4)),), label="1-D NWC grouped dilated"),
      S(_conv(("HNCW", "WOHI", "CWNH"), window_strides=(2, 1), padding=((1, 1), (0, 1))),
        (((5, 2, 3, 4), (2, 4, 3, 3)),), label="permuted layouts"),
      S(_conv(("NC", "OI", "NC"), window_strides=(), padding=()),
        (((3, 4), (2, 4)),), label="0-D (a matmul)"),
      S(_conv(window_strides=(1,), padding="VALID"),
        (((0, 2, 5), (3, 2, 2)), ((2, 2, 2), (3, 2, 3)), ((2, 0, 4), (3, 0, 2))),
        label="empty batch, empty output, zero features",
        note="no output or nothing summed: zero gradients"),
      S(_conv(window_strides=(1, 1), padding="SAME", precision=lax.Precision.HIGHEST,
              preferred_element_type="float32"),
        (((1, 2, 4, 4), (2, 2, 3, 3)),), dtypes=("float32",), label="precision, preferred",
        fd=False, note="float32 in, float32 accumulation"),
      S(_conv(window_strides=(1, 1), padding="SAME", preferred_element_type="float32"),
        (((1, 2, 4, 4), (2, 2, 3, 3)),), normal(dtype="bfloat16"), dtypes=("float32",),
        fd=False, label="bfloat16 inputs, float32 accumulation",
        note="mixed precision: the inputs' cotangents are bfloat16, compared at bfloat16 "
             "tolerance (1.6e-2 / 1e-3)"),
  ]
