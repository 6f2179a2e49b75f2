"""The Xilinx DPU's fixed-point arithmetic, as decent_q models it (research decent_q.md §2.6-2.7).

Positions are power-of-two exponents: a tensor at position p holds q·2^-p. In a layer
with input, weight, bias and output positions pi, pw, pb, po the DPU shifts the
accumulator right by shift_cut = pw + pi - po and the bias left by
shift_bias = pw + pi - pb; both shifts have hardware limits, so positions are moved
to fit (the weight position for shift_cut, the bias position for shift_bias).
"""

import math

MAX_SHIFT = 16
LEAKY_RELU_ALPHA = 26.0 / 256.0  # the DPU's 0.1
HARD_SIGMOID_FACTOR = 6.0 * 2731.0 / 16384.0  # relu6(x+3)/6 times this is the DPU's relu6(x+3)·2731/2^14
# AvgPool kernels the DPU divides by shift-and-multiply: kernel -> (k, n), mean = sum·k/2^n.
_AVGPOOL_MULTIPLIERS = {(3, 3): (7, 6), (5, 5): (10, 8), (6, 6): (7, 8), (7, 7): (21, 10),
                        (14, 14): (21, 12)}


def shift_cut_bounds(pi, po):
  """The weight positions that keep shift_cut = pw + pi - po within [0, 16].

  Plain arithmetic, so it serves ints and graph tensors alike.
  """
  return po - pi, MAX_SHIFT + po - pi


def adjust_shift_cut(pi, pw, po):
  """The weight position, moved so that shift_cut = pw + pi - po lies in [0, 16]."""
  low, high = shift_cut_bounds(pi, po)
  return min(max(pw, low), high)


def shift_bias_min(shift_cut, mode=1, kernel_elements=None, minimum=min):
  """The lowest shift_bias the DPU accepts: static (mode 1) or from the kernel size (mode 2)."""
  if mode == 1:
    return minimum(0, -(24 - (8 + shift_cut)))
  if mode == 2:
    if not kernel_elements or kernel_elements < 1:
      raise ValueError("adjust_shift_bias=2 needs the kernel's h·w·c_in, got %r" % kernel_elements)
    return min(0, -(24 - (8 + math.ceil(math.log2(kernel_elements)))))
  raise ValueError("adjust_shift_bias mode must be 1 or 2, got %r" % (mode,))


def shift_bias_bounds(pi, pw, po, mode=1, kernel_elements=None, minimum=min):
  """The bias positions that keep shift_bias = pw + pi - pb within [shift_bias_min, 16]."""
  lowest = shift_bias_min(pw + pi - po, mode, kernel_elements, minimum)
  return pw + pi - MAX_SHIFT, pw + pi - lowest


def adjust_shift_bias(pi, pw, pb, po, mode=1, kernel_elements=None):
  """The bias position, moved so that shift_bias = pw + pi - pb lies in [min, 16]."""
  low, high = shift_bias_bounds(pi, pw, po, mode, kernel_elements)
  return min(max(pb, low), high)


def avgpool_multiplier(kh, kw, scale_all=True):
  """(k, n): the DPU computes an average as sum·k/2^n; None if it divides exactly (k/2^n unused).

  Built-in kernels use decent_q's table; others up to 256 elements (with `scale_all`) use
  the k/2^n closest to 1/(kh·kw) over n < ceil(log2(128·kh·kw)).
  """
  if (kh, kw) in _AVGPOOL_MULTIPLIERS:
    return _AVGPOOL_MULTIPLIERS[(kh, kw)]
  size = kh * kw
  if not scale_all or size > 256 or size & (size - 1) == 0:  # powers of two divide exactly
    return None
  best = None
  for n in range(math.ceil(math.log2(128 * size))):
    k = round(2 ** n / size)
    error = abs(k / 2 ** n - 1.0 / size)
    if best is None or error < best[0]:
      best = (error, k, n)
  return best[1], best[2]


def avgpool_scale(kh, kw, scale_all=True):
  """The factor decent_q multiplies an AvgPool output by, so float matches the DPU: kh·kw·k/2^n."""
  multiplier = avgpool_multiplier(kh, kw, scale_all)
  return 1.0 if multiplier is None else kh * kw * multiplier[0] / 2.0 ** multiplier[1]


def leaky_relu_alpha(alpha):
  """The DPU supports only alpha 0.1, which it computes as 26/256; other alphas stay as they are."""
  return LEAKY_RELU_ALPHA if abs(alpha - 0.1) < 1e-5 else alpha
