"""Gradient flow through time: how far one word's loss reaches back, RNN vs LSTM.

Notation (N captions, T steps, H hidden units): the decoder reads input word t
and produces h_t, which predicts target word t (= caption word t + 1); h_{-1}
= h0 is the image projection. l_{n,t} is caption n's cross-entropy for target
t alone (not divided by N). T_n is caption n's last real (non-<NULL>) target.

Everything runs in float64 through the CS231n step layers of captioner.layers
(rnn_step_* / lstm_step_*, affine_*, temporal_softmax_loss): the backward pass
measured is the project's own. Captions never interact, so the gradient of
sum_n l_{n,T_n} with respect to h_{n,t} is caption n's alone, and one backward
pass over the batch gives every caption's g_n(d) = ||dl_{n,T_n} / dh_{n,T_n-d}||.
The reach to the image, ||dl_{n,t} / dh0_n||, needs one backward pass per
target position t.
"""

import json
import math

import numpy as np

from . import layers, seeds
from .errors import CaptionerError

MIN_CAPTIONS = 20  # a distance or position is reported when at least this many captions reach it
CHUNK_BYTES = 64 << 20  # captions are processed in chunks whose step caches stay about this size


def _sigmoid(x):
    return 0.5 * (1.0 + np.tanh(0.5 * x))  # no overflow for large |x|


def first_captions(data, split, count):
    """The first `count` captions of a split in file order that have a real target.

    -> features (N, D) float64, captions (N, T+1) int. CaptionerError when the
    split holds no caption with a word in it.
    """
    key = f"{split}_captions"
    if key not in data or len(data[key]) == 0:
        raise CaptionerError(
            f"{data.get('base_dir', 'dataset')}: split '{split}' has no "
            f"captions; choose another --split"
        )
    captions = np.asarray(data[key])
    null = data["word_to_idx"]["<NULL>"]
    real = np.flatnonzero((captions[:, 1:] != null).any(axis=1))[:count]
    if len(real) == 0:
        raise CaptionerError(
            f"{data['base_dir']}: split '{split}' has no caption with a word "
            f"in it (every target is <NULL>); choose another --split or rebuild "
            f"the data"
        )
    feats = data[f"{split}_features"][data[f"{split}_image_idxs"][real]]
    return np.asarray(feats, dtype=np.float64), captions[real]


def random_sequences(vocab, features, length, seed):
    """Synthetic captions for the --length check: `length` random input words and a random
    target word at the last step, per image feature. -> captions (N, length + 1) int64."""
    special = ("<NULL>", "<START>", "<END>", "<UNK>")
    words = np.array([i for i, w in enumerate(vocab) if w not in special])
    rng = np.random.default_rng([seed, length])
    return words[rng.integers(len(words), size=(len(features), length + 1))]


def _forward(p, lstm, features, words_in):
    """The decoder's forward pass, step by step with the CS231n step layers.

    features (N, D), words_in (N, T) -> h0 (N, H), caches (T step caches), o and f
    (N, T, H) output and forget gates, tc (N, T, H) tanh(c_t); the gates are
    None for the RNN.
    """
    N, T = words_in.shape
    h, _ = layers.affine_forward(features, p["W_proj"], p["b_proj"])
    h0 = h
    x, _ = layers.word_embedding_forward(words_in, p["W_embed"])
    H = h0.shape[1]
    caches = []
    o = f = tc = None
    if lstm:
        o, f, tc = (np.empty((N, T, H)) for _ in range(3))
        c = np.zeros_like(h0)
    for t in range(T):
        if lstm:
            # the gates again from the pre-activation: independent of the cache's layout
            a = x[:, t] @ p["Wx"] + h @ p["Wh"] + p["b"]
            f[:, t] = _sigmoid(a[:, H : 2 * H])
            o[:, t] = _sigmoid(a[:, 2 * H : 3 * H])
            h, c, cache = layers.lstm_step_forward(x[:, t], h, c, p["Wx"], p["Wh"], p["b"])
            tc[:, t] = np.tanh(c)
        else:
            h, cache = layers.rnn_step_forward(x[:, t], h, p["Wx"], p["Wh"], p["b"])
        caches.append((cache, h))
    return h0, caches, o, f, tc


