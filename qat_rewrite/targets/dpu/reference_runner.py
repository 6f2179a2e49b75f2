"""Executes a DPU deploy GraphDef (`deploy_model.pb`) with integer arithmetic only.

A tensor is (ints, pos): exact int64 integers meaning ints·2^-pos. Ops compute exactly, aligning
positions by left shifts to the finer one; a node with `opos = [bits, pos]` then requantizes its
exact result to that grid: right shifts round half up (floor(v/2^s + 1/2), the DPU's activation
rounding), left shifts are exact, and the result saturates to [-2^(bits-1), 2^(bits-1) - 1].
This reproduces the float eval graph's fake quantization bit for bit, save where TF's float32
rounding is 1 LSB off.

Format: a `tf.compat.v1.GraphDef` (not runnable in stock TF). Every node keeps its TF op type
and TF's own attrs; layouts are NHWC. Inputs list only activation tensors (`node` or `node:0`;
`^control` inputs are ignored); constant parameters are attrs. Grids are list(int) [bits, pos].
- Placeholder: `dtype`, `shape`, `opos`. Float feeds are quantized (round half up, saturate);
  integer feeds are the ints themselves (saturated to the grid).
- Conv2D, DepthwiseConv2dNative, Conv2DBackpropInput, MatMul: one input (the data); TF's
  `strides`, `padding` (SAME/VALID), `dilations`, `data_format`; `weights`, an integer tensor
  (int8 up to 8 bits, else int16) in TF's layout: [kh, kw, cin, cout], depthwise
  [kh, kw, cin, multiplier] (channel c·multiplier + m), transposed [kh, kw, cout, cin],
  MatMul [K, M] (no transposes); `wpos`; optional `bias` [cout] with `bpos`, added exactly;
  Conv2DBackpropInput also `output_shape` (NHWC, batch -1 = the input's). The accumulator
  sits at input pos + wpos.
- Relu, Relu6 (clamps at exactly 6, refining a position below -1 to -1), LeakyRelu (`alpha`
  must be k/2^m with m <= 16; the position grows by m).
- Add, AddV2 (two inputs); ConcatV2 (`axis`, may be negative).
- MaxPool, AvgPool (`ksize`, `strides`, `padding`; SAME averages over the valid elements);
  Mean (`reduction_indices` [1, 2], `keep_dims`): a global average. Optional `dpu_multiplier`
  [k, n] scales an average by kh·kw·k/2^n, H·W·k/2^n for Mean (the DPU's sum·k/2^n).
  Averages need `opos`: they are rounded once, exactly, as rationals.
- Reshape (`shape`, one -1 allowed), Squeeze (`squeeze_dims`), Identity, Pad (`paddings`,
  row-major [before, after] per dim, zeros).
- Any node: optional `opos`; `ipos` is informational. An empty `opos` list counts as absent.
"""

import numpy as np
import tensorflow as tf
from absl import logging

from qat_rewrite.quant import pow2

_FLOAT_EXACT = 2 ** 53  # float64 sums of integers below this are exact in any order
_INT64_SAFE = 2 ** 62  # headroom for one rounding add
_INT32 = 2 ** 31


def run(graph_def, feeds, outputs):
  """{output name: (ints, pos)} for `outputs`, evaluating only the nodes they need."""
  nodes = {node.name: node for node in graph_def.node}
  for name in outputs:
    if name not in nodes:
      raise ValueError("reference runner: output %r is not a node of the graph" % name)
  values = {}
  for node in _order(nodes, outputs):
    args = [values[name] for name in _inputs(node)]
    value = _feed(node, feeds) if node.op == "Placeholder" else _evaluate(node, args)
    grid = _grid(node, "opos")
    values[node.name] = _requantize(*value, *grid) if grid else value
  return {name: values[name] for name in outputs}


def to_float(ints, pos):
  """ints·2^-pos as float32."""
  return (np.asarray(ints, np.float64) * 2.0 ** -pos).astype(np.float32)


# Graph walking --------------------------------------------------------------------------------

