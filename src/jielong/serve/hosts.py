"""Host names as the server compares them: the one in a Host header or an Origin, and the
allowlist entries of `jielong serve --allowed_hosts` (jielong.serve.guard checks requests with
them; jielong.serve.command checks the option). No web framework needed, so the command can
check its options before the serving extra is imported.
"""

from __future__ import annotations

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def host_name(value: str, bare_ipv6: bool = False) -> str | None:
    """The lower-case host name in a Host header or an origin's netloc ("[::1]:8000" -> "::1",
    "Example.com.:80" -> "example.com"), or None when it is not one. `bare_ipv6`: "::1" is an
    address, as in an allowlist (a Host header brackets it)."""
    value = value.strip().lower()
    if bare_ipv6 and value.count(":") > 1 and not value.startswith("["):
        return value
    if value.startswith("["):
        name, bracket, rest = value[1:].partition("]")
        if not bracket or rest and not (rest.startswith(":") and rest[1:].isdigit()):
            return None
    else:
        name, _, port = value.partition(":")
        if ":" in port or (port and not port.isdigit()):
            return None
    name = name.rstrip(".")
    return name or None


def host_matches(name: str, entry: str) -> bool:
    """Whether host `name` is the allowlist's `entry` ("*.example.com": it or a subdomain)."""
    if entry.startswith("*."):
        return name == entry[2:] or name.endswith(entry[1:])
    return name == entry
