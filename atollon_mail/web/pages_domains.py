"""Web pages: domains (list and add), one domain's DNS records and its last check, and the
DNS overview. The records and the live check are those of `dns records` and `dns check`."""

from __future__ import annotations

from urllib.parse import quote

from atollon_mail.store import common
from atollon_mail.store import domains as dns_ops
from atollon_mail.store.errors import Conflict, Invalid, NotFound
from atollon_mail.store.values import DOMAIN_MODES, utc_now
from atollon_mail.web.app import Page, PageRequest, Redirect, WebApp, not_found


def check_summary(check) -> dict | None:
    if check is None:
        return None
    statuses = [result.status for result in check.results]
    return {
        "checked_at": check.checked_at,
        "passed": statuses.count("pass"),
        "warnings": statuses.count("warn"),
        "failures": statuses.count("fail"),
    }


def domain_url(name: str, flag: str = "") -> str:
    return f"/domain?name={quote(name, safe='')}" + (f"&{flag}=1" if flag else "")


def _config(app: WebApp):
    """The appliance configuration (the web app's)."""
    return app.config


def _records(app: WebApp, subject):
    # Blocking: reads the published SPF and DMARC records, as `dns records` does.
    from atollon_mail.dns import advisor
    from atollon_mail.dns.lookup import Lookups

    config = _config(app)
    advice = advisor.advise(subject, config, Lookups.using(config.delivery.nameservers))
    return advice, advisor.zone_text(advice)


def _check(app: WebApp, subject):
    # Blocking: the live checks of `dns check`.
    from atollon_mail.dns.checks import run_checks
    from atollon_mail.dns.lookup import Lookups

    config = _config(app)
    return run_checks(subject, config, Lookups.using(config.delivery.nameservers))


def _add_errors(name: str, mode: str, primary: str) -> dict[str, str]:
    """What is wrong with the add form before the store is asked (field -> message)."""
    errors = {}
    if not name:
        errors["name"] = "Enter the domain name, such as example.com."
    else:
        try:
            common.normalize_domain_name(name)
        except Invalid as problem:
            errors["name"] = str(problem)
    if mode not in DOMAIN_MODES:
        errors["mode"] = "Choose primary or secondary."
    elif mode == "secondary" and not primary:
        errors["primary_domain"] = (
            "A secondary domain needs the primary domain it serves: the company's own "
            "domain, such as example.com, whose mail provider forwards to this appliance."
        )
    elif mode == "primary" and primary:
        errors["primary_domain"] = (
            "Only a secondary domain has a primary domain: choose secondary, or leave this empty."
        )
    return errors


def register(app: WebApp) -> None:
    @app.route("/domains", methods=("GET", "POST"), admin=True)
    async def domain_list(page: PageRequest):
        form = {"name": "", "mode": "primary", "primary_domain": ""}
        errors: dict[str, str] = {}
        if page.request.method == b"POST":
            form = {key: page.form.get(key, "").strip() for key in form}
            errors = _add_errors(form["name"], form["mode"], form["primary_domain"])
            if not errors:
                try:
                    added = await page.store.run(
                        dns_ops.add_domain,
                        form["name"],
                        form["mode"],
                        form["primary_domain"] or None,
                    )
                except Conflict as problem:
                    errors["name"] = str(problem)
                except (Invalid, NotFound) as problem:
                    # The store's remaining refusals are about the primary domain.
                    errors["primary_domain"] = str(problem)
                else:
                    return Redirect(domain_url(added.name, "added"))
        overview = await page.store.run(dns_ops.domains_overview)
        rows = [(d, check_summary(c), domain_url(d.name)) for d, c in overview]
        context = {"rows": rows, "form": form, "errors": errors, "modes": DOMAIN_MODES}
        return Page("domains.html", context, status=400 if errors else 200)

    @app.route("/domain", methods=("GET", "POST"), admin=True)
    async def domain_page(page: PageRequest):
        name = page.arg("name").strip()
        try:
            subject = await page.store.run(dns_ops.dns_subject, name)
        except (Invalid, NotFound):
            raise not_found() from None
        domain = subject.domain.name
        if page.request.method == b"POST":
            results = await app.workers.in_dns(_check, app, subject)
            await page.store.run(dns_ops.record_dns_check, domain, results, utc_now())
            return Redirect(domain_url(domain, "checked"))
        advice, zone = await app.workers.in_dns(_records, app, subject)
        check = await page.store.run(dns_ops.last_dns_check, domain)
        context = {
            "domain": subject.domain,
            "advice": advice,
            "zone": zone,
            "check": check,
            "summary": check_summary(check),
            "added": page.arg("added") == "1",
            "checked": page.arg("checked") == "1",
            "url": domain_url(domain),
        }
        return Page("domains_detail.html", context)

    @app.route("/dns", admin=True)
    async def dns_overview(page: PageRequest):
        overview = await page.store.run(dns_ops.domains_overview)
        rows = [(d, check_summary(c), domain_url(d.name)) for d, c in overview]
        return Page("dns.html", {"rows": rows})
