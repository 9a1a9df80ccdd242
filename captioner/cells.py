"""The decoder cells: one entry each. Model, checkpoint, training, gradients, plots,
compare and the CLI read this table; adding a cell is one entry here plus its layers.

A cell named X brings, by name (looked up on first use, so the CLI can read the table
without importing numpy):
- captioner.layers: X_step_forward/X_step_backward and X_forward/X_backward, the
  readable CS231n pairs (gradient-checked in float64);
- captioner.packed: X_packed_forward/X_packed_backward, the fast path training runs
  (tested equal to the readable one), and X_decode_step(a, hWh, h, c) -> (h, c), one
  forward step for the decoders: a (B, gates*H) the input projection x @ Wx + b
  (overwritten), hWh (B, gates*H) = h @ Wh, h and c (B, H) the previous state (c None
  unless the cell has one).
All cells share the parameter names of CaptioningRNN: Wx (W, gates*H), Wh (H, gates*H),
b (gates*H,).
"""


class Cell:
    """name; gates: H-wide blocks of Wx, Wh and b; states: the recurrent state, ("h",)
    or ("h", "c"); overfit_limit: CS231n's bar for `overfit`'s final loss; cache_floats:
    floats per hidden unit that a readable step's cache holds (gradients sizes its
    chunks by it); about: one line; decode_reads_h: its decode step reads the previous
    h itself, not only h @ Wh (the decoders then gather it for beam search's rows; the
    others skip that copy); forget_gate: the H-block of b that is the forget gate's bias
    (the forget-bias option sets it), None for a cell without one."""

    def __init__(
        self,
        name,
        gates,
        states,
        overfit_limit,
        cache_floats,
        about,
        decode_reads_h,
        forget_gate=None,
    ):
        self.name, self.gates, self.states = name, gates, states
        self.forget_gate = forget_gate
        self.decode_reads_h = decode_reads_h
        self.overfit_limit = overfit_limit
        self.cache_floats, self.about = cache_floats, about

    def _fn(self, module, kind):
        import importlib

        return getattr(importlib.import_module(f"captioner.{module}"), f"{self.name}_{kind}")

    @property
    def step_forward(self):
        return self._fn("layers", "step_forward")

    @property
    def step_backward(self):
        return self._fn("layers", "step_backward")

    @property
    def forward(self):
        return self._fn("layers", "forward")

    @property
    def backward(self):
        return self._fn("layers", "backward")

    @property
    def packed_forward(self):
        return self._fn("packed", "packed_forward")

    @property
    def packed_backward(self):
        return self._fn("packed", "packed_backward")

    @property
    def decode_step(self):
        return self._fn("packed", "decode_step")


CELLS = {
    c.name: c
    for c in (
        Cell("rnn", 1, ("h",), 0.1, 3, "tanh RNN", False),
        # CS231n's LSTM stacks its gates i, f, o, g: the forget gate is block 1
        Cell("lstm", 4, ("h", "c"), 0.5, 14, "LSTM, gates i, f, o, g", False, 1),
        Cell("gru", 3, ("h",), 0.5, 8, "GRU, gates r, z, n", True),
    )
}
NAMES = tuple(CELLS)
WITH_FORGET_GATE = tuple(c.name for c in CELLS.values() if c.forget_gate is not None)


def get(name):
    """The Cell called name; ValueError naming the cells for any other."""
    try:
        return CELLS[name]
    except (KeyError, TypeError):
        raise ValueError(f"cell must be one of {', '.join(NAMES)}, got {name!r}") from None
