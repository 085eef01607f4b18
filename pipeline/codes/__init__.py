"""Stage 1: cached CNN codes. ``generate_codes`` plans, computes (locally or on Ray, on TensorFlow or
OpenVINO) and commits code sets; ``CodeSet`` reads one. The reader (``read_batches``) and mapper
(``make_mapper``) are the ones predict and export use too."""

from pipeline._faults import POINTS
from pipeline.codes._codeset import CodeSet, CodeStream, CodeView, JoinedCodeSet, data_root_of, load_codes, open_code_sets
from pipeline.codes._format import parts_dir
from pipeline.codes._generate import generate_codes
from pipeline.codes._locks import writer_lock
from pipeline.codes._reader import Batch, batches_of, read_batches
from pipeline.codes._runtimes import PRECISIONS, RUNTIMES, choose_runtime, make_mapper
from pipeline.codes._settings import MAX_PARTS, DTYPES, ENGINES, TTAS, CodeIdentity, ComputeOptions, setting, stated_making

__all__ = [
    "Batch",
    "CodeStream",
    "batches_of",
    "data_root_of",
    "make_mapper",
    "read_batches",
    "MAX_PARTS",
    "CodeSet",
    "CodeView",
    "JoinedCodeSet",
    "load_codes",
    "open_code_sets",
    "parts_dir",
    "CodeIdentity",
    "ComputeOptions",
    "DTYPES",
    "ENGINES",
    "setting",
    "generate_codes",
    "POINTS",
    "writer_lock",
    "PRECISIONS",
    "RUNTIMES",
    "choose_runtime",
    "TTAS",
    "stated_making",
]
