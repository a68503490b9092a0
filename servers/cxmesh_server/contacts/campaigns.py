"""Campaign references as every service takes them: `campaigns/{id}`, or a dialer's bare
campaign name (OCS sends `GSW_CAMPAIGN_NAME`), which means `campaigns/{name}`."""

from __future__ import annotations

PREFIX = "campaigns/"


# The longest reference bound: a dialer's campaign name is at most 255 characters.
MAX_REFERENCE = len(PREFIX) + 255


def is_campaign(name: str) -> bool:
    """Whether `name` is a `campaigns/{id}` reference, the form rule sets and lists bind."""
    return name.startswith(PREFIX) and len(PREFIX) < len(name) <= MAX_REFERENCE


def campaign_reference(campaign: str) -> str:
    """`campaigns/{id}` for a campaign given either way; empty stays empty (no campaign).
    A bare name left as it is would match no binding, and what is bound to its campaign
    (a stricter rule set, a campaign's do-not-call list) would not apply: a wrong allow."""
    name = campaign.strip()
    return name if not name or name.startswith(PREFIX) else PREFIX + name


def campaign_key(campaign: str) -> str:
    """What bindings are matched by: the reference without case. Dialers send the
    campaign's display name (`Summer Sale`) and operators type bindings by hand; a binding
    missed over case would leave the campaign's stricter rules and lists unapplied."""
    return campaign_reference(campaign).casefold()
