"""
A build hook of the documentation site (``mkdocs.yml``: ``hooks``).

The docstrings cross-reference with Sphinx roles
(``:class:`~dvr_plugin.fields.field.FieldOutput```), which Markdown renders as the role's name
followed by code. This hook turns each such reference on a built page into the code alone, shortened
as Sphinx shortens it (``~`` keeps the last name). An absolute ``dvr_plugin`` name becomes an
optional cross-reference, which mkdocs-autorefs links to its API entry when the site has one and
leaves as plain code otherwise.
"""

from __future__ import annotations

import html
import re

ROLE = re.compile(
    r":(?:class|func|meth|mod|attr|data|obj|exc|const):<code>(?P<tilde>~?)(?P<target>[^<]+)</code>"
)


def _reference(match: re.Match) -> str:
    target = html.unescape(match.group("target")).strip()
    shown = target.rsplit(".", 1)[-1] if match.group("tilde") else target.lstrip(".")
    code = f"<code>{html.escape(shown)}</code>"
    if not target.startswith("dvr_plugin."):
        return code  # relative or outside names: no target to look up
    return f'<autoref identifier="{html.escape(target)}" optional>{code}</autoref>'


def on_page_content(html_text: str, **kwargs) -> str:
    """Replace Sphinx roles in a rendered page (mkdocs event, before autorefs links them)."""
    return ROLE.sub(_reference, html_text)
