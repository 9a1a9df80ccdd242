"""CaptioningRNN: image features -> h0, then a word-level RNN/LSTM (CS231n's layout and API).

loss() follows CS231n's pipeline, numbered the same way in loss_readable():
(1) project the image feature to h0, (2) embed the input words, (3) run the recurrence,
(4) score the vocabulary at every step, (5) softmax loss; then backward from (5) to (1).
loss_readable() composes captioner.layers on padded (N, T) arrays, exactly as the CS231n
assignment does. loss() is what training runs: each step calls captioner.packed, which
computes the same numbers faster (captions sorted by length and packed, so padding is
never computed; the word projection runs once per distinct word). The two agree to float
rounding (tests/test_model.py).

loss() keeps its big temporaries in a per-model workspace reused by the next call
(packed.buffer says why; ~60 MB for an LSTM at the CS231n size, batch 100), so one model
must not run loss() in two threads at once.
"""

import numpy as np

from captioner import layers, packed
from captioner.errors import CaptionerError

# a full-softmax model's; the adaptive softmax has W_head, b_head, W_tail{k}... instead of
# W_vocab, b_vocab (CaptioningRNN._adaptive_init)
PARAM_NAMES = ("W_embed", "W_proj", "b_proj", "Wx", "Wh", "b", "W_vocab", "b_vocab")
CELLS = ("rnn", "lstm")
# The H-block of b that is the forget gate's bias, for the cells that have one
# (CS231n's LSTM stacks its gates i, f, o, g).
FORGET_GATE = {"lstm": 1}


