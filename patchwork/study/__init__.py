"""Study files: YAML in, validated :class:`Study` out."""

from patchwork.study.entries import ActivationPatching
from patchwork.study.loader import describe_changes, load_study, parse_study, study_hash
from patchwork.study.schema import Study
from patchwork.study.specs import ModelSpec

__all__ = [
    "ActivationPatching",
    "ModelSpec",
    "Study",
    "describe_changes",
    "load_study",
    "parse_study",
    "study_hash",
]
