"""The public entry points carry return types (the package ships py.typed)."""

import typing

import pytest

import handgrad as hg


@pytest.mark.parametrize("fn", [hg.grad, hg.value_and_grad, hg.vjp, hg.defvjp, hg.defvjp_unary,
                                hg.defvjp_each, hg.hessian, hg.hvp, hg.hvp_reverse],
                         ids=lambda f: f.__name__)
def test_public_functions_have_return_types(fn):
  hints = typing.get_type_hints(fn)
  assert "return" in hints, f"{fn.__name__} has no return annotation"
