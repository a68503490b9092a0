"""Campaign references as every service takes them: `campaigns/{id}`, or a dialer's bare
campaign name (OCS sends `GSW_CAMPAIGN_NAME`), which means `campaigns/{name}`."""

from __future__ import annotations

PREFIX = "campaigns/"


# A dialer's campaign name is at most 255 characters; the longest reference bound.
MAX_CAMPAIGN_NAME = 255
MAX_REFERENCE = len(PREFIX) + MAX_CAMPAIGN_NAME


def is_campaign(name: str) -> bool:
    """Whether `name` is a `campaigns/{id}` reference, the form rule sets and lists bind."""
    return name.startswith(PREFIX) and len(PREFIX) < len(name) <= MAX_REFERENCE


def campaign_key(campaign: str) -> str:
    """What bindings are matched by: `campaigns/{id}` for a campaign given either way (a
    bare name left as it is would match no binding), without case (dialers send display
    names such as `Summer Sale`, operators type bindings by hand); empty stays empty (no
    campaign). A binding missed would leave the campaign's stricter rules and do-not-call
    lists unapplied: a wrong allow."""
    name = campaign.strip()
    reference = name if not name or name.startswith(PREFIX) else PREFIX + name
    return reference.casefold()
