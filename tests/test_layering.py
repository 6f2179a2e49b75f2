"""Imports point down (shared/DESIGN.md): graph internals at the bottom, the facades users call
at the top. A module may import its own package and any package on a lower level."""

import ast
import pathlib

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "qat_rewrite"

LEVELS = {
    # helpers that import nothing of the package
    "files": 0, "report": 0, "native_output": 0, "calibration_data": 0, "distribute": 0,
    "compat": 0, "datasets": 0,
    "graph": 1,
    "layers": 2, "quant": 2,
    "passes": 3, "range_summaries": 3,
    "export": 4, "error_report": 4, "decompose": 4,
    "targets": 5,
    "quantize": 6, "decent_q": 6, "amct": 6,
    "cli": 7,  # the command line is built on the decent_q API
    "__main__": 8, "__init__": 8,
}


def _imports(path):
  """The qat_rewrite top-level names that module `path` imports."""
  found = set()
  for node in ast.walk(ast.parse(path.read_text())):
    names = []
    if isinstance(node, ast.ImportFrom) and node.module:
      names = [node.module + "." + a.name for a in node.names]
    elif isinstance(node, ast.Import):
      names = [a.name for a in node.names]
    for name in names:
      parts = name.split(".")
      if parts[0] == "qat_rewrite" and len(parts) > 1 and parts[1] in LEVELS:
        found.add(parts[1])
  return found


def test_every_module_is_on_a_level():
  tops = {p.stem if p.is_file() else p.name for p in PACKAGE.iterdir()
          if p.suffix == ".py" or (p.is_dir() and (p / "__init__.py").exists())}
  assert sorted(tops - set(LEVELS)) == []


def test_no_module_imports_a_package_above_its_own():
  upward = []
  for path in sorted(PACKAGE.rglob("*.py")):
    own = path.relative_to(PACKAGE).parts[0].removesuffix(".py")
    for imported in _imports(path):
      if imported != own and LEVELS[imported] >= LEVELS[own]:
        upward.append("%s imports %s" % (path.relative_to(PACKAGE.parent), imported))
  assert upward == []
