"""The four meta-templates, one file each, looked up by the analysis' classification and
the device kind: CPU (LLVM) templates here, CUDA templates in ``templates/cuda/``."""

from autosched.analysis import MetaTemplateKind
from autosched.templates.base import ApplyState, MetaTemplate, TemplateContext
from autosched.templates.complex_reduction import ComplexReduction
from autosched.templates.cuda import CUDA_META_TEMPLATES
from autosched.templates.direct_compute import DirectCompute
from autosched.templates.location_tunable import LocationTunable
from autosched.templates.simple_reduction import SimpleReduction

META_TEMPLATES: dict[MetaTemplateKind, MetaTemplate] = {
    t.kind: t for t in (DirectCompute(), SimpleReduction(), ComplexReduction(), LocationTunable())
}


def meta_templates(kind: str) -> dict[MetaTemplateKind, MetaTemplate]:
    """The meta-templates for a device kind (``HardwareParams.kind``)."""
    return CUDA_META_TEMPLATES if kind == "cuda" else META_TEMPLATES


__all__ = [
    "CUDA_META_TEMPLATES",
    "META_TEMPLATES",
    "ApplyState",
    "MetaTemplate",
    "TemplateContext",
    "meta_templates",
]