def _inputs(node):
  """The nodes whose outputs `node` reads as data."""
  return [name.split(":")[0] for name in node.input if not name.startswith("^")]


def _order(nodes, outputs):
  """The needed nodes, inputs first; iterative so that deep graphs need no recursion."""
  order, state, stack = [], {}, [(name, False) for name in reversed(outputs)]
  while stack:
    name, expanded = stack.pop()
    if expanded:
      state[name] = "done"
      order.append(nodes[name])
    elif state.get(name) == "open":
      raise ValueError("reference runner: the graph has a cycle through %r" % name)
    elif not state.get(name):
      state[name] = "open"
      stack.append((name, True))
      for source in reversed(_inputs(nodes[name])):
        if source not in nodes:
          raise ValueError("reference runner: %s reads %r, which is not a node" % (name, source))
        stack.append((source, False))
  return order


def _feed(node, feeds):
  if node.name not in feeds:
    raise ValueError("reference runner: no feed for placeholder %r" % node.name)
  bits, pos = _grid(node, "opos", required=True)
  x = np.asarray(feeds[node.name])
  if np.issubdtype(x.dtype, np.integer):
    return x.astype(np.int64), pos
  q = pow2.quantize(x, bits, pos, rounding=pow2.HALF_UP)
  return np.rint(q.astype(np.float64) * 2.0 ** pos).astype(np.int64), pos


def _evaluate(node, args):
  if node.op not in _OPS:
    raise ValueError("reference runner: node %r has op type %r, which it cannot run; supported: "
                     "%s" % (node.name, node.op, ", ".join(sorted(_OPS) + ["Placeholder"])))
  function, arity = _OPS[node.op]
  if arity is not None and len(args) != arity:
    raise ValueError("reference runner: %s (%s) needs %d data input(s), has %d"
                     % (node.name, node.op, arity, len(args)))
  if "data_format" in node.attr and node.attr["data_format"].s not in (b"", b"NHWC"):
    raise ValueError("reference runner: %s uses data_format %s; only NHWC is supported"
                     % (node.name, node.attr["data_format"].s.decode()))
  return function(node, *args)


# Attributes and integer helpers ---------------------------------------------------------------

def _grid(node, key, required=False):
  """[bits, pos], or None when absent or empty (an error if `required`)."""
  grid = _ints(node, key, [])
  if len(grid) != 2 and (grid or required):
    raise ValueError("reference runner: %s (%s) needs %s = [bits, pos], has %s"
                     % (node.name, node.op, key, grid))
  return grid or None


def _ints(node, key, default=None):
  return [int(v) for v in node.attr[key].list.i] if key in node.attr else default


def _tensor(node, key, pos_key):
  ints = tf.make_ndarray(node.attr[key].tensor).astype(np.int64)
  return ints, _grid(node, pos_key, required=True)[1]


def _max_abs(ints):
  return int(np.abs(ints).max()) if ints.size else 0


def _shl(ints, shift, node):
  """ints·2^shift, refusing to overflow int64."""
  if shift and _max_abs(ints) << shift >= _INT64_SAFE:
    raise ValueError("reference runner: %s shifts values by %d bits, beyond int64"
                     % (node.name, shift))
  return ints << shift if shift else ints


def _align(values, node):
  """The values at the finest of their positions: ([ints, ...], pos). All-zero values are zero
  at any position (an all-zero bias gets position 127), so they do not pick it."""
  pos = max((p for ints, p in values if _max_abs(ints)), default=max(p for _, p in values))
  return [_shl(ints, pos - p, node) if _max_abs(ints) else ints for ints, p in values], pos


def _requantize(ints, pos, bits, opos):
  """The DPU's requantization: round half up on right shifts, then saturate."""
  lo, hi = -2 ** (bits - 1), 2 ** (bits - 1) - 1
  shift = pos - opos
  if shift >= 63:  # |ints| < 2^62, so floor(ints/2^shift + 1/2) is 0
    ints = np.zeros_like(ints)
  elif shift > 0:
    ints = (ints + (1 << (shift - 1))) >> shift
  elif shift < 0:  # anything beyond ±2^bits saturates whatever the shift
    ints = np.clip(ints, -2 ** bits, 2 ** bits) << min(-shift, 62 - bits)
  return np.clip(ints, lo, hi).astype(np.int64), opos


