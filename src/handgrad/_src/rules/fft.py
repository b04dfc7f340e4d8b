"""The discrete Fourier transform (``fft``, every ``fft_type``, any number of axes).

``fft`` is linear in its operand, so its VJP is its transpose (JAX's convention for
complex values: the pairing ``⟨a, b⟩ = Re Σ a·b``, no conjugation; see
:mod:`handgrad._src.registry`).  With ``F`` the unnormalised DFT over the last
``len(fft_lengths)`` axes (``F_jk = e^{−2πi·jk/n}`` per axis, a symmetric matrix) and
``N = Π fft_lengths``:

* FFT,  ``z = F x``:             ``dx = F g``, the FFT of the cotangent (``Fᵀ = F``);
* IFFT, ``z = conj(F) x / N``:   ``dx = IFFT(g)`` likewise;
* RFFT, ``z = (F x)[..., :n//2+1]`` for real ``x``: ``dx = Re(F·pad(g))``, the spectrum
  padded with zeros to ``n`` bins.  As a real inverse transform:
  ``dx = N·IRFFT(conj(g)/w)``, where ``w`` is 1 on the bins that have no mirror image
  (DC, and the Nyquist bin when ``n`` is even) and 2 on the others, which IRFFT counts
  twice through Hermitian symmetry;
* IRFFT, ``z = real inverse transform of the half spectrum x`` (length ``n`` on the last
  axis): ``dx = conj(w·RFFT(g))/N``; the bins with a mirror image count twice.
"""

from __future__ import annotations

import numpy as np
from jax import lax

from handgrad._src.registry import defvjp_unary


def _mirror_weights(fft_lengths, bins, dtype, rank):
  """``w`` over the last axis (``bins = n//2 + 1`` entries), shaped to broadcast."""
  n = fft_lengths[-1]
  w = np.full(bins, 2.0)
  w[0] = 1.0
  if n % 2 == 0:
    w[-1] = 1.0
  return np.asarray(w, np.finfo(dtype).dtype).reshape((1,) * (rank - 1) + (bins,))


def _fft_vjp(g, ans, x, *, fft_type, fft_lengths):
  fft_lengths = tuple(fft_lengths)
  n_total = np.prod(fft_lengths)
  if fft_type == lax.FftType.FFT or fft_type == lax.FftType.IFFT:
    return lax.fft(g, fft_type, fft_lengths)
  if fft_type == lax.FftType.RFFT:
    w = _mirror_weights(fft_lengths, g.shape[-1], g.dtype, g.ndim)
    scaled = lax.conj(g) / w
    return np.asarray(n_total, np.finfo(g.dtype).dtype) * lax.fft(
        scaled, lax.FftType.IRFFT, fft_lengths)
  if fft_type == lax.FftType.IRFFT:
    spectrum = lax.fft(g, lax.FftType.RFFT, fft_lengths)
    w = _mirror_weights(fft_lengths, spectrum.shape[-1], g.dtype, g.ndim)
    return lax.conj(spectrum * (w / np.asarray(n_total, w.dtype)))
  raise NotImplementedError(f"fft rule: unknown fft_type {fft_type!r}")


defvjp_unary("fft", _fft_vjp)
