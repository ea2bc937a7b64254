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

__all__ = ["CRF", "ZeroMasked", "allowed_transitions"]

# Score of a forbidden transition. Finite, so nothing turns into NaN, and far below any real path
# score (|emission| <= 1e4 and 1e4 tokens give |score| <= 1e8 << 1e30 < float32 max 3.4e38).
FORBIDDEN = -1e30


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


def _left_align(mask):
    """Order that moves each row's real tokens to the front, keeping their order: after it, any mask
    (right padding, left padding, holes) is right padding. Returns the order and its inverse."""
    steps = ops.shape(mask)[1]
    position = ops.arange(steps, dtype="int32")[None, :]
    order = ops.argsort(ops.where(mask, position, position + steps), axis=1)  # keys are distinct
    return ops.cast(order, "int32"), ops.cast(ops.argsort(order, axis=1), "int32")


def _take(x, order):
    """``x[b, order[b, t], ...]`` for each row ``b`` (x of rank 2 or 3)."""
    if len(x.shape) == 3:
        return ops.take_along_axis(x, order[:, :, None], axis=1)
    return ops.take_along_axis(x, order, axis=1)


def _at(x, t):
    """``x[:, t]`` for a tensor ``t`` (a loop counter)."""
    return ops.take(x, t, axis=1)


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
        if int(num_tags) < 1:
            raise ValueError(f"CRF: num_tags must be a positive integer, got {num_tags!r}")
        self.num_tags = int(num_tags)
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
        channels = input_shape[-1]
        expected = self.num_tags + (1 if self.ignore_last_label else 0)
        if channels is not None and channels != expected:
            raise ValueError(
                f"CRF: emissions must have {expected} channels (num_tags={self.num_tags}"
                f"{' + 1 padding tag' if self.ignore_last_label else ''}), got shape {tuple(input_shape)}"
            )
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

    def _prepare(self, emissions, mask):
        """float32 emissions (batch, T, K) and a boolean mask, left-aligned. Masked emissions are 0."""
        if not self.built:
            self.build(emissions.shape)
        emissions = ops.cast(emissions, "float32")
        if self.ignore_last_label:
            emissions = emissions[..., : self.num_tags]
        if len(emissions.shape) != 3:
            raise ValueError(f"CRF: emissions must have shape (batch, T, num_tags), got {tuple(emissions.shape)}")
        if mask is None:  # the padding that call() marked with -inf, if any
            mask = ops.any(emissions > float("-inf"), axis=-1)
        else:
            mask = ops.cast(mask, "bool")
            if len(mask.shape) != 2:
                raise ValueError(f"CRF: mask must have shape (batch, T), got {tuple(mask.shape)}")
        order, inverse = _left_align(mask)
        mask = _take(mask, order)
        emissions = ops.where(mask[:, :, None], _take(emissions, order), 0.0)
        return emissions, mask, order, inverse

    # ---- Keras layer API ---------------------------------------------------------------------------

    def call(self, inputs, mask=None, decode=False):
        if decode:
            return self.decode(inputs, mask)[0]
        outputs = ops.cast(inputs, "float32")
        if mask is not None:
            outputs = ops.where(ops.cast(mask, "bool")[:, :, None], outputs, float("-inf"))
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

    def _path_score(self, emissions, tags, mask):
        """score(tags) on left-aligned inputs: emissions picked by the tags ("the prediction dotted
        with the one-hot target"), plus transitions between consecutive real tokens, plus boundary."""
        trans, start, end = self._scores()
        k = self.num_tags
        tags = ops.clip(tags, 0, k - 1)  # padded positions may hold anything; they are masked below
        maskf = ops.cast(mask, "float32")
        emitted = ops.sum(ops.take_along_axis(emissions, tags[:, :, None], axis=2)[:, :, 0] * maskf, axis=1)
        pairs = ops.take(ops.reshape(trans, (-1,)), tags[:, :-1] * k + tags[:, 1:])
        moved = ops.sum(pairs * maskf[:, 1:], axis=1)
        length = ops.sum(ops.cast(mask, "int32"), axis=1)
        last = ops.take_along_axis(tags, ops.maximum(length - 1, 0)[:, None], axis=1)[:, 0]
        bounds = ops.where(length > 0, ops.take(start, tags[:, 0]) + ops.take(end, last), 0.0)
        return emitted + moved + bounds

    def _log_partition(self, emissions, mask):
        """log Z by the forward recursion on left-aligned inputs; the state is carried over padding."""
        trans, start, end = self._scores()

        def step(t, alpha):
            x_t = _at(emissions, t)
            new = ops.logsumexp(alpha[:, :, None] + trans[None], axis=1) + x_t
            return ops.where(_at(mask, t)[:, None], new, alpha)

        alpha = _loop(lambda t, a: step(t + 1, a), start[None, :] + emissions[:, 0], ops.shape(emissions)[1] - 1)
        log_z = ops.logsumexp(alpha + end[None, :], axis=1)
        return ops.where(ops.any(mask, axis=1), log_z, 0.0)

    def log_likelihood(self, emissions, tags, mask=None):
        """log p(tags | emissions), shape (batch,). ``tags`` are int (batch, T); ``mask`` boolean
        (batch, T), True on real tokens (default: every position not marked -inf by ``call``). A row
        with no real token has log-likelihood 0."""
        tags = ops.convert_to_tensor(tags)
        if len(tags.shape) != 2:
            raise ValueError(f"CRF: tags must be integers of shape (batch, T), got shape {tuple(tags.shape)}")
        emissions, mask, order, _ = self._prepare(emissions, mask)
        tags = _take(ops.cast(tags, "int32"), order)
        return self._path_score(emissions, tags, mask) - self._log_partition(emissions, mask)

    # ---- training: loss and metric for model.compile -----------------------------------------------

    def _labels(self, y_true):
        """Sparse tags and mask from the labels: int (batch, T), or the article's one-hot with a last
        padding tag (``ignore_last_label``)."""
        y_true = ops.convert_to_tensor(y_true)
        if len(y_true.shape) == 3:
            if not self.ignore_last_label:
                return ops.argmax(y_true, axis=-1), None
            padding = y_true[..., -1] > 0.5
            return ops.argmax(y_true[..., : self.num_tags], axis=-1), ops.logical_not(padding)
        return ops.cast(y_true, "int32"), None

    def loss(self, y_true, y_pred):
        """Negative log-likelihood per sequence: ``model.compile(loss=crf.loss)``."""
        tags, mask = self._labels(y_true)
        return -self.log_likelihood(y_pred, tags, mask)

    def accuracy(self, y_true, y_pred):
        """Share of real tokens whose highest-scoring emission is the gold tag, per sequence, as the
        article's metric: ``metrics=[crf.accuracy]``. It reads no weights (JAX's trainer computes
        metrics without the model's variables) and so ignores transitions; use ``decode`` for the
        Viterbi path."""
        tags, mask = self._labels(y_true)
        emissions = ops.cast(y_pred, "float32")[..., : self.num_tags]
        real = ops.any(emissions > float("-inf"), axis=-1) if mask is None else ops.cast(mask, "bool")
        right = (ops.cast(ops.argmax(emissions, axis=-1), "int32") == ops.cast(tags, "int32")) & real
        return ops.sum(ops.cast(right, "float32"), axis=1) / ops.maximum(
            ops.sum(ops.cast(real, "float32"), axis=1), 1.0
        )

    # ---- decoding ----------------------------------------------------------------------------------

    def _viterbi(self, emissions, mask, k):
        """The k best paths on left-aligned inputs: tags (batch, k, T) and scores (batch, k).

        The state keeps, for each tag j, the k best scores of paths ending in j (batch, K, k);
        each step takes the k best of the K * k extensions (i, rank) -> j, remembering where each
        came from; padding steps keep the state and point back to themselves.
        """
        trans, start, end = self._scores()
        num, steps = self.num_tags, ops.shape(emissions)[1]
        batch = ops.shape(emissions)[0]
        rank0 = ops.concatenate(
            [ops.zeros((1,), "float32"), ops.full((k - 1,), FORBIDDEN, "float32")]
        )  # one path so far
        score = (start[None, :] + emissions[:, 0])[:, :, None] + rank0[None, None, :]
        stay = ops.reshape(ops.arange(num * k, dtype="int32"), (1, num, k))
        pointers = ops.zeros((batch, steps, num, k), "int32")

        def forward(t, state):
            score, pointers = state
            # extensions[b, j, i * k + r] = score[b, i, r] + trans[i, j]
            extensions = ops.reshape(
                ops.transpose(score[:, :, :, None] + trans[None, :, None, :], (0, 3, 1, 2)), (-1, num, num * k)
            )
            best, came_from = ops.top_k(extensions, k)
            new = best + _at(emissions, t)[:, :, None]
            real = _at(mask, t)[:, None, None]
            score = ops.where(real, new, score)
            here = ops.where(real, ops.cast(came_from, "int32"), ops.broadcast_to(stay, ops.shape(came_from)))
            return score, ops.slice_update(pointers, (0, t, 0, 0), here[:, None])

        score, pointers = _loop(lambda t, s: forward(t + 1, s), (score, pointers), steps - 1)
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
        return tags, final

    def decode(self, emissions, mask=None, top_k=None):
        """Viterbi decoding.

        Returns ``(tags, scores)``: int32 tags (batch, T) and their path scores (batch,); with
        ``top_k=k``, the k best paths, best first: tags (batch, k, T), scores (batch, k). Scores are
        unnormalised (subtract ``log_partition`` for log-probabilities). Positions outside the mask get
        tag -1; a row with no real token gets score 0. If fewer than k paths are allowed, the extra
        ones have scores near ``FORBIDDEN``.
        """
        k = 1 if top_k is None else int(top_k)
        if k < 1:
            raise ValueError(f"CRF.decode: top_k must be a positive integer, got {top_k!r}")
        emissions, mask, _, inverse = self._prepare(emissions, mask)
        tags, scores = self._viterbi(emissions, mask, k)
        real = _take(mask, inverse)
        tags = ops.stack([ops.where(real, _take(tags[:, r], inverse), -1) for r in range(k)], axis=1)
        scores = ops.where(ops.any(mask, axis=1)[:, None], scores, 0.0)
        return (tags[:, 0], scores[:, 0]) if top_k is None else (tags, scores)

    def log_partition(self, emissions, mask=None):
        """log Z, shape (batch,)."""
        emissions, mask, _, _ = self._prepare(emissions, mask)
        return self._log_partition(emissions, mask)

    def marginals(self, emissions, mask=None):
        """p(y_t = j | emissions) by forward-backward, shape (batch, T, K); rows of padding are 0."""
        emissions, mask, _, inverse = self._prepare(emissions, mask)
        trans, start, end = self._scores()
        batch, steps = ops.shape(emissions)[0], ops.shape(emissions)[1]
        zeros = ops.zeros((batch, steps, self.num_tags), "float32")

        def forward(t, state):
            alpha, alphas = state
            new = ops.logsumexp(alpha[:, :, None] + trans[None], axis=1) + _at(emissions, t)
            alpha = ops.where(_at(mask, t)[:, None], new, alpha)
            return alpha, ops.slice_update(alphas, (0, t, 0), alpha[:, None])

        first = start[None, :] + emissions[:, 0]
        _, alphas = _loop(
            lambda t, s: forward(t + 1, s), (first, ops.slice_update(zeros, (0, 0, 0), first[:, None])), steps - 1
        )

        def backward(i, state):
            # beta_t[i] = logsumexp_j(trans[i, j] + x_{t+1}[j] + beta_{t+1}[j]); after the last real
            # token beta = end, carried over the padding.
            t = steps - 2 - i
            beta, betas = state
            ahead = _at(emissions, t + 1) + beta
            new = ops.logsumexp(trans[None] + ahead[:, None, :], axis=2)
            beta = ops.where(_at(mask, t + 1)[:, None], new, beta)
            return beta, ops.slice_update(betas, (0, t, 0), beta[:, None])

        last = ops.broadcast_to(end[None, :], ops.shape(first))
        _, betas = _loop(backward, (last, ops.slice_update(zeros, (0, steps - 1, 0), last[:, None])), steps - 1)
        log_z = ops.logsumexp(alphas[:, -1] + end[None, :], axis=1)
        probs = ops.exp(alphas + betas - log_z[:, None, None])
        probs = ops.where(mask[:, :, None], probs, 0.0)
        return _take(probs, inverse)


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
        if len(inputs.shape) != 3 or len(mask.shape) != 2:
            raise ValueError(
                f"ZeroMasked: inputs must be (batch, T, d) and the mask (batch, T), got "
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
