"""Tucker-2 decomposition of a conv kernel and the per-layer rank rule (numpy only).

A kxk kernel W (HWIO) is written as W ~= core x_in U x_out V, with U (C_in x R_in) and V
(C_out x R_out) orthonormal: the conv becomes 1x1 (C_in -> R_in), kxk core (R_in -> R_out,
the original stride and padding), 1x1 (R_out -> C_out). The conv is linear, so the chain computes
exactly conv(x, W_approx); zero padding commutes with a 1x1 conv, so borders are exact too.

U and V come from a truncated HOSVD: the leading eigenvectors of the small Gram matrices of
the mode-in and mode-out unfoldings (C_in x C_in and C_out x C_out: 2048 x 2048 for the largest
kernels AMCT quotes), never an SVD of the large unfoldings themselves. For a (2048, 2048, 5, 5)
kernel the work is two large matrix products for the Grams, two 2048 eigendecompositions and
two products for the core; the extra memory is one copy of the kernel and a few Grams.
The kernel error is known exactly: ||W - W_approx||^2 = ||W||^2 - ||core||^2.
"""

import dataclasses

import numpy as np

# Ranks are multiples of this (or the full channel count): vector lanes like round channel
# counts, and it keeps the rank search small.
RANK_MULTIPLE = 8


@dataclasses.dataclass
class Tucker2:
  """The three kernels of the decomposed conv (HWIO), and what the rank rule saw."""
  first: np.ndarray   # (1, 1, C_in, R_in)
  core: np.ndarray    # (kh, kw, R_in, R_out)
  last: np.ndarray    # (1, 1, R_out, C_out)
  kernel_error: float  # ||W - W_approx|| / ||W||, exact
  energy_in: np.ndarray  # eigenvalues of the mode-in Gram, descending (for the report)
  energy_out: np.ndarray


def gram_matrices(kernel):
  """(G_in, G_out): the Grams of the mode-in and mode-out unfoldings, in float64.

  G_out is M^T M for M = the kernel seen as (kh*kw*C_in, C_out), a view; numpy runs `M.T @ M`
  as one symmetric rank-k update. G_in needs C_in as rows: the (kh*kw) slices are copied side by
  side into one (C_in, kh*kw*C_out) array (contiguous row blocks, far faster than a 4-D
  transpose), and the same product is taken on it. One large product is several times faster
  than kh*kw small ones on OpenBLAS.
  """
  kh, kw, c_in, c_out = kernel.shape
  rows = kernel.reshape(kh * kw * c_in, c_out)
  g_out = rows.T @ rows
  side_by_side = np.empty((c_in, kh * kw * c_out), kernel.dtype)
  for s, block in enumerate(kernel.reshape(kh * kw, c_in, c_out)):
    side_by_side[:, s * c_out:(s + 1) * c_out] = block
  g_in = side_by_side @ side_by_side.T
  del side_by_side
  return g_in.astype(np.float64), g_out.astype(np.float64)


def eigen(gram):
  """Eigenvalues (descending, clipped at 0) and eigenvectors of a symmetric Gram.

  numpy's eigh is LAPACK's divide and conquer (syevd), the fastest full solver here; float64
  keeps the eigenvectors orthonormal to float32 precision, so full rank reproduces the kernel."""
  values, vectors = np.linalg.eigh(gram)
  return np.maximum(values[::-1], 0.0), vectors[:, ::-1]


def discarded(values):
  """discarded[r]: the share of the energy dropped when keeping the first r eigenvalues."""
  total = float(values.sum())
  kept = np.concatenate([[0.0], np.cumsum(values)]) / (total if total > 0 else 1.0)
  return np.maximum(1.0 - kept, 0.0)


