"""The report as markdown, CSV and a PNG bar chart, and as the files the command line writes."""

import csv
import io
import math

from absl import logging

REPORT = "quantize_report"
_HEADER = ["quantized tensor", "grid", "min", "max", "local SQNR (dB)", "SQNR vs float (dB)",
           "float tensor", "note"]


def markdown(rows):
  lines = ["| %s |" % " | ".join(_HEADER), "|" + "---|" * len(_HEADER)]
  lines += ["| %s | %s | %.6g | %.6g | %s | %s | %s | %s |"
            % (r.name, r.grid, r.minimum, r.maximum, _db(r.sqnr_db), _db(r.float_sqnr_db),
               r.float_tensor, r.note) for r in rows]
  return "\n".join(lines) + "\n"


def _db(value):
  return "n/a" if math.isnan(value) else "%.2f" % value


def csv_text(rows):
  out = io.StringIO()
  writer = csv.writer(out)
  writer.writerow(["quantized_tensor", "grid", "min", "max", "sqnr_db", "float_sqnr_db",
                   "float_tensor", "note"])
  for r in rows:
    writer.writerow([r.name, r.grid, repr(r.minimum), repr(r.maximum), repr(r.sqnr_db),
                     repr(r.float_sqnr_db), r.float_tensor, r.note])
  return out.getvalue()


def bar_chart_png(rows, title="SQNR per quantized tensor"):
  """The PNG bytes of a horizontal bar chart: per measured tensor, its SQNR vs the float graph
  (blue) and its local SQNR (grey; red for the weakest tenth: the grids that add the most noise);
  needs matplotlib (`pip install qat_rewrite[report]`)."""
  try:
    import matplotlib  # pylint: disable=import-outside-toplevel
    matplotlib.use("Agg")
    from matplotlib import pyplot  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise ImportError("the SQNR chart needs matplotlib: pip install 'qat_rewrite[report]'") from e
  rows = [r for r in rows if not (math.isnan(r.sqnr_db) and math.isnan(r.float_sqnr_db))]
  finite = [v for r in rows for v in (r.sqnr_db, r.float_sqnr_db) if math.isfinite(v)]
  cap = min(max(finite, default=0.0), 70.0) + 10.0

  def bar(v):
    return 0.0 if math.isnan(v) else min(max(v, 0.0), cap)

  accumulated = [bar(r.float_sqnr_db) for r in rows]
  local = [bar(r.sqnr_db) for r in rows]
  measured = sorted(bar(r.sqnr_db) for r in rows if not math.isnan(r.sqnr_db))
  weakest = measured[max(1, len(measured) // 10) - 1] if measured else -1.0
  figure, axes = pyplot.subplots(figsize=(8, 0.3 * len(rows) + 1.5))
  positions = list(range(len(rows)))
  axes.barh([p - 0.2 for p in positions], accumulated, height=0.4, color="tab:blue",
            label="vs float graph (accumulated)")
  axes.barh([p + 0.2 for p in positions], local, height=0.4,
            color=["tab:red" if not math.isnan(r.sqnr_db) and v <= weakest else "darkgray"
                   for r, v in zip(rows, local)],
            label="local (this quantizer; weakest tenth red)")
  axes.set_yticks(positions)
  axes.set_yticklabels([r.name for r in rows], fontsize=7)
  axes.invert_yaxis()
  axes.set_xlabel("SQNR (dB), cut at %.0f (exact: inf); tensors without a float twin are in "
                  "the table only" % cap)
  axes.set_title(title, pad=22)
  axes.legend(fontsize=7, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=2, frameon=False)
  figure.tight_layout()
  out = io.BytesIO()
  figure.savefig(out, format="png", dpi=100)
  pyplot.close(figure)
  return out.getvalue()


def report_files(rows, prefix=REPORT):
  """{file name: bytes}: `<prefix>.md`, `.csv` and, with matplotlib, `.png`."""
  contents = {prefix + ".md": markdown(rows).encode(), prefix + ".csv": csv_text(rows).encode()}
  try:
    contents[prefix + ".png"] = bar_chart_png(rows)
  except ImportError as e:
    logging.warning("%s; the report has no chart", e)
  return contents
