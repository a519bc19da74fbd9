"""Study files: YAML in, validated :class:`Study` out."""

from patchwork.study.loader import describe_changes, load_study, parse_study, study_hash
from patchwork.study.schema import ActivationPatching, ModelSpec, Study

__all__ = [
    "ActivationPatching",
    "ModelSpec",
    "Study",
    "describe_changes",
    "load_study",
    "parse_study",
    "study_hash",
]
