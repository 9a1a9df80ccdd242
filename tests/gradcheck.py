"""Numeric gradients by centered differences, for float64 gradient checks."""

import numpy as np


def numeric_grad(f, x, h=1e-5):
    """Gradient of the scalar f() w.r.t. array x (perturbed in place, restored)."""
    grad = np.zeros_like(x, dtype=np.float64)
    it = np.nditer(x, flags=["multi_index"])
    for _ in it:
        i = it.multi_index
        old = x[i]
        x[i] = old + h
        fp = f()
        x[i] = old - h
        fm = f()
        x[i] = old
        grad[i] = (fp - fm) / (2 * h)
    return grad


def numeric_grad_array(f, x, dout, h=1e-5):
    """Gradient of sum(f() * dout) w.r.t. x, for array-valued f."""
    return numeric_grad(lambda: float(np.sum(f() * dout)), x, h)


def rel_error(a, b):
    """Max elementwise relative error, floored so exact zeros do not explode."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b) / np.maximum(1e-8, np.abs(a) + np.abs(b))))
