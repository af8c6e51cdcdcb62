"""The CRM's values as they are stored: addresses, languages, contact kinds and names,
employment dates. Checks only; the store writes them (store.contacts, store.csvimport)."""

from __future__ import annotations

import datetime
import re

from atollon_mail.store.common import limited, normalize_identity
from atollon_mail.store.errors import Invalid

CONTACT_KINDS = ("person", "company")

_LANGUAGE = re.compile(r"^[a-z]{2}$")


# --- normalisation --------------------------------------------------------------------


def normalize_email(email: str) -> str:
    """A contact's address, lower-cased ("" stays "": the contact has none)."""
    email = email.strip()
    if not email:
        return ""
    try:
        return normalize_identity(email).lower()
    except Invalid:
        raise Invalid(
            f"{email!r} is not an e-mail address; give one such as name@example.com"
        ) from None


def normalize_language(language: str) -> str:
    """An ISO 639-1 code, lower-cased ("" stays "": unknown)."""
    code = language.strip().lower()
    if code and not _LANGUAGE.match(code):
        raise Invalid(f"{language!r} is not a language code; give two letters (ISO 639-1), like cs")
    return code


def normalize_kind(kind: str) -> str:
    value = kind.strip().lower()
    if value not in CONTACT_KINDS:
        raise Invalid(f"{kind!r} is not a contact kind; use person or company")
    return value


def display_name(name: str, first_name: str, last_name: str) -> str:
    return name or " ".join(part for part in (first_name, last_name) if part)


def contact_names(kind: str, name: str, first_name: str, last_name: str) -> tuple[str, str, str]:
    """(name, first_name, last_name) checked: a company needs a name, a person a last name
    or a name; a person's name defaults to "first last"."""
    name = limited(name, 200, "name")
    first_name = limited(first_name, 100, "first name")
    last_name = limited(last_name, 100, "last name")
    if kind == "company":
        if not name:
            raise Invalid("a company needs a name")
        if first_name or last_name:
            raise Invalid("a company has a name only; leave first and last name empty")
        return name, "", ""
    if not (name or last_name):
        raise Invalid("a person needs a last name or a name")
    return limited(display_name(name, first_name, last_name), 200, "name"), first_name, last_name


# --- employments ----------------------------------------------------------------------


def check_employment_dates(
    valid_from: datetime.date | None, valid_to: datetime.date | None
) -> None:
    if valid_from is not None and valid_to is not None and valid_to < valid_from:
        raise Invalid(f"the employment ends ({valid_to}) before it starts ({valid_from})")
