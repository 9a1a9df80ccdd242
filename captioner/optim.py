"""First-order update rules, CS231n style: update(w, dw, config=None) -> (next_w, config).

Updates happen IN PLACE: next_w is w itself, and the state arrays in config
are overwritten; a training step allocates almost nothing. sgd, sgd_momentum
and rmsprop do the textbook arithmetic operation for operation (bit-identical
to the out-of-place version); adam reorders it (see there).

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

import math

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
    computed in the paper's cheaper order (end of its section 2): both bias
    corrections folded into two scalars, w -= lr_t * m / (sqrt(v) + eps_t), so
    one scratch array serves the whole update (12 array passes instead of 14
    and three temporaries). Equal to the formula above within rounding.
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
    # Python floats, not numpy scalars: a float64 scalar would make the
    # float32 in-place arithmetic below run through float64 casts
    root = math.sqrt(1 - b2**t)
    lr_t = float(config["learning_rate"]) * root / (1 - b1**t)
    eps_t = float(config["epsilon"]) * root
    s = np.multiply(dw, 1 - b1)
    m *= b1
    m += s
    np.multiply(dw, dw, out=s)
    s *= 1 - b2
    v *= b2
    v += s
    np.sqrt(v, out=s)
    s += eps_t
    np.divide(m, s, out=s)
    s *= lr_t
    w -= s
    return w, config


OPTIMIZERS = {"sgd": sgd, "sgd_momentum": sgd_momentum, "rmsprop": rmsprop, "adam": adam}
