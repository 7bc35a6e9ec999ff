"""The four meta-templates, one file each, looked up by the analysis' classification."""

from autosched.analysis import MetaTemplateKind
from autosched.templates.base import ApplyState, MetaTemplate, TemplateContext
from autosched.templates.complex_reduction import ComplexReduction
from autosched.templates.direct_compute import DirectCompute
from autosched.templates.location_tunable import LocationTunable
from autosched.templates.simple_reduction import SimpleReduction

META_TEMPLATES: dict[MetaTemplateKind, MetaTemplate] = {
    t.kind: t for t in (DirectCompute(), SimpleReduction(), ComplexReduction(), LocationTunable())
}

__all__ = ["META_TEMPLATES", "ApplyState", "MetaTemplate", "TemplateContext"]
