"""A linear-chain CRF for Keras 3, after Su Jianlin's two CRF articles:
果壳中的条件随机场 (https://kexue.fm/archives/4695) and 简明条件随机场CRF介绍（附带纯Keras实现）
(https://kexue.fm/archives/5542).

For emissions ``x_t`` (the network's per-token tag scores, ``f(a_t; q_t)`` in the articles) and a tag
path ``y_1..y_n``, the CRF scores the path with a learned transition matrix ``g(a_{t-1}, a_t)``:

    score(y) = start[y_1] + sum_t x_t[y_t] + sum_t trans[y_{t-1}, y_t] + end[y_n]
    p(y | x) = exp(score(y)) / Z,        Z = sum over all K^n paths of exp(score(path))

(``start`` and ``end`` are this layer's ``boundary`` option; the article's layer has only ``trans``.)
log Z comes from the forward recursion, in log-space to avoid overflow:

    alpha_1 = start + x_1,      alpha_t[j] = logsumexp_i(alpha_{t-1}[i] + trans[i, j]) + x_t[j]
    log Z   = logsumexp_j(alpha_n[j] + end[j])

and the training loss is ``log Z - score(gold path)``, the negative log-likelihood. Decoding replaces
logsumexp by max (Viterbi) and keeps the k best paths per tag for ``top_k``; ``marginals`` runs the
recursion backwards too (forward-backward).

This file imports only keras and numpy and uses ``keras.ops``: it runs on TensorFlow (with or without
XLA), JAX and PyTorch. Copy it into your project as it is.
"""

import keras
import numpy as np
from keras import ops

__all__ = ["CRF", "ZeroMasked", "allowed_transitions", "build_tagger"]

# Score of a forbidden transition, start or end: -inf, so no finite emission, however large, can
# make a forbidden path win or count in Z. The recursions use ``_logsumexp``, whose value and
# gradient stay exact when every term is -inf (an unreachable tag).
FORBIDDEN = float("-inf")


def _finite_max(x, axis):
    """The maximum of ``x`` over ``axis`` (kept), 0 where every entry is -inf (or one is NaN or +inf):
    what a recursion subtracts to keep its numbers small without making NaN of an all -inf row."""
    top = ops.max(x, axis=axis, keepdims=True)
    return ops.where(ops.isfinite(top), top, 0.0)


def _last_step(mask):
    """Each left-aligned row's last real step (batch,) as int32; 0 for a row without one."""
    return ops.maximum(ops.sum(ops.cast(mask, "int32"), axis=1) - 1, 0)


def _logsumexp(x, axis):
    """log(sum(exp(x))) over ``axis``: -inf with a zero gradient (not NaN) when every term is -inf."""
    top = ops.stop_gradient(_finite_max(x, axis))
    total = ops.sum(ops.exp(x - top), axis=axis)
    empty = total <= 0.0
    return ops.where(empty, FORBIDDEN, ops.log(ops.where(empty, 1.0, total)) + ops.squeeze(top, axis))


def _shift(x, axes):
    """``x`` minus its maximum over ``axes`` (kept finite: 0 where every entry is -inf), and that
    maximum: renormalising a recursion's state each step keeps it far from float32 overflow."""
    top = _finite_max(x, axes)
    return x - top, ops.reshape(top, (-1,))


