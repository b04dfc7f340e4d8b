"""Specs of ``fft`` (``handgrad/_src/rules/fft.py``): every ``fft_type``, one to three
axes, even and odd lengths (the Nyquist bin exists only for even ones)."""

from __future__ import annotations

import functools

import jax.numpy as jnp
from jax import lax

from handgrad._src.specs import COMPLEX_DTYPES, RuleSpec

_F = lax.FftType


def _fft(fft_type, lengths):
  return functools.partial(lax.fft, fft_type=fft_type, fft_lengths=lengths)


def table() -> list[RuleSpec]:
  S, C = RuleSpec, COMPLEX_DTYPES
  return [
      S("fft", _fft(_F.FFT, (4,)), (((4,),), ((2, 4),)), dtypes=C, label="FFT 1-d"),
      S("fft", _fft(_F.FFT, (3, 2)), (((2, 3, 2),),), dtypes=C, label="FFT 2-d"),
      S("fft", _fft(_F.IFFT, (5,)), (((5,),), ((2, 5),)), dtypes=C, label="IFFT 1-d"),
      S("fft", _fft(_F.IFFT, (2, 2, 3)), (((2, 2, 3),),), dtypes=C, label="IFFT 3-d"),
      S("fft", _fft(_F.RFFT, (6,)), (((6,),), ((2, 6),)), label="RFFT even"),
      S("fft", _fft(_F.RFFT, (5,)), (((2, 5),),), label="RFFT odd"),
      S("fft", _fft(_F.RFFT, (3, 4)), (((2, 3, 4),),), label="RFFT 2-d"),
      S("fft", _fft(_F.RFFT, (2, 3, 3)), (((2, 3, 3),),), label="RFFT 3-d"),
      S("fft", _fft(_F.IRFFT, (6,)), (((4,),), ((2, 4),)), dtypes=C, label="IRFFT even"),
      S("fft", _fft(_F.IRFFT, (5,)), (((2, 3),),), dtypes=C, label="IRFFT odd"),
      S("fft", _fft(_F.IRFFT, (3, 4)), (((2, 3, 3),),), dtypes=C, label="IRFFT 2-d"),
      S("fft", lambda x: jnp.fft.irfft(jnp.fft.rfft(x) * 2j, n=x.shape[-1]), (((7,),),),
        label="jnp.fft round trip"),
  ]
