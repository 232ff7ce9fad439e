"""Pages from Jinja2 templates (``loraforge/templates``): the quality report, the registry dashboard, the model
card. Numbers are formatted in one place, ``number``: what was not measured shows as an em dash."""

from __future__ import annotations

import functools
import math

NOT_MEASURED = "—"


def number(value, spec: str = ".4g") -> str:
    """A measured value as text; None (not measured) as an em dash, never as 0 or "nan"."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return NOT_MEASURED
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int | float):
        return format(value, spec)
    return str(value)


@functools.cache
def _environment(autoescape: bool):
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.PackageLoader("loraforge", "templates"),
        autoescape=autoescape,
        undefined=jinja2.StrictUndefined,  # a name the page needs and did not get is an error, not an empty cell
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters["num"] = number
    return env


def render(template: str, **context) -> str:
    """Render ``templates/<template>``; HTML templates (``*.html``) are autoescaped."""
    return _environment(template.endswith(".html")).get_template(template).render(**context)
