"""Specs of the convolutional layer-level operations (``rules/cnn_layers.py``)."""

from __future__ import annotations

import functools

from handgrad._src.rules import cnn_layers as ops  # the layer-level ops handgrad.ops re-exports
from handgrad._src.specs import RuleSpec, choice, distinct, integers, normal, uniform


def _bn(train, **kw):
  return lambda x, g, b, m, v: ops.batch_norm(x, g, b, m, v, train=train, **kw)


def _bn_state_loss(x, g, b, m, v):
  # blame on all three outputs: y and the updated running statistics
  return ops.batch_norm(x, g, b, m, v, train=True, momentum=0.8)


def table() -> list[RuleSpec]:
  S = RuleSpec
  P = functools.partial
  return [
      S("conv2d", ops.conv2d, (((2, 5, 5, 3), (3, 3, 3, 4), (4,)),
                               ((1, 4, 6, 1), (2, 3, 1, 2), (2,)),
                               ((0, 4, 4, 2), (3, 3, 2, 2), (2,)))),
      S("conv2d", P(ops.conv2d, strides=(2, 1), padding="VALID"),
        (((2, 6, 5, 2), (3, 2, 2, 3), (3,)),), label="strided VALID"),
      S("conv2d", P(ops.conv2d, strides=(2, 3), padding=((1, 2), (-1, 1))),
        (((1, 7, 8, 2), (3, 3, 2, 2), (2,)),), label="explicit, negative padding"),
      S("max_pool", ops.max_pool, (((2, 4, 6, 3),), ((1, 5, 5, 1),), ((0, 2, 2, 1),)),
        distinct()),
      S("max_pool", P(ops.max_pool, window=(3, 3), strides=(2, 1), padding="SAME"),
        (((2, 5, 4, 2),),), distinct(), label="overlapping SAME"),
      S("max_pool", ops.max_pool, (((2, 4, 4, 2),),), choice((0.0, 1.0)), fd=False,
        label="ties", note="the first maximum of a tied window takes its whole cotangent"),
      S("avg_pool", ops.avg_pool, (((2, 4, 6, 3),), ((1, 5, 5, 1),))),
      S("avg_pool", P(ops.avg_pool, window=(3, 2), strides=(1, 2), padding="SAME"),
        (((2, 5, 4, 2),),), label="overlapping SAME"),
      S("flatten", ops.flatten, (((2, 3, 4, 2),), ((3, 5),), ((0, 2, 2),))),
      S("batch_norm", _bn(True), (((6, 3), (3,), (3,), (3,), (3,)),
                                  ((2, 3, 3, 2), (2,), (2,), (2,), (2,))),
        (normal(), normal(), normal(), normal(), uniform(0.5, 2.0)), label="train"),
      S("batch_norm", _bn_state_loss, (((4, 2), (2,), (2,), (2,), (2,)),),
        (normal(), normal(), normal(), normal(), uniform(0.5, 2.0)),
        label="train, running statistics blamed"),
      S("batch_norm", _bn(False, eps=1e-3), (((6, 3), (3,), (3,), (3,), (3,)),
                                             ((2, 3, 3, 2), (2,), (2,), (2,), (2,))),
        (normal(), normal(), normal(), normal(), uniform(0.5, 2.0)), label="eval"),
      S("embedding", ops.embedding, (((5, 3), (4,)), ((4, 2), (2, 3)), ((3, 2), ())),
        (normal(), integers(-3, 3)), note="repeated and negative ids"),
      S("embedding", ops.embedding, (((4, 2), (6,)),), (normal(), integers(-6, 6)),
        fd=False, label="out of range", note="ids outside [-V, V) give NaN rows"),
  ]
