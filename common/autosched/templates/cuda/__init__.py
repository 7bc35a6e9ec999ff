"""CUDA versions of the four meta-templates, chosen by the same stage analysis as the CPU
ones (``templates.meta_templates(kind)``). Every block ends bound to ``blockIdx`` /
``threadIdx`` (or inlined, or computed at a bound loop): a GPU kernel has no host fallback."""

from autosched.analysis import MetaTemplateKind
from autosched.templates.base import MetaTemplate
from autosched.templates.cuda.complex_reduction import CudaComplexReduction
from autosched.templates.cuda.direct_compute import CudaDirectCompute
from autosched.templates.cuda.location_tunable import CudaLocationTunable
from autosched.templates.cuda.simple_reduction import CudaSimpleReduction

CUDA_META_TEMPLATES: dict[MetaTemplateKind, MetaTemplate] = {
    t.kind: t
    for t in (
        CudaDirectCompute(),
        CudaSimpleReduction(),
        CudaComplexReduction(),
        CudaLocationTunable(),
    )
}
