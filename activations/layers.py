"""Activations from 浅谈神经网络中激活函数的设计 (On designing activation functions), Su Jianlin,
https://kexue.fm/archives/4647 (2017-10-26).

The article's points, in its terms:

* Any nonlinear function can serve as an activation; even floating-point rounding error is a
  nonlinearity (OpenAI, "Nonlinear computation in deep linear networks", 2017). ``rounding_nonlinearity``
  below is a function that is the identity in exact arithmetic but a staircase in float32.
* sigmoid saturates on both sides, so its gradient vanishes; ReLU is unsaturated for x > 0.
* Swish, ``x * sigmoid(beta * x)``, is a gated linear unit whose gate and content share weights.
* Why Swish beats ReLU: with zero-mean initialisation about half the pre-activations are negative,
  where ReLU is flat, so half the parameters get no gradient at the start; Swish is not flat there.
* The article's proposal keeps ReLU's identity on x >= 0 and is non-flat on x < 0::

      f(x) = x * min(1, e^x)  =  x            for x >= 0
                                 x * e^x      for x <  0

  The article writes it overflow-safe as ``max(x, x * exp(-|x|))``; here ``x * exp(min(x, 0))``,
  the same function, whose exponent is never positive.

Each activation is a plain function (usable as ``Dense(..., activation=swish)``) and a layer. This file
imports only keras and numpy, uses ``keras.ops``, and runs on TensorFlow, JAX and PyTorch.
"""

import keras
import numpy as np
from keras import ops

__all__ = ["swish", "x_min_exp", "Swish", "XMinExp", "rounding_nonlinearity"]


def _floating(x):
    """Integer or boolean inputs become Keras's float type (an activation of an int is a float)."""
    x = ops.convert_to_tensor(x)
    return x if keras.backend.is_float_dtype(x.dtype) else ops.cast(x, keras.config.floatx())


@keras.saving.register_keras_serializable(package="kexue_activations")
def swish(x, beta=1.0):
    """``x * sigmoid(beta * x)`` (Ramachandran et al. 2017; beta = 1 is SiLU).

    At ``x = +-inf`` it gives its limit (for beta > 0: 0 at -inf, +inf at +inf), with the limit's
    gradient (0 and 1), where the plain product would give ``inf * 0 = NaN``; NaN stays NaN.
    """
    x = _floating(x)
    finite = ops.isfinite(x)
    x_finite = ops.where(finite, x, ops.zeros_like(x))  # the product below never sees an infinity
    inner = x_finite * ops.sigmoid(beta * x_finite)
    # at x = +-inf the gate is 0 or 1 by the sign of beta * x, 1/2 at beta = 0 (where beta * x is NaN): flat
    gate = ops.stop_gradient((ops.sign(beta * ops.sign(x)) + 1.0) / 2.0)
    limit = ops.where(gate == 0, ops.zeros_like(x), x * gate)
    return ops.where(finite, inner, limit)


@keras.saving.register_keras_serializable(package="kexue_activations")
def x_min_exp(x):
    """The article's ``x * min(1, e^x)``: identity for x >= 0, ``x * e^x`` for x < 0.

    Computed as ``x * exp(min(x, 0))``: the exponent is <= 0, so nothing overflows, and the gradient
    ``exp(min(x, 0)) * (1 + x * [x < 0])`` is finite for every finite input, in float16 too. At
    ``x = +-inf`` it gives the limits, +inf (gradient 1) and 0 (gradient 0), where the product would give
    ``-inf * 0 = NaN``; NaN stays NaN.
    """
    x = _floating(x)
    finite = ops.isfinite(x)
    x_finite = ops.where(finite, x, ops.zeros_like(x))
    inner = x_finite * ops.exp(ops.minimum(x_finite, 0))
    return ops.where(finite, inner, ops.where(x < 0, ops.zeros_like(x), x))


@keras.saving.register_keras_serializable(package="kexue_activations")
class Swish(keras.layers.Layer):
    """Swish activation layer, ``x * sigmoid(beta * x)``.

    Args:
        beta: the initial (or fixed) slope of the gate. ``beta = 1`` is SiLU; as beta grows Swish
            tends to ReLU, at ``beta = 0`` it is ``x / 2``.
        trainable_beta: learn ``beta`` (one scalar per layer), as the Swish paper's "Swish-beta".

    Input: any shape. Output: the same shape and dtype.
    """

    def __init__(self, beta=1.0, trainable_beta=False, **kwargs):
        super().__init__(**kwargs)
        if (
            isinstance(beta, bool)
            or not isinstance(beta, (int, float, np.integer, np.floating))
            or not np.isfinite(beta)
        ):
            raise ValueError(f"Swish: beta must be a finite number, got {beta!r}")
        self.beta_init = float(beta)
        if not isinstance(trainable_beta, (bool, np.bool_)):  # "no" is truthy: it would mean True
            raise ValueError(f"Swish: trainable_beta must be True or False, got {trainable_beta!r}")
        self.trainable_beta = bool(trainable_beta)
        self.supports_masking = True

    def build(self, input_shape):
        if self.trainable_beta:
            self.beta = self.add_weight(
                name="beta", shape=(), initializer=keras.initializers.Constant(self.beta_init), trainable=True
            )
        else:
            self.beta = self.beta_init

    def call(self, inputs):
        inputs = _floating(inputs)
        beta = ops.cast(self.beta, inputs.dtype) if self.trainable_beta else self.beta
        return swish(inputs, beta)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "beta": self.beta_init, "trainable_beta": self.trainable_beta}


@keras.saving.register_keras_serializable(package="kexue_activations")
class XMinExp(keras.layers.Layer):
    """The article's activation ``x * min(1, e^x)`` as a layer (see ``x_min_exp``).

    Input: any shape. Output: the same shape and dtype.
    """

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.supports_masking = True

    def call(self, inputs):
        return x_min_exp(inputs)

    def compute_output_shape(self, input_shape):
        return input_shape


def rounding_nonlinearity(x, dtype="float32"):
    """A function that is the identity in exact arithmetic and a staircase in float32.

    ``x`` is scaled by 2**-140 and back by 2**140, in steps that are exact powers of two. In float64
    every step is exact (2**-140 * x stays a normal number), so the result is ``x``. In float32
    2**-140 * x falls below the smallest normal number (2**-126), where the spacing of representable
    numbers is 2**-149; rounding there keeps only multiples of 2**-9 of ``x``: the result is
    ``round(512 * x) / 512``, a nonlinear function. This is the effect OpenAI exploited to train a
    "deep linear network" to nonlinear behaviour. Computed with NumPy, which keeps subnormal
    numbers; backends that flush them to zero (TensorFlow on CPU) turn the staircase into zero.

    Args:
        x: array-like; converted to ``dtype`` first.
        dtype: ``"float32"`` (nonlinear) or ``"float64"`` (the identity).
    Returns:
        A NumPy array of ``dtype``.
    """
    if np.dtype(dtype) not in (np.float32, np.float64):
        raise ValueError(f"rounding_nonlinearity: dtype must be float32 or float64, got {dtype!r}")
    x = np.asarray(x, dtype=dtype)
    down, up = np.asarray(2.0**-70, dtype), np.asarray(2.0**70, dtype)  # 2**+-140 overflow float32
    with np.errstate(under="ignore"):
        return ((x * down) * down) * up * up
