"""The PyTorch baseline for scripts/bench.py: the same captioning model, written the usual way.

nn.Embedding -> nn.LSTM / nn.RNN(tanh) (batch_first) with h0 = Linear(features), c0 = 0
-> nn.Linear to the vocabulary -> cross-entropy ignoring <NULL>, summed over tokens and
divided by N (the CS231n convention) -> torch.optim.Adam. Two threads, float32.

torch is not a project dependency; bench.py runs this file in a subprocess (`--serve`, so
torch's OpenMP threads live in another process and sleep while numpy is timed) and skips it
when torch is absent.

    python scripts/torch_baseline.py --cell lstm            # random COCO-like data
    python scripts/torch_baseline.py --data d.npz --json    # bench.py's data and weights
"""

import argparse
import json
import statistics
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

# CS231n stacks LSTM gates as [i, f, o, g]; torch as [i, f, g, o].
_CS231N_TO_TORCH_GATES = [0, 1, 3, 2]


class Captioner(nn.Module):
    """packed=True runs the RNN on a PackedSequence (no work on <NULL> padding) and the
    vocabulary layer on real tokens only: what a PyTorch user would do to go faster."""

    def __init__(self, cell, vocab_size, input_dim, wordvec_dim, hidden_dim, null=0, packed=False):
        super().__init__()
        self.cell, self.null, self.packed = cell, null, packed
        self.embed = nn.Embedding(vocab_size, wordvec_dim)
        self.proj = nn.Linear(input_dim, hidden_dim)
        if cell == "lstm":
            self.rnn = nn.LSTM(wordvec_dim, hidden_dim, batch_first=True)
        else:
            self.rnn = nn.RNN(wordvec_dim, hidden_dim, nonlinearity="tanh", batch_first=True)
        self.vocab = nn.Linear(hidden_dim, vocab_size)

    def forward(self, features, captions):
        """features (N, D) float32, captions (N, T+1) int64 -> scalar loss."""
        x = self.embed(captions[:, :-1])
        targets = captions[:, 1:]
        h0 = self.proj(features).unsqueeze(0)
        if self.packed:
            # a caption's targets end at <END>, so its length is its count of non-<NULL> targets
            lengths = (targets != self.null).sum(dim=1).cpu()
            x = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
            targets = pack_padded_sequence(
                targets, lengths, batch_first=True, enforce_sorted=False
            ).data
        if self.cell == "lstm":
            h, _ = self.rnn(x, (h0, torch.zeros_like(h0)))
        else:
            h, _ = self.rnn(x, h0)
        scores = self.vocab(h.data if self.packed else h)
        loss = F.cross_entropy(
            scores.reshape(-1, scores.shape[-1]),
            targets.reshape(-1),
            ignore_index=self.null,
            reduction="sum",
        )
        return loss / captions.shape[0]

    @torch.no_grad()
    def load_cs231n(self, params):
        """Copy captioner-style params (W_embed, W_proj, b_proj, Wx, Wh, b, W_vocab, b_vocab)."""
        t = {k: torch.as_tensor(np.asarray(v, dtype=np.float32)) for k, v in params.items()}
        Wx, Wh, b = t["Wx"], t["Wh"], t["b"]
        if self.cell == "lstm":
            H = Wh.shape[0]
            order = torch.cat([torch.arange(g * H, (g + 1) * H) for g in _CS231N_TO_TORCH_GATES])
            Wx, Wh, b = Wx[:, order], Wh[:, order], b[order]
        self.embed.weight.copy_(t["W_embed"])
        self.proj.weight.copy_(t["W_proj"].T)
        self.proj.bias.copy_(t["b_proj"])
        self.rnn.weight_ih_l0.copy_(Wx.T)
        self.rnn.weight_hh_l0.copy_(Wh.T)
        self.rnn.bias_ih_l0.copy_(b)
        self.rnn.bias_hh_l0.zero_()  # torch has two biases where CS231n has one
        self.vocab.weight.copy_(t["W_vocab"].T)
        self.vocab.bias.copy_(t["b_vocab"])


