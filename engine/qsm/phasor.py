"""Complex signals from magnitude and phase, without numpy's complex exponential.

``m * np.exp(1j * phi)`` evaluates a complex exponential of a purely imaginary
argument: several times the cost of one cosine and one sine written into the
real and imaginary parts, which is what it computes.  The chain forms such
signals for every echo of every subject.
"""

from __future__ import annotations

import numpy as np

__all__ = ["phasor"]


def phasor(phase: np.ndarray, magnitude: np.ndarray | float | None = None, dtype=None,
           out: np.ndarray | None = None) -> np.ndarray:
    """``magnitude * exp(1j * phase)``, computed as cosine and sine.

    Parameters
    ----------
    phase : array
    magnitude : array or float, optional
        Broadcast against ``phase``; default 1.
    dtype : complex dtype, optional
        Default complex64 when ``phase`` (and ``magnitude``, if an array) is float32,
        complex128 otherwise.
    out : complex array of ``phase``'s shape, optional
        Written and returned instead of a new array (its dtype is the result's).  A loop over
        echoes that reuses one buffer spares the operating system a fresh volume of memory
        per echo, which costs more than the sines and cosines on some machines.
    """
    phase = np.asarray(phase)
    if out is not None:
        if out.shape != phase.shape or out.dtype.kind != "c":
            raise ValueError(f"out must be a complex array of shape {phase.shape}, got {out.dtype} {out.shape}")
        dtype = out.dtype
    if dtype is None:
        single = phase.dtype == np.float32 and (
            magnitude is None or np.isscalar(magnitude) or np.asarray(magnitude).dtype == np.float32)
        dtype = np.complex64 if single else np.complex128
    dtype = np.dtype(dtype)
    if dtype.kind != "c":
        raise ValueError(f"dtype must be complex, got {dtype}")
    real = np.finfo(dtype).dtype
    p = phase.astype(real, copy=False)
    out = np.empty(p.shape, dtype) if out is None else out
    np.cos(p, out=out.real)
    np.sin(p, out=out.imag)
    if magnitude is not None:
        out *= np.asarray(magnitude, dtype=real)
    return out
