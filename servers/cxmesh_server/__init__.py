"""cxmesh servers: the shared runtime and one package per service."""

import zoneinfo

# Time zone rules come from the tzdata package this project installs, never from the host:
# every replica then decides calling windows from the same rules, and a host's stale
# zoneinfo (Mexico dropped daylight saving in October 2022) cannot call contacts an hour
# early. A new IANA release is a new tzdata package: upgrading it is upgrading the rules.
zoneinfo.reset_tzpath(to=())
zoneinfo.ZoneInfo.clear_cache()
