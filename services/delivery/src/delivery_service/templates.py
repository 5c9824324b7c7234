"""Templates rendered with a person's traits in Jinja2's sandbox.

The sandbox refuses attribute access to internals (`__class__`, `mro`...), so a template
written by a marketer cannot reach Python objects; undefined traits render empty, a trait
used as a mapping that is not one is an error. Compiled templates are kept per source text.
A `sha256` filter hashes a value (hex), as ad platforms take e-mail addresses in audience
uploads: `{{ email | trim | lower | sha256 }}`.
"""

from __future__ import annotations

import hashlib
from functools import lru_cache
from typing import Any

from jinja2 import TemplateError
from jinja2.sandbox import SandboxedEnvironment

_env = SandboxedEnvironment(autoescape=False, keep_trailing_newline=True)
_env.filters["sha256"] = lambda value: hashlib.sha256(str(value).encode()).hexdigest()


class RenderError(Exception):
    """A template does not compile or does not render."""


@lru_cache(maxsize=1024)
def _compile(source: str):
    return _env.from_string(source)


def check(source: str) -> str | None:
    """Why `source` does not compile, or None."""
    try:
        _compile(source)
    except TemplateError as error:
        return f"{type(error).__name__}: {error}"
    return None


def render(source: str, traits: dict[str, Any], **context: Any) -> str:
    """Render `source` with `traits` (as `traits` and each at top level) and `context`."""
    if not source:
        return ""
    try:
        return _compile(source).render({**traits, "traits": traits, **context})
    except TemplateError as error:
        raise RenderError(f"{type(error).__name__}: {error}") from error
