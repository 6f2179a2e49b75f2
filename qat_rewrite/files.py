"""Writes a set of output files all or nothing: no partial file is ever left behind."""

import os
import tempfile


def check_output_dir(path):
  """Raises OSError naming `path` if it cannot hold output files (before any work is done)."""
  if os.path.exists(path) and not os.path.isdir(path):
    raise OSError("output_dir %r exists and is not a directory" % path)
  parent = path if os.path.isdir(path) else _existing_parent(path)
  if not os.access(parent, os.W_OK | os.X_OK):
    raise OSError("output_dir %r is not writable (no write permission on %r)" % (path, parent))


def write_all(directory, contents):
  """Writes {file name: bytes} into `directory` (created if missing); returns {name: path}.

  A name may hold subdirectories ("dump_results_0/x.bin"). Each file is first written to a
  hidden temporary file beside its target and renamed only once every file is written, so on
  any failure the directory holds what it held before.
  """
  check_output_dir(directory)
  created, temporary = [], {}
  try:
    for name, data in contents.items():
      folder = os.path.abspath(os.path.join(directory, os.path.dirname(name)))
      _make_dirs(folder, created)
      fd, temp = tempfile.mkstemp(dir=folder, prefix=".%s." % os.path.basename(name),
                                  suffix=".tmp")
      temporary[name] = temp
      with os.fdopen(fd, "wb") as f:
        f.write(data)
  except OSError as e:
    for temp in temporary.values():
      _remove(temp)
    for folder in reversed(created):
      _remove_dir(folder)
    raise OSError("could not write %r in output_dir %r: %s; nothing was written"
                  % (name, directory, e.strerror or e)) from e
  paths = {}
  for name, temp in temporary.items():
    paths[name] = os.path.join(directory, name)
    os.replace(temp, paths[name])
  return paths


def _make_dirs(folder, created):
  """Creates `folder` and any missing parents, noting each created one in `created`."""
  missing = []
  while not os.path.isdir(folder):
    missing.append(folder)
    folder = os.path.dirname(folder)
  for path in reversed(missing):
    os.mkdir(path)
    created.append(path)


def _existing_parent(path):
  path = os.path.abspath(path)
  while not os.path.isdir(path):
    path = os.path.dirname(path)
  return path


def _remove(path):
  try:
    os.remove(path)
  except OSError:
    pass


def _remove_dir(path):
  try:
    os.rmdir(path)
  except OSError:
    pass
