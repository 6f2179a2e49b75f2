"""Writes the decomposed model (checkpoint, .meta, record, `checkpoint` state) all or nothing.

tf.train.Saver writes several files; they go to a hidden temporary folder beside `save_path`
and are renamed into place only when every one of them is written, so a failure leaves what was
there before.
"""

import os
import shutil
import tempfile

import tensorflow as tf

from qat_rewrite.files import check_output_dir


def save_model(sess, saver, save_path, extra):
  """Saves `sess` through `saver` under the prefix `save_path`, plus {file suffix: bytes}
  `extra` next to it; returns the written paths."""
  folder = os.path.dirname(os.path.abspath(save_path))
  check_output_dir(folder)
  os.makedirs(folder, exist_ok=True)
  base = os.path.basename(save_path)
  temp = tempfile.mkdtemp(dir=folder, prefix=".%s." % base)
  try:
    saver.save(sess, os.path.join(temp, base), write_meta_graph=True, write_state=False)
    for suffix, data in extra.items():
      with open(os.path.join(temp, base + suffix), "wb") as f:
        f.write(data)
    with open(os.path.join(temp, "checkpoint"), "w", encoding="utf-8") as f:
      f.write('model_checkpoint_path: "%s"\nall_model_checkpoint_paths: "%s"\n' % (base, base))
    written = []
    for name in sorted(os.listdir(temp), key=lambda n: n == "checkpoint"):
      os.replace(os.path.join(temp, name), os.path.join(folder, name))
      written.append(os.path.join(folder, name))
    return written
  except (OSError, tf.errors.OpError) as e:
    raise OSError("could not write the decomposed model %r: %s; nothing was written"
                  % (save_path, getattr(e, "strerror", None) or e)) from e
  finally:
    shutil.rmtree(temp, ignore_errors=True)
