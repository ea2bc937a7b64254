"""Multi-head attention and position embeddings from 《Attention is All You Need》浅读（简介+代码）
("A first reading of Attention is All You Need, with code"), Su Jianlin, https://kexue.fm/archives/4765
(2018-01-06).

The article's attention, per head ``i`` (its symbols; ``Q``, ``K``, ``V`` are sequences of vectors)::

    head_i = Attention(Q W_i^Q, K W_i^K, V W_i^V),   Attention(Q, K, V) = softmax(Q K^T) V
    MultiHead(Q, K, V) = Concat(head_1, ..., head_h)

with no biases, no output projection ``W^O`` and, in the Keras code the article's numbers were made
with, no ``1/sqrt(d_k)`` scaling (added to the author's code in March 2018). Keys at padded positions are
kept out of the softmax, and the output at padded query positions is zeroed.

Its position embedding is the Transformer's sinusoid, laid out all cosines first, then all sines::

    PE(p)[i] = cos(p / 10000^(2i/d)),   PE(p)[d/2 + i] = sin(p / 10000^(2i/d)),   i < d/2

for positions p = 0, 1, ..., n - 1, added to (or concatenated with) the word embeddings. The paper
interleaves the two (``PE(p)[2i] = sin``, ``PE(p)[2i+1] = cos``); the article notes the order of the
channels does not matter to a model, and both layouts are offered. Positions count from the first step
of the padded sequence, as in the article, so padding at the front shifts a sentence's positions;
``count_from="first_token"`` counts from each row's first real token instead (read from the Keras mask).
``MaskedGlobalAveragePooling1D`` averages over the real steps and gives 0, not NaN, for a row of padding.

This file imports only keras and numpy, uses ``keras.ops``, and runs on TensorFlow (with or without
XLA), JAX and PyTorch.
"""

import keras
import numpy as np
from keras import ops

__all__ = [
    "Attention",
    "PositionEmbedding",
    "TrainablePositionEmbedding",
    "MaskedGlobalAveragePooling1D",
    "sinusoidal_position_embedding",
]


def _positive_int(name, value, layer):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{layer}: {name} must be a positive integer, got {value!r}")
    return int(value)


def _flag(name, value, layer):
    """A real bool: a string such as "False" or "no" is truthy and would silently mean True."""
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{layer}: {name} must be True or False, got {value!r}")
    return bool(value)


def _bool_mask(mask):
    return None if mask is None else ops.cast(mask, "bool")


def _same_batch(mask, x, layer, what):
    """A mask's batch must be the input's: a batch of 1 would broadcast over every row unnoticed."""
    if mask.shape[0] is not None and x.shape[0] is not None and mask.shape[0] != x.shape[0]:
        raise ValueError(
            f"{layer}: the {what} has batch {mask.shape[0]} but the input {tuple(x.shape)} has batch {x.shape[0]}: "
            f"give one row per sample (got {what} shape {tuple(mask.shape)})"
        )


