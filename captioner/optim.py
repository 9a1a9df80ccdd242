"""First-order update rules, CS231n style: update(w, dw, config=None) -> (next_w, config).

Updates happen IN PLACE: next_w is w itself, and the state arrays in config
are overwritten; a training step allocates almost nothing. The arithmetic is
the textbook formula operation for operation, so results are bit-identical
to the out-of-place version.

config holds the hyperparameters (Python floats) and the per-parameter state:
  sgd           no state
  sgd_momentum  velocity (array like w)
  rmsprop       cache (array like w)
  adam          m, v (arrays like w), t (int step count)
Every value is a scalar or an array, so a config round-trips through
np.savez(f, **config) / dict(np.load(f)): scalars come back as 0-d arrays,
which the rules below read with float()/int(), and a resumed run is
bit-identical.
"""
import numpy as np


def _defaults(config, **defaults):
    config = {} if config is None else config
    for k, v in defaults.items():
        config.setdefault(k, v)
    return config


def sgd(w, dw, config=None):
    """w -= learning_rate * dw. Defaults: learning_rate 1e-2."""
    config = _defaults(config, learning_rate=1e-2)
    w -= float(config["learning_rate"]) * dw
    return w, config


def sgd_momentum(w, dw, config=None):
    """v = momentum * v - learning_rate * dw; w += v.
    Defaults: learning_rate 1e-2, momentum 0.9; state: velocity (array)."""
    config = _defaults(config, learning_rate=1e-2, momentum=0.9)
    v = config.get("velocity")
    if v is None:
        v = config["velocity"] = np.zeros_like(w)
    v *= float(config["momentum"])
    v -= float(config["learning_rate"]) * dw
    w += v
    return w, config


def rmsprop(w, dw, config=None):
    """cache = decay * cache + (1 - decay) * dw^2; w -= lr * dw / (sqrt(cache) + eps).
    Defaults: learning_rate 1e-2, decay_rate 0.99, epsilon 1e-8; state: cache (array)."""
    config = _defaults(config, learning_rate=1e-2, decay_rate=0.99, epsilon=1e-8)
    cache = config.get("cache")
    if cache is None:
        cache = config["cache"] = np.zeros_like(w)
    decay = float(config["decay_rate"])
    cache *= decay
    cache += (1 - decay) * (dw * dw)
    step = np.sqrt(cache)
    step += float(config["epsilon"])
    np.divide(float(config["learning_rate"]) * dw, step, out=step)
    w -= step
    return w, config


def adam(w, dw, config=None):
    """Adam with bias correction (Kingma & Ba):
        t += 1; m = b1 m + (1 - b1) dw; v = b2 v + (1 - b2) dw^2
        w -= lr * (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)
    Defaults: learning_rate 1e-3, beta1 0.9, beta2 0.999, epsilon 1e-8;
    state: m, v (arrays), t (int)."""
    config = _defaults(config, learning_rate=1e-3, beta1=0.9, beta2=0.999, epsilon=1e-8)
    if config.get("m") is None:
        config["m"] = np.zeros_like(w)
        config["v"] = np.zeros_like(w)
        config["t"] = 0
    m, v = config["m"], config["v"]
    b1, b2 = float(config["beta1"]), float(config["beta2"])
    t = int(config["t"]) + 1
    config["t"] = t
    m *= b1
    m += (1 - b1) * dw
    v *= b2
    g2 = np.multiply(dw, dw)
    g2 *= 1 - b2
    v += g2
    vt = np.divide(v, 1 - b2 ** t, out=g2)   # g2's memory is free again
    np.sqrt(vt, out=vt)
    vt += float(config["epsilon"])
    step = m / (1 - b1 ** t)
    step *= float(config["learning_rate"])
    step /= vt
    w -= step
    return w, config


OPTIMIZERS = {"sgd": sgd, "sgd_momentum": sgd_momentum, "rmsprop": rmsprop, "adam": adam}
