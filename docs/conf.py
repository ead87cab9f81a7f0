"""Sphinx configuration of the mailframe documentation."""

from __future__ import annotations

import configparser
import importlib
import inspect
import os
import re
import sys
from collections.abc import Callable
from typing import Any, ClassVar

import attrs
from docutils import nodes
from docutils.parsers.rst import directives
from docutils.statemachine import StringList
from sphinx.pycode import ModuleAnalyzer
from sphinx.util.docutils import SphinxDirective
from sphinx.util.nodes import nested_parse_with_titles

#: The root of the repository: autodoc documents the working tree, not an
#: installed copy.
ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), os.pardir))
sys.path.insert(0, ROOT)
# The extensions of these pages: the generated configuration reference.
sys.path.insert(0, os.path.join(ROOT, "docs", "_ext"))


def _version() -> str:
    parser = configparser.ConfigParser()
    parser.read(os.path.join(ROOT, "setup.cfg"), encoding="utf-8")
    return parser.get("metadata", "version", fallback="0")


project = "mailframe"
author = "the mailframe authors"
copyright = "the mailframe authors"
release = _version()
version = ".".join(release.split(".")[:2])

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.viewcode",
    "mailframe_configref",
]

exclude_patterns = ["_build"]
templates_path: list[str] = []
root_doc = "index"
pygments_style = "sphinx"

autodoc_member_order = "bysource"
autodoc_typehints = "signature"
# Twisted's docstrings are epytext; do not let them leak into these pages.
autodoc_inherit_docstrings = False
autoclass_content = "class"

html_theme = "alabaster"
html_theme_options = {
    "description": "A pluggable mail transfer agent for Twisted",
    "fixed_sidebar": False,
}
html_static_path: list[str] = []
html_title = f"mailframe {release}"


class ZopeInterface(SphinxDirective):
    """
    ``.. zope-interface:: package.module.IName``: document a
    :mod:`zope.interface` interface as a class, with its methods (and their
    signatures) and attributes, in the order they are defined.

    autodoc does not recognise interfaces, which are instances of
    ``InterfaceClass`` rather than classes; this reads them with
    zope.interface's own introspection, so the page follows the code.
    """

    required_arguments = 1
    has_content = False
    option_spec: ClassVar[dict[str, Callable[[str], Any]]] = {"no-index": directives.flag}

    def run(self) -> list[nodes.Node]:
        dotted = self.arguments[0]
        module_name, _, name = dotted.rpartition(".")
        interface = getattr(importlib.import_module(module_name), name)
        no_index = ["   :no-index:"] if "no-index" in self.options else []
        lines = [f".. py:class:: {name}", f"   :module: {module_name}", *no_index, ""]
        lines += _indented(_doc(interface), 3)
        for member, description in interface.namesAndDescriptions(all=False):
            signature = getattr(description, "getSignatureString", None)
            if signature is not None:
                lines += ["", f"   .. py:method:: {member}{signature()}", *no_index, ""]
            else:
                lines += ["", f"   .. py:attribute:: {member}", *no_index, ""]
            lines += _indented(_doc(description), 6)
        lines.append("")
        content = StringList(lines, source=f"<zope-interface {dotted}>")
        node = nodes.section()
        node.document = self.state.document
        nested_parse_with_titles(self.state, content, node)
        self.env.note_dependency(inspect.getsourcefile(importlib.import_module(module_name)))
        return node.children


def _doc(obj: object) -> list[str]:
    text = getattr(obj, "__doc__", None) or ""
    return inspect.cleandoc(text).splitlines()


def _indented(lines: list[str], width: int) -> list[str]:
    pad = " " * width
    return [pad + line if line else "" for line in lines]


_IVAR = re.compile(r":ivar (?:\S+ )?(\w+):\s?(.*)\Z")


def _split_ivars(lines: list[str]) -> tuple[list[str], dict[str, list[str]]]:
    """A docstring's lines without its ``:ivar:`` fields, and those fields."""
    kept: list[str] = []
    fields: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in lines:
        match = _IVAR.match(line)
        if match is not None:
            current = fields[match.group(1)] = [match.group(2)]
        elif current is not None and line[:1].isspace():
            current.append(line.strip())
        else:
            current = None
            kept.append(line)
    return kept, fields


def _attrs_class(name: str) -> type | None:
    module_name, _, class_name = name.rpartition(".")
    module = sys.modules.get(module_name)
    cls = getattr(module, class_name, None)
    return cls if isinstance(cls, type) and attrs.has(cls) else None


def _move_ivars_to_fields(
    app: object, what: str, name: str, obj: object, options: object, lines: list[str]
) -> None:
    """
    An attrs class describes its fields with ``:ivar name:``; autodoc also
    lists each field. Move each description to its field, so that a field
    is described once, where its type is shown.
    """
    if not getattr(options, "undoc_members", None):
        return  # the fields are not listed: keep the class's own list
    if what in ("class", "exception") and _attrs_class(name) is not None:
        kept, fields = _split_ivars(lines)
        if set(fields) <= set(attrs.fields_dict(obj)):  # type: ignore[arg-type]
            lines[:] = kept
    elif what == "attribute" and not any(line.strip() for line in lines):
        owner_name, _, field = name.rpartition(".")
        owner = _attrs_class(owner_name)
        if owner is not None and field in attrs.fields_dict(owner):
            _, fields = _split_ivars(inspect.cleandoc(owner.__doc__ or "").splitlines())
            if field in fields:
                lines[:] = [" ".join(fields[field]), ""]


def _doc_of_data(
    app: object, what: str, name: str, obj: object, options: object, lines: list[str]
) -> None:
    """
    A constant takes no docstring from its type. One re-exported by a
    package (such as ``mailframe.core``) takes the ``#:`` comment of the
    private module that defines it.
    """
    if what != "data":
        return
    type_doc = inspect.cleandoc(type(obj).__doc__ or "").splitlines()
    if [line for line in lines if line] == [line for line in type_doc if line]:
        del lines[:]
    package, _, attribute = name.rpartition(".")
    for module_name, module in sorted(sys.modules.items()):
        if not module_name.startswith(package + "._"):
            continue
        if getattr(module, attribute, None) is not obj:
            continue
        comment = ModuleAnalyzer.for_module(module_name).find_attr_docs().get(("", attribute))
        if comment:
            lines[:] = [line.rstrip("\n") for line in comment]
            return


_INTERFACE_REPR = re.compile(r"<InterfaceClass ([\w.]+)>")


def _interface_names(
    app: object,
    what: str,
    name: str,
    obj: object,
    options: object,
    signature: str | None,
    return_annotation: str | None,
) -> tuple[str | None, str | None]:
    """Show an interface in a signature by its name, not its repr."""

    def clean(text: str | None) -> str | None:
        return _INTERFACE_REPR.sub(r"\1", text) if text else text

    return clean(signature), clean(return_annotation)


def setup(app: object) -> dict[str, object]:
    app.add_directive("zope-interface", ZopeInterface)  # type: ignore[attr-defined]
    app.connect("autodoc-process-docstring", _move_ivars_to_fields)  # type: ignore[attr-defined]
    app.connect("autodoc-process-docstring", _doc_of_data)  # type: ignore[attr-defined]
    app.connect("autodoc-process-signature", _interface_names)  # type: ignore[attr-defined]
    return {"parallel_read_safe": True, "parallel_write_safe": True}