class CaptioningRNN:
    """Decoder: W_embed (V, W), W_proj (D, H), b_proj (H,), Wx (W, kH), Wh (H, kH),
    b (kH,), W_vocab (H, V), b_vocab (V,) with k = 1 (rnn) or 4 (lstm, gates i, f, o, g).
    forget_bias: the LSTM's initial forget-gate bias (b's second H-block; CS231n: 0).

    word_to_idx needs <NULL> (the padding, never a target); <START> and <END> are needed
    only to sample, <UNK> is optional. Their ids are the attributes null, start, end and
    unk (None when the vocabulary lacks the token).

    softmax "adaptive" (captioner.adaptive) replaces W_vocab, b_vocab by a head over the
    cutoffs[0] most frequent words and smaller tail clusters; softmax_order (V,) gives
    the word id of each frequency rank (None: the word ids already are).
    """

    def __init__(
        self,
        word_to_idx,
        input_dim=512,
        wordvec_dim=256,
        hidden_dim=512,
        cell_type="rnn",
        dtype=np.float32,
        seed=None,
        forget_bias=0.0,
        softmax="full",
        cutoffs=None,
        softmax_order=None,
    ):
        if cell_type not in CELLS:
            raise CaptionerError(f"cell_type must be one of {', '.join(CELLS)}, got {cell_type!r}")
        if forget_bias and cell_type not in FORGET_GATE:
            raise CaptionerError(
                f"a {cell_type} has no forget gate; set a forget-gate bias only for "
                f"{', '.join(FORGET_GATE)}"
            )
        if "<NULL>" not in word_to_idx:
            raise CaptionerError(
                "vocabulary has no <NULL> token (the padding); use the CS231n vocabulary layout"
            )
        self.cell_type = cell_type
        self.dtype = np.dtype(dtype)
        self.input_dim, self.wordvec_dim, self.hidden_dim = input_dim, wordvec_dim, hidden_dim
        self.word_to_idx = dict(word_to_idx)
        self.idx_to_word = {i: w for w, i in self.word_to_idx.items()}
        self.null = word_to_idx["<NULL>"]
        self.start = word_to_idx.get("<START>")
        self.end = word_to_idx.get("<END>")
        self.unk = word_to_idx.get("<UNK>")
        # never generated: padding, the start token, and "unknown word"
        self.banned = np.array([i for i in (self.null, self.start, self.unk) if i is not None])

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
        if cell_type in FORGET_GATE:  # CS231n: 0; 1 after Gers et al. 2000, Jozefowicz et al. 2015
            f = FORGET_GATE[cell_type]
            p["b"][f * H : (f + 1) * H] = forget_bias
        if softmax == "adaptive":
            del p["W_vocab"], p["b_vocab"]
            p.update(self._adaptive_init(rng, H, V, cutoffs, softmax_order))
        elif softmax != "full":
            raise CaptionerError(f"softmax must be 'full' or 'adaptive', got {softmax!r}")
        self.softmax = softmax
        self.params = {n: np.ascontiguousarray(v, dtype=self.dtype) for n, v in p.items()}
        self._work = {}  # loss() temporaries, reused across calls (packed.buffer)

    def _adaptive_init(self, rng, H, V, cutoffs, order):
        """The adaptive softmax's parameters (layers.adaptive_softmax_loss) instead of
        W_vocab, b_vocab: W_head (H, c_1 + n), b_head, and per tail cluster k = 1..n
        W_tail{k}_proj (H, d_k), W_tail{k} (d_k, size_k), b_tail{k} (size_k,).
        order (V,): word id of each frequency rank (captioner.adaptive)."""
        from captioner.adaptive import check_cutoffs, tail_dims

        cutoffs = list(cutoffs) if cutoffs is not None else None
        why = check_cutoffs(cutoffs, V)
        if why:
            raise CaptionerError(f"adaptive softmax: {why}")
        order = np.asarray(order if order is not None else np.arange(V), dtype=np.int64)
        if sorted(order.tolist()) != list(range(V)):
            raise CaptionerError(f"softmax_order must be a permutation of the {V} word ids")
        self.cutoffs, self.softmax_order = cutoffs, order
        self.rank = np.argsort(order)  # word id -> frequency rank
        n = len(cutoffs)
        p = {
            "W_head": rng.standard_normal((H, cutoffs[0] + n)) / np.sqrt(H),
            "b_head": np.zeros(cutoffs[0] + n),
        }
        sizes = np.diff(cutoffs + [V])
        for k, (d, size) in enumerate(zip(tail_dims(H, n), sizes), 1):
            p[f"W_tail{k}_proj"] = rng.standard_normal((H, d)) / np.sqrt(H)
            p[f"W_tail{k}"] = rng.standard_normal((d, size)) / np.sqrt(d)
            p[f"b_tail{k}"] = np.zeros(size)
        return p

    def _tails(self):
        """[(P_k, W_k, b_k), ...] of the adaptive softmax, in cluster order."""
        p = self.params
        return [
            (p[f"W_tail{k}_proj"], p[f"W_tail{k}"], p[f"b_tail{k}"])
            for k in range(1, len(self.cutoffs) + 1)
        ]

    def _tail_grads(self, g, dtails):
        for k, (dP, dW, db) in enumerate(dtails, 1):
            g[f"W_tail{k}_proj"], g[f"W_tail{k}"], g[f"b_tail{k}"] = dP, dW, db

    # ------------------------------------------------------------ training

    def loss_readable(self, features, captions):
        """The CS231n computation with captioner.layers: what loss() computes, slowly.

        features (N, D), captions (N, T+1) int -> (loss, grads). Inputs are
        captions[:, :-1], targets captions[:, 1:]; <NULL> targets are ignored;
        the summed loss is divided by N. grads has params' keys.
        """
        p = self.params
        features = np.asarray(features, dtype=self.dtype)
        captions = np.asarray(captions)
        captions_in, captions_out = captions[:, :-1], captions[:, 1:]
        mask = captions_out != self.null
        if self.cell_type == "lstm":
            forward, backward = layers.lstm_forward, layers.lstm_backward
        else:
            forward, backward = layers.rnn_forward, layers.rnn_backward

        # (1) image features -> initial hidden state
        h0, proj_cache = layers.affine_forward(features, p["W_proj"], p["b_proj"])
        # (2) input words -> word vectors (N, T, W)
        x, embed_cache = layers.word_embedding_forward(captions_in, p["W_embed"])
        # (3) the recurrence -> hidden states (N, T, H)
        h, rnn_cache = forward(x, h0, p["Wx"], p["Wh"], p["b"])
        g = {}
        if self.softmax == "adaptive":
            # (4)+(5) the adaptive softmax loss (targets as frequency ranks), and back
            loss, out_cache = layers.adaptive_softmax_loss(
                h,
                self.rank[captions_out],
                mask,
                p["W_head"],
                p["b_head"],
                self._tails(),
                self.cutoffs,
            )
            dh, g["W_head"], g["b_head"], dtails = layers.adaptive_softmax_loss_backward(out_cache)
            self._tail_grads(g, dtails)
        else:
            # (4) hidden states -> vocabulary scores (N, T, V)
            scores, vocab_cache = layers.temporal_affine_forward(h, p["W_vocab"], p["b_vocab"])
            # (5) softmax loss against the next word, <NULL> targets masked
            loss, dscores = layers.temporal_softmax_loss(scores, captions_out, mask)
            # backward (5), (4)
            dh, g["W_vocab"], g["b_vocab"] = layers.temporal_affine_backward(dscores, vocab_cache)
        # backward (3) .. (1)
        dx, dh0, g["Wx"], g["Wh"], g["b"] = backward(dh, rnn_cache)
        g["W_embed"] = layers.word_embedding_backward(dx, embed_cache)
        _, g["W_proj"], g["b_proj"] = layers.affine_backward(dh0, proj_cache)  # features fixed
        return loss, {n: g[n] for n in p}

    def loss(self, features, captions):
        """loss_readable() on the fast path (captioner.packed): same arguments, same result
        to float rounding. The steps are numbered as in loss_readable().
        """
        p, work = self.params, self._work
        features = np.asarray(features, dtype=self.dtype)
        captions = np.asarray(captions)
        N = captions.shape[0]
        lstm = self.cell_type == "lstm"
        # Sort by length and pack: rows with no target drop out, padding is never computed.
        order, batch_sizes, ids_in, ids_out, keep = packed.pack_captions(captions, self.null)
        feats = features[order[: batch_sizes[0] if len(batch_sizes) else 0]]

        # (1) image features -> initial hidden state
        h0, _ = layers.affine_forward(feats, p["W_proj"], p["b_proj"])
        # (2) input words -> word vectors, fused with the recurrence's input projection
        #     x @ Wx + b (one product per distinct word)
        a, words_cache = packed.project_words_forward(ids_in, p["W_embed"], p["Wx"], p["b"], work)
        # (3) the recurrence over the packed steps (a is overwritten)
        forward = packed.lstm_packed_forward if lstm else packed.rnn_packed_forward
        h, rnn_cache = forward(a, h0, p["Wh"], batch_sizes, work=work)
        g = {}
        if self.softmax == "adaptive":
            # (4)+(5) the adaptive softmax loss on the rows with a word target, and back
            loss, dh, g["W_head"], g["b_head"], dtails = packed.adaptive_softmax_rows(
                h,
                keep,
                self.rank[ids_out[keep]],
                1.0 / N,
                p["W_head"],
                p["b_head"],
                self._tails(),
                self.cutoffs,
                work,
            )
            self._tail_grads(g, dtails)
        else:
            # (4) hidden states -> vocabulary scores, only where the target is a word
            scores, vocab_cache = packed.vocab_scores_forward(
                h, keep, p["W_vocab"], p["b_vocab"], work
            )
            # (5) softmax loss (dscores overwrites scores)
            loss, dscores = packed.softmax_loss_rows(scores, ids_out[keep], 1.0 / N)
            # backward (5), (4)
            dh, g["W_vocab"], g["b_vocab"] = packed.vocab_scores_backward(
                dscores, vocab_cache, work
            )
        # backward (3) .. (1)
        backward = packed.lstm_packed_backward if lstm else packed.rnn_packed_backward
        da, dh0, g["Wh"] = backward(dh, rnn_cache, work=work)
        g["W_embed"], g["Wx"], g["b"] = packed.project_words_backward(da, words_cache, work)
        g["W_proj"] = feats.T @ dh0  # (1) as affine_backward; features fixed
        g["b_proj"] = dh0.sum(axis=0)
        return loss, {n: g[n] for n in p}

    # ------------------------------------------------------------ decoding

    def check_can_sample(self):
        """Raise CaptionerError unless the vocabulary has the <START> and <END> that decoding
        needs (a vocabulary without them can still compute a loss)."""
        missing = [t for t, i in (("<START>", self.start), ("<END>", self.end)) if i is None]
        if missing:
            raise CaptionerError(
                f"the vocabulary has no {' or '.join(missing)} token, so this "
                f"model cannot write captions (it can compute a loss); add "
                f"{' and '.join(missing)} to word_to_idx to sample"
            )

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
        With the adaptive softmax the logits are the exact log-probabilities.

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
            a = proj[words]  # a copy: the step overwrites it
        # same order of additions as training: (x @ Wx + b) + h @ Wh
        if rows is None:
            a += h @ p["Wh"]
        else:
            used, inverse = np.unique(rows, return_inverse=True)
            a += (h[used] @ p["Wh"])[inverse]
            c = c[rows] if c is not None else None
        if self.cell_type == "lstm":
            h, c = packed.lstm_cell_forward(a, c)
        else:
            with np.errstate(over="ignore"):
                h = packed.tanh(a, out=a)  # what training computes
        if self.softmax == "adaptive":
            # exact log-probabilities of every word, back in word-id order: what
            # decoders rank, sample from and (beam search) add up
            logp = layers.adaptive_log_probs(
                h, p["W_head"], p["b_head"], self._tails(), self.cutoffs
            )
            return logp[:, self.rank], h, c
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
        self.check_can_sample()
        N = len(features)
        captions = np.full((N, max_length), self.null, dtype=np.int64)
        h, c = self.init_state(features)
        proj = self.decode_proj(N, max_length)
        rows = np.arange(N)
        words = np.full(N, self.start)
        for t in range(max_length):
            if rows.size == 0:
                break
            logits, h, c = self.step(words, h, c, proj)
            logits[:, self.banned] = -np.inf
            if t == 0:
                logits[:, self.end] = -np.inf  # a caption has at least one word
            words = choose(logits)
            captions[rows, t] = words
            live = words != self.end
            if not live.all():
                rows, words, h = rows[live], words[live], h[live]
                c = c[live] if c is not None else None
        return captions