def _word_loss_grad(p, h, targets, rows, adaptive=None):
    """d l_{n,t} / d h_t (N, H) for the rows `rows` (bool (N,)) with targets (N,), zero elsewhere:
    the vocabulary affine and the softmax loss of one position, times N to undo the loss's
    division by the batch size. adaptive: (cutoffs, rank) of an adaptive-softmax model."""
    N = len(h)
    if adaptive is not None:
        cutoffs, rank = adaptive
        tails = [
            (p[f"W_tail{k}_proj"], p[f"W_tail{k}"], p[f"b_tail{k}"])
            for k in range(1, len(cutoffs) + 1)
        ]
        _, cache = layers.adaptive_softmax_loss(
            h[:, None],
            rank[targets][:, None],
            rows[:, None],
            p["W_head"],
            p["b_head"],
            tails,
            cutoffs,
        )
        return layers.adaptive_softmax_loss_backward(cache)[0][:, 0] * N
    scores, cache = layers.affine_forward(h, p["W_vocab"], p["b_vocab"])
    _, dscores = layers.temporal_softmax_loss(scores[:, None, :], targets[:, None], rows[:, None])
    dh, _, _ = layers.affine_backward(dscores[:, 0] * N, cache)
    return dh


def _backward(lstm, caches, o, tc, inject, t_top, on_step=None):
    """Backpropagate upstream gradients on the h_t, from step t_top down to 0.

    inject(t) -> (N, H) gradient of the losses on h_t (or None). on_step(t, dh_t, dc_t)
    sees the total gradients on h_t and c_t (dc None for the RNN). -> dh0 (N, H).
    """
    dh_next = dc_next = None
    for t in range(t_top, -1, -1):
        cache, h = caches[t]
        dh = inject(t)
        if dh_next is not None:
            dh = dh_next if dh is None else dh + dh_next
        if dh is None:
            dh = np.zeros_like(h)
        if lstm:
            if dc_next is None:
                dc_next = np.zeros_like(h)
            if on_step:
                # total gradient on c_t: through h_t = o_t tanh(c_t) and through c_{t+1}
                on_step(t, dh, dc_next + dh * o[:, t] * (1 - tc[:, t] ** 2))
            _, dh_next, dc_next, _, _, _ = layers.lstm_step_backward(dh, dc_next, cache)
        else:
            if on_step:
                on_step(t, dh, None)
            _, dh_next, _, _, _ = layers.rnn_step_backward(dh, cache)
    return dh_next


