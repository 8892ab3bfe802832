"""SVP's selection engine: images as tensors, a model zoo, frozen backbones and their embedding
cache, a trainer, strategies and metrics.

Pure Python and torch: no web framework, no database, no task queue.
"""

# Imported for its effect: it lets load_embedder run image backbones through ONNX Runtime.
import svp.onnx_runtime

# Imported for its effect: it lets load_embedder load the int8 backbones.
import svp.quantized  # noqa: F401
from svp.backbones import (
    Backbone,
    BackboneSpec,
    Embedder,
    backbone_names,
    get_spec,
    load_backbone,
    load_embedder,
    register_backbone,
    register_embedder,
    register_torchvision_backbone,
)
from svp.clustering import cluster_margin, typicality, typiclust
from svp.config import PAPER_SCHEDULE, TrainConfig, scaled_schedule
from svp.data import (
    ImageStore,
    LabeledImages,
    augment,
    channel_stats,
    content_key,
    decode_image,
    load_cifar10,
    read_image_folder_zip,
)
from svp.embeddings import EmbeddingStore
from svp.heads import (
    Calibration,
    LinearHead,
    LinearProxy,
    expected_calibration_error,
    fit_linear_head,
    fit_temperature,
)
from svp.metrics import accuracy, overlap, rankdata, spearman
from svp.models import MODELS, Classifier, create_model, model_names
from svp.strategies import (
    AUTO_SWITCH_PER_CLASS,
    SelectionResult,
    Strategy,
    auto_choice,
    cold_start,
    coreset,
    entropy,
    kcenter_greedy,
    least_confidence,
    margin,
    select,
)
from svp.text_encoders import DEFAULT_TEXT_BACKBONE, GloveMean, MiniLM
from svp.train import (
    ForgettingTracker,
    Predictions,
    TrainingCancelled,
    TrainResult,
    TrainStats,
    evaluate,
    forgetting_events,
    predict,
    seed_everything,
    train,
)

__all__ = [
    "AUTO_SWITCH_PER_CLASS",
    "DEFAULT_TEXT_BACKBONE",
    "MODELS",
    "PAPER_SCHEDULE",
    "Backbone",
    "BackboneSpec",
    "Calibration",
    "Classifier",
    "Embedder",
    "EmbeddingStore",
    "ForgettingTracker",
    "GloveMean",
    "ImageStore",
    "LabeledImages",
    "LinearHead",
    "LinearProxy",
    "MiniLM",
    "Predictions",
    "SelectionResult",
    "Strategy",
    "TrainConfig",
    "TrainResult",
    "TrainStats",
    "TrainingCancelled",
    "accuracy",
    "augment",
    "auto_choice",
    "backbone_names",
    "channel_stats",
    "cluster_margin",
    "cold_start",
    "content_key",
    "coreset",
    "create_model",
    "decode_image",
    "entropy",
    "evaluate",
    "expected_calibration_error",
    "fit_linear_head",
    "fit_temperature",
    "forgetting_events",
    "get_spec",
    "kcenter_greedy",
    "least_confidence",
    "load_backbone",
    "load_cifar10",
    "load_embedder",
    "margin",
    "model_names",
    "overlap",
    "predict",
    "rankdata",
    "read_image_folder_zip",
    "register_backbone",
    "register_embedder",
    "register_torchvision_backbone",
    "scaled_schedule",
    "seed_everything",
    "select",
    "spearman",
    "train",
    "typicality",
    "typiclust",
]