@keras.saving.register_keras_serializable(package="kexue_attention")
class Attention(keras.layers.Layer):
    """Multi-head (self- or cross-) attention, the article's layer with modern switches.

    The defaults are the article's: ``heads`` projections of size ``size_per_head`` for queries, keys
    and values (no bias), ``softmax(Q K^T) V`` per head without scaling, heads concatenated, no output
    projection. Turn on ``use_scale``, ``use_bias`` and ``output_dim`` and the layer computes what
    ``keras.layers.MultiHeadAttention(heads, size_per_head)`` computes.

    Args:
        heads: number of heads.
        size_per_head: size of each head's queries, keys and values.
        use_scale: divide the logits by ``sqrt(size_per_head)`` (the paper; off in the article's runs).
        output_dim: if given, project the concatenated heads to this size (the paper's ``W^O``); if
            None (the article), the output has ``heads * size_per_head`` features.
        use_bias: biases on the projections (off in the article).
        dropout: dropout rate on the attention weights, during training only.
        causal: position ``t`` of the query attends to key positions ``<= t`` only (for Tq != Tk the
            mask is aligned at the first position, as in ``MultiHeadAttention(use_causal_mask=True)``).
        fused: compute the heads with ``keras.ops.dot_product_attention`` (the backend's fused
            kernel: ``torch.nn.functional.scaled_dot_product_attention`` on PyTorch,
            ``jax.nn.dot_product_attention`` on JAX) when no weights are returned and no dropout is
            applied. None (default) means yes except on TensorFlow, whose ``dot_product_attention``
            is a chain of einsums with no fused kernel and runs slower on a CPU than this layer's own
            batched matmuls. Both paths compute the same numbers.
        kernel_initializer, bias_initializer, kernel_regularizer, bias_regularizer: for the projections.

    Call arguments:
        inputs: ``x`` (self-attention: queries, keys and values are all ``x``), ``[q, v]`` (keys are
            the values) or ``[q, k, v]``; ``q`` is (batch, Tq, dq), ``k`` and ``v`` are (batch, Tk, dk)
            and (batch, Tk, dv).
        mask: Keras masks arrive here by themselves (e.g. from ``Embedding(mask_zero=True)``): a
            (batch, T) boolean per input, True at real positions. Masked keys get no attention; the
            output at masked queries is zero. Masked steps are left out by selection, so what they hold
            (NaN, inf, 1e30) reaches neither the real positions nor the gradients. Pass ``mask=[q_mask,
            k_mask, v_mask]`` (or one mask for self-attention) to give masks by hand; any may be None.
        attention_mask: optional boolean (batch, Tq, Tk), True where query ``t`` may attend to key ``s``.
        training: dropout on or off.
        return_attention_scores: also return the attention weights, (batch, heads, Tq, Tk).

    Returns:
        (batch, Tq, output_dim or heads * size_per_head), and the weights if asked. The Keras mask of
        the output is the queries' mask. A query with no key to attend to gets zero weights and a zero
        output (before the output projection's bias, if any). A NaN or inf at a real position reaches
        the outputs (it is not repaired); so does a logit beyond float32's range (a query and a key
        both of size 1e19 or more): NaN at that query.

    """

    def __init__(
        self,
        heads,
        size_per_head,
        use_scale=False,
        output_dim=None,
        use_bias=False,
        dropout=0.0,
        causal=False,
        fused=None,
        kernel_initializer="glorot_uniform",
        bias_initializer="zeros",
        kernel_regularizer=None,
        bias_regularizer=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.heads = _positive_int("heads", heads, "Attention")
        self.size_per_head = _positive_int("size_per_head", size_per_head, "Attention")
        self.output_dim = None if output_dim is None else _positive_int("output_dim", output_dim, "Attention")
        if not 0.0 <= float(dropout) < 1.0:
            raise ValueError(f"Attention: dropout must be in [0, 1), got {dropout!r}")
        self.use_scale = _flag("use_scale", use_scale, "Attention")
        self.use_bias = bool(use_bias)
        self.dropout = float(dropout)
        self.causal = bool(causal)
        if fused not in (None, True, False):
            raise ValueError(f"Attention: fused must be None, True or False, got {fused!r}")
        self.fused = fused
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.bias_initializer = keras.initializers.get(bias_initializer)
        self.kernel_regularizer = keras.regularizers.get(kernel_regularizer)
        self.bias_regularizer = keras.regularizers.get(bias_regularizer)
        self.dropout_layer = keras.layers.Dropout(self.dropout, dtype=self.dtype_policy)
        self.supports_masking = True

    @staticmethod
    def _unpack(inputs, what="inputs"):
        """(q, k, v) from x, [q, v] or [q, k, v]."""
        if not isinstance(inputs, (list, tuple)):
            return inputs, inputs, inputs
        if len(inputs) == 2:
            return inputs[0], inputs[1], inputs[1]
        if len(inputs) == 3:
            return tuple(inputs)
        raise ValueError(f"Attention: {what} must be x, [q, v] or [q, k, v]; got a list of {len(inputs)}")

    def build(self, input_shape):
        if isinstance(input_shape, (list, tuple)) and input_shape and isinstance(input_shape[0], (list, tuple)):
            shapes = self._unpack(list(input_shape), "input shapes")
        else:
            shapes = (input_shape,) * 3
        for name, shape in zip("qkv", shapes):
            if len(shape) != 3 or shape[-1] is None:
                raise ValueError(
                    f"Attention: {name} must be (batch, time, features) with known features, got {tuple(shape)}"
                )
        if shapes[1][1] is not None and shapes[2][1] is not None and shapes[1][1] != shapes[2][1]:
            raise ValueError(f"Attention: keys and values must have the same length, got {shapes[1]} and {shapes[2]}")
        units = self.heads * self.size_per_head
        for name, shape in zip("qkv", shapes):
            setattr(
                self,
                f"w{name}",
                self.add_weight(
                    name=f"{name}_kernel",
                    shape=(shape[-1], units),
                    initializer=self.kernel_initializer,
                    regularizer=self.kernel_regularizer,
                ),
            )
            if self.use_bias:
                setattr(
                    self,
                    f"b{name}",
                    self.add_weight(
                        name=f"{name}_bias",
                        shape=(units,),
                        initializer=self.bias_initializer,
                        regularizer=self.bias_regularizer,
                    ),
                )
        if self.output_dim is not None:
            self.wo = self.add_weight(
                name="output_kernel",
                shape=(units, self.output_dim),
                initializer=self.kernel_initializer,
                regularizer=self.kernel_regularizer,
            )
            if self.use_bias:
                self.bo = self.add_weight(
                    name="output_bias",
                    shape=(self.output_dim,),
                    initializer=self.bias_initializer,
                    regularizer=self.bias_regularizer,
                )

    def _project(self, x, name):
        """x W (+ b), split into heads: (batch, T, heads, size_per_head)."""
        y = ops.matmul(x, getattr(self, f"w{name}"))
        if self.use_bias:
            y = y + getattr(self, f"b{name}")
        return ops.reshape(y, (ops.shape(x)[0], ops.shape(x)[1], self.heads, self.size_per_head))

    def _allowed(self, q, k, q_mask, k_mask, attention_mask):
        """Where query t may attend to key s, (batch or 1, Tq, Tk) boolean, or None if everywhere."""
        allowed = None
        if attention_mask is not None:
            allowed = _bool_mask(attention_mask)
            if len(allowed.shape) == 2:
                allowed = ops.expand_dims(allowed, 0)
            if len(allowed.shape) != 3 or any(
                a is not None and b is not None and a != b for a, b in zip(allowed.shape[1:], (q.shape[1], k.shape[1]))
            ):
                raise ValueError(
                    f"Attention: attention_mask must be (batch, Tq, Tk) or (Tq, Tk) = "
                    f"(..., {q.shape[1]}, {k.shape[1]}), got shape {tuple(attention_mask.shape)}"
                )
            if len(attention_mask.shape) == 3:
                _same_batch(allowed, q, "Attention", "attention_mask")
        parts = []
        if q_mask is not None:
            parts.append(ops.expand_dims(q_mask, -1))
        if k_mask is not None:
            parts.append(ops.expand_dims(k_mask, -2))
        if self.causal:
            tq, tk = ops.shape(q)[1], ops.shape(k)[1]
            parts.append(ops.expand_dims(ops.arange(tq)[:, None] >= ops.arange(tk)[None, :], 0))
        for part in parts:
            allowed = part if allowed is None else ops.logical_and(allowed, part)
        return allowed

    @staticmethod
    def _check_mask(mask, x, name):
        """A (batch, T) mask whose T is the input's, or a clear error."""
        if mask is None:
            return None
        mask = _bool_mask(mask)
        if len(mask.shape) != 2 or (
            mask.shape[1] is not None and x.shape[1] is not None and mask.shape[1] != x.shape[1]
        ):
            raise ValueError(
                f"Attention: the {name} mask must be (batch, {x.shape[1]}) like the {name}s "
                f"{tuple(x.shape)}, got shape {tuple(mask.shape)}"
            )
        _same_batch(mask, x, "Attention", f"{name} mask")
        return mask

    def _masks(self, inputs, mask):
        """(query mask, key mask) from a Keras mask: one per input, or one for self-attention."""
        if mask is None:
            return None, None
        q, k, v = self._unpack(inputs)
        if isinstance(mask, (list, tuple)):
            q_mask, k_mask, v_mask = self._unpack(list(mask), "mask")
            q_mask = self._check_mask(q_mask, q, "query")
            k_mask = self._check_mask(k_mask, k, "key")
            v_mask = self._check_mask(v_mask, v, "value")
            if k_mask is None or v_mask is k_mask:
                return q_mask, v_mask
            return q_mask, k_mask if v_mask is None else ops.logical_and(k_mask, v_mask)
        if isinstance(inputs, (list, tuple)):
            raise ValueError(
                "Attention: with inputs [q, v] or [q, k, v], pass one mask per input, "
                "mask=[q_mask, k_mask(, v_mask)] (None where there is none)"
            )
        mask = self._check_mask(mask, q, "query")
        return mask, mask

    def _check_shapes(self, q, k, v):
        """Inputs of the rank and features the layer was built for, or a clear error (not a reshape's)."""
        for name, x in zip("qkv", (q, k, v)):
            features = getattr(self, f"w{name}").shape[0]
            if len(x.shape) != 3 or (x.shape[-1] is not None and x.shape[-1] != features):
                raise ValueError(
                    f"Attention: {name} must be (batch, time, {features}) as when the layer was built, "
                    f"got shape {tuple(x.shape)}"
                )

    @staticmethod
    def _check_lengths(k, v):
        """Keys and values of one length: PyTorch's fused kernel returns numbers for keys of 5 steps and
        values of 3, so this is checked here, before any backend op, wherever the lengths are known."""
        if k.shape[1] is not None and v.shape[1] is not None and k.shape[1] != v.shape[1]:
            raise ValueError(
                f"Attention: keys and values must have the same length (one value per key), "
                f"got k shape {tuple(k.shape)} and v shape {tuple(v.shape)}"
            )

    def call(self, inputs, mask=None, attention_mask=None, training=None, return_attention_scores=False):
        self._check_lengths(*self._unpack(inputs)[1:])
        q_mask, k_mask = self._masks(inputs, mask)
        q, k, v = (ops.cast(t, self.compute_dtype) for t in self._unpack(inputs))
        self._check_shapes(q, k, v)
        # Masked steps are left out by selection, never by arithmetic: they are set to 0 before the
        # projections, so a NaN, inf or 1e30 there reaches neither the real positions (0 * inf = NaN in a
        # matmul) nor the gradients.
        if q_mask is not None:
            q = ops.where(ops.expand_dims(q_mask, -1), q, ops.zeros_like(q))
        if k_mask is not None:
            k = ops.where(ops.expand_dims(k_mask, -1), k, ops.zeros_like(k))
            v = ops.where(ops.expand_dims(k_mask, -1), v, ops.zeros_like(v))
        Q, K, V = self._project(q, "q"), self._project(k, "k"), self._project(v, "v")
        scale = 1.0 / float(np.sqrt(self.size_per_head)) if self.use_scale else 1.0

        allowed = self._allowed(q, k, q_mask, k_mask, attention_mask)
        if allowed is not None:
            # A query with nothing to attend to would be a softmax over nothing (NaN in PyTorch's
            # fused kernel): let it attend everywhere, then zero its weights and output below.
            attends = ops.any(allowed, axis=-1, keepdims=True)
            safe = ops.expand_dims(ops.logical_or(allowed, ops.logical_not(attends)), 1)  # (b, 1, Tq, Tk)

        use_dropout = self.dropout > 0 and training
        fused = self.fused if self.fused is not None else keras.backend.backend() != "tensorflow"
        if fused and not return_attention_scores and not use_dropout:
            if allowed is not None:
                safe = ops.broadcast_to(safe, (ops.shape(Q)[0], self.heads, ops.shape(Q)[1], ops.shape(K)[1]))
            out = ops.dot_product_attention(Q, K, V, mask=None if allowed is None else safe, scale=scale)
            # PyTorch's fused kernel gives 0, not NaN, at a query holding NaN: put the NaN back (0 elsewhere)
            out = out + ops.zeros_like(out) * ops.sum(Q, axis=-1, keepdims=True)
            weights = None
        else:
            Qh, Kh, Vh = (ops.transpose(t, (0, 2, 1, 3)) for t in (Q, K, V))  # (batch, heads, T, size)
            # 16-bit inputs (mixed precision): the logits and the softmax in float32
            wide = "float32" if keras.backend.standardize_dtype(Q.dtype) in ("float16", "bfloat16") else Q.dtype
            Qh = ops.cast(Qh, wide) if scale == 1.0 else ops.cast(Qh, wide) * ops.cast(scale, wide)
            logits = ops.matmul(Qh, ops.transpose(ops.cast(Kh, wide), (0, 1, 3, 2)))
            if allowed is not None:  # -inf, not -1e9: real logits below -1e9 must still win
                logits = ops.where(safe, logits, float("-inf"))
            weights = ops.softmax(logits, axis=-1)
            if allowed is not None:
                weights = ops.where(ops.expand_dims(allowed, 1), weights, ops.zeros_like(weights))
            weights = ops.cast(weights, V.dtype)
            out = ops.transpose(ops.matmul(self.dropout_layer(weights, training=training), Vh), (0, 2, 1, 3))
        out = ops.reshape(out, (ops.shape(Q)[0], ops.shape(Q)[1], self.heads * self.size_per_head))
        if allowed is not None:
            out = ops.where(attends, out, ops.zeros_like(out))
        if self.output_dim is not None:
            out = ops.matmul(out, self.wo)
            if self.use_bias:
                out = out + self.bo
        if q_mask is not None:
            out = ops.where(ops.expand_dims(q_mask, -1), out, ops.zeros_like(out))
        return (out, weights) if return_attention_scores else out

    def compute_output_shape(self, input_shape):
        q_shape = input_shape[0] if input_shape and isinstance(input_shape[0], (list, tuple)) else input_shape
        return (*q_shape[:-1], self.output_dim or self.heads * self.size_per_head)

    def compute_output_spec(self, inputs, mask=None, attention_mask=None, training=None, return_attention_scores=False):
        q, k, _ = self._unpack(inputs)
        out = keras.KerasTensor(self.compute_output_shape(q.shape), dtype=self.compute_dtype)
        if not return_attention_scores:
            return out
        return out, keras.KerasTensor((q.shape[0], self.heads, q.shape[1], k.shape[1]), dtype=self.compute_dtype)

    def compute_mask(self, inputs, mask=None):
        if isinstance(mask, (list, tuple)):
            return mask[0]
        return mask

    def get_config(self):
        return {
            **super().get_config(),
            "heads": self.heads,
            "size_per_head": self.size_per_head,
            "use_scale": self.use_scale,
            "output_dim": self.output_dim,
            "use_bias": self.use_bias,
            "dropout": self.dropout,
            "causal": self.causal,
            "fused": self.fused,
            "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
            "bias_initializer": keras.initializers.serialize(self.bias_initializer),
            "kernel_regularizer": keras.regularizers.serialize(self.kernel_regularizer),
            "bias_regularizer": keras.regularizers.serialize(self.bias_regularizer),
        }


def _sinusoids(positions, size, layout, base):
    """The sinusoids of ``positions`` (any shape, any dtype): a float32 tensor of that shape + (size,)."""
    freqs = np.power(float(base), -np.arange(0, size, 2, dtype="float64") / size).astype("float32")
    angles = ops.expand_dims(ops.cast(positions, "float32"), -1) * ops.convert_to_tensor(freqs)
    table = ops.concatenate([ops.cos(angles), ops.sin(angles)], axis=-1)
    if layout == "interleaved":  # sin_0, cos_0, sin_1, cos_1, ...: a fixed reordering of the channels
        half = size // 2
        table = ops.take(table, np.ravel(np.stack([np.arange(half) + half, np.arange(half)], axis=1)), axis=-1)
    return table


def sinusoidal_position_embedding(length, size, layout="cos_sin", base=10000.0, start=0):
    """The sinusoids for positions ``start .. start + length - 1``: a (length, size) float32 tensor.

    ``layout="cos_sin"`` (the article): channel ``i`` is ``cos(p w_i)`` and channel ``size/2 + i`` is
    ``sin(p w_i)``; ``layout="interleaved"`` (the paper): channel ``2i`` is ``sin(p w_i)`` and ``2i + 1``
    is ``cos(p w_i)``; ``w_i = base^(-2i/size)`` for ``i < size/2``. ``length`` may be a tensor.
    """
    if layout not in ("cos_sin", "interleaved"):
        raise ValueError(f"sinusoidal_position_embedding: layout must be 'cos_sin' or 'interleaved', got {layout!r}")
    size = _positive_int("size", size, "sinusoidal_position_embedding")
    _check_base(base, "sinusoidal_position_embedding")
    if isinstance(length, bool) or (not isinstance(length, (int, np.integer)) and not ops.is_tensor(length)):
        raise ValueError(f"sinusoidal_position_embedding: length must be an integer >= 0, got {length!r}")
    if isinstance(length, (int, np.integer)) and length < 0:
        raise ValueError(f"sinusoidal_position_embedding: length must be an integer >= 0, got {length!r}")
    if size % 2:
        raise ValueError(f"sinusoidal_position_embedding: size must be even (pairs of cos and sin), got {size}")
    return _sinusoids(ops.cast(ops.arange(length), "float32") + float(start), size, layout, base)


COUNT_FROM = ("start", "first_token")


def _check_base(base, name):
    """The wavelength base, a number > 1 (NaN, a string or a base <= 1 would give NaN or growing waves)."""
    if isinstance(base, bool) or not isinstance(base, (int, float, np.integer, np.floating)) or not base > 1.0:
        raise ValueError(f"{name}: base must be a number > 1, got {base!r}")
    return float(base)


class _PositionBase(keras.layers.Layer):
    """What both position embeddings share: mode sum or concat on (batch, time, features), and where
    positions are counted from."""

    def __init__(self, size, mode, count_from="start", **kwargs):
        super().__init__(**kwargs)
        name = type(self).__name__
        if mode not in ("sum", "concat"):
            raise ValueError(f"{name}: mode must be 'sum' or 'concat', got {mode!r}")
        if mode == "concat" and size is None:
            raise ValueError(f"{name}: mode='concat' needs a size")
        if count_from not in COUNT_FROM:
            raise ValueError(f"{name}: count_from must be one of {COUNT_FROM}, got {count_from!r}")
        self.size = None if size is None else _positive_int("size", size, name)
        self.mode = mode
        self.count_from = count_from
        self.supports_masking = True

    def _check_input(self, input_shape):
        name = type(self).__name__
        if len(input_shape) != 3 or input_shape[-1] is None:
            raise ValueError(
                f"{name}: input must be (batch, time, features) with known features, got {tuple(input_shape)}"
            )
        if self.mode == "sum" and self.size is not None and self.size != input_shape[-1]:
            raise ValueError(
                f"{name}: mode='sum' needs size == the input's features ({input_shape[-1]}), got size={self.size}"
            )
        self.features = int(input_shape[-1])
        return self.size or input_shape[-1]

    def _prepare(self, x):
        """``x`` as floats of the layer's dtype, with the shape it was built for, or a clear error (an int
        input would otherwise truncate the table to integers)."""
        if len(x.shape) != 3 or (x.shape[-1] is not None and x.shape[-1] != self.features):
            raise ValueError(
                f"{type(self).__name__}: input must be (batch, time, {self.features}) as when the layer was built, "
                f"got shape {tuple(x.shape)}"
            )
        return x if keras.backend.is_float_dtype(x.dtype) else ops.cast(x, self.compute_dtype)

    def _positions(self, x, mask):
        """(batch, time) int positions counted from each row's first real step (0 before it and in a row
        with none), read from the Keras mask."""
        name = type(self).__name__
        if mask is None:
            raise ValueError(
                f"{name}: count_from='first_token' reads the Keras mask, and none arrived with the input of shape "
                f"{tuple(x.shape)}: give the embedding mask_zero=True, or pass mask="
            )
        mask = _bool_mask(mask)
        if len(mask.shape) != 2 or (
            mask.shape[1] is not None and x.shape[1] is not None and mask.shape[1] != x.shape[1]
        ):
            raise ValueError(f"{name}: the mask must be (batch, {x.shape[1]}), got shape {tuple(mask.shape)}")
        _same_batch(mask, x, name, "mask")
        length = ops.shape(x)[1]
        steps = ops.expand_dims(ops.arange(length, dtype="int32"), 0)
        first = ops.min(ops.where(mask, steps, length), axis=1, keepdims=True)  # length if no real step
        return ops.maximum(steps - first, 0)

    def _apply(self, x, table):
        """x plus (or with) ``table``, (time, size) or (batch, time, size)."""
        table = ops.cast(table, x.dtype)
        if len(table.shape) == 2:
            table = table[None]
        if self.mode == "sum":
            return x + table
        return ops.concatenate([x, ops.broadcast_to(table, (ops.shape(x)[0], ops.shape(x)[1], self.size))], axis=-1)

    def compute_output_shape(self, input_shape):
        if self.mode == "sum":
            return tuple(input_shape)
        return (*input_shape[:-1], input_shape[-1] + self.size)

    def compute_mask(self, inputs, mask=None):
        return mask

    def get_config(self):
        return {**super().get_config(), "size": self.size, "mode": self.mode, "count_from": self.count_from}


@keras.saving.register_keras_serializable(package="kexue_attention")
class PositionEmbedding(_PositionBase):
    """The fixed sinusoidal position embedding, for sequences of any length.

    Args:
        size: channels of the embedding; None means the input's features (mode ``"sum"`` only).
        mode: ``"sum"`` adds it to the input (the article), ``"concat"`` appends it.
        layout: ``"cos_sin"`` (the article: all cosines, then all sines) or ``"interleaved"`` (the
            paper: sin, cos, sin, cos, ...). See ``sinusoidal_position_embedding``.
        base: the wavelength base, 10000 in both.
        count_from: ``"start"`` (the article): positions 0, 1, ..., T - 1 over the padded sequence, so
            with padding at the front a sentence's words get positions that depend on how much padding
            there is. ``"first_token"``: each row counts from its first real step, read from the Keras
            mask (``Embedding(mask_zero=True)``), so a sentence gets the same positions however it is
            padded; steps before it get position 0. Without a mask this is an error.

    Call: (batch, time, features) -> (batch, time, features) for ``"sum"``, (batch, time, features +
    size) for ``"concat"``. The Keras mask passes through. No weights. Integer inputs become floats.
    """

    def __init__(self, size=None, mode="sum", layout="cos_sin", base=10000.0, count_from="start", **kwargs):
        super().__init__(size, mode, count_from, **kwargs)
        if layout not in ("cos_sin", "interleaved"):
            raise ValueError(f"PositionEmbedding: layout must be 'cos_sin' or 'interleaved', got {layout!r}")
        self.layout = layout
        self.base = _check_base(base, "PositionEmbedding")

    def build(self, input_shape):
        size = self._check_input(input_shape)
        if size % 2:
            raise ValueError(f"PositionEmbedding: the embedding size must be even (pairs of cos and sin), got {size}")

    def call(self, x, mask=None):
        x = self._prepare(x)
        size = self.size or x.shape[-1]
        if self.count_from == "start":
            return self._apply(x, sinusoidal_position_embedding(ops.shape(x)[1], size, self.layout, self.base))
        return self._apply(x, _sinusoids(self._positions(x, mask), size, self.layout, self.base))

    def get_config(self):
        return {**super().get_config(), "layout": self.layout, "base": self.base}


@keras.saving.register_keras_serializable(package="kexue_attention")
class TrainablePositionEmbedding(_PositionBase):
    """A learned position embedding: one trainable vector per position, up to ``max_length``.

    Args:
        max_length: the longest sequence it accepts.
        size: channels; None means the input's features (mode ``"sum"`` only).
        mode: ``"sum"`` or ``"concat"``, as in ``PositionEmbedding``.
        count_from: ``"start"`` or ``"first_token"``, as in ``PositionEmbedding``.
        embeddings_initializer: zeros by default, so a fresh model starts as if it had no position
            embedding and learns one.

    Call: as ``PositionEmbedding``; sequences longer than ``max_length`` are an error.
    """

    def __init__(
        self,
        max_length,
        size=None,
        mode="sum",
        embeddings_initializer="zeros",
        embeddings_regularizer=None,
        count_from="start",
        **kwargs,
    ):
        super().__init__(size, mode, count_from, **kwargs)
        self.max_length = _positive_int("max_length", max_length, "TrainablePositionEmbedding")
        self.embeddings_initializer = keras.initializers.get(embeddings_initializer)
        self.embeddings_regularizer = keras.regularizers.get(embeddings_regularizer)

    def build(self, input_shape):
        size = self._check_input(input_shape)
        if input_shape[1] is not None and input_shape[1] > self.max_length:
            raise ValueError(
                f"TrainablePositionEmbedding: sequences of length {input_shape[1]} exceed max_length={self.max_length}"
            )
        self.embeddings = self.add_weight(
            name="embeddings",
            shape=(self.max_length, size),
            initializer=self.embeddings_initializer,
            regularizer=self.embeddings_regularizer,
        )

    def call(self, x, mask=None):
        x = self._prepare(x)
        length = x.shape[1]
        if length is not None and length > self.max_length:
            raise ValueError(
                f"TrainablePositionEmbedding: sequences of length {length} exceed max_length={self.max_length}"
            )
        if self.count_from == "start":
            return self._apply(x, self.embeddings[: ops.shape(x)[1]])
        return self._apply(x, ops.take(self.embeddings, self._positions(x, mask), axis=0))

    def get_config(self):
        return {
            **super().get_config(),
            "max_length": self.max_length,
            "embeddings_initializer": keras.initializers.serialize(self.embeddings_initializer),
            "embeddings_regularizer": keras.regularizers.serialize(self.embeddings_regularizer),
        }


@keras.saving.register_keras_serializable(package="kexue_attention")
class MaskedGlobalAveragePooling1D(keras.layers.Layer):
    """The mean over the real steps, (batch, time, features) -> (batch, features), read from the Keras
    mask: ``keras.layers.GlobalAveragePooling1D`` for sequences, except that a row with no real step
    (all padding, or time = 0) gives zeros where that layer gives 0 / 0 = NaN, and that masked steps are
    left out by selection, so a NaN or inf there does not reach the mean. Without a mask, the mean over
    all steps. Integer inputs become floats.
    """

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.supports_masking = True

    def call(self, x, mask=None):
        if len(x.shape) != 3:
            raise ValueError(
                f"MaskedGlobalAveragePooling1D: input must be (batch, time, features), got shape {tuple(x.shape)}"
            )
        if not keras.backend.is_float_dtype(x.dtype):
            x = ops.cast(x, self.compute_dtype)
        dtype = x.dtype
        # 16-bit inputs are summed in float32 (a float16 sum of 1000 steps of 100 overflows), and each
        # step is divided by the count before the sum, so four steps of 3e38 average to 3e38, not inf.
        if keras.backend.standardize_dtype(dtype) in ("float16", "bfloat16"):
            x = ops.cast(x, "float32")
        if mask is None:
            count = ops.cast(ops.maximum(ops.shape(x)[1], 1), x.dtype)
            return ops.cast(ops.sum(x / count, axis=1), dtype)
        mask = _bool_mask(mask)
        if len(mask.shape) != 2 or (
            mask.shape[1] is not None and x.shape[1] is not None and mask.shape[1] != x.shape[1]
        ):
            raise ValueError(
                f"MaskedGlobalAveragePooling1D: the mask must be (batch, {x.shape[1]}), got shape {tuple(mask.shape)}"
            )
        _same_batch(mask, x, "MaskedGlobalAveragePooling1D", "mask")
        count = ops.maximum(ops.sum(ops.cast(mask, x.dtype), axis=1, keepdims=True), 1)
        total = ops.sum(ops.where(ops.expand_dims(mask, -1), x / ops.expand_dims(count, 1), ops.zeros_like(x)), axis=1)
        return ops.cast(total, dtype)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], input_shape[-1])

    def compute_mask(self, inputs, mask=None):
        return None