# Products ------------------------------------------------------------------------------------

def _dot(a, b, node):
  """a @ b exactly: float64 BLAS when every partial sum stays below 2^53 (integers below
  2^53 add exactly in float64 in any order), else int64 arithmetic."""
  if _fits_float(_max_abs(a) * int(np.abs(b).sum(axis=0).max(initial=0)), node):
    return np.rint(a.astype(np.float64) @ b.astype(np.float64)).astype(np.int64)
  return a @ b


def _fits_float(bound, node):
  """Whether sums of magnitude up to `bound` are exact in float64; an error beyond int64."""
  if bound >= _INT64_SAFE:
    raise ValueError("reference runner: %s accumulates up to %d, beyond int64" % (node.name, bound))
  return bound < _FLOAT_EXACT


def _hw(node, key):
  """(height, width) from an NHWC list attr such as strides; (1, 1) when absent."""
  values = _ints(node, key) or [1, 1, 1, 1]
  if len(values) != 4 or values[0] != 1 or values[3] != 1:
    raise ValueError("reference runner: %s.%s = %s works over batch or channels"
                     % (node.name, key, values))
  return values[1], values[2]


def _padding(node, size, kernel, strides, dilations):
  """((top, bottom), (left, right)) by TF's SAME/VALID rule for a forward window."""
  padding = node.attr["padding"].s.decode()
  if padding == "VALID":
    return (0, 0), (0, 0)
  if padding != "SAME":
    raise ValueError("reference runner: %s has padding %r; only SAME and VALID are supported"
                     % (node.name, padding))
  pads = []
  for n, k, s, d in zip(size, kernel, strides, dilations):
    total = max((-(-n // s) - 1) * s + (k - 1) * d + 1 - n, 0)
    pads.append((total // 2, total - total // 2))
  return tuple(pads)


def _windows(x, kernel, strides, dilations, pads, fill=0):
  """NHWC windows as a view [N, OH, OW, C, kh, kw]."""
  x = np.pad(x, [(0, 0), *pads, (0, 0)], constant_values=fill)
  span = [(k - 1) * d + 1 for k, d in zip(kernel, dilations)]
  view = np.lib.stride_tricks.sliding_window_view(x, span, axis=(1, 2))
  (sh, sw), (dh, dw) = strides, dilations
  return view[:, ::sh, ::sw, :, ::dh, ::dw]


def _correlate(x, w, strides, dilations, pads, node):
  """TF's conv2d of NHWC ints with [kh, kw, cin, cout] ints, by im2col and one product."""
  patches = _windows(x, w.shape[:2], strides, dilations, pads)
  n, oh, ow = patches.shape[:3]
  columns = patches.transpose(0, 1, 2, 4, 5, 3).reshape(n * oh * ow, -1)
  return _dot(columns, w.reshape(-1, w.shape[3]), node).reshape(n, oh, ow, w.shape[3])


def _with_bias(node, acc, pos):
  """The accumulator plus the aligned bias; warns where the DPU's 32 bits would overflow."""
  if "bias" in node.attr:
    (acc, bias), pos = _align([(acc, pos), _tensor(node, "bias", "bpos")], node)
    acc = acc + bias
  if _max_abs(acc) >= _INT32:
    logging.warning("reference runner: the accumulator of %s reaches %d, beyond the DPU's "
                    "32 bits", node.name, _max_abs(acc))
  return acc, pos


# Ops -----------------------------------------------------------------------------------------

def _layer(node, data):
  """(data ints, accumulator position, weights, strides, dilations) of a weight layer."""
  (x, pos), (w, wpos) = data, _tensor(node, "weights", "wpos")
  return x, pos + wpos, w, _hw(node, "strides"), _hw(node, "dilations")


def _conv2d(node, data):
  x, pos, w, strides, dilations = _layer(node, data)
  pads = _padding(node, x.shape[1:3], w.shape[:2], strides, dilations)
  return _with_bias(node, _correlate(x, w, strides, dilations, pads, node), pos)


def _depthwise(node, data):
  x, pos, w, strides, dilations = _layer(node, data)
  pads = _padding(node, x.shape[1:3], w.shape[:2], strides, dilations)
  _fits_float(_max_abs(x) * int(np.abs(w).sum(axis=(0, 1)).max(initial=0)), node)
  patches = _windows(x, w.shape[:2], strides, dilations, pads)
  acc = sum(patches[..., i, j, None] * w[i, j] for i in range(w.shape[0])
            for j in range(w.shape[1]))  # one vectorized product per kernel tap, in int64
  return _with_bias(node, acc.reshape(acc.shape[:3] + (-1,)), pos)


def _conv_transpose(node, data):
  """conv2d_transpose as a stride-1 convolution of the stride-dilated input with the
  flipped kernel; the padding mirrors the forward convolution's."""
  y, pos, w, strides, dilations = _layer(node, data)
  shape = _ints(node, "output_shape")
  if not shape or len(shape) != 4:
    raise ValueError("reference runner: %s needs output_shape (NHWC)" % node.name)
  shape[0] = y.shape[0] if shape[0] == -1 else shape[0]
  forward = _padding(node, shape[1:3], w.shape[:2], strides, dilations)
  sizes = [(o + a + b - (k - 1) * d - 1) // s + 1 for o, (a, b), k, d, s
           in zip(shape[1:3], forward, w.shape[:2], dilations, strides)]  # the forward conv's
  if [y.shape[0]] + sizes + [w.shape[2]] != [shape[0]] + list(y.shape[1:3]) + [shape[3]]:
    raise ValueError("reference runner: %s has output_shape %s, which does not fit its input "
                     "%s and weights %s" % (node.name, shape, list(y.shape), list(w.shape)))
  n, h, wd, c = y.shape
  z = np.zeros((n, (h - 1) * strides[0] + 1, (wd - 1) * strides[1] + 1, c), np.int64)
  z[:, ::strides[0], ::strides[1]] = y
  pads = [((k - 1) * d - a, size + a - (i - 1) * s - 1) for k, d, (a, _), size, i, s
          in zip(w.shape[:2], dilations, forward, shape[1:3], (h, wd), strides)]
  acc = _correlate(z, w[::-1, ::-1].transpose(0, 1, 3, 2), (1, 1), dilations, pads, node)
  return _with_bias(node, acc, pos)


def _matmul(node, data):
  (x, pos), (w, wpos) = data, _tensor(node, "weights", "wpos")
  if any(node.attr[key].b for key in ("transpose_a", "transpose_b") if key in node.attr):
    raise ValueError("reference runner: %s transposes an operand; the format has none" % node.name)
  return _with_bias(node, _dot(x, w, node), pos + wpos)


def _relu6(node, x):
  """Clamps at 6 exactly: a position below -1 is refined to -1, where 6 is 3."""
  ints, pos = x
  if pos < -1:
    ints, pos = _shl(ints, -1 - pos, node), -1
  return np.clip(ints, 0, min(3 << (pos + 1), _INT64_SAFE)), pos


def _leaky_relu(node, x):
  alpha = node.attr["alpha"].f if "alpha" in node.attr else 0.2  # TF's default
  for m in range(17):
    k = round(alpha * 2 ** m)
    if abs(alpha - k / 2 ** m) < 1e-9:
      ints = _shl(x[0], m, node)
      return np.where(ints < 0, x[0] * k, ints), x[1] + m
  raise ValueError("reference runner: LeakyRelu %s has alpha %r, not k/2^m with m <= 16; enable "
                   "simulate_dpu so that the graph uses the DPU's 26/256" % (node.name, alpha))


def _add(node, a, b):
  (a, b), pos = _align([a, b], node)
  return a + b, pos


def _concat(node, *values):
  ints, pos = _align(values, node)
  return np.concatenate(ints, axis=node.attr["axis"].i), pos


def _pool_windows(node, ints, fill=0):
  kernel, strides = _hw(node, "ksize"), _hw(node, "strides")
  pads = _padding(node, ints.shape[1:3], kernel, strides, (1, 1))
  return _windows(ints, kernel, strides, (1, 1), pads, fill)


def _max_pool(node, x):  # SAME padding is the lowest int64, which never wins
  return _pool_windows(node, x[0], np.iinfo(np.int64).min).max(axis=(-2, -1)), x[1]


def _avg_pool(node, x):
  ints, pos = x
  sums = _pool_windows(node, ints).sum(axis=(-2, -1))
  counts = _pool_windows(node, np.ones((1,) + ints.shape[1:3] + (1,), np.int64)).sum(axis=(-2, -1))
  kh, kw = _hw(node, "ksize")
  return _average(node, sums, counts, pos, kh * kw)


def _mean(node, x):
  ints, pos = x
  if sorted(_ints(node, "reduction_indices", [])) != [1, 2]:
    raise ValueError("reference runner: Mean %s must reduce axes [1, 2] (a global average pool)"
                     % node.name)
  keep = node.attr["keep_dims"].b if "keep_dims" in node.attr else False
  size = ints.shape[1] * ints.shape[2]
  return _average(node, ints.sum(axis=(1, 2), keepdims=keep), size, pos, size)


def _average(node, sums, counts, pos, size):
  """sums/counts (times size·k/2^n with a dpu_multiplier) on the opos grid, rounded half up
  exactly: value·2^opos = N/D gives floor((2N + D) / 2D)."""
  bits, opos = _grid(node, "opos", required=True)
  multiplier = _ints(node, "dpu_multiplier")
  (scale, n) = (size * multiplier[0], multiplier[1]) if multiplier else (1, 0)
  exponent = opos - pos - n
  num_factor, den_factor = scale << max(exponent, 0), 1 << max(-exponent, 0)
  counts = np.asarray(counts, np.int64)
  bound = 2 * _max_abs(sums) * num_factor + 2 * int(counts.max()) * den_factor
  dtype = np.int64 if bound < _INT64_SAFE else object  # Python integers when int64 is too small
  num = sums.astype(dtype) * num_factor
  den = counts.astype(dtype) * den_factor
  q = (2 * num + den) // (2 * den)
  lo, hi = -2 ** (bits - 1), 2 ** (bits - 1) - 1
  return np.clip(q, lo, hi).astype(np.int64), opos


def _squeeze(node, x):  # no squeeze_dims: every size-1 dimension, as in TF
  return np.squeeze(x[0], tuple(_ints(node, "squeeze_dims", [])) or None), x[1]


def _pad(node, x):
  paddings = _ints(node, "paddings", [])
  if len(paddings) != 2 * x[0].ndim:
    raise ValueError("reference runner: %s.paddings needs 2 entries per dimension" % node.name)
  return np.pad(x[0], np.reshape(paddings, (-1, 2))), x[1]


_OPS = {  # op type -> (function, number of data inputs or None for any)
    "Conv2D": (_conv2d, 1), "DepthwiseConv2dNative": (_depthwise, 1),
    "Conv2DBackpropInput": (_conv_transpose, 1), "MatMul": (_matmul, 1),
    "Relu": (lambda node, x: (np.maximum(x[0], 0), x[1]), 1), "Relu6": (_relu6, 1),
    "LeakyRelu": (_leaky_relu, 1), "Add": (_add, 2), "AddV2": (_add, 2),
    "ConcatV2": (_concat, None), "MaxPool": (_max_pool, 1), "AvgPool": (_avg_pool, 1),
    "Mean": (_mean, 1), "Pad": (_pad, 1), "Squeeze": (_squeeze, 1),
    "Reshape": (lambda node, x: (x[0].reshape(_ints(node, "shape")), x[1]), 1),
    "Identity": (lambda node, x: x, 1),
}