def caption_norms(params, cell, features, captions, null, to_image=True, adaptive=None):
    """Per-caption gradient norms for one batch (float64).

    params: the model's parameters; features (N, D); captions (N, T+1), inputs
    captions[:, :-1], targets captions[:, 1:]; every caption needs a real target.
    -> dict of arrays, NaN where a caption does not reach:
       last (N,) T_n; h, c (N, T) g_n(d) for h and c (c None for the RNN);
       image (N, T) ||dl_{n,t} / dh0_n|| (None unless to_image);
       forget (N, T) mean forget-gate activation over units at step t <= T_n (None for the RNN).
    adaptive: (cutoffs, rank) of a model with the adaptive softmax, None for the full one.
    """
    p = {k: np.asarray(v, dtype=np.float64) for k, v in params.items()}
    lstm = cell == "lstm"
    N, T = captions.shape[0], captions.shape[1] - 1
    H = p["Wh"].shape[0]
    V = len(adaptive[1]) if adaptive else p["W_vocab"].shape[1]
    per_row = T * (H * (14 if lstm else 3) + p["Wx"].shape[0] + V) * 8
    chunk = max(1, CHUNK_BYTES // per_row)
    parts = [
        _chunk_norms(
            p, lstm, features[i : i + chunk], captions[i : i + chunk], null, to_image, adaptive
        )
        for i in range(0, N, chunk)
    ]
    return {
        k: None if parts[0][k] is None else np.concatenate([q[k] for q in parts]) for k in parts[0]
    }


def _chunk_norms(p, lstm, features, captions, null, to_image, adaptive):
    words_in, targets = captions[:, :-1], captions[:, 1:]
    N, T = targets.shape
    real = targets != null
    if not real.any(axis=1).all():
        raise ValueError("every caption needs at least one real target")
    last = T - 1 - np.argmax(real[:, ::-1], axis=1)  # T_n
    h0, caches, o, f, tc = _forward(p, lstm, np.asarray(features, np.float64), words_in)
    hs = [h for _, h in caches]
    nan = np.full((N, T), np.nan)
    out = {
        "last": last,
        "h": nan.copy(),
        "c": nan.copy() if lstm else None,
        "image": None,
        "forget": None,
    }

    def inject_last(t):
        rows = last == t
        return _word_loss_grad(p, hs[t], targets[:, t], rows, adaptive) if rows.any() else None

    def record(t, dh, dc):
        rows = np.flatnonzero(last >= t)
        out["h"][rows, last[rows] - t] = np.linalg.norm(dh[rows], axis=1)
        if dc is not None:
            out["c"][rows, last[rows] - t] = np.linalg.norm(dc[rows], axis=1)

    _backward(lstm, caches, o, tc, inject_last, int(last.max()), record)
    if lstm:
        out["forget"] = np.where(np.arange(T)[None, :] <= last[:, None], f.mean(axis=2), np.nan)
    if to_image:
        out["image"] = nan.copy()
        for t in range(T):
            rows = real[:, t]
            if not rows.any():
                continue
            dl = _word_loss_grad(p, hs[t], targets[:, t], rows, adaptive)
            dh0 = _backward(lstm, caches, o, tc, lambda s, t=t, dl=dl: dl if s == t else None, t)
            out["image"][rows, t] = np.linalg.norm(dh0[rows], axis=1)
    return out


def _mean_reached(values, min_captions):
    """values (N, K) with NaN where a caption does not reach -> [(k, mean, count)] for every k
    that at least min_captions captions reach."""
    counts = np.sum(~np.isnan(values), axis=0)
    return [
        (k, float(np.nanmean(values[:, k])), int(n))
        for k, n in enumerate(counts)
        if n >= min_captions
    ]


def _gain(means):
    """Geometric-mean per-step gain of a mean-norm curve m(0..D) -> (gain, halving steps).

    gain = (m(D) / m(0)) ** (1 / D), the geometric mean of the ratios m(d) / m(d - 1);
    halving steps = log 0.5 / log gain, None when the signal does not shrink."""
    if len(means) < 2 or means[0] <= 0 or means[-1] <= 0:
        return None, None
    gain = (means[-1] / means[0]) ** (1.0 / (len(means) - 1))
    return gain, (math.log(0.5) / math.log(gain) if gain < 1 else None)


def by_distance(norms, min_captions=MIN_CAPTIONS):
    """caption_norms' h and c -> ([{"d", "h", "c", "captions"}], gain_per_step, halving_steps)."""
    hs = _mean_reached(norms["h"], min_captions)
    cs = {}
    if norms["c"] is not None:
        cs = {d: m for d, m, _ in _mean_reached(norms["c"], min_captions)}
    rows = [{"d": d, "h": m, "c": cs.get(d), "captions": n} for d, m, n in hs]
    gain, halving = _gain([r["h"] for r in rows])
    return rows, gain, halving


def summarise(norms, params, cell, label, min_captions=MIN_CAPTIONS):
    """caption_norms() of one model -> one run entry of `captioner gradients --json`."""
    rows, gain, halving = by_distance(norms, min_captions)
    image = (
        [
            {"t": t, "norm": m, "captions": n}
            for t, m, n in _mean_reached(norms["image"], min_captions)
        ]
        if norms["image"] is not None
        else []
    )
    forget = None
    if norms["forget"] is not None:
        forget = [
            {"t": t, "mean": m, "captions": n}
            for t, m, n in _mean_reached(norms["forget"], min_captions)
        ]
    return {
        "label": label,
        "cell": cell,
        "by_distance": rows,
        "to_image": image,
        "gain_per_step": gain,
        "halving_steps": halving,
        "sigma_max_Wh": float(np.linalg.norm(np.asarray(params["Wh"], np.float64), 2)),
        "forget_gate_mean": forget,
    }


def measure(model, features, captions, label, length=None, seed=0, min_captions=MIN_CAPTIONS):
    """The whole gradient-flow report of one model on captions (N, T+1) of features (N, D).

    length: also feed `length` random words per image (the synthetic check past caption
    lengths; its entry is under "synthetic"). A distance or position is reported when
    min_captions captions reach it (all of them when there are fewer). -> one run dict.
    """
    null = model.word_to_idx["<NULL>"]
    min_captions = min(min_captions, len(captions))  # fewer captions than that: all of them
    adaptive = (model.cutoffs, model.rank) if model.softmax == "adaptive" else None
    norms = caption_norms(model.params, model.cell_type, features, captions, null, True, adaptive)
    run = summarise(norms, model.params, model.cell_type, label, min_captions)
    run["synthetic"] = None
    if length:
        vocab = [model.idx_to_word[i] for i in range(len(model.idx_to_word))]
        seqs = random_sequences(vocab, features, length, seed)
        syn = caption_norms(model.params, model.cell_type, features, seqs, null, False, adaptive)
        rows, gain, halving = by_distance(syn, min_captions)
        run["synthetic"] = {
            "length": length,
            "sequences": len(seqs),
            "by_distance": rows,
            "gain_per_step": gain,
            "halving_steps": halving,
        }
    return run


def format_table(runs, what):
    """Terminal report of measure() runs, side by side; what names the captions. -> lines."""
    lines = [f"gradient of one word's loss (float64), mean over {what}"]

    def table(title, index, rows_of, fields):
        widths = []  # per run: the width of each of its columns, enough for its label
        head, sub = f"{'':>4} {'':>8}", f"{index:>4} {'captions':>8}"
        for run in runs:
            k = len(fields(run))
            cw = max(11, -(-(len(run["label"]) - 2 * (k - 1)) // k))
            widths.append(cw)
            head += f"  {run['label']:>{k * cw + 2 * (k - 1)}}"
            sub += "".join(f"  {f:>{cw}}" for f in fields(run))
        lines.extend(["", title, head, sub])
        by = [{r[index]: r for r in rows_of(run)} for run in runs]
        for key in sorted(set().union(*by)):
            n = next(b[key]["captions"] for b in by if key in b)
            cells = ""
            for run, b, cw in zip(runs, by, widths):
                for f in fields(run):
                    v = b.get(key, {}).get(f)
                    cells += f"  {'-' if v is None else format(v, '.3e'):>{cw}}"
            lines.append(f"{key:4d} {n:8d}{cells}")

    def hc(run):
        return ["dl/dh", "dl/dc"] if run["cell"] == "lstm" else ["dl/dh"]

    def keyed(rows):
        return [dict(r, **{"dl/dh": r["h"], "dl/dc": r["c"]}) for r in rows]

    table(
        "by distance d back from the caption's last word: ||dl_{n,T_n} / dh_{n,T_n-d}||",
        "d",
        lambda r: keyed(r["by_distance"]),
        hc,
    )
    table(
        "reach to the image by target position t: ||dl_{n,t} / dh0_n||",
        "t",
        lambda r: [dict(x, **{"dl/dh0": x["norm"]}) for x in r["to_image"]],
        lambda _: ["dl/dh0"],
    )
    if any(r.get("synthetic") for r in runs):
        L = next(r["synthetic"]["length"] for r in runs if r.get("synthetic"))
        table(
            f"{L} random words per image: ||dl_last / dh_(last-d)||",
            "d",
            lambda r: keyed(r["synthetic"]["by_distance"]) if r.get("synthetic") else [],
            hc,
        )
    lines.append("")
    lines.extend(f"{run['label']}: {summary_line(run)}" for run in runs)
    return lines


def summary_line(run):
    """gain per step, halving distance, sigma_max(Wh), forget gate: one line."""

    def gain(g, h):
        if g is None:
            return "gain per step n/a"
        return f"gain per step {g:.3f} ({f'halves every {h:.1f} steps' if h else 'no decay'})"

    parts = [gain(run["gain_per_step"], run["halving_steps"])]
    if run.get("synthetic"):
        s = run["synthetic"]
        parts.append(
            f"over {s['length']} random words {gain(s['gain_per_step'], s['halving_steps'])}"
        )
    parts.append(f"sigma_max(Wh) {run['sigma_max_Wh']:.2f}")
    if run["forget_gate_mean"]:
        fg = [r["mean"] for r in run["forget_gate_mean"]]
        parts.append(f"forget gate mean {np.mean(fg):.3f} (per step {min(fg):.3f}..{max(fg):.3f})")
    return "; ".join(parts)


# ---------------------------------------------------------------- over seeds


def setting_key(meta):
    """Checkpoints of one setting (the same model and training settings but the seed) share
    this key: their figures are summarised over seeds."""
    settings = dict(meta.get("training", {}).get("settings", {}))
    settings.pop("seed", None)
    return json.dumps([meta["model"], settings], sort_keys=True)


def spread(runs, label=None):
    """measure() runs of one setting -> {"label", "runs", "seeds", "n", "figures"}, figures:
    seeds.spread() of gain per step, halving distance, sigma_max(Wh), forget gate mean.
    label: the setting's name (default: the first run's label, and how many more)."""
    more = f" and {len(runs) - 1} more" if len(runs) > 1 else ""
    return {
        "label": label or runs[0]["label"] + more,
        "runs": [r["label"] for r in runs],
        "n": len(runs),
        "figures": seeds.figures(runs, seeds.GRADIENT_FIGURES),
    }


def spread_line(group):
    """One line: every figure of spread() as mean +- std [min .. max] (n)."""
    parts = []
    for key, (label, _, spec) in seeds.GRADIENT_FIGURES.items():
        f = group["figures"].get(key)
        if f:
            parts.append(
                f"{label} {seeds.fmt(f, spec)} [{f['min']:{spec}} .. {f['max']:{spec}}]"
                + (f" (n {f['n']})" if f["n"] != group["n"] else "")
            )
    return f"{group['label']} ({group['n']} checkpoints): " + "; ".join(parts)
