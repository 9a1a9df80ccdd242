"""CaptioningRNN: image features -> h0, then a word-level RNN/LSTM (CS231n layout).

loss() is the training fast path: the batch is sorted by caption length and
packed (captioner.layers module doc) so padding steps are never computed, and
only positions with a real target reach the vocabulary affine + softmax.
The word projection runs once per distinct word of the batch, not per token.
Every weight gradient is one matmul over all steps. The big temporaries live
in a per-model workspace reused by the next call (layers.buffer says why;
~60 MB for an LSTM at the CS231n size, batch 100), so one model must not run
loss() in two threads at once. The result equals the
padded CS231n computation up to float rounding (tests/test_model.py).
"""
import functools

import numpy as np

from captioner import layers
from captioner.errors import CaptionerError

PARAM_NAMES = ("W_embed", "W_proj", "b_proj", "Wx", "Wh", "b", "W_vocab", "b_vocab")


def pack_captions(captions, null):
    """Sort captions (N, T+1) by length, longest first, and pack them time-major
    (captioner.layers module doc). A row's length is 1 + its last non-<NULL>
    target: later steps cannot change the loss. Earlier <NULL> targets still
    run their step but are left out of the loss via `keep`.

    -> order (N,) the sort, batch_sizes (T',), ids_in, ids_out (S,) input and
    target word per packed row, keep (S,) bool: target is not <NULL>.
    """
    cin, cout = captions[:, :-1], captions[:, 1:]
    T = cin.shape[1]
    mask = cout != null
    lengths = np.where(mask.any(axis=1), T - np.argmax(mask[:, ::-1], axis=1), 0)
    order = np.argsort(-lengths, kind="stable")
    active = np.arange(T)[:, None] < lengths[order][None, :]   # (T, N) in sorted order
    bs = active.sum(axis=1)
    return order, bs[bs > 0], cin[order].T[active], cout[order].T[active], mask[order].T[active]


