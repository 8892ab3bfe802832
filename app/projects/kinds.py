"""What fits a project's kind (DESIGN 4c): backbones, proxies and targets for images or text.

The server knows these by name only (it never imports the engine). A name that does not fit
the project's kind is refused when it is written, with the reason, never later in a worker.
"""

from __future__ import annotations

from app.embeddings.schemas import DEFAULT_BACKBONES, backbone_modality
from app.errors import Invalid
from app.projects.models import ProjectKind
from app.projects.schemas import ProjectSettings
from app.rounds.schemas import SCRATCH_ARCHS, TEXT_TARGET_ARCHS

# Proxies a round of each kind may train: from-scratch image models need pixels; fastText
# needs words; ``linear`` works on either, on a backbone of the project's kind.
PROXIES: dict[str, frozenset[str]] = {
    ProjectKind.image: frozenset({"linear", *SCRATCH_ARCHS}),
    ProjectKind.text: frozenset({"linear", "fasttext"}),
}
# Targets an evaluation of each kind may train (a linear head is a target on text only, where
# it is the cheap baseline the paper's VDCNN is compared with).
TARGETS: dict[str, frozenset[str]] = {
    ProjectKind.image: frozenset(SCRATCH_ARCHS),
    ProjectKind.text: frozenset({"linear", *TEXT_TARGET_ARCHS}),
}
# Settings whose default depends on the kind; every other setting has one default.
KIND_DEFAULTS: dict[str, dict[str, str]] = {
    ProjectKind.image: {"backbone": DEFAULT_BACKBONES["image"], "default_target": "preact20"},
    ProjectKind.text: {"backbone": DEFAULT_BACKBONES["text"], "default_target": "vdcnn"},
}


def _listed(names: frozenset[str]) -> str:
    return ", ".join(sorted(names))


def a_kind(kind: str) -> str:
    """'an image' or 'a text', for messages."""
    return f"an {kind}" if kind[0] in "aeiou" else f"a {kind}"


def check_backbone(kind: str, backbone: str) -> None:
    """422 when a backbone embeds the other kind of item than the project holds."""
    modality = backbone_modality(backbone)
    if modality != kind:
        raise Invalid(
            f"backbone {backbone!r} embeds {modality}s; this is {a_kind(kind)} project "
            f"(its default backbone is {DEFAULT_BACKBONES[kind]!r})"
        )


def check_proxy(kind: str, arch: str) -> None:
    """422 when a proxy cannot train on the project's kind of item."""
    if arch not in PROXIES[kind]:
        raise Invalid(
            f"proxy {arch!r} does not train on {kind}s; {a_kind(kind)} project's proxies are "
            f"{_listed(PROXIES[kind])}"
        )


def check_target(kind: str, arch: str) -> None:
    """422 when an evaluation target cannot train on the project's kind of item."""
    if arch not in TARGETS[kind]:
        raise Invalid(
            f"target {arch!r} does not train on {kind}s; {a_kind(kind)} project's targets are "
            f"{_listed(TARGETS[kind])}"
        )


def fit_settings(kind: str, settings: ProjectSettings) -> ProjectSettings:
    """The settings as a project of this kind keeps them: the kind's defaults for the
    kind-dependent keys the caller left out, then every name checked against the kind."""
    defaults = {
        key: value
        for key, value in KIND_DEFAULTS[kind].items()
        if key not in settings.model_fields_set
    }
    fitted = settings.model_copy(update=defaults) if defaults else settings
    check_backbone(kind, fitted.backbone)
    check_proxy(kind, fitted.default_proxy)
    check_target(kind, fitted.default_target)
    return fitted
