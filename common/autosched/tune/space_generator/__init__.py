from autosched.tune.space_generator.meta_template_space import MetaTemplateSpace
from autosched.tune.space_generator.space_generator import SpaceGenerator

__all__ = ["MetaTemplateSpace", "SpaceGenerator"]