def setup(
    cell,
    features,
    captions,
    params=None,
    threads=2,
    packed=False,
    wordvec_dim=256,
    hidden_dim=512,
    vocab_size=1004,
):
    """Model, optimiser and one-step closure. Returns (step, loss_before_training).

    features (N, D), captions (N, T+1) int; params: captioner-style dict to start from
    (else torch's own init, with the given sizes).
    """
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    if params is not None:
        hidden_dim, vocab_size = params["Wh"].shape[0], params["W_vocab"].shape[1]
        wordvec_dim = params["W_embed"].shape[1]
    model = Captioner(cell, vocab_size, features.shape[1], wordvec_dim, hidden_dim, packed=packed)
    if params is not None:
        model.load_cs231n(params)
    f = torch.as_tensor(np.asarray(features, dtype=np.float32))
    c = torch.as_tensor(np.asarray(captions, dtype=np.int64))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)

    with torch.no_grad():
        loss0 = float(model(f, c))

    def step():
        opt.zero_grad(set_to_none=True)
        loss = model(f, c)
        loss.backward()
        opt.step()

    return step, loss0


def timed_step(step):
    t0 = time.perf_counter()
    step()
    return time.perf_counter() - t0


def step_times(
    cell, features, captions, params=None, reps=10, warmup=3, threads=2, packed=False, **sizes
):
    """Seconds of `reps` training steps after `warmup` untimed ones
    -> (times, loss_before_training)."""
    step, loss0 = setup(cell, features, captions, params, threads, packed, **sizes)
    for _ in range(warmup):
        step()
    return [timed_step(step) for _ in range(reps)], loss0


def step_time(
    cell, features, captions, params=None, reps=10, warmup=3, threads=2, packed=False, **sizes
):
    """Median seconds of one training step (forward + backward + Adam) over `reps` steps."""
    times, _ = step_times(cell, features, captions, params, reps, warmup, threads, packed, **sizes)
    return statistics.median(times)


def serve(step, loss0, warmup):
    """Line protocol for bench.py, which interleaves our steps with its own: after a
    {"loss0", "torch", "threads"} line, each "step" line read gets the step's seconds back."""
    for _ in range(warmup):
        step()
    print(
        json.dumps(
            {"loss0": loss0, "torch": torch.__version__, "threads": torch.get_num_threads()}
        ),
        flush=True,
    )
    for line in sys.stdin:
        if line.strip() != "step":
            break
        print(repr(timed_step(step)), flush=True)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cell", choices=["lstm", "rnn"], default="lstm")
    ap.add_argument(
        "--data", help="npz with features, captions and <cell>_<name> params (bench.py writes it)"
    )
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--packed", action="store_true", help="skip <NULL> padding (PackedSequence)")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.add_argument(
        "--serve", action="store_true", help="time one step per 'step' line on stdin (bench.py)"
    )
    args = ap.parse_args(argv)

    if args.data:
        d = np.load(args.data)
        features, captions = d["features"], d["captions"]
        prefix = f"{args.cell}_"
        params = {k[len(prefix) :]: d[k] for k in d.files if k.startswith(prefix)} or None
    else:
        from bench import REF, coco_like_captions  # scripts/ is on sys.path when run as a script

        rng = np.random.default_rng(0)
        features = rng.standard_normal((REF["N"], REF["D"])).astype(np.float32)
        captions = coco_like_captions(rng, REF["N"], REF["T"], REF["V"])
        params = None
    if args.serve:
        return serve(
            *setup(args.cell, features, captions, params, args.threads, args.packed), args.warmup
        )
    times, loss0 = step_times(
        args.cell, features, captions, params, args.reps, args.warmup, args.threads, args.packed
    )
    med = statistics.median(times)
    out = {
        "cell": args.cell,
        "packed": args.packed,
        "median_s": med,
        "times_s": times,
        "loss0": loss0,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }
    if args.json:
        print(json.dumps(out))
    else:
        print(
            f"torch {torch.__version__} {args.cell}{' packed' if args.packed else ''}: "
            f"{med * 1e3:.1f} ms/step (median of {args.reps}, {torch.get_num_threads()} threads), "
            f"loss at start {loss0:.4f}"
        )


if __name__ == "__main__":
    sys.exit(main())
