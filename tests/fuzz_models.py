"""Random tiny models for the fuzz tests: hypothesis strategies and the builder they drive.

A model is a `Model` spec (plain tuples, so hypothesis can shrink and print it) built with the
contrib-style builders of `builders.py`: a chain of 1..3 weight layers of random kind, shape,
batch norm, bias, activation and residual add, on ref or resource variables. The same spec
builds the training graph (is_training=True) and the eval graph (is_training=False), as a
user's model function would, so variable names line up for checkpoints and value copies.
"""

import collections

import numpy as np
import tensorflow as tf
from hypothesis import strategies as st

import builders

v1 = tf.compat.v1

BATCH = 4
SIZE = 6
KINDS = ("conv", "depthwise", "transpose", "dense")
NORMS = builders.NORMALIZERS  # none, fused, unfused
ACTIVATIONS = ("relu", "relu6", "leaky", "identity", "none")
BYPASSES = ("none", "pre", "post")  # residual add before or after the activation

Layer = collections.namedtuple("Layer", "kind kernel channels stride norm bias act bypass")
Model = collections.namedtuple("Model", "in_channels resource layers")


def _activation(name):
  return {"relu": tf.nn.relu, "relu6": tf.nn.relu6, "identity": tf.identity, "none": None,
          "leaky": lambda x: tf.nn.leaky_relu(x, alpha=0.1)}[name]


@st.composite
def layers(draw, last, kinds=KINDS, activations=ACTIVATIONS, norms=NORMS):
  """One layer; a dense layer only comes last (it flattens), a bypass needs stride 1."""
  kind = draw(st.sampled_from([k for k in kinds if last or k != "dense"]))
  bypass = draw(st.sampled_from(BYPASSES))
  stride = 1 if bypass != "none" or kind == "dense" else draw(st.sampled_from([1, 2]))
  return Layer(kind=kind, kernel=draw(st.sampled_from([1, 3])),
               channels=draw(st.integers(2, 4)), stride=stride,
               norm=draw(st.sampled_from(norms)), bias=draw(st.booleans()),
               act=draw(st.sampled_from(activations)), bypass=bypass)


@st.composite
def models(draw, max_layers=3, **layer_options):
  count = draw(st.integers(1, max_layers))
  chain = tuple(draw(layers(last=i == count - 1, **layer_options)) for i in range(count))
  return Model(in_channels=draw(st.integers(1, 3)), resource=draw(st.booleans()), layers=chain)


def _transpose_conv(x, layer, scope, use_resource, is_training):
  """`conv2d_transpose` the contrib way (`<scope>/weights` [k, k, cout, cin]), then the bias or
  batch norm as builders add them to the other layers."""
  cin = int(x.shape[-1])
  size = int(x.shape[1]) * layer.stride
  with v1.variable_scope(scope, use_resource=use_resource):
    w = v1.get_variable("weights", [layer.kernel, layer.kernel, layer.channels, cin],
                        initializer=v1.truncated_normal_initializer(stddev=0.3))
    shape = tf.stack([tf.shape(x)[0], size, size, layer.channels])
    y = tf.nn.conv2d_transpose(x, w, shape, [1, layer.stride, layer.stride, 1], "SAME",
                               name="conv2d_transpose")
    y.set_shape([None, size, size, layer.channels])
    if layer.norm != "none":
      return builders.batch_norm(y, fused=layer.norm == "fused", is_training=is_training)
    if layer.bias:
      b = v1.get_variable("biases", [layer.channels], initializer=v1.zeros_initializer())
      return tf.nn.bias_add(y, b)
    return y


def _layer(x, layer, scope, use_resource, is_training):
  """The layer without its activation (the caller adds it, around a bypass)."""
  common = dict(activation=None, use_bias=layer.bias, normalizer=layer.norm,
                is_training=is_training, scope=scope, use_resource=use_resource,
                weights_initializer=v1.truncated_normal_initializer(stddev=0.3))
  channels = int(x.shape[-1])
  if layer.kind == "conv":
    out = channels if layer.bypass != "none" else layer.channels
    return builders.conv2d(x, out, layer.kernel, stride=layer.stride, **common)
  if layer.kind == "depthwise":
    return builders.separable_conv2d(x, None, layer.kernel, stride=layer.stride, **common)
  if layer.kind == "dense":
    x = tf.reshape(x, [-1, int(np.prod(x.shape.as_list()[1:]))])
    out = int(x.shape[-1]) if layer.bypass != "none" else layer.channels
    return builders.fully_connected(x, out, **common)
  out = channels if layer.bypass != "none" else layer.channels
  return _transpose_conv(x, layer._replace(channels=out), scope, use_resource, is_training)


def layer_input(x, layer):
  """What the layer's bypass adds: its input (flattened for a dense layer)."""
  if layer.kind == "dense":
    return tf.reshape(x, [-1, int(np.prod(x.shape.as_list()[1:]))])
  return x


def build(model, is_training, input_name="x", seed=0):
  """Builds `model` into the default graph; returns (input placeholder, output tensor).
  The graph-level seed makes the initial weights, and so every failure, reproducible."""
  v1.set_random_seed(seed)
  x = v1.placeholder(tf.float32, [None, SIZE, SIZE, model.in_channels], name=input_name)
  y = x
  for i, layer in enumerate(model.layers):
    scope = "l%d" % i
    out = _layer(y, layer, scope, model.resource, is_training)
    act = _activation(layer.act)
    if layer.bypass == "pre":
      out = tf.add(out, layer_input(y, layer), name=scope + "/add")
    if act is not None:
      out = act(out)
    if layer.bypass == "post":
      out = tf.add(out, layer_input(y, layer), name=scope + "/post_add")
    y = out
  return x, tf.identity(y, name="output")


def feed(model, seed=0):
  return np.random.RandomState(seed).normal(size=(BATCH, SIZE, SIZE, model.in_channels)).astype(
      np.float32)


def random_values(sess, graph, seed=0):
  """{variable name: value}: the initial values, with batch-norm statistics, gamma and beta
  drawn away from their 0/1 initial values so that folding has something to get wrong."""
  rng = np.random.RandomState(seed)
  values = {}
  for var in graph.get_collection(v1.GraphKeys.GLOBAL_VARIABLES):
    name = var.op.name
    value = sess.run(var)
    if name.endswith(("moving_mean", "beta", "biases")):
      value = rng.uniform(-0.5, 0.5, value.shape)
    elif name.endswith(("moving_variance", "gamma")):
      value = rng.uniform(0.5, 2.0, value.shape)
    values[name] = value
  return values


def load(sess, graph, values):
  for var in graph.get_collection(v1.GraphKeys.GLOBAL_VARIABLES):
    if var.op.name in values:
      var.load(values[var.op.name], sess)