def choose_ranks(energy_in, energy_out, max_error, cost):
  """The rank rule: the cheapest (R_in, R_out), by `cost(r_in, r_out)`, whose HOSVD bound on
  the relative kernel error, sqrt(dropped_in + dropped_out), is at most `max_error`.

  On white input the expected relative output error equals the kernel error, so the bound
  is also the output error the rank predicts. Ranks are multiples of RANK_MULTIPLE (or the
  channel count), which keeps the search small: at most 256 x 256 pairs for 2048 channels.
  """
  drop_in, drop_out = discarded(energy_in), discarded(energy_out)
  budget = max_error ** 2 + 1e-12
  best = (len(energy_in), len(energy_out))
  best_cost = cost(*best)
  for r_in in _grid(len(energy_in)):
    left = budget - drop_in[r_in]
    if left < 0:
      continue
    fits = [r for r in _grid(len(energy_out)) if drop_out[r] <= left]
    r_out = fits[0]
    if cost(r_in, r_out) < best_cost:
      best, best_cost = (r_in, r_out), cost(r_in, r_out)
  return best


def _grid(channels):
  return sorted(set(list(range(RANK_MULTIPLE, channels, RANK_MULTIPLE)) + [channels]))


def decompose(kernel, max_error=None, ranks=None, cost=None):
  """Tucker-2 of an HWIO `kernel` at `ranks`=(R_in, R_out), or at the ranks the rule picks for
  `max_error` (cheapest by `cost(r_in, r_out)`, by default the chain's weight count)."""
  kernel = np.ascontiguousarray(kernel, dtype=np.float32)
  g_in, g_out = gram_matrices(kernel)
  energy_in, u = eigen(g_in)
  energy_out, v = eigen(g_out)
  if ranks is None:
    kh, kw, c_in, c_out = kernel.shape
    cost = cost or (lambda r_in, r_out: c_in * r_in + kh * kw * r_in * r_out + r_out * c_out)
    ranks = choose_ranks(energy_in, energy_out, max_error, cost)
  r_in, r_out = ranks
  u = np.ascontiguousarray(u[:, :r_in], np.float32)
  v = np.ascontiguousarray(v[:, :r_out], np.float32)
  kh, kw, c_in, c_out = kernel.shape
  projected = (kernel.reshape(kh * kw * c_in, c_out) @ v).reshape(kh * kw, c_in, r_out)
  core = np.empty((kh * kw, r_in, r_out), np.float32)
  u_t = np.ascontiguousarray(u.T)
  for s in range(kh * kw):
    np.matmul(u_t, projected[s], out=core[s])
  del projected
  core = core.reshape(kh, kw, r_in, r_out)
  error = _relative_error(kernel, u, core, v)
  return Tucker2(first=u.reshape(1, 1, *u.shape), core=core,
                 last=np.ascontiguousarray(v.T).reshape(1, 1, r_out, -1),
                 kernel_error=error, energy_in=energy_in, energy_out=energy_out)


def _relative_error(kernel, u, core, v):
  """||W - W_approx|| / ||W||: from ||W||^2 - ||core||^2 (the projections are orthogonal),
  or, below 5 %, where that difference cancels in float32, from the reconstruction."""
  total = _energy(kernel)
  if total <= 0.0:
    return 0.0
  error = np.sqrt(max(total - _energy(core), 0.0) / total)
  if error < 0.05:
    kh, kw, r_in, r_out = core.shape
    approx = (u @ core.reshape(kh * kw, r_in, r_out)) @ v.T
    error = np.sqrt(_energy(kernel.reshape(kh * kw, *kernel.shape[2:]) - approx) / total)
  return float(error)


def _energy(array):
  """Sum of squares in float64, a slice at a time (no float64 copy of a large kernel)."""
  rows = array.reshape(-1, array.shape[-1])
  step = max(1, (1 << 22) // rows.shape[1])
  total = 0.0
  for start in range(0, rows.shape[0], step):
    block = rows[start:start + step].astype(np.float64)
    total += float(np.einsum("ij,ij->", block, block))
  return total
