"""The editing engine: models, the LazyEdit pipeline, loading and benchmarks."""

from .configs import CONFIGS, ModelConfig, get_config
from .loading import build_pipeline, load_pipeline
from .pipeline import (EditCancelled, EditInputError, EditRequest, EditResult, LazyEditPipeline, StepPreview,
                       flow_scheduler)

__all__ = [
    "CONFIGS",
    "EditCancelled",
    "EditInputError",
    "EditRequest",
    "EditResult",
    "LazyEditPipeline",
    "ModelConfig",
    "StepPreview",
    "build_pipeline",
    "flow_scheduler",
    "get_config",
    "load_pipeline",
]
