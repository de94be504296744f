"""The labels folder, with one owner: every reader and writer of a labeling output goes through
`LabelStore` (`labels`), whose surface is *hold* (one run at a time: `lease`), *plan* (what is
left to label: `plan`, over the row keys `scan` gathers from the row indexes `row_index` keeps,
joined by DuckDB in `join`), *commit* (result files, supersede, index, previews, manifest) and
*read* (rows, chosen columns, label maps, provenance, a Ray dataset). `layout` names what the
folder holds."""

from .labels import Committed, LabelStore
from .lease import Lease, LeaseLost, OutputBusy
from .plan import ProvenanceError, StorePlan

__all__ = ["Committed", "LabelStore", "Lease", "LeaseLost", "OutputBusy", "ProvenanceError", "StorePlan"]