def _count(name, value):
    """``value`` as a positive int, or a ValueError naming it (no silent rounding of 2.5 or True)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _numbers(name, x):
    """``x`` (an array, a list, a tensor or a variable) as a tensor of numbers or booleans; a
    ValueError naming ``name`` and the dtype otherwise (strings, complex numbers, objects)."""
    if isinstance(x, (list, tuple, np.ndarray)):
        kind = np.asarray(x).dtype.kind
        if kind not in "biuf":
            raise ValueError(f"{name} must hold numbers or booleans, got dtype {np.asarray(x).dtype}")
    x = ops.convert_to_tensor(x)
    dtype = keras.backend.standardize_dtype(x.dtype)
    if dtype != "bool" and not dtype.startswith(("int", "uint", "float", "bfloat")):
        raise ValueError(f"{name} must hold numbers or booleans, got dtype {dtype}")
    return ops.copy(x) if hasattr(x, "assign") else x  # a variable: its value


def _loop(body, state, n):
    """``for t in range(n): state = body(t, state)``, differentiable and compilable on every backend.

    TensorFlow: ``while_loop`` with ``maximum_iterations`` (works with a dynamic ``n`` and under XLA,
    where ``scan`` and ``fori_loop`` fail). JAX: ``fori_loop`` with a static ``n`` lowers to ``scan``,
    which is reverse-differentiable (``while_loop`` is not). PyTorch: a Python loop.
    """
    if keras.backend.backend() == "tensorflow":
        _, state = ops.while_loop(
            lambda t, s: t < n,
            lambda t, s: (t + 1, body(t, s)),
            (ops.convert_to_tensor(0, "int32"), state),
            maximum_iterations=n,
        )
        return state
    return ops.fori_loop(0, n, body, state)


def _lse(x, axis):
    """log(sum(exp(x))) over ``axis`` for values only (no gradient is taken through it): -inf when
    every term is -inf. The recursions whose gradient is written out by hand use it. (PyTorch's own
    ``logsumexp`` is one call; TensorFlow's adds ops that cost more than these, with or without XLA.)"""
    if keras.backend.backend() == "torch":
        return ops.logsumexp(x, axis=axis)
    top = _finite_max(x, axis)
    return ops.log(ops.sum(ops.exp(x - top), axis=axis)) + ops.squeeze(top, axis)


def _lse_softmax(x):
    """``_lse`` and the softmax over the last axis, for values only; a row of -inf (a tag that no
    tag after it may follow) gets -inf and a softmax of zeros."""
    if keras.backend.backend() == "torch":
        total = ops.logsumexp(x, axis=-1)
        return total, ops.exp(x - ops.where(ops.isfinite(total), total, 0.0)[..., None])
    top = _finite_max(x, -1)
    e = ops.exp(x - top)
    total = ops.sum(e, axis=-1, keepdims=True)
    return ops.log(total[..., 0]) + top[..., 0], e / ops.maximum(total, 1e-30)


# Steps run per iteration of a compiled scan: a loop iteration costs several bookkeeping ops on
# TensorFlow (reading and writing its arrays), about as many as one step's own arithmetic. 16 against
# 8, alternated in one process (batch 64 x up to 128 steps): TensorFlow's Viterbi 0.90-0.91 of the
# time at 4 and 17 tags, its likelihood 0.99-1.01 (under XLA 0.86-0.96); 32 against 16 changed nothing.
_CHUNK = 16


def _scan(body, state, xs, reverse=False):
    """``for x_t in xs (or reversed): state, out = body(state, x_t)``, for values only (no gradient
    is taken through it): the last state and the outputs (the states: ``out`` must be ``state``)
    stacked on a new first axis, in the order of ``xs``, a tuple of time-major tensors. Time and
    memory stay linear in T: TensorFlow's ``scan`` writes a TensorArray (which also compiles with
    XLA when nothing differentiates the loop), JAX's is ``lax.scan``, each iteration running
    ``_CHUNK`` steps (the sequence padded to a multiple of it where the scan ends); PyTorch loops in
    Python and keeps a list (its ``slice_update`` would copy a preallocated buffer at every step)."""
    if keras.backend.backend() == "torch":
        outs = []
        steps = range(xs[0].shape[0])
        for t in reversed(steps) if reverse else steps:
            state, out = body(state, tuple(x[t] for x in xs))
            outs.append(out)
        outs = outs[::-1] if reverse else outs
        if isinstance(state, tuple):
            return state, tuple(_stack([out[i] for out in outs], part) for i, part in enumerate(state))
        return state, _stack(outs, state)

    steps = ops.shape(xs[0])[0]
    pad = (_CHUNK - steps % _CHUNK) % _CHUNK
    tree = isinstance(state, tuple)
    parts = state if tree else (state,)

    def chunked(x):  # padded where the scan ends (it never reaches the real steps' states)
        filler = ops.zeros((pad, *ops.shape(x)[1:]), x.dtype)
        x = ops.concatenate([filler, x] if reverse else [x, filler], axis=0)
        return ops.reshape(x, (-1, _CHUNK, *ops.shape(x)[1:]))

    def run(carry, chunk):  # carry: the previous chunk's states (_CHUNK, ...); its last one goes on
        state = tuple(c[0 if reverse else -1] for c in carry)
        outs = [None] * _CHUNK
        for i in reversed(range(_CHUNK)) if reverse else range(_CHUNK):
            state, _ = body(state if tree else state[0], tuple(c[i] for c in chunk))
            state = state if tree else (state,)
            outs[i] = state
        carry = tuple(ops.stack([out[p] for out in outs], axis=0) for p in range(len(parts)))
        return carry, carry

    # One array to scan over (Keras's TensorFlow scan cannot check several of unknown length): the
    # inputs side by side in float32 (exact for tags, booleans and scores), split again per chunk.
    flat = [len(x.shape) == 2 for x in xs]
    widths = [1 if f else x.shape[2] for f, x in zip(flat, xs)]
    kinds = [x.dtype for x in xs]
    packed = ops.concatenate([ops.cast(x[:, :, None] if f else x, "float32") for f, x in zip(flat, xs)], axis=2)

    def unpack(chunk):
        pieces, at = [], 0
        for f, width, kind in zip(flat, widths, kinds):
            piece = chunk[..., at : at + width]
            at += width
            pieces.append(ops.cast(piece[..., 0] if f else piece, kind))
        return pieces

    first = tuple(ops.broadcast_to(p[None], (_CHUNK, *ops.shape(p))) for p in parts)
    _, outs = ops.scan(lambda carry, chunk: run(carry, unpack(chunk)), first, chunked(packed), reverse=reverse)
    outs = tuple(ops.reshape(o, (-1, *ops.shape(o)[2:])) for o in outs)
    outs = tuple(o[pad:] if reverse else o[:steps] for o in outs)
    # the state after the last real step (or the initial one when there is none)
    last = tuple(
        ops.take(ops.concatenate([o, p[None]] if reverse else [p[None], o], axis=0), 0 if reverse else steps, axis=0)
        for o, p in zip(outs, parts)
    )
    return (last if tree else last[0]), (outs if tree else outs[0])


def _came_from(scores, trans):
    """``argmax_i(scores[t, b, i] + trans[i, j])`` for every t, b, j as int32 (T, batch, K): the first
    best on ties. One comparison per previous tag rather than one ``argmax`` over a (T, batch, K, K)
    array, whose rows of 4 to 17 scores every backend reduces slowly (measured here, 127 x 64 rows:
    TensorFlow 25 against 13 ms at 17 tags, with XLA 2.0 against 0.8; JAX 9.9 against 0.3; PyTorch
    6-10x). A NaN at a tag after the first is never preferred; NaN comes only as whole rows (a
    state past a dead end, on padding or in a row with no possible path), which point to tag 0:
    ``_best_path`` replaces that on padding, and ``decode`` marks a row without a path -1."""
    best = scores[:, :, :1] + trans[None, None, 0]
    came = ops.zeros(ops.shape(best), "int32")
    for i in range(1, trans.shape[0]):
        score = scores[:, :, i : i + 1] + trans[None, None, i]
        better = score > best  # strictly: a tie keeps the earlier tag, as argmax does
        best, came = ops.where(better, score, best), ops.where(better, i, came)
    return came


# From this many tags on, ``_best_path`` finds where the path came from one step at a time along the
# path (an argmax over K a step) rather than for every tag at every step at once (``_came_from``: K
# comparisons over a (T, batch, K) array). Alternated in one process, batch 64 x up to 128 steps,
# ratio of times (path only / every tag): TensorFlow 4 tags 1.15, 6 1.02, 8 0.85, 12 0.87, 17 0.69;
# PyTorch 1.06, 1.11, 0.99, 0.90, 0.76. JAX (under XLA) keeps every tag: 1.01 at 4, 1.07 at 17.
_PATH_ONLY_FROM = None if keras.backend.backend() == "jax" else 8


# From this many tags on (and where the tree does not run), ``_best_path`` keeps its state batch
# minor, (K, batch) rather than (batch, K): each step's maximum over the previous tag then reduces
# the first axis of a (K, K, batch) array, which PyTorch's CPU kernels do far faster than a middle
# axis of (batch, K, K) (17 tags, batch 64: 2.6 against 23 us for the reduction alone). Its
# backtrack runs on the rows shifted to end together, so no step has to hold the tag of a padding
# step (the whole decode 0.93-0.97 of the time of the batch-minor forward with the batch-major
# backtrack, at 8, 12 and 17 tags). Alternated in one process, batch 64 x up to 128 steps, ratio of
# decode times (batch minor / batch major, path only): PyTorch 8 tags 0.92, 9 0.91, 12 0.88, 17 0.80
# (below 8 it runs the tree).
# TensorFlow gains little without XLA (4 tags 1.02, 17 0.89) and loses with it (1.09, 1.51), and a
# graph cannot tell which it runs under; JAX keeps its way too. None: never.
_MINOR_FROM = 8 if keras.backend.backend() == "torch" else None


# Up to this many tags, PyTorch decodes on a tree over the steps rather than step by step
# (``_tree_best_path``; the likelihood's tree, ``_tree_log_z``, has its own limit below): log2(T)
# rounds of products of the (K, K) matrices of neighbouring segments instead of T rounds of small
# ops, each of which costs PyTorch's eager dispatch and Keras's argument checks (most of a step's
# time with few tags). The tree does K times the arithmetic (K^3 a step, not K^2), so it pays only
# for few tags. Alternated in one process, batch 64 x up to 128 steps, ratio of times (tree / step
# by step), likelihood and gradient, then decode: 4 tags 0.47-0.57 and 0.57-0.64, 5: 0.61-0.69 and
# 0.73-0.76, 6: 0.67-0.75 and 0.72-0.74, 7: 0.71-0.78 (once 1.36) and 0.82-0.84, 8: 0.61-0.82 and
# 0.86-1.01, 9: 0.94 and 1.26, 12: 1.10 and 1.34, 17: 1.88 and 6.1 (the likelihood's steps then
# still called ``keras.ops`` a step). TensorFlow (0.90 for a 4-tag decode, but 1.85 under XLA) and
# JAX (2.2) keep their compiled loops.
_TREE_UP_TO = 7 if keras.backend.backend() == "torch" else 0

# The likelihood's tree pays for fewer tags since the scaled recursions' steps became Python operators
# (``_scaled_forward``). Alternated as above, ratio of times (scaled / tree), likelihood and gradient,
# three to five measurements: 4 tags 1.26-1.47, 5: 0.44-1.14, 6: 0.86-1.04, 7: 0.82-1.01.
_TREE_LOG_Z_UP_TO = 4 if keras.backend.backend() == "torch" else 0


def _tree_fits(x, num_tags, up_to):
    """Whether the tree runs on time-major ``x`` (T, batch, K): at most ``up_to`` tags, every size
    known (it unrolls log2(T) rounds in Python), and at least one move (T >= 2)."""
    return num_tags <= up_to and None not in tuple(x.shape) and x.shape[0] > 1


def _tree_leaves(x, real, trans):
    """The log-space matrices of the moves into steps 1 .. T - 1 of time-major scores ``x`` (T, batch,
    K): ``trans[i, j] + x_t[j]`` at a real step, the identity of max-plus and log-sum-exp products (0
    on the diagonal, -inf elsewhere) at padding, and identities after them up to a power of two; shape
    (leaves, batch, K, K)."""
    steps, batch, k = x.shape
    leaves = 1
    while leaves < steps - 1:
        leaves *= 2
    same = ops.convert_to_tensor(np.where(np.eye(k, dtype=bool), 0.0, FORBIDDEN).astype("float32"))[None, None]
    moves = ops.where(real[1:, :, None, None], trans[None, None] + x[1:, :, None, :], same)
    if leaves > steps - 1:
        moves = ops.concatenate([moves, ops.broadcast_to(same, (leaves - steps + 1, batch, k, k))], axis=0)
    return moves


def _tree_best_path(x, real, trans, start, end):
    """The best path's tags (T, batch) of time-major left-aligned scores ``x`` (T, batch, K), T >= 2.

    Upwards, each round pairs neighbouring segments and keeps, for every first tag i and last tag j,
    the best score of a path through the pair, ``max_m left[i, m] + right[m, j]`` (each matrix less
    its maximum: NaN only in a row without any path). At the top, the best first and last tags; then
    downwards, for each segment whose end tags are known, the best tag where its halves meet, read off
    the stored halves (one argmax over K per segment and round; no pointers are kept for every
    entry). On exact ties the path returned has the best score, but which of the tied paths it is can
    differ from the step-by-step decoder's (which keeps the first best previous tag)."""
    steps, batch, k = x.shape
    mats = _tree_leaves(x, real, trans)
    rounds = []  # each round's halves, (segments, 2, batch, K, K): the left one and the right one transposed
    while mats.shape[0] > 1:
        pair = ops.reshape(mats, (mats.shape[0] // 2, 2, batch, k, k))
        pair = ops.stack([pair[:, 0], ops.swapaxes(pair[:, 1], 2, 3)], axis=1)
        rounds.append(pair)
        mats = ops.max(pair[:, 0, :, :, None, :] + pair[:, 1, :, None, :, :], axis=4)
        mats = mats - ops.max(mats, axis=(2, 3), keepdims=True)
    total = (start[None, :] + x[0])[:, :, None] + mats[0] + end[None, None, :]
    best = ops.cast(ops.argmax(ops.reshape(total, (batch, k * k)), axis=1), "int32")
    ends = ops.stack([best // k, best % k], axis=-1)[None]  # (segments, batch, 2): each segment's end tags
    for pair in reversed(rounds):
        segments = pair.shape[0]
        # where each segment's left half's row (its first tag) and right half's column (its last) start
        base = (np.arange(segments)[:, None, None] * 2 + np.arange(2)) * batch + np.arange(batch)[:, None]
        base = ops.convert_to_tensor((base * k).astype("int32"))  # (segments, batch, 2)
        picked = ops.take(ops.reshape(pair, (-1, k)), ops.reshape(base + ends, (-1,)), axis=0)
        middle = ops.argmax(ops.sum(ops.reshape(picked, (segments, batch, 2, k)), axis=2), axis=2)
        middle = ops.cast(middle, "int32")
        halves = [ops.stack([ends[..., 0], middle], axis=-1), ops.stack([middle, ends[..., 1]], axis=-1)]
        ends = ops.reshape(ops.stack(halves, axis=1), (2 * segments, batch, 2))
    return ops.concatenate([ends[:, :, 0], ends[-1:, :, 1]], axis=0)[:steps]


def _tree_log_z(x, real, trans, start, end):
    """log Z (batch,) of time-major left-aligned scores ``x`` (T, batch, K), T >= 2, and ``low``: as
    ``_scaled_forward``, on exps, but pairing neighbouring segments' matrices (one batched matrix
    product a round, each product divided by its maximum, whose logs are summed), differentiated by
    the backend. ``low`` (a scalar) says whether an entry that could be above 0 (an allowed move and a
    possible score; pairs of such) fell below ``_FLOOR`` somewhere (a product before its scaling), or
    the final sum of a row that has a path did: the caller then computes the batch again step by
    step."""
    steps, batch, k = x.shape
    moves = _tree_leaves(x, real, trans)
    top = ops.stop_gradient(_finite_max(ops.reshape(moves, (moves.shape[0], batch, k * k)), 2))[..., None]
    mats = ops.exp(moves - top)
    logs = ops.sum(top[:, :, 0, 0], axis=0)
    reach = ops.cast(ops.isfinite(moves), "float32")
    low = ops.any((reach > 0.0) & (mats < _FLOOR))
    while mats.shape[0] > 1:
        half = mats.shape[0] // 2
        pair = ops.reshape(mats, (half, 2, batch, k, k))
        mats = ops.matmul(pair[:, 0], pair[:, 1])
        pair = ops.reshape(reach, (half, 2, batch, k, k))
        reach = ops.cast(ops.matmul(pair[:, 0], pair[:, 1]) > 0.0, "float32")
        # Before scaling: a sum of products of numbers up to 1 has lost only terms below float32's
        # smallest normal number, 1.2e-38, which cannot matter to an entry of at least _FLOOR.
        low = low | ops.any((reach > 0.0) & (mats < _FLOOR))
        top = ops.stop_gradient(ops.max(mats, axis=(2, 3), keepdims=True))
        top = ops.where(top > 0.0, top, 1.0)
        mats = mats / top
        logs = logs + ops.sum(ops.log(top[:, :, 0, 0]), axis=0)
    opening = start[None, :] + x[0]
    first, top_first = _exp_shifted(opening, 1)
    can_open = ops.isfinite(opening)
    closing, top_end = _exp_shifted(end, 0)
    total = ops.sum(ops.sum(first[:, :, None] * mats[0], axis=1) * closing[None, :], axis=1)
    found = total > 0.0
    # rows with a real token and a path: an allowed first tag, moves and last tag
    ways = ops.sum(
        ops.cast(can_open, "float32")[:, :, None] * reach[0] * ops.cast(ops.isfinite(end), "float32"), (1, 2)
    )
    possible = real[0] & (ways > 0.0)
    low = (
        low
        | ops.any(real[0][:, None] & can_open & (first < _FLOOR))
        | ops.any(ops.isfinite(end) & (closing < _FLOOR))
        | ops.any(possible & ops.logical_not(total >= _FLOOR))
    )
    inner = ops.where(found, ops.log(ops.where(found, total, 1.0)), FORBIDDEN)
    return inner + top_first[:, 0] + top_end[0] + logs, low


# How often PyTorch's Viterbi forward takes its state less its maximum: each time costs a
# ``keras.ops.max``, with Keras's dispatch about a third of a forward step's time at 17 tags. The scores
# of each step are first taken less their best (which changes no path), so between two such steps
# the state moves from 0 only by what the best path loses to the best tag of each step and by the
# moves' scores: at most 16 steps' worth, no coarser in float32 than a path's own score summed over
# 16 steps. Alternated in one process against a state less its maximum every step (batch 64 x up to
# 128 steps, the decode with the backtrack below): 0.88-0.92 of the time at 8 and 17 tags.
# TensorFlow and JAX run compiled loops, where the max costs little, and keep every step.
_RESCALE_EVERY = 16 if keras.backend.backend() == "torch" else 1


def _viterbi_states(x, trans, start, axis):
    """The single-best Viterbi forward recursion: the state after each step, less the state's
    maximum on step 0 and every ``_RESCALE_EVERY`` steps (so it stays small; -inf or NaN once no tag
    is reachable: on padding past a dead end, where no state is read, or in a row with no possible path,
    which ``_gold`` reports); when not every step, each step's scores ``x`` are first taken less
    their maximum (``_best_zero``). It runs on over the padding too: only real steps are read.
    ``axis`` is the tags' axis of a state: 1 for time-major ``x`` (T, batch, K), states (T, batch,
    K); 0 for batch-minor ``x`` (T, K, batch), states (T, K, batch) (``_MINOR_FROM``). Rescaling
    less often than every step loops in Python over the known T (PyTorch always knows it); with T
    unknown it scans, rescaling every step (with no shift, as every step needs none)."""
    before = (slice(None),) * (axis + 1) + (None,)  # the previous tag's axis, then the next tag's
    pairs = trans[None] if axis else trans[:, :, None]  # (from, to) placed as in score[before]
    seldom = _RESCALE_EVERY > 1 and x.shape[0] is not None  # rescaled every few steps, in Python
    if seldom:
        x = _best_zero(x, axis + 1)
    first, _ = _shift(x[0] + (start[None, :] if axis else start[:, None]), axis)
    if seldom:
        states = [first]
        for t in range(1, x.shape[0]):
            score = ops.max(states[-1][before] + pairs, axis=axis) + x[t]
            states.append(score - ops.max(score, axis=axis, keepdims=True) if t % _RESCALE_EVERY == 0 else score)
        return ops.stack(states, axis=0)

    def forward(score, x_t):
        best = ops.max(score[before] + pairs, axis=axis) + x_t[0]
        score = best - ops.max(best, axis=axis, keepdims=True)
        return score, score

    _, scores = _scan(forward, first, (x[1:],))
    return ops.concatenate([first[None], scores], axis=0)


def _best_zero(x, axis):
    """Scores ``x`` less their maximum over the tags' ``axis`` (0 where every one is -inf): the same
    best paths, and a state rescaled only every few steps does not drift with a constant added to
    each step (with 2**20 on every tag, unshifted float32 sums over 16 steps round to 1 or 2). A state
    rescaled every step needs no shift for its size; its sums then round as the scores themselves do
    (at 2**20, to 1/8), and TensorFlow (under XLA 1.04-1.09 of the decode's time) and JAX skip it."""
    return _shift(x, axis)[0]


def _rows(table, index):
    """``ops.take(table, index, axis=0)``: on PyTorch by indexing, a third of the time of ``take``'s
    call there (TensorFlow's tensors do not index by a tensor)."""
    return table[index] if keras.backend.backend() == "torch" else ops.take(table, index, axis=0)


def _minor_best_path(x, last, trans, start, end):
    """The best path's tags (T, batch), left-aligned, from batch-minor scores ``x`` (T, K, batch) of
    left-aligned rows whose last real step is ``last`` (batch,); past a row's last step its tags are
    any tag (the caller masks them). The forward recursion is ``_viterbi_states``. The backtrack reads
    the states shifted so that every row ends at the last step: an argmax over K a step along the
    path, with no padding step to skip; the steps before a short row's start compute tags nobody
    reads. On ties the first best previous tag wins, as in ``_best_path``. Against the backtrack over
    (K, batch) steps with ``take`` and a cast a step, and the state rescaled every step (alternated in
    one process, PyTorch, batch 64 x up to 128 steps): 0.66-0.67 of the decode's time at 8 tags,
    0.68-0.69 at 12, 0.67-0.83 at 17 (0.70 in the two quietest runs)."""
    scores = _viterbi_states(x, trans, start, 0)  # (T, K, batch)
    steps = ops.shape(scores)[0]
    shift = steps - 1 - last  # (batch,): how far each row moves to end at the last step
    at = ops.arange(steps, dtype="int32")[:, None]
    # (T, batch, K): PyTorch's argmax over the last axis of a (batch, K) step is about 4x faster than
    # over the first of a (K, batch) one (64 x 17: 2.3 against 8.6 us), and the gather writes the
    # steps out in that order
    ending = ops.take_along_axis(
        ops.transpose(scores, (0, 2, 1)), ops.maximum(at - shift[None, :], 0)[:, :, None], axis=0
    )
    into = ops.transpose(trans)  # row j: the scores of the moves into tag j
    best = ops.argmax(ending[-1] + end[None, :], axis=1)  # int32 (no extra cast)

    def backward(tag, inputs):  # the tag at step t - 1 from the tag at step t
        tag = ops.argmax(inputs[0] + _rows(into, tag), axis=1)
        return tag, tag

    _, tags = _scan(backward, best, (ending[:-1],), reverse=True)
    tags = ops.concatenate([tags, best[None]], axis=0)  # (T, batch), each row ending at the last step
    return ops.take_along_axis(tags, ops.minimum(at + shift[None, :], steps - 1), axis=0)


def _stack(outs, like):
    return ops.stack(outs, axis=0) if outs else ops.zeros((0, *like.shape), like.dtype)


def _left_align(mask):
    """Order that moves each row's real tokens to the front, keeping their order: after it, any mask
    (right padding, left padding, holes) is right padding. Returns the order and its inverse."""
    steps = ops.shape(mask)[1]
    position = ops.arange(steps, dtype="int32")[None, :]
    if keras.backend.backend() == "torch":  # its argsort is fast, its scatter slow (0.3 against 180 ms)
        order = ops.argsort(ops.where(mask, position, position + steps), axis=1)  # keys are distinct
        return ops.cast(order, "int32"), ops.cast(ops.argsort(order, axis=1), "int32")
    # Where each step goes: the n real steps to 0 .. n - 1 in their order, the padding after them.
    # That is the inverse order; the order is one scatter of it. (XLA sorts slowly: two argsorts
    # took 3-7x longer than this, under TensorFlow's jit_compile and JAX alike.)
    real = ops.cast(mask, "int32")
    count = ops.sum(real, axis=1, keepdims=True)
    inverse = ops.where(mask, ops.cumsum(real, axis=1) - 1, count + ops.cumsum(1 - real, axis=1) - 1)
    rows = ops.broadcast_to(ops.arange(ops.shape(mask)[0], dtype="int32")[:, None], ops.shape(mask))
    where = ops.reshape(ops.stack([rows, inverse], axis=-1), (-1, 2))
    order = ops.scatter(where, ops.reshape(ops.broadcast_to(position, ops.shape(mask)), (-1,)), ops.shape(mask))
    return ops.cast(order, "int32"), ops.cast(inverse, "int32")


def _right_padded(mask):
    """Whether every row of ``mask`` (batch, T) is its real steps then padding: ``_left_align``'s
    order is then the identity, and the reordering is skipped (``_prepare``, ``_moved``)."""
    return ops.all(ops.logical_or(mask[:, :-1], ops.logical_not(mask[:, 1:])))


def _moved(moves, x, back=False):
    """``x`` (batch, T, ...) in the left-aligned order of ``_prepare``'s ``moves``, or ``back`` from
    it: one gather, or nothing when the rows were already right-padded (``ops.cond``)."""
    aligned, order, inverse = moves
    return ops.cond(aligned, lambda: x, lambda: _take(x, inverse if back else order))


def _take(x, order):
    """``x[b, order[b, t], ...]`` for each row ``b`` (x of rank 2 or 3), as one gather from the
    flattened rows (several times faster on TensorFlow than ``take_along_axis``)."""
    shape = ops.shape(x)
    rows = order + ops.arange(shape[0], dtype="int32")[:, None] * shape[1]
    flat = ops.reshape(x, (-1, *shape[2:]))
    return ops.reshape(ops.take(flat, ops.reshape(rows, (-1,)), axis=0), shape)


def _at(x, t):
    """``x[:, t]`` for a tensor ``t`` (a loop counter)."""
    return ops.take(x, t, axis=1)


def _relative_nll(x, closing, trans, start, end, real, last):
    """``log Z - closing`` for time-major scores ``x`` (T, batch, K) of left-aligned sequences whose
    real steps are ``real`` (T, batch) and end at step ``last`` (batch,), with its gradient written
    out (forward-backward) rather than taken through the loop: the node marginals for ``x`` and
    ``start``, the last real step's for ``end``, and the pair marginals summed over steps and rows
    for ``trans``. Differentiating the loop instead stores every step's intermediates and, on
    TensorFlow, adds a gradient the size of ``x`` at every step (time quadratic in T). A row with
    no possible path gets -inf (the caller reports it) and no gradient.

    Both recursions run scaled (``_scaled_forward``, ``_scaled_grads``): a matrix product a step
    instead of a logsumexp over (batch, K, K). Where that may have lost accuracy to an underflow
    (``_FLOOR``), the whole batch is computed again in log space (``_log_space``, the recursions of
    earlier versions), whose entries cannot underflow. Both agree with float64 to float32's rounding;
    the log-space one rounds numbers the size of the log-likelihood (on long sequences whose gold
    path is far from the best, its gradients drift by up to 1e-3 where the scaled ones stay near
    1e-6). Scores tens of units apart on every path through a step trip the floor (Gaussian
    emissions of standard deviation 8 over 9 tags did in most batches; a trained PKU segmenter's,
    20 batches of the test set, never did): such batches pay for both recursions.

    Matrix products on GPUs that round them to TensorFloat-32 (TensorFlow's default on Ampere and
    later) put about 1e-3 of relative noise in each step's scale; where the likelihood's value must
    be exact there, ``tf.config.experimental.enable_tensor_float_32_execution(False)``."""

    @ops.custom_gradient
    def relative_nll(x, closing, trans, start, end):
        forward = _scaled_forward(x, trans, start, end, real, last)
        low = forward[-1]
        value = ops.cond(
            low,
            lambda: _log_space(x, closing, trans, start, end, real, last),
            lambda: forward[0] - closing,
        )

        def grad(*args, upstream=None):
            upstream = ops.cast(args[0] if upstream is None else upstream, "float32")
            grads, also_low = _scaled_grads(real, forward, upstream)
            return ops.cond(
                low | also_low,
                lambda: _log_space(x, closing, trans, start, end, real, last, upstream),
                lambda: grads,
            )

        return value, grad

    return relative_nll(x, closing, trans, start, end)


# The scaled recursions keep each step's state at a sum of 1 (step 0's and the end scores' exps at a
# maximum of 1; either way every entry is at most 1), in float32, whose numbers keep their relative
# precision down to 1.2e-38: sums of products of nonnegative numbers lose nothing but rounding,
# except a term below that, which becomes 0. Against
# a state entry of at least _FLOOR such a term changes it by less than K x 1.2e-38 / 1e-29 (below
# float32's rounding unit, 6e-8, for K up to 50; 1.2e-7 at 100). An entry below _FLOOR that is not 0
# for a structural reason (a forbidden move, or a -inf score) may have lost everything, and a later
# step could need it (that path may win in the end): then the whole batch is computed again in log
# space, where no entry underflows.
_FLOOR = 1e-29

# Added to each scaled state's sum before dividing by it, so that a state whose entries are all 0
# stays 0 rather than becoming NaN: a row without any possible path (which the floor sends to log
# space), or the padding after a tag that no tag may follow (read by nobody, but NaN there would
# reach the gradient and force a fallback). Against a sum of at least _FLOOR it is below float32's
# rounding.
_TINY = 1e-37

# PyTorch's backward scaled recursion holds its state over a padding step by arithmetic (times 1 or 0,
# plus the old state times the opposite; ``_TINY`` keeps every term finite) rather than ``where``:
# Python's operators cost less than Keras's two wheres. Alternated in one process, batch 64 x up to
# 128 steps, likelihood and gradient, ratio of times (where / arithmetic): 8 tags 1.14-1.17, 17 tags
# 1.11-1.20. TensorFlow keeps ``where`` (arithmetic / where: 0.96-1.10 without XLA, 1.03-1.13 with it).
_MASK_BY_PRODUCT = keras.backend.backend() == "torch"


def _by_sum(v, ones):
    """``v`` (batch, K) divided by its row sums plus ``_TINY``, and those sums (batch, 1): the sums as
    a product with ``ones``, a (K, 1) float32 column, so that a step stays Python's operators."""
    total = v @ ones + _TINY
    return v / total, total


def _exp_shifted(v, axis):
    """``exp(v - top)`` and ``top``, the maximum of ``v`` over ``axis`` (kept; 0 where every entry
    is -inf, so that the exps are 0 and not NaN)."""
    top = _finite_max(v, axis)
    return ops.exp(v - top), top


def _scaled_forward(x, trans, start, end, real, last):
    """The forward recursion of ``_relative_nll`` on exps: alpha_t = (alpha_{t-1} @ exp(trans)) *
    exp(x_t), divided by its sum at each step (the logs of those scales are summed afterwards, in one
    cumulative sum). A step is Python's operators only (``@``, ``*``, ``+``, ``/``), which call the
    backend directly: on PyTorch each ``keras.ops`` call first converts and checks its arguments (17
    tags, batch 64: the forward loop took 7.0 ms with ``ops.matmul``, 5.3 with ``@``, and 2.4 ms written
    in PyTorch alone). Returns log Z (batch,), the pieces ``_scaled_grads`` reuses, and ``low`` (a
    scalar): whether an entry of a real step's state that could be above 0 fell below ``_FLOOR`` (or an
    end score's exp, or a row's final sum)."""
    moves, top_move = _exp_shifted(trans, (0, 1))
    emitted, top_x = _exp_shifted(x, 2)  # (all steps: TensorFlow's max refuses an empty tensor)
    emitted, top_x = emitted[1:], top_x[1:]  # (T - 1, batch, K), (T - 1, batch, 1)
    first, top_first = _exp_shifted(start[None, :] + x[0], 1)

    ones = ops.ones((moves.shape[0], 1), "float32")  # (float32 whatever Keras's floatx)

    def forward(state, x_t):  # runs on over the padding too: only real steps are read
        state = _by_sum((state[0] @ moves) * x_t[0], ones)
        return state, state

    _, (alphas, tops) = _scan(forward, (first, ops.ones_like(top_first)), (emitted,))
    alphas = ops.concatenate([first[None], alphas], axis=0)  # (T, batch, K), every entry at most 1
    logs = ops.log(tops) + top_x + top_move[0]
    logs = ops.concatenate([top_first[None], logs], axis=0)[..., 0]  # (T, batch)
    scale = ops.take_along_axis(ops.cumsum(logs, axis=0), last[None, :], axis=0)[0]
    final = ops.take_along_axis(alphas, last[None, :, None], axis=0)[0]
    closing, top_end = _exp_shifted(end, 0)
    total = ops.sum(final * closing[None, :], axis=1)
    # Entries that could be above 0: a possible score, reached by an allowed move from an entry
    # above 0 one step before (by induction, the entries above 0 are then those of the exact state).
    allowed = ops.cast(ops.isfinite(trans), "float32")
    possible = ops.isfinite(x[1:])
    reach = (ops.matmul(ops.cast(alphas[:-1] > 0.0, "float32"), allowed) > 0.0) & possible
    low = (
        ops.any(real[1:, :, None] & reach & (alphas[1:] * tops < _FLOOR))
        | ops.any(real[0][:, None] & ops.isfinite(start[None, :] + x[0]) & (first < _FLOOR))
        | ops.any(ops.isfinite(end) & (closing < _FLOOR))
        | ops.any(real[0] & ops.logical_not(total >= _FLOOR))
    )
    log_z = ops.log(ops.where(total > 0.0, total, 1.0)) + top_end[0] + scale
    return log_z, moves, emitted, alphas, final, closing, total, allowed, possible, low


def _scaled_grads(real, forward, upstream):
    """The gradients of ``_relative_nll`` from ``_scaled_forward``'s pieces: the backward recursion on
    exps, beta_{t-1} = exp(trans) @ (exp(x_t) * beta_t), scaled like the forward one (and held over
    padding, ``_MASK_BY_PRODUCT``). Node marginals are alpha_t * beta_t over their sum; the pair
    marginals summed over steps and rows are exp(trans) times one product of (K, T x batch) and (T x
    batch, K) matrices, not a (batch, K, K) array at every step. Returns the five gradients and ``low``:
    an underflow (as in the forward recursion, an entry that could be above 0 below ``_FLOOR``; or a
    node marginals' sum below it) or a non-finite gradient."""
    _, moves, emitted, alphas, final, closing, total, allowed, possible, _ = forward
    moves_back = ops.transpose(moves)  # (once, not at every step)

    ones = ops.ones((moves.shape[0], 1), "float32")

    def backward(state, inputs):
        beta, _ = state
        x_t, real_t, pad_t = inputs
        before, total = _by_sum((x_t * beta) @ moves_back, ones)
        if _MASK_BY_PRODUCT:
            state = before * real_t + beta * pad_t, total * real_t + pad_t
        else:
            real_t = real_t > 0.5
            state = ops.where(real_t, before, beta), ops.where(real_t, total, 1.0)
        return state, state

    closing_beta = ops.broadcast_to(closing[None, :], ops.shape(final))
    start_state = (closing_beta, ops.ones_like(final[:, :1]))
    real_f = ops.cast(real[1:, :, None], "float32")
    _, (betas, tops) = _scan(backward, start_state, (emitted, real_f, 1.0 - real_f), reverse=True)
    betas = ops.concatenate([betas, closing_beta[None]], axis=0)  # (T, batch, K)
    node = alphas * betas
    norm = ops.sum(node, axis=2, keepdims=True)
    reach = ops.matmul(ops.cast((betas[1:] > 0.0) & possible, "float32"), ops.transpose(allowed)) > 0.0
    low = ops.any(real[1:, :, None] & reach & (betas[:-1] * tops < _FLOOR)) | ops.any(
        real & ops.logical_not(norm[..., 0] >= _FLOOR)
    )
    weight = ops.where(real, upstream[None, :], 0.0)[..., None]  # (T, batch, 1)
    norm = ops.where(norm > 0.0, norm, 1.0)
    node = node / norm * weight
    # p(y_{t-1} = i, y_t = j) = alpha_{t-1}[i] exp(trans)[i, j] exp(x_t)[j] beta_t[j] / (that summed
    # over i and j), and the sum is beta_{t-1}'s scale times alpha_{t-1} . beta_{t-1}.
    before = alphas[:-1] * (weight[1:] / norm[:-1])
    after = emitted * betas[1:] / tops
    pairs = moves * ops.einsum("tbi,tbj->ij", before, after)
    ends = ops.sum(final * closing[None, :] * (upstream / ops.where(total > 0.0, total, 1.0))[:, None], axis=0)
    grads = (node, -upstream, pairs, ops.sum(node[0], axis=0), ends)
    finite = [ops.all(ops.isfinite(g)) for g in (node, pairs, ends)]
    return grads, low | ops.logical_not(finite[0] & finite[1] & finite[2])


def _log_space(x, closing, trans, start, end, real, last, upstream=None):
    """``log Z - closing`` (batch,) of ``_relative_nll`` by the recursions in log space, or with
    ``upstream`` its five gradients: the scaled recursions' fallback."""
    forward = _log_forward(x, closing, trans, start, end, last)
    return forward[0] if upstream is None else _log_grads(x, trans, end, real, forward, upstream)


def _log_forward(x, closing, trans, start, end, last):
    """``log Z - closing`` by the forward recursion in log space, whose entries cannot underflow
    whatever the scores, and the alphas, final alphas and log Z that ``_log_grads`` reuses."""
    pairs = trans[None]

    def forward(alpha, x_t):  # runs on over the padding too: only real steps are read
        alpha = _lse(alpha[:, :, None] + pairs, 1) + x_t[0]
        return alpha, alpha

    first = start[None, :] + x[0]
    _, alphas = _scan(forward, first, (x[1:],))
    alphas = ops.concatenate([first[None], alphas], axis=0)  # (T, batch, K)
    final = ops.take_along_axis(alphas, last[None, :, None], axis=0)[0]
    log_z = _lse(final + end[None, :], 1)
    return log_z - closing, alphas, final, log_z


def _log_grads(x, trans, end, real, forward, upstream):
    """The five gradients of ``_relative_nll`` from ``_log_forward``'s pieces, by the backward
    recursion in log space: each step's conditionals p(y_t | y_{t-1}) times the node marginals give
    the pair marginals. A row without a possible path gets no gradient."""
    _, alphas, final, log_z = forward
    pairs = trans[None]
    ok = ops.isfinite(log_z)  # rows without a path have no gradient
    weight = ops.where(ok, upstream, 0.0)
    log_z_ok = ops.where(ok, log_z, 0.0)

    def backward(state, inputs):
        # beta_{t-1}[i] = logsumexp_j(trans[i, j] + x_t[j] + beta_t[j]). The softmax over j of
        # those terms is p(y_t = j | y_{t-1} = i); times p(y_{t-1} = i), the pair marginal.
        beta, _ = state
        x_t, real_t = inputs
        new, given = _lse_softmax(pairs + (x_t + beta)[:, None, :])
        state = ops.where(real_t[:, None], new, beta), given
        return state, state  # (TensorFlow's scan outputs what it carries)

    closing_beta = ops.broadcast_to(end[None, :], ops.shape(final))
    start_state = (closing_beta, ops.zeros_like(x[0])[:, :, None] + pairs)
    _, (betas, given) = _scan(backward, start_state, (x[1:], real[1:]), reverse=True)
    betas = ops.concatenate([betas, closing_beta[None]], axis=0)  # betas[t] = beta_t
    used = real & ok[None, :]
    node = ops.where(used[:, :, None], ops.exp(alphas + betas - log_z_ok[None, :, None]), 0.0)
    # p(y_{t-1} = i, y_t = j) = p(y_{t-1} = i) p(y_t = j | y_{t-1} = i), summed over real t >= 1
    before = ops.where(used[1:, :, None], node[:-1], 0.0) * weight[None, :, None]
    moves = ops.einsum("tbij,tbi->ij", given, before)
    final_p = ops.where(ok[:, None], ops.exp(final + end[None, :] - log_z_ok[:, None]), 0.0)
    return (
        node * weight[None, :, None],
        -upstream,
        moves,
        ops.sum(node[0] * weight[:, None], axis=0),
        ops.sum(final_p * weight[:, None], axis=0),
    )


@keras.saving.register_keras_serializable(package="kexue_crf")
class CRF(keras.layers.Layer):
    """Linear-chain conditional random field over ``num_tags`` tags.

    The layer is, as in the article, "a loss with parameters": called on emissions it returns them
    unchanged (in float32), with padded positions (from the Keras mask, e.g. of
    ``Embedding(mask_zero=True)``, or an explicit ``mask``: booleans, or token ids where 0 is padding)
    set to ``-inf`` so that ``loss``, ``accuracy``, ``decode``, ... find
    the mask again in the model's output. ``crf(emissions, decode=True)`` instead returns the Viterbi
    tags, so a tagging model can share the trained layer::

        emissions = keras.layers.Dense(K)(features)
        model = keras.Model(inputs, crf(emissions))          # train: compile(loss=crf.loss)
        tagger = keras.Model(inputs, crf(emissions, decode=True))

    Args:
        num_tags: K, the number of tags.
        boundary: learn ``start_transitions`` and ``end_transitions`` (K,) scores for the first and
            last tag (the article's layer has none: ``boundary=False``).
        allowed: optional (K, K) booleans, ``allowed[i, j]`` = tag j may follow tag i.
        allowed_start, allowed_end: optional (K,) booleans, the tags a sequence may start / end with.
            All three are enforced in the likelihood (training) and in decoding; see
            ``allowed_transitions`` for BMES, BIO and BIOES.
        ignore_last_label: the article's compatibility mode: emissions have K + 1 channels and labels
            are one-hot over K + 1 tags whose last tag marks padding; the last channel is ignored.
        transitions_initializer: for the three weights (the article used glorot_uniform).

    Weights: ``transitions`` (K, K), and with ``boundary`` ``start_transitions``, ``end_transitions`` (K,).
    Call input: emissions (batch, T, K) (or K + 1 channels with ``ignore_last_label``).
    Output: the same shape, float32; or int32 tags (batch, T) with ``decode=True``.
    """

    def __init__(
        self,
        num_tags,
        boundary=True,
        allowed=None,
        allowed_start=None,
        allowed_end=None,
        ignore_last_label=False,
        transitions_initializer="glorot_uniform",
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.num_tags = _count("CRF: num_tags", num_tags)
        self.boundary = bool(boundary)
        self.ignore_last_label = bool(ignore_last_label)
        self.allowed = self._check_allowed("allowed", allowed, (self.num_tags, self.num_tags))
        self.allowed_start = self._check_allowed("allowed_start", allowed_start, (self.num_tags,))
        self.allowed_end = self._check_allowed("allowed_end", allowed_end, (self.num_tags,))
        self.transitions_initializer = keras.initializers.get(transitions_initializer)
        self.supports_masking = True

    @staticmethod
    def _check_allowed(name, value, shape):
        if value is None:
            return None
        array = np.asarray(value)
        if array.shape != shape or array.dtype.kind not in "biu" or not np.isin(array, (0, 1)).all():
            raise ValueError(
                f"CRF: {name} must be a boolean array of shape {shape}, got shape {array.shape} and dtype {array.dtype}"
            )
        array = array.astype(bool)
        if not array.any():
            raise ValueError(f"CRF: {name} forbids everything: no tag path would be possible")
        return array

    def build(self, input_shape):
        self._check_emissions(input_shape, strict=True)
        k = self.num_tags
        self.transitions = self.add_weight(name="transitions", shape=(k, k), initializer=self.transitions_initializer)
        if self.boundary:
            self.start_transitions = self.add_weight(
                name="start_transitions", shape=(k,), initializer=self.transitions_initializer
            )
            self.end_transitions = self.add_weight(
                name="end_transitions", shape=(k,), initializer=self.transitions_initializer
            )

    # ---- the three score tables, with constraints applied -----------------------------------------

    def _scores(self):
        """(trans (K, K), start (K,), end (K,)) in float32, forbidden entries at ``FORBIDDEN``."""
        k = self.num_tags
        trans = ops.cast(self.transitions, "float32")
        start = ops.cast(self.start_transitions, "float32") if self.boundary else ops.zeros((k,), "float32")
        end = ops.cast(self.end_transitions, "float32") if self.boundary else ops.zeros((k,), "float32")
        if self.allowed is not None:
            trans = ops.where(self.allowed, trans, FORBIDDEN)
        if self.allowed_start is not None:
            start = ops.where(self.allowed_start, start, FORBIDDEN)
        if self.allowed_end is not None:
            end = ops.where(self.allowed_end, end, FORBIDDEN)
        return trans, start, end

    def decoding_scores(self):
        """``(transitions (K, K), start (K,), end (K,))`` as decoding uses them: forbidden entries
        at ``FORBIDDEN``, start and end zeros without ``boundary``. For a decoder outside the graph
        (crf/segment.py decodes on the host with them)."""
        return self._scores()

    # ---- inputs ------------------------------------------------------------------------------------

    def _check_emissions(self, shape, strict=False):
        """Emissions are (batch, T, K); with ``ignore_last_label`` K + 1 (the last ignored), or K
        where the methods take them (not ``strict``: in ``build`` and ``call``, K + 1 only)."""
        shape, k = tuple(shape), self.num_tags
        widths = (None, k + 1) if self.ignore_last_label else (None, k)
        widths += (k,) if self.ignore_last_label and not strict else ()
        if len(shape) != 3 or shape[-1] not in widths:
            raise ValueError(
                f"CRF: emissions must have shape (batch, T, {widths[1]}) (num_tags={k}"
                f"{' + 1 padding tag' if self.ignore_last_label else ''}"
                f"{', or K without it' if len(widths) > 2 else ''}), got shape {shape}"
            )

    @staticmethod
    def _check_steps(name, x, emissions):
        """``x`` (a mask or tags) must be (batch, T), the emissions' first two sizes."""
        shape, steps = tuple(x.shape), tuple(emissions.shape[:2])
        if len(shape) != 2 or any(a is not None and b is not None and a != b for a, b in zip(shape, steps)):
            raise ValueError(f"CRF: {name} must have shape (batch, T) = {steps} like the emissions, got {shape}")

    def _prepare(self, emissions, mask):
        """Left-aligned float32 emissions (batch, T, K) and boolean mask; ``moves`` for ``_moved``
        (whether the rows were right-padded already, the order and its inverse, the identity then);
        ``broken`` (batch,): rows with NaN or +inf at a real step, whose results are NaN, and ``lift``
        (batch,): what was taken off the emissions. Each real step's scores are taken relative to
        their maximum (which changes no path's probability, and keeps the recursions' numbers
        small whatever the scale); masked and broken entries become 0; -inf (a tag impossible at
        that step) stays."""
        emissions = _numbers("CRF: emissions", emissions)
        self._check_emissions(emissions.shape)
        if not self.built:
            self.build(emissions.shape)
        emissions = ops.cast(emissions, "float32")
        if self.ignore_last_label:
            emissions = emissions[..., : self.num_tags]
        if mask is None:  # the padding that call() marked: steps whose every score is -inf
            mask = ops.any(ops.not_equal(emissions, FORBIDDEN), axis=-1)
        else:
            mask = _numbers("CRF: mask", mask)
            self._check_steps("mask", mask, emissions)
            mask = ops.cast(mask, "bool")
        # Reordering costs a scatter and gathers (a third of a 4-tag decode on JAX): skipped when
        # every row is already its real steps then padding, as Keras masks usually are.
        aligned = _right_padded(mask)
        same = ops.broadcast_to(ops.arange(ops.shape(mask)[1], dtype="int32")[None, :], ops.shape(mask))

        def left_aligned():
            order, inverse = _left_align(mask)
            return _take(mask, order), _take(emissions, order), order, inverse

        mask, emissions, order, inverse = ops.cond(aligned, lambda: (mask, emissions, same, same), left_aligned)
        moves = (aligned, order, inverse)
        bad = ops.isnan(emissions) | ops.equal(emissions, float("inf"))
        broken = ops.any(bad & mask[:, :, None], axis=(1, 2))
        emissions = ops.where(mask[:, :, None] & ops.logical_not(bad), emissions, 0.0)
        if 0 in emissions.shape[:2]:  # nothing to compute (and TensorFlow's max refuses an empty tensor)
            return emissions, mask, moves, broken, ops.zeros(ops.shape(mask)[:1], "float32")
        top = ops.max(emissions, axis=2)
        top = ops.where(mask & ops.isfinite(top), top, 0.0)
        return emissions - top[:, :, None], mask, moves, broken, ops.sum(top, axis=1)

    def _tag_ids(self, tags, ok=None):
        """int32 tag ids (batch, T), and where they are valid: whole numbers in [0, K) (and ``ok``)."""
        tags = _numbers("CRF: tags", tags)
        dtype = keras.backend.standardize_dtype(tags.dtype)
        if dtype == "bool":
            tags = ops.cast(tags, "int32")
        valid = (tags >= 0) & (tags < self.num_tags)
        if "float" in dtype:
            valid = valid & ops.equal(tags, ops.floor(tags))
        valid = valid if ok is None else valid & ok
        return ops.cast(ops.where(valid, tags, 0), "int32"), valid

    # ---- Keras layer API ---------------------------------------------------------------------------

    def call(self, inputs, mask=None, decode=False):
        if decode:
            return self.decode(inputs, mask)[0]
        inputs = _numbers("CRF: emissions", inputs)
        self._check_emissions(inputs.shape, strict=True)
        outputs = ops.cast(inputs, "float32")
        if mask is not None:
            mask = _numbers("CRF: mask", mask)
            self._check_steps("mask", mask, outputs)
            outputs = ops.where(ops.cast(mask, "bool")[:, :, None], outputs, FORBIDDEN)
        return outputs

    def compute_output_shape(self, input_shape, decode=False):
        return tuple(input_shape[:2]) if decode else tuple(input_shape)

    def compute_output_spec(self, inputs, mask=None, decode=False):
        if decode:
            return keras.KerasTensor(tuple(inputs.shape[:2]), dtype="int32")
        return keras.KerasTensor(tuple(inputs.shape), dtype="float32")

    def compute_mask(self, inputs, mask=None):
        # The mask travels inside the output (-inf rows). Passing it on as a Keras mask would make
        # Keras weight the per-sequence loss by a per-token mask, which does not fit.
        return None

    def get_config(self):
        tolist = lambda a: None if a is None else a.tolist()
        return {
            **super().get_config(),
            "num_tags": self.num_tags,
            "boundary": self.boundary,
            "allowed": tolist(self.allowed),
            "allowed_start": tolist(self.allowed_start),
            "allowed_end": tolist(self.allowed_end),
            "ignore_last_label": self.ignore_last_label,
            "transitions_initializer": keras.initializers.serialize(self.transitions_initializer),
        }

    # ---- scores ------------------------------------------------------------------------------------

    def _gold(self, emissions, tags, mask):
        """The pieces of the tagged path on left-aligned inputs: its emission at each step and the
        score of the move into each step (the start score at step 0), both (batch, T) and 0 on
        padding; its end score (batch,); and whether the path is possible (every piece above -inf)."""
        trans, start, end = self._scores()
        k = self.num_tags
        emitted = ops.take_along_axis(emissions, tags[:, :, None], axis=2)[:, :, 0]
        moves = ops.take(ops.reshape(trans, (-1,)), tags[:, :-1] * k + tags[:, 1:])
        into = ops.concatenate([ops.take(start, tags[:, :1]), moves], axis=1)
        length = ops.sum(ops.cast(mask, "int32"), axis=1)
        closing = ops.take(end, ops.take_along_axis(tags, ops.maximum(length - 1, 0)[:, None], axis=1)[:, 0])
        finite = ops.isfinite(emitted) & ops.isfinite(into)
        possible = ops.all(finite | ops.logical_not(mask), axis=1) & (ops.isfinite(closing) | (length == 0))
        keep = mask & finite
        return (
            ops.where(keep, emitted, 0.0),
            ops.where(keep, into, 0.0),
            ops.where(ops.isfinite(closing), closing, 0.0),
            possible,
        )

    def _relative_log_partition(self, emissions, mask, gold):
        """log Z - score(path) for the tagged path's pieces ``gold`` (``_gold``), by the forward
        recursion on left-aligned inputs (the state carried over padding) with each step's scores
        taken relative to the path's: the numbers stay small, and the result is accurate (and not
        below 0) whatever the scale of the emissions. Its gradient is the forward-backward one
        (``_relative_nll``), not the recursion differentiated step by step."""
        trans, start, end = self._scores()
        emitted, into, closing = gold
        x = ops.transpose(emissions - emitted[:, :, None] - into[:, :, None], (1, 0, 2))  # time major
        last = _last_step(mask)
        if keras.backend.backend() == "jax":
            # JAX differentiates the scan itself: XLA makes that faster than the written-out gradient
            # (22 against 12 ms for 17 tags in the peer benchmark). ``_logsumexp`` keeps the gradient
            # finite at unreachable tags; the state runs on over the padding, which only the real
            # steps' gather reads past.
            def step(alpha, x_t):
                alpha = _logsumexp(alpha[:, :, None] + trans[None], 1) + x_t
                return alpha, alpha

            first = start[None, :] + x[0]
            alphas = ops.concatenate([first[None], ops.scan(step, first, x[1:])[1]], axis=0)
            final = ops.take_along_axis(alphas, last[None, :, None], axis=0)[0]
            total = _logsumexp(final + end[None, :], 1) - closing
        else:
            real = ops.transpose(mask, (1, 0))
            if _tree_fits(x, self.num_tags, _TREE_LOG_Z_UP_TO):
                log_z, low = _tree_log_z(x, real, trans, start, end)
                total = ops.cond(
                    low,
                    lambda: _relative_nll(x, closing, trans, start, end, real, last),
                    lambda: log_z - closing,
                )
            else:
                total = _relative_nll(x, closing, trans, start, end, real, last)
        return ops.where(ops.any(mask, axis=1), total, 0.0)

    def _nll(self, emissions, tags, mask, ok=None):
        """-log p(tags | emissions), (batch,): NaN for a row with an invalid tag (not a whole number
        in [0, K)) or a NaN / +inf emission at a real step; +inf for a path the constraints forbid."""
        tags = _numbers("CRF: tags", tags)
        emissions = _numbers("CRF: emissions", emissions)
        self._check_steps("tags", tags, emissions)
        emissions, mask, moves, broken, _ = self._prepare(emissions, mask)
        if 0 in emissions.shape[:2]:  # no step or no row: nothing to compute
            return ops.zeros(ops.shape(mask)[:1], "float32")
        tags, valid = self._tag_ids(tags, ok)
        tags, valid = _moved(moves, tags), _moved(moves, valid)
        valid = ops.all(valid | ops.logical_not(mask), axis=1) & ops.logical_not(broken)
        *gold, possible = self._gold(emissions, tags, mask)
        nll = self._relative_log_partition(emissions, mask, gold)
        return ops.where(valid, ops.where(possible, nll, float("inf")), float("nan"))

    def log_likelihood(self, emissions, tags, mask=None):
        """log p(tags | emissions), shape (batch,). ``tags``: (batch, T) whole numbers in [0, K) at
        real steps (padded steps may hold anything); ``mask`` boolean (batch, T), True on real tokens
        (default: every step not marked -inf by ``call``). A row with no real token has log-likelihood
        0; a path the constraints forbid, -inf; a row with an invalid tag or a NaN / +inf emission at
        a real step, NaN."""
        return -self._nll(emissions, tags, mask)

    # ---- training: loss and metric for model.compile -----------------------------------------------

    def _labels(self, y_true):
        """(tags, where they are valid, mask or None) from the labels: tag ids (batch, T) or
        (batch, T, 1), or one-hot (batch, T, K); with ``ignore_last_label``, one-hot over K + 1 tags
        whose last marks padding (the article's format). A one-hot row at a real step must hold a
        single 1 and zeros."""
        y_true = _numbers("CRF: labels", y_true)
        shape, k = tuple(y_true.shape), self.num_tags
        width = k + 1 if self.ignore_last_label else k
        if len(shape) == 2:
            return y_true, None, None
        if len(shape) == 3 and shape[-1] == 1:
            return y_true[..., 0], None, None
        if len(shape) != 3 or shape[-1] != width:
            raise ValueError(
                f"CRF: labels must be tag ids of shape (batch, T) or (batch, T, 1), or one-hot of shape "
                f"(batch, T, {width}){' (the last tag marks padding)' if self.ignore_last_label else ''}, "
                f"got shape {shape}"
            )
        hot = ops.cast(y_true, "float32")
        mask = None
        if self.ignore_last_label:
            mask = ops.logical_not(hot[..., -1] > 0.5)
            hot = hot[..., :k]
        one = (ops.max(hot, axis=-1) == 1.0) & (ops.sum(hot, axis=-1) == 1.0) & (ops.min(hot, axis=-1) >= 0.0)
        return ops.argmax(hot, axis=-1), one, mask

    def loss(self, y_true, y_pred):
        """Negative log-likelihood per sequence: ``model.compile(loss=crf.loss)``. Invalid labels
        (a tag outside [0, K) or a malformed one-hot row at a real step) give NaN for their
        sequence, so the epoch's loss shows them; labels of a path the constraints forbid give +inf."""
        tags, ok, mask = self._labels(y_true)
        return self._nll(y_pred, tags, mask, ok)

    def soft_loss(self, y_true, y_pred):
        """Cross-entropy against a distribution q over tag paths, per sequence: ``-E_q[log p(y |
        emissions)]``, for ``model.compile(loss=crf.soft_loss)`` (distillation: q a teacher CRF's).
        ``y_true`` (batch, T, K + K * K) gives q by what it expects at each real step t: first
        q(y_t = j) for each tag j, then q(y_s = i, y_t = j) for each pair (i, j), row-major, where s is
        the previous real step (all zeros at a sequence's first step). ``crf.segment.path_marginals``
        computes them for a trained CRF; a single path's one-hot indicators give ``loss``. The loss is
        linear in q, so ``(1 - a) gold + a teacher`` targets give that mix of the two losses.

        Targets that are not such a distribution at a real step (a negative entry, tags or pairs not
        summing to 1 within 1e-3, pairs whose sums over i or over j are not the two steps' tag
        probabilities) give NaN for their sequence; mass on a move or tag the constraints (or a -inf
        emission) forbid gives +inf. Padding is found from ``y_pred``'s -inf rows (``crf(emissions,
        mask=...)`` or a Keras mask marks them), also with ``ignore_last_label``, whose padding tag the
        soft targets do not carry."""
        y_true = _numbers("CRF: soft targets", y_true)
        k = self.num_tags
        y_pred = _numbers("CRF: emissions", y_pred)
        if len(y_true.shape) != 3 or y_true.shape[-1] != k + k * k:
            raise ValueError(
                f"CRF: soft targets must have shape (batch, T, K + K * K) = (batch, T, {k + k * k}) (the "
                f"tag probabilities, then the pair probabilities; see CRF.soft_loss), got shape {tuple(y_true.shape)}"
            )
        self._check_steps("soft targets", y_true[..., 0], y_pred)
        emissions, mask, moves, broken, _ = self._prepare(y_pred, None)
        if 0 in emissions.shape[:2]:  # no step or no row: nothing to compute
            return ops.zeros(ops.shape(mask)[:1], "float32")
        target = _moved(moves, ops.cast(y_true, "float32"))
        node, pair = target[..., :k], ops.reshape(target[..., k:], (*ops.shape(target)[:2], k, k))
        first = ops.concatenate([ops.ones_like(mask[:, :1]), ops.zeros_like(mask[:, 1:])], axis=1)
        inner = mask & ops.logical_not(first)  # real steps with a real step before them (left-aligned)
        before = ops.concatenate([ops.zeros_like(node[:, :1]), node[:, :-1]], axis=1)
        off = lambda a, b: ops.abs(a - b) > 1e-3
        wrong = (
            ops.any(target < 0.0, axis=2)
            | off(ops.sum(node, axis=2), 1.0)
            | (inner & (off(ops.sum(pair, axis=(2, 3)), 1.0) | ops.any(off(ops.sum(pair, axis=2), node), axis=2)))
            | (inner & ops.any(off(ops.sum(pair, axis=3), before), axis=2))
            | (first & ops.any(pair != 0.0, axis=(2, 3)))
        )
        valid = ops.logical_not(ops.any((wrong | ops.any(ops.isnan(target), axis=2)) & mask, axis=1))
        trans, start, end = self._scores()
        finite = lambda s: ops.where(ops.isfinite(s), s, 0.0)  # 0 x -inf would be NaN
        banned = lambda q, s: ops.where(ops.isfinite(s), 0.0, ops.cast(q > 0.0, "float32"))  # mass where forbidden
        # a row already NaN reads zeros: its NaN must not reach the batch's recursions (and their fallback)
        node = ops.where(mask[:, :, None] & valid[:, None, None], node, 0.0)
        pair = ops.where(inner[:, :, None, None] & valid[:, None, None, None], pair, 0.0)
        emitted = ops.sum(node * finite(emissions), axis=2)
        into = ops.sum(pair * finite(trans), axis=(2, 3)) + ops.where(first, ops.sum(node * finite(start), axis=2), 0.0)
        last = _last_step(mask)
        final = ops.take_along_axis(node, last[:, None, None], axis=1)[:, 0]
        closing = ops.sum(final * finite(end), axis=1)
        forbidden = (
            ops.sum(banned(node, emissions), axis=(1, 2))
            + ops.sum(banned(pair, ops.broadcast_to(trans, ops.shape(pair))), axis=(1, 2, 3))
            + ops.sum(
                ops.where(first[:, :, None], banned(node, ops.broadcast_to(start, ops.shape(node))), 0.0), axis=(1, 2)
            )
            + ops.sum(banned(final, ops.broadcast_to(end, ops.shape(final))), axis=1)
        )
        total = self._relative_log_partition(emissions, mask, (emitted, into, closing))
        total = ops.where(forbidden > 0.0, float("inf"), total)
        return ops.where(valid & ops.logical_not(broken), total, float("nan"))

    def accuracy(self, y_true, y_pred):
        """Share of real tokens whose highest-scoring emission is the gold tag, per sequence, as the
        article's metric: ``metrics=[crf.accuracy]``. It reads no weights (JAX's trainer computes
        metrics without the model's variables) and so ignores transitions; use ``decode`` for the
        Viterbi path. NaN for a sequence with invalid labels or a NaN / +inf emission."""
        tags, ok, mask = self._labels(y_true)
        tags, valid = self._tag_ids(tags, ok)
        emissions = ops.cast(_numbers("CRF: emissions", y_pred), "float32")[..., : self.num_tags]
        real = ops.any(ops.not_equal(emissions, FORBIDDEN), axis=-1) if mask is None else ops.cast(mask, "bool")
        broken = ops.any(ops.isnan(emissions) | ops.equal(emissions, float("inf")), axis=-1)
        right = (ops.cast(ops.argmax(emissions, axis=-1), "int32") == tags) & real
        share = ops.sum(ops.cast(right, "float32"), axis=1) / ops.maximum(
            ops.sum(ops.cast(real, "float32"), axis=1), 1.0
        )
        wrong = ops.any((broken | ops.logical_not(valid)) & real, axis=1)
        return ops.where(wrong, float("nan"), share)

    # ---- decoding ----------------------------------------------------------------------------------

    def _viterbi(self, emissions, mask, k):
        """The k best paths on left-aligned inputs: tags (batch, k, T), and their scores (batch, k) as
        ``final`` (-inf for a path that does not exist) plus ``offset`` (batch,).

        The state keeps, for each tag j, the k best scores of paths ending in j (batch, K, k), less
        its maximum (added to ``offset``, returned apart: scores are ``final + offset``), so it
        cannot overflow whatever the emissions; each step
        takes the k best of the K * k extensions (i, rank) -> j, remembering where each came from;
        padding steps keep the state and point back to themselves.
        """
        trans, start, end = self._scores()
        num, steps = self.num_tags, ops.shape(emissions)[1]
        batch = ops.shape(emissions)[0]
        rank0 = ops.concatenate(
            [ops.zeros((1,), "float32"), ops.full((k - 1,), FORBIDDEN, "float32")]
        )  # one path so far
        score, offset = _shift((start[None, :] + emissions[:, 0])[:, :, None] + rank0[None, None, :], (1, 2))
        stay = ops.reshape(ops.arange(num * k, dtype="int32"), (1, num, k))
        pointers = ops.zeros((batch, steps, num, k), "int32")

        def forward(t, state):
            score, offset, pointers = state
            # extensions[b, j, i * k + r] = score[b, i, r] + trans[i, j]
            extensions = ops.reshape(
                ops.transpose(score[:, :, :, None] + trans[None, :, None, :], (0, 3, 1, 2)), (-1, num, num * k)
            )
            best, came_from = ops.top_k(extensions, k)
            new, top = _shift(best + _at(emissions, t)[:, :, None], (1, 2))
            real = _at(mask, t)
            score = ops.where(real[:, None, None], new, score)
            offset = ops.where(real, offset + top, offset)
            here = ops.where(
                real[:, None, None], ops.cast(came_from, "int32"), ops.broadcast_to(stay, ops.shape(came_from))
            )
            return score, offset, ops.slice_update(pointers, (0, t, 0, 0), here[:, None])

        score, offset, pointers = _loop(lambda t, s: forward(t + 1, s), (score, offset, pointers), steps - 1)
        final, last = ops.top_k(ops.reshape(score + end[None, :, None], (-1, num * k)), k)  # (batch, k)
        last = ops.cast(last, "int32")
        tags = ops.zeros((batch, k, steps), "int32")

        def backward(i, state):
            t = steps - 1 - i
            cursor, tags = state  # cursor: j * k + rank at step t, for each of the k paths
            tags = ops.slice_update(tags, (0, 0, t), (cursor // k)[:, :, None])
            back = ops.take_along_axis(ops.reshape(_at(pointers, t), (-1, num * k)), cursor, axis=1)
            return ops.where(t > 0, back, cursor), tags

        _, tags = _loop(backward, (last, tags), steps)
        return tags, final, offset

    def _best_path(self, emissions, mask):
        """The best path on left-aligned inputs, as ``_viterbi`` returns it for k = 1, with less work
        a step: one max and argmax over the previous tag, no k-best bookkeeping. The state is taken
        relative to its maximum every ``_RESCALE_EVERY`` steps (each step, or every 16 on PyTorch; so it
        stays small; ``_viterbi_states``) and its score is summed along the path
        afterwards (``_gold``, which also finds a row without any possible path). PyTorch with up to
        ``_TREE_UP_TO`` tags finds it on a tree over the steps instead (``_tree_best_path``), and from
        ``_MINOR_FROM`` tags on with its state batch minor (``_minor_best_path``)."""
        trans, start, end = self._scores()
        x = ops.transpose(emissions, (1, 0, 2))
        real = ops.transpose(mask, (1, 0))
        if _tree_fits(x, self.num_tags, _TREE_UP_TO):
            return self._scored(emissions, ops.transpose(_tree_best_path(x, real, trans, start, end), (1, 0)), mask)
        # (batch minor, ``_scan`` packs the batch as an axis, whose size must then be known)
        if _MINOR_FROM is not None and self.num_tags >= _MINOR_FROM and None not in tuple(emissions.shape):
            minor = ops.transpose(emissions, (1, 2, 0))  # (T, K, batch)
            return self._scored(
                emissions, ops.transpose(_minor_best_path(minor, _last_step(mask), trans, start, end), (1, 0)), mask
            )
        scores = _viterbi_states(x, trans, start, 1)  # (T, batch, K)
        last = _last_step(mask)
        final = ops.take_along_axis(scores, last[None, :, None], axis=0)[0]
        best = ops.cast(ops.argmax(final + end[None, :], axis=1), "int32")
        if _PATH_ONLY_FROM is not None and self.num_tags >= _PATH_ONLY_FROM:
            into = ops.transpose(trans)  # row j: the scores of the moves into tag j

            def backward(tag, inputs):  # the tag at step t - 1 from the tag at step t, along the path only
                score, real_t = inputs
                came = ops.cast(ops.argmax(score + _rows(into, tag), axis=1), "int32")
                tag = ops.where(real_t, came, tag)  # a padding step points back to the same tag
                return tag, tag

            _, tags = _scan(backward, best, (scores[:-1], real[1:]), reverse=True)
        else:
            # Where each step's best came from, for every tag and step at once from the stored states;
            # a padding step points back to the same tag.
            stay = ops.zeros_like(real[0], "int32")[:, None] + ops.arange(self.num_tags, dtype="int32")[None, :]
            came = ops.where(real[1:, :, None], _came_from(scores[:-1], trans), stay[None])
            rows = ops.arange(ops.shape(came)[1], dtype="int32") * self.num_tags

            def backward(tag, came_t):  # the tag at step t - 1 from the tag at step t
                tag = ops.take(ops.reshape(came_t[0], (-1,)), rows + tag)
                return tag, tag

            _, tags = _scan(backward, best, (came,), reverse=True)
        tags = ops.transpose(ops.concatenate([tags, best[None]], axis=0), (1, 0))  # (batch, T)
        return self._scored(emissions, tags, mask)

    def _scored(self, emissions, tags, mask):
        """A best path ``tags`` (batch, T) as ``_viterbi`` returns it for k = 1: its score, summed
        along it, and -inf for a row without any possible path (``_gold`` finds it)."""
        emitted, into, closing, possible = self._gold(emissions, tags, mask)
        final = ops.where(possible, ops.sum(emitted + into, axis=1) + closing, FORBIDDEN)
        return tags[:, None], final[:, None], ops.zeros_like(final)

    def decode(self, emissions, mask=None, top_k=None):
        """Viterbi decoding.

        Returns ``(tags, scores)``: int32 tags (batch, T) and their path scores (batch,); with
        ``top_k=k``, the k best paths, best first: tags (batch, k, T), scores (batch, k). Scores are
        unnormalised (subtract ``log_partition`` for log-probabilities). Positions outside the mask get
        tag -1; a row with no real token gets score 0. A path the constraints forbid is never returned:
        if fewer than k paths are possible, the missing ones have score -inf and tags -1. A row with a
        NaN or +inf emission at a real step gets score NaN and tags -1. Decoding is inference: the
        outputs carry no gradient. Where several paths tie for the best score, which one is returned
        can differ with the backend, the number of tags and ``top_k`` (for the single best path,
        PyTorch with up to 7 tags searches a tree over the steps; elsewhere each step keeps the first
        best previous tag); every one returned has the best score.
        """
        k = 1 if top_k is None else _count("CRF.decode: top_k", top_k)
        emissions, mask, moves, broken, lift = self._prepare(emissions, mask)
        batch, steps = ops.shape(mask)[0], emissions.shape[1]
        if 0 in emissions.shape[:2]:  # no step or no row: nothing to compute
            tags, scores = ops.zeros((batch, k, steps), "int32"), ops.zeros((batch, k), "float32")
        else:
            tags, final, offset = self._viterbi(emissions, mask, k) if top_k else self._best_path(emissions, mask)
            found = ops.logical_not(broken[:, None] | ops.equal(final, FORBIDDEN))  # (batch, k)
            scores = ops.where(found, final + (offset + lift)[:, None], FORBIDDEN)
            scores = ops.where(ops.any(mask, axis=1)[:, None], scores, 0.0)
            scores = ops.where(broken[:, None], float("nan"), scores)
            real = _moved(moves, mask, back=True)
            tags = ops.stack(
                [ops.where(real & found[:, r : r + 1], _moved(moves, tags[:, r], back=True), -1) for r in range(k)],
                axis=1,
            )
        tags, scores = ops.stop_gradient(tags), ops.stop_gradient(scores)
        return (tags[:, 0], scores[:, 0]) if top_k is None else (tags, scores)

    def log_partition(self, emissions, mask=None):
        """log Z, shape (batch,): 0 for a row with no real token, -inf when the rules (or -inf
        emissions) leave no path, +inf past float32's range, NaN for a row with a NaN or +inf
        emission at a real step."""
        emissions, mask, _, broken, lift = self._prepare(emissions, mask)
        if 0 in emissions.shape[:2]:  # no step or no row: nothing to compute
            return ops.zeros(ops.shape(mask)[:1], "float32")
        trans, start, end = self._scores()

        def step(t, state):  # the forward recursion, renormalised each step (offset: what was taken off)
            alpha, offset = state
            new, top = _shift(_logsumexp(alpha[:, :, None] + trans[None], 1) + _at(emissions, t), 1)
            real = _at(mask, t)
            return ops.where(real[:, None], new, alpha), ops.where(real, offset + top, offset)

        alpha, offset = _shift(start[None, :] + emissions[:, 0], 1)
        alpha, offset = _loop(lambda t, s: step(t + 1, s), (alpha, offset), ops.shape(emissions)[1] - 1)
        inner = _logsumexp(alpha + end[None, :], 1)
        log_z = ops.where(ops.equal(inner, FORBIDDEN), FORBIDDEN, inner + offset + lift)
        log_z = ops.where(ops.any(mask, axis=1), log_z, 0.0)
        return ops.where(broken, float("nan"), log_z)

    def marginals(self, emissions, mask=None):
        """p(y_t = j | emissions) by forward-backward, shape (batch, T, K); rows of padding are 0, a
        row with a NaN or +inf emission at a real step is NaN, and so is a row the rules (or -inf
        emissions) leave without any path. Each step's probabilities are normalised on their own
        (the forward and backward states too), so they sum to 1 whatever the scale of the
        emissions. Like ``decode``, an inference output: it carries no gradient."""
        emissions, mask, moves, broken, _ = self._prepare(emissions, mask)
        trans, start, end = self._scores()
        batch, steps = ops.shape(emissions)[0], ops.shape(emissions)[1]
        if 0 in emissions.shape[:2]:  # no step or no row: nothing to compute
            return ops.zeros((batch, steps, self.num_tags), "float32")
        zeros = ops.zeros((batch, steps, self.num_tags), "float32")

        def forward(t, state):
            alpha, alphas = state
            new, _ = _shift(_logsumexp(alpha[:, :, None] + trans[None], 1) + _at(emissions, t), 1)
            alpha = ops.where(_at(mask, t)[:, None], new, alpha)
            return alpha, ops.slice_update(alphas, (0, t, 0), alpha[:, None])

        first, _ = _shift(start[None, :] + emissions[:, 0], 1)
        _, alphas = _loop(
            lambda t, s: forward(t + 1, s), (first, ops.slice_update(zeros, (0, 0, 0), first[:, None])), steps - 1
        )

        def backward(i, state):
            # beta_t[i] = logsumexp_j(trans[i, j] + x_{t+1}[j] + beta_{t+1}[j]); after the last real
            # token beta = end, carried over the padding.
            t = steps - 2 - i
            beta, betas = state
            ahead = _at(emissions, t + 1) + beta
            new, _ = _shift(_logsumexp(trans[None] + ahead[:, None, :], 2), 1)
            beta = ops.where(_at(mask, t + 1)[:, None], new, beta)
            return beta, ops.slice_update(betas, (0, t, 0), beta[:, None])

        last = ops.broadcast_to(end[None, :], ops.shape(first))
        _, betas = _loop(backward, (last, ops.slice_update(zeros, (0, steps - 1, 0), last[:, None])), steps - 1)
        scores = alphas + betas
        top = ops.max(scores, axis=2, keepdims=True)
        probs = ops.exp(scores - top)
        probs = probs / ops.sum(probs, axis=2, keepdims=True)
        probs = ops.where(mask[:, :, None], probs, 0.0)
        probs = ops.where(broken[:, None, None], float("nan"), probs)
        return ops.stop_gradient(_moved(moves, probs, back=True))


def build_tagger(model):
    """The tagging model of a CRF model: the same inputs, and the Viterbi tags of the CRF layer whose
    emissions are the model's output (int32 (batch, T), -1 on padding), as ``crf(emissions,
    decode=True)`` gives. The way back to a tagger from a training model loaded from a file, which
    keeps only its own graph::

        model = keras.saving.load_model("model.keras", compile=False)
        tagger = build_tagger(model)
    """
    for layer in model.layers:
        for node in getattr(layer, "_inbound_nodes", []) if isinstance(layer, CRF) else []:
            if any(out is output for out in node.outputs for output in model.outputs):
                arguments = node.arguments
                return keras.Model(model.inputs, layer(*arguments.args, **{**arguments.kwargs, "decode": True}))
    raise ValueError(
        f"build_tagger: the output of model {model.name!r} is not made by a CRF layer; build the tagger "
        "from the emissions yourself: keras.Model(inputs, crf(emissions, decode=True))"
    )


# ---- padding-blind convolutions ----------------------------------------------------------------------


@keras.saving.register_keras_serializable(package="kexue_crf")
class ZeroMasked(keras.layers.Layer):
    """Sets the padded steps of a sequence (batch, T, d) to zero: ``ZeroMasked()(x, mask=ids)`` with
    a boolean mask or token ids (0 = padding), or the Keras mask when none is given.

    Put after the embedding and after each ``Conv1D(padding="same")``: a convolution then sees the
    end of every sentence as zeros, as if the sentence were alone, so what the network computes
    for a sentence does not depend on how much the other sentences of its batch pad it. The
    output carries no Keras mask (pass the ids to the CRF as its mask).
    """

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.supports_masking = True

    @staticmethod
    def _keep(mask):
        return mask if keras.backend.standardize_dtype(mask.dtype) == "bool" else ops.not_equal(mask, 0)

    def call(self, inputs, mask=None):
        if mask is None:
            return inputs
        mask = _numbers("ZeroMasked: mask", mask)
        steps = tuple(inputs.shape[:2])
        if (
            len(inputs.shape) != 3
            or len(mask.shape) != 2
            or any(a is not None and b is not None and a != b for a, b in zip(mask.shape, steps))
        ):
            raise ValueError(
                f"ZeroMasked: inputs must be (batch, T, d) and the mask (batch, T), the same batch and T, got "
                f"{tuple(inputs.shape)} and {tuple(mask.shape)}"
            )
        return ops.where(self._keep(mask)[:, :, None], inputs, ops.zeros_like(inputs))

    def compute_mask(self, inputs, mask=None):
        # The mask is used up here: the convolutions it prepares for would drop it (with a warning).
        return None


# ---- constraints for common tag schemes -------------------------------------------------------------


def allowed_transitions(scheme, tags):
    """Legal transitions, first and last tags for a tagging scheme, as ``CRF(**...)`` keywords.

    Args:
        scheme: ``"bmes"`` (word segmentation: s single, b begin, m middle, e end; ``tags`` is a
            string or list of the four letters in tag-id order, e.g. ``"sbme"`` as in the article),
            ``"bio"`` or ``"bioes"`` (``tags`` a list like ``["O", "B-PER", "I-PER", ...]``, or
            untyped ``["O", "B", "I"]``; ``I-X`` must follow ``B-X`` or ``I-X``; in BIOES ``E-X``
            closes it, ``S-X`` is a single token).
        tags: the tag names, in the order of the tag ids.

    Returns:
        ``{"allowed": (K, K), "allowed_start": (K,), "allowed_end": (K,)}`` boolean NumPy arrays.
    """
    tags = list(tags)
    scheme = scheme.lower()
    if scheme == "bmes":
        if sorted(t.lower() for t in tags) != ["b", "e", "m", "s"]:
            raise ValueError(f"allowed_transitions: bmes needs the four tags b, m, e, s; got {tags}")
        parsed = [(t.lower(), "") for t in tags]
        begins, insides, ends = "bs", "me", "es"
    elif scheme in ("bio", "bioes"):
        parsed = []
        for t in tags:  # "O", "B-PER", or untyped "B", "I", ...
            prefix, _, kind = t.partition("-")
            if t == "O":
                parsed.append(("o", ""))
            elif prefix.upper() in tuple(scheme.upper().replace("O", "")):
                parsed.append((prefix.lower(), kind))
            else:
                raise ValueError(f"allowed_transitions: {t!r} is not a {scheme.upper()} tag (O, X or X-TYPE)")
        begins, insides, ends = ("bo", "i", "bio") if scheme == "bio" else ("bso", "ie", "eso")
    else:
        raise ValueError(f"allowed_transitions: scheme must be 'bmes', 'bio' or 'bioes', got {scheme!r}")

    closes = {"bmes": "es", "bio": "bio", "bioes": "eso"}[scheme]  # a previous tag that ends its span
    continues = {"bmes": "bm", "bio": "bi", "bioes": "bi"}[scheme]  # a previous tag that leaves it open
    k = len(tags)
    allowed = np.zeros((k, k), bool)
    for i, (p, pk) in enumerate(parsed):
        for j, (n, nk) in enumerate(parsed):
            if n in insides:  # continues a span: only after an open span of the same kind
                allowed[i, j] = p in continues and pk == nk
            else:  # starts something new: only after a closed span (BIO: anything may close)
                allowed[i, j] = p in closes
    start = np.array([p in begins for p, _ in parsed])
    end = np.array([p in ends for p, _ in parsed])
    return {"allowed": allowed, "allowed_start": start, "allowed_end": end}
