"""SVP's selection engine: images as tensors, a model zoo, frozen backbones and their embedding
cache, a trainer, strategies and metrics.

Pure Python and torch: no web framework, no database, no task queue.
"""

from svp.backbones import (
    Backbone,
    BackboneSpec,
    backbone_names,
    get_spec,
    load_backbone,
    register_backbone,
    register_torchvision_backbone,
)
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
from svp.metrics import accuracy, overlap, rankdata, spearman
from svp.models import MODELS, Classifier, create_model, model_names
from svp.strategies import (
    SelectionResult,
    Strategy,
    cold_start,
    coreset,
    entropy,
    kcenter_greedy,
    least_confidence,
    margin,
    select,
)
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
    "MODELS",
    "PAPER_SCHEDULE",
    "Backbone",
    "BackboneSpec",
    "Classifier",
    "EmbeddingStore",
    "ForgettingTracker",
    "ImageStore",
    "LabeledImages",
    "Predictions",
    "SelectionResult",
    "Strategy",
    "TrainConfig",
    "TrainResult",
    "TrainStats",
    "TrainingCancelled",
    "accuracy",
    "augment",
    "backbone_names",
    "channel_stats",
    "cold_start",
    "content_key",
    "coreset",
    "create_model",
    "decode_image",
    "entropy",
    "evaluate",
    "forgetting_events",
    "get_spec",
    "kcenter_greedy",
    "least_confidence",
    "load_backbone",
    "load_cifar10",
    "margin",
    "model_names",
    "overlap",
    "predict",
    "rankdata",
    "read_image_folder_zip",
    "register_backbone",
    "register_torchvision_backbone",
    "scaled_schedule",
    "seed_everything",
    "select",
    "spearman",
    "train",
]
