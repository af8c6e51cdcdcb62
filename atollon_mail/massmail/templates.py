"""Rendering campaign variants: user-written Jinja2 templates in the sandbox.

This is the one Jinja2 environment besides the web's: campaign texts are written by
users, so they render in a SandboxedEnvironment (no attribute tricks into Python) with
StrictUndefined (a field that does not exist is an error). It renders plain text, so
autoescape is off here; the web shows the result through its own escaping environment.
"""

from __future__ import annotations

import functools

import jinja2
from jinja2.sandbox import SandboxedEnvironment, SecurityError

from atollon_mail.massmail.tokens import preview_unsubscribe_url

# The merge fields a variant may use, with what each holds (shown in help and the web).
MERGE_FIELDS = {
    "first_name": "the contact's first name",
    "last_name": "the contact's last name",
    "name": "the contact's full name (a company's name)",
    "email": "the address the message goes to",
    "language": "the language of the variant sent (ISO 639-1)",
    "company": "the name of a person's current primary employer",
    "unsubscribe_url": "the recipient's own one-click unsubscribe page",
}

# What a preview renders with when the group has nobody in a language (its unsubscribe
# link then is the caller's, from the configuration; this one only checks variants).
SAMPLE_FIELDS = {
    "first_name": "Jana",
    "last_name": "Nováková",
    "name": "Jana Nováková",
    "email": "jana.novakova@example.com",
    "language": "cs",
    "company": "Example Ltd",
    "unsubscribe_url": preview_unsubscribe_url("https://mail.example.com"),
}


def contact_fields(
    *,
    first_name: str,
    last_name: str,
    name: str,
    email: str,
    language: str,
    company: str | None,
    unsubscribe_url: str,
) -> dict[str, str]:
    """The merge fields of one recipient (every key of MERGE_FIELDS, never None)."""
    full_name = name or " ".join(part for part in (first_name, last_name) if part)
    return {
        "first_name": first_name,
        "last_name": last_name,
        "name": full_name,
        "email": email,
        "language": language,
        "company": company or "",
        "unsubscribe_url": unsubscribe_url,
    }


class TemplateProblem(ValueError):
    """A variant that cannot be rendered; str() says where and why, in one line."""


@functools.cache
def environment() -> SandboxedEnvironment:
    return SandboxedEnvironment(
        undefined=jinja2.StrictUndefined,
        autoescape=False,
        keep_trailing_newline=True,
        # Compiled templates are reused across the whole send list.
        cache_size=400,
    )


@functools.lru_cache(maxsize=256)
def _compiled(source: str, what: str) -> jinja2.Template:
    try:
        return environment().from_string(source)
    except jinja2.TemplateSyntaxError as problem:
        raise TemplateProblem(f"{what}, line {problem.lineno}: {problem.message}") from None


def render_text(source: str, fields: dict[str, str], what: str = "body") -> str:
    """One template rendered with the merge fields; TemplateProblem says what is wrong."""
    template = _compiled(source, what)
    try:
        return template.render(**fields)
    except jinja2.UndefinedError as problem:
        known = ", ".join(sorted(MERGE_FIELDS))
        raise TemplateProblem(f"{what}: {problem.message}; the merge fields are {known}") from None
    except SecurityError as problem:
        raise TemplateProblem(f"{what}: not allowed in a campaign template: {problem}") from None
    except jinja2.TemplateError as problem:
        raise TemplateProblem(f"{what}: {problem}") from None
    except (TypeError, ValueError, ArithmeticError) as problem:
        raise TemplateProblem(f"{what}: {problem}") from None


def render_variant(subject: str, body: str, fields: dict[str, str]) -> tuple[str, str]:
    """(subject, body) for one recipient. The subject is one line."""
    rendered_subject = " ".join(render_text(subject, fields, "subject").split())
    return rendered_subject, render_text(body, fields, "body")


def check_variant(subject: str, body: str) -> str | None:
    """None when the variant renders for a contact with every field set, else the problem:
    what a missing field or a syntax error would do at send time, found at preview."""
    try:
        rendered_subject, _ = render_variant(subject, body, SAMPLE_FIELDS)
    except TemplateProblem as problem:
        return str(problem)
    if not rendered_subject:
        return "subject: it renders empty; write a subject"
    return None
