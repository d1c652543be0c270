"""Griffe extension for the API reference: render the reST bits of stockpyle's docstrings.

The docstrings are written for both ``help()`` and Sphinx-style readers: they use roles such as
``:class:`~stockpyle.stores.ChainedStore``` and end paragraphs that introduce an example with
``::``. mkdocstrings renders docstrings as Markdown, so this extension turns each role into an
*optional* cross-reference (a link when the target is rendered somewhere in the site, plain code
otherwise, never a warning), and ``::`` into ``:`` (a ``::`` alone on its line is dropped).
Double-backtick literals are valid Markdown code spans already.
"""

from __future__ import annotations

import html
import importlib.util
import re
from typing import Any

import griffe

_ROLE = re.compile(r":(?:class|func|meth|attr|mod|data|exc|obj|const):`(?P<target>[^`]+)`")
_LITERAL_INTRO = re.compile(r"(?<=\S)::(?=[ \t]*$)", re.MULTILINE)
_LONE_LITERAL_INTRO = re.compile(r"^[ \t]*::[ \t]*\n", re.MULTILINE)


def _identifier(obj: griffe.Object, target: str) -> str:
    """The full path a role's target names, resolved in the scope of ``obj`` when relative."""
    if target.startswith("stockpyle.") or target == "stockpyle":
        return target
    head, _, rest = target.partition(".")
    if rest and importlib.util.find_spec(head) is not None:
        return target  # another library's object (``sqlalchemy.create_engine``)
    try:
        resolved = obj.resolve(head)
    except Exception:  # an unresolvable name simply renders as code
        return target
    return f"{resolved}.{rest}" if rest else resolved


def _convert(obj: griffe.Object, text: str) -> str:
    def role(match: re.Match[str]) -> str:
        target = match["target"].strip()
        short = target.startswith("~")
        target = target.lstrip("~").removesuffix("()")
        title = target.rsplit(".", 1)[-1] if short else target
        identifier = html.escape(_identifier(obj, target), quote=True)
        code = f"<code>{html.escape(title)}</code>"
        return f'<autoref identifier="{identifier}" optional>{code}</autoref>'

    text = _LONE_LITERAL_INTRO.sub("", _ROLE.sub(role, text))
    return _LITERAL_INTRO.sub(":", text)


class SphinxRoles(griffe.Extension):
    """Convert reST roles and ``::`` in every docstring once the object tree is complete."""

    def on_object(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = _convert(obj, obj.docstring.value)

    def on_package(self, *, pkg: griffe.Module, **kwargs: Any) -> None:
        # The root package is not among the objects on_object sees.
        self.on_object(obj=pkg)
