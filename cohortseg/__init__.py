"""cohortseg: from a PACS DICOM cohort to a trained segmentation ensemble, predictions and metrics."""

__version__ = "0.1.0"