class CaptioningRNN:
    """Decoder: W_embed (V, W), W_proj (D, H), b_proj (H,), Wx (W, kH), Wh (H, kH),
    b (kH,), W_vocab (H, V), b_vocab (V,) with k = 1 (rnn) or 4 (lstm, gates i, f, o, g)."""

    def __init__(self, word_to_idx, input_dim=512, wordvec_dim=256, hidden_dim=512,
                 cell_type="rnn", dtype=np.float32, seed=None):
        if cell_type not in ("rnn", "lstm"):
            raise CaptionerError(f"cell_type must be 'rnn' or 'lstm', got {cell_type!r}")
        for tok in ("<NULL>", "<START>", "<END>"):
            if tok not in word_to_idx:
                raise CaptionerError(f"vocabulary has no {tok} token; use the CS231n vocabulary layout")
        self.cell_type = cell_type
        self.dtype = np.dtype(dtype)
        self.input_dim, self.wordvec_dim, self.hidden_dim = input_dim, wordvec_dim, hidden_dim
        self.word_to_idx = dict(word_to_idx)
        self.idx_to_word = {i: w for w, i in self.word_to_idx.items()}
        self._null = word_to_idx["<NULL>"]
        self._start = word_to_idx["<START>"]
        self._end = word_to_idx["<END>"]
        self._unk = word_to_idx.get("<UNK>")
        # never generated: padding, the start token, and "unknown word"
        self.banned = np.array([i for i in (self._null, self._start, self._unk) if i is not None])

        V, D, W, H = len(word_to_idx), input_dim, wordvec_dim, hidden_dim
        k = 4 if cell_type == "lstm" else 1
        rng = np.random.default_rng(seed)
        # drawn in float64 then cast, so float32 and float64 models share a seed's values
        p = {
            "W_embed": rng.standard_normal((V, W)) / 100,
            "W_proj": rng.standard_normal((D, H)) / np.sqrt(D),
            "b_proj": np.zeros(H),
            "Wx": rng.standard_normal((W, k * H)) / np.sqrt(W),
            "Wh": rng.standard_normal((H, k * H)) / np.sqrt(H),
            "b": np.zeros(k * H),
            "W_vocab": rng.standard_normal((H, V)) / np.sqrt(H),
            "b_vocab": np.zeros(V),
        }
        self.params = {n: np.ascontiguousarray(v, dtype=self.dtype) for n, v in p.items()}
        self._work = {}   # loss() temporaries, reused across calls (layers.buffer)

    # ------------------------------------------------------------ training

    def loss(self, features, captions):
        """features (N, D), captions (N, T+1) int -> (loss, grads).

        Inputs are captions[:, :-1], targets captions[:, 1:]; <NULL> targets
        are ignored; the summed loss is divided by N. grads has params' keys.
        """
        p = self.params
        features = np.asarray(features, dtype=self.dtype)
        captions = np.asarray(captions)
        N = captions.shape[0]
        work = self._work
        buf = functools.partial(layers.buffer, work, dtype=self.dtype)    # buf(key, shape)
        order, bs, ids_in, ids_out, keep = pack_captions(captions, self._null)
        feats = features[order[:bs[0] if len(bs) else 0]]   # rows with no target drop out

        h0, _ = layers.affine_forward(feats, p["W_proj"], p["b_proj"])
        # An embedding followed by x @ Wx is a linear map of the distinct words:
        # project each word once (U <= V rows, ~S/3 on real captions), then gather.
        order_ids, starts, counts, words = layers.group_ids(ids_in)   # words: (U,) distinct
        inverse = np.empty_like(ids_in)                     # packed row -> its run
        for_run = np.argsort(starts)                        # runs in sorted-id order
        inverse[order_ids] = np.repeat(for_run, counts[for_run])
        e = p["W_embed"][words]                  # (U, W)
        S, U, kH, V = len(ids_in), len(words), p["Wx"].shape[1], p["W_vocab"].shape[1]
        proj = np.matmul(e, p["Wx"], out=buf("proj", (U, kH)))
        proj += p["b"]
        a = np.take(proj, inverse, axis=0, out=buf("a", (S, kH)), mode="clip")  # (S, kH) packed
        lstm = self.cell_type == "lstm"
        core = layers.lstm_packed_forward if lstm else layers.rnn_packed_forward
        h, core_cache = core(a, h0, p["Wh"], bs, work=work)
        all_kept = bool(keep.all())
        hk = h
        if not all_kept:
            hk = np.compress(keep, h, axis=0, out=buf("hk", (int(keep.sum()), h.shape[1])))
        logits = np.matmul(hk, p["W_vocab"], out=buf("logits", (len(hk), V)))
        logits += p["b_vocab"]
        loss, dlogits = layers.softmax_loss_rows(logits, ids_out[keep], 1.0 / N)

        g = {}
        g["W_vocab"] = hk.T @ dlogits
        g["b_vocab"] = dlogits.sum(axis=0)
        if all_kept:
            dh = np.matmul(dlogits, p["W_vocab"].T, out=buf("dh", h.shape))
        else:
            dh = buf("dh", h.shape)
            dh[~keep] = 0
            dh[keep] = dlogits @ p["W_vocab"].T
        back = layers.lstm_packed_backward if lstm else layers.rnn_packed_backward
        da, dh0, g["Wh"] = back(dh, core_cache, work=work)
        # ... and back: sum da over each word's occurrences first, then multiply
        da_w = layers.segment_sum(da, order_ids, starts, counts, out=buf("proj", (U, kH)))   # (U, kH)
        g["Wx"] = e.T @ da_w
        g["b"] = da_w.sum(axis=0)
        g["W_embed"] = np.zeros_like(p["W_embed"])
        g["W_embed"][words] = da_w @ p["Wx"].T
        g["W_proj"] = feats.T @ dh0              # no gradient into the features
        g["b_proj"] = dh0.sum(axis=0)
        return loss, {n: g[n] for n in PARAM_NAMES}

    # ------------------------------------------------------------ decoding

    def init_state(self, features):
        """features (N, D) -> (h0 (N, H), c0 (N, H) zeros for lstm, None for rnn)."""
        p = self.params
        h = np.asarray(features, dtype=self.dtype) @ p["W_proj"] + p["b_proj"]
        c = np.zeros_like(h) if self.cell_type == "lstm" else None
        return h, c

    def word_proj(self):
        """Input projection of every word, W_embed @ Wx + b: (V, kH). Decoders
        compute it once per call and pass it to step(): a row gather per step
        instead of a (B, W) @ (W, kH) matmul, once B x steps exceeds V."""
        p = self.params
        proj = p["W_embed"] @ p["Wx"]
        proj += p["b"]
        return proj

    def step(self, words, h, c=None, proj=None, rows=None):
        """One decoder step for any batch: words (B,) ids, h (B, H), c (B, H) or None
        -> (logits (B, V), next_h, next_c). Used by sample() and captioner.decoding.

        proj: word_proj(), optional (same result). rows (B,) optional: row b
        continues from state rows[b] of h and c, which may then have any number
        of rows; each distinct state's h @ Wh is computed once (beam search's
        siblings share their parent's, ~40% of the rows at beam 3).
        """
        p = self.params
        if proj is None:
            a = p["W_embed"][words] @ p["Wx"]
            a += p["b"]
        else:
            a = proj[words]          # a copy: the step overwrites it
        # same order of additions as training: (x @ Wx + b) + h @ Wh
        if rows is None:
            a += h @ p["Wh"]
        else:
            used, inverse = np.unique(rows, return_inverse=True)
            a += (h[used] @ p["Wh"])[inverse]
            c = c[rows] if c is not None else None
        if self.cell_type == "lstm":
            h, c = layers.lstm_cell_forward(a, c)
        else:
            with np.errstate(over="ignore"):
                h = layers.tanh(a, out=a)   # what training computes
        logits = h @ p["W_vocab"]
        logits += p["b_vocab"]
        return logits, h, c

    def decode_proj(self, batch, steps):
        """word_proj() when decoding batch x steps word positions pays for it, else None."""
        return self.word_proj() if batch * steps >= len(self.word_to_idx) else None

    def sample(self, features, max_length=30):
        """Greedy captions (N, max_length) int64, without <START>.

        Never emits <NULL>, <START> or <UNK>, nor <END> first (no empty
        caption); a row ends with <END> and is padded with <NULL> after it.
        """
        return self.decode(features, max_length, lambda logits: logits.argmax(axis=1))

    def decode(self, features, max_length, choose):
        """Word-by-word decoding: choose(logits (B, V)) -> words (B,), called with
        the banned words (and <END> at the first step) at -inf. Finished rows
        drop out of the batch. -> captions (N, max_length) as in sample()."""
        N = len(features)
        captions = np.full((N, max_length), self._null, dtype=np.int64)
        h, c = self.init_state(features)
        proj = self.decode_proj(N, max_length)
        rows = np.arange(N)
        words = np.full(N, self._start)
        for t in range(max_length):
            if rows.size == 0:
                break
            logits, h, c = self.step(words, h, c, proj)
            logits[:, self.banned] = -np.inf
            if t == 0:
                logits[:, self._end] = -np.inf  # a caption has at least one word
            words = choose(logits)
            captions[rows, t] = words
            live = words != self._end
            if not live.all():
                rows, words, h = rows[live], words[live], h[live]
                c = c[live] if c is not None else None
        return captions
