"""Deploy: whole models (preprocessing + base + head) as .keras files, their exports for other
runtimes (TFLite, ONNX), and predict."""

from pipeline.deploy._exports import FORMATS, export, export_formats
from pipeline.deploy._models import META_NAME, classifier_from_head_run, export_head_run, load_model, model_info, save_model
from pipeline.deploy._predict import format_rows, predict, write_csv

__all__ = ["META_NAME", "classifier_from_head_run", "export_head_run", "load_model", "model_info", "save_model", "FORMATS",
           "export", "export_formats", "format_rows", "predict", "write_csv"]
