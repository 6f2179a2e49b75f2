"""A small pattern language for tf.compat.v1 graphs.

Patterns describe a subgraph upward from its root op towards its inputs. They are
plain data: matching lives in `matcher.py`. A role name captures the op (and the
tensor through which it was reached); a role used twice in one pattern must bind
the same op both times, which lets a tree describe small DAGs such as
`x * inv + (beta - mean * inv)`.
"""

import dataclasses
from typing import Callable, Optional as Opt, Sequence, Tuple, Union


@dataclasses.dataclass(frozen=True)
class Op:
  """An op whose type is one of `types`, with inputs matching `inputs`.

  `inputs=None` accepts any inputs. `ordered=False` lets the inputs match in any
  order (Add, Mul). `where(op)` is an extra predicate on the op. `output` requires
  the op to be reached through that output (FusedBatchNorm's y, not its mean).
  """
  types: Tuple[str, ...]
  inputs: Opt[Sequence["Pattern"]] = None
  role: Opt[str] = None
  ordered: bool = True
  where: Opt[Callable] = None
  output: Opt[int] = None

  def __init__(self, types, inputs=None, role=None, ordered=True, where=None, output=None):
    object.__setattr__(self, "types", (types,) if isinstance(types, str) else tuple(types))
    object.__setattr__(self, "inputs", None if inputs is None else tuple(inputs))
    object.__setattr__(self, "role", role)
    object.__setattr__(self, "ordered", ordered)
    object.__setattr__(self, "where", where)
    object.__setattr__(self, "output", output)


@dataclasses.dataclass(frozen=True)
class Any:
  """Any tensor; `where(tensor)` optionally restricts it."""
  role: Opt[str] = None
  where: Opt[Callable] = None


@dataclasses.dataclass(frozen=True)
class Optional:
  """`inner` here, or `skip` in its place (by default, what `inner` consumes). Both are tried:
  a pattern yields a match with the optional op and one without, and `find_matches` keeps the
  largest."""
  inner: "Pattern"
  skip: "Pattern" = None

  def __init__(self, inner, skip=None):
    object.__setattr__(self, "inner", inner)
    object.__setattr__(self, "skip", skip if skip is not None else inner.inputs[0])


@dataclasses.dataclass(frozen=True)
class OneOf:
  """Any of `alternatives`. Each that matches yields a match; `find_matches` keeps the largest
  (among equal sizes, the earlier alternative)."""
  alternatives: Tuple["Pattern", ...]

  def __init__(self, *alternatives):
    object.__setattr__(self, "alternatives", tuple(alternatives))


Pattern = Union[Op, Any, Optional, OneOf]
