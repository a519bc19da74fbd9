"""Sphinx configuration of the patchwork documentation (``tox -e docs``)."""

from __future__ import annotations

import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
sys.path.insert(0, str(DOCS.parent))
sys.path.insert(0, str(DOCS / "_ext"))

import patchwork  # noqa: E402

project = "patchwork"
author = "the patchwork authors"
copyright = "2026, the patchwork authors"  # noqa: A001
release = patchwork.__version__
version = release

extensions = [
    "myst_nb",
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "study_schema",
    "sphinxcontrib.mermaid",
]

exclude_patterns = ["_build", "jupyter_execute", "**.ipynb_checkpoints", "Thumbs.db", ".DS_Store"]
# .rst first: autosummary writes its generated API pages with the first suffix.
source_suffix = {".rst": "restructuredtext", ".md": "myst-nb", ".ipynb": "myst-nb"}

# API reference: every public module of the package, found recursively at build time.
autosummary_generate = True
autodoc_default_options = {"members": True, "show-inheritance": True}
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_typehints_description_target = "documented_params"
napoleon_google_docstring = True
napoleon_numpy_docstring = False

# Notebooks (the tutorial, the analysis guide) run on every build; an error fails the build.
nb_execution_mode = "force"
nb_execution_timeout = 600
nb_execution_raise_on_error = True
nb_execution_show_tb = True
nb_merge_streams = True
myst_enable_extensions = ["colon_fence", "dollarmath", "deflist"]
myst_heading_anchors = 3

html_theme = "furo"
html_title = f"patchwork {release}"


# Pages colleagues add beside the guide (the default model's page, model families, …) join the
# contents by themselves: every top-level page that index.md does not list goes under "More".
_PAGE_SUFFIXES = (".md", ".rst", ".ipynb")


def _unlisted_pages(index_text: str) -> list[str]:
    pages = sorted(path.stem for path in DOCS.iterdir() if path.suffix in _PAGE_SUFFIXES)
    listed = {line.strip() for line in index_text.splitlines()}
    extra = [page for page in pages if page != "index" and page not in listed]
    return sorted(extra, key=lambda page: (page != "testbed", page))


def _add_unlisted_pages(app, docname: str, source: list[str]) -> None:
    if docname != "index":
        return
    extra = _unlisted_pages(source[0])
    if extra:
        toctree = "```{toctree}\n:maxdepth: 1\n:caption: More\n\n" + "\n".join(extra) + "\n```"
        source[0] = source[0].replace("<!-- more pages -->", toctree)


def setup(app) -> None:
    app.connect("source-read", _add_unlisted_pages)
