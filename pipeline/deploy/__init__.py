"""Deploy: whole models (preprocessing + base + head) as .keras files, their exports for other
runtimes (TFLite, ONNX), and predict."""

from pipeline.deploy._exports import FORMATS, export, export_formats
from pipeline.deploy._models import META_NAME, export_head_run, load_model, save_model
from pipeline.deploy._predict import predict

__all__ = ["META_NAME", "export_head_run", "load_model", "save_model", "FORMATS", "export", "export_formats", "predict"]
