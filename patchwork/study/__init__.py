"""Study files: YAML in, validated :class:`Study` out."""

from patchwork.study.loader import load_study, parse_study, study_hash
from patchwork.study.schema import ActivationPatching, ModelSpec, Study

__all__ = ["ActivationPatching", "ModelSpec", "Study", "load_study", "parse_study", "study_hash"]
