"""Captioning picture files: encode them with the model's own encoder, then decode.

Used by `captioner sample FILES` and the demo; `captioner prepare` encodes pictures with
the same encoders (captioner.shards.encode_shard) but writes features, not captions.
"""

from . import encoders
from .errors import CaptionerError


def caption_features(
    model, features, beam_size=3, n_best=1, max_length=16, temperature=None, rng=None
):
    """features (N, D) -> per image a list of (caption, logprob or None), best first.

    Beam search (beam_size 1 = greedy), or with temperature n_best independent
    samples each (logprob None), drawn from rng (a np.random.Generator, seed or None).
    """
    from .decoding import beam_captions, sample_temperature
    from .vocab import decode_captions

    if temperature is None:
        return beam_captions(model, features, beam_size, max_length, n_best=n_best)
    draws = [
        sample_temperature(model, features, temperature, max_length, rng) for _ in range(n_best)
    ]
    return [
        [(decode_captions(d[i], model.idx_to_word), None) for d in draws]
        for i in range(len(features))
    ]


def caption_images(
    model,
    paths,
    beam_size=3,
    n_best=1,
    max_length=16,
    batch_size=32,
    temperature=None,
    rng=None,
    progress=None,
    encoder="squeezenet",
):
    """Caption picture files with a CaptioningRNN trained on `encoder`'s features
    (a captioner.encoders name: the one whose feature id the checkpoint records).

    -> one (path, [(caption, logprob), ...] best first, None) per path, in order;
    (path, None, one-line error) for a picture that cannot be read. Decoding as in
    caption_features; batch_size: pictures encoded at once; progress: as encoders.encode_files'.
    """
    dim, net = model.params["W_proj"].shape[0], encoders.module(encoder)
    if dim != net.FEATURE_DIM:
        raise CaptionerError(
            f"this model takes {dim}-d features but the picture encoder "
            f"({net.ENCODER_NAME}) gives {net.FEATURE_DIM}-d; caption "
            f"pictures with a model trained on a `captioner prepare` dataset"
        )
    paths = list(paths)
    feats, _, ok, errors = encoders.encode_files(
        paths, encoder, batch_size=batch_size, progress=progress
    )
    hyps = (
        caption_features(model, feats, beam_size, n_best, max_length, temperature, rng)
        if ok
        else []
    )
    # encode_files keeps input order in both lists, so walk them alongside paths
    out, oi, ei = [], 0, 0
    for p in paths:
        if oi < len(ok) and ok[oi] == p:
            out.append((p, hyps[oi], None))
            oi += 1
        else:
            out.append((p, None, errors[ei][1]))
            ei += 1
    return out
