"""Adam, with TensorFlow's fused update kernel on the TensorFlow backend.

Keras's ``Adam.update_step`` is a dozen element-wise ops (``m += (g - m)(1 - beta_1)``, the same for
``v``, then ``w -= alpha m / (sqrt(v) + epsilon)``), and on TensorFlow without XLA each op is a
kernel that reads and writes the whole variable. For a large embedding whose gradient arrives as
rows (``IndexedSlices``), that is about 13 passes over the table every step: for the attention
article's 20,000 x 128 word table it took more time than the whole rest of the model except the
attention. ``tf.raw_ops.ResourceApplyAdam`` does the same three lines in one multithreaded pass.

The arithmetic is Adam's as Keras writes it (``alpha = lr sqrt(1 - beta_2^t) / (1 - beta_1^t)``, ``t``
the step counted from 1, ``w -= alpha m / (sqrt(v) + epsilon)``); the optimizer is Keras's Adam
object with its ``update_step`` replaced, so checkpoints and ``.keras`` files are Keras's Adam's.
One difference, in Adam's favour: for an embedding's gradient, Keras 3's Adam on TensorFlow squares each row before
adding up the rows of a repeated id, so ``v`` gets ``sum(g_i^2)`` where Adam (and Keras 2.1, which
the articles used, and Keras 3 on JAX and PyTorch, whose gradients are dense) has ``(sum g_i)^2``.
Here the rows are added first. tests/test_utils.py checks both kinds of gradient against a float64
Adam. Where the kernel does not apply (JAX and PyTorch, which fuse on their own; ``amsgrad``; a
distribution strategy, whose per-device variables Keras's own code handles; variables that are not
float32) ``update_step`` is Keras's.
"""

import types

import keras


def adam(learning_rate=0.001, **kwargs):
    """``keras.optimizers.Adam(learning_rate, **kwargs)``; on TensorFlow its update runs in the fused kernel.

    It is Keras's Adam object (its class, config and variables), so a model saved with it loads
    anywhere as a model with Keras's Adam; only this instance's ``update_step`` is replaced.
    """
    optimizer = keras.optimizers.Adam(learning_rate, **kwargs)
    if keras.backend.backend() == "tensorflow":
        optimizer.update_step = types.MethodType(_fused_update_step, optimizer)
    return optimizer


def _fused_update_step(self, gradient, variable, learning_rate):
    import tensorflow as tf

    var = variable.value if isinstance(variable, keras.Variable) else variable
    if self.amsgrad or tf.distribute.has_strategy() or var.dtype != tf.float32 or not hasattr(var, "handle"):
        return keras.optimizers.Adam.update_step(self, gradient, variable, learning_rate)
    index = self._get_variable_index(variable)
    m, v = self._momentums[index].value, self._velocities[index].value
    step = tf.cast(self.iterations + 1, tf.float32)
    beta_1, beta_2 = tf.cast(self.beta_1, tf.float32), tf.cast(self.beta_2, tf.float32)
    # the rows of an embedding's gradient, added up per id: the dense gradient
    gradient = tf.convert_to_tensor(tf.cast(gradient, tf.float32))
    tf.raw_ops.ResourceApplyAdam(
        var=var.handle,
        m=m.handle,
        v=v.handle,
        beta1_power=tf.pow(beta_1, step),
        beta2_power=tf.pow(beta_2, step),
        lr=tf.cast(learning_rate, tf.float32),
        beta1=beta_1,
        beta2=beta_2,
        epsilon=tf.cast(self.epsilon, tf.float32),
        grad=gradient,
        use_locking=False,
    )
