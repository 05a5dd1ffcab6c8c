"""Sphinx configuration for the detops docs: built offline (no intersphinx, the
bundled theme), warnings are errors (scripts/docs.sh passes -W)."""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "_ext"))

project = "detops"
author = "the detops authors"
copyright = "2026, the detops authors"

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.doctest",
    "sphinx.ext.viewcode",
    "myst_parser",
    "detops_docs",
]

# The public modules: each name in their __all__ gets an entry and must have a docstring.
detops_public_modules = [
    "detops",
    "detops.nn",
    "detops.eval",
    "detops.data",
    "detops.train",
    "detops.models.detection",
    "detops.models.segmentation",
    "detops.models.localization",
    "detops.models.yolo",
    "detops.models.hourglass",
    "detops.models.detr",
    "detops.models.cornernet",
]

autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_default_options = {"undoc-members": False}
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False
napoleon_use_ivar = True  # Attributes: as fields, not entries that clash with autodoc members

html_theme = "alabaster"
html_static_path = ["_static"]
html_title = "detops"
exclude_patterns = ["_build"]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}

# Doctests and testcode blocks run on CPU at small sizes.
doctest_global_setup = """
import torch
import detops
torch.manual_seed(0)
"""
