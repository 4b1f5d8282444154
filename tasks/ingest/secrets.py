"""Secrets in training text (API keys, tokens, private keys, passwords), found by detect-secrets.

A model trained on a secret can repeat it to anyone who asks, so any secret stops the batch. The
scanner is detect-secrets with its default plugins (keyword, entropy, and one per known key format)
and filters, plus the few key formats it lacks (tasks/ingest/secret_kinds.py). Lines are read as a
config file, so `password = hunter2` is found without quotes. What comes back is where and what kind:
never the secret itself. A line that only looks like a secret passes with `pragma: allowlist secret`
on it (detect-secrets' own allowlist).
"""

from __future__ import annotations

from pathlib import Path

KINDS_FILE = Path(__file__).with_name("secret_kinds.py")
EXTRA_KINDS = (
    "GoogleApiKeyDetector",
    "BearerTokenDetector",
    "GitHubFineGrainedTokenDetector",
    "ApiSecretKeyDetector",
)


def scan(texts: dict[str, str | None]) -> dict[str, list[tuple[int, str]]]:
    """For each text holding secrets, its (line number, kind of secret) pairs."""
    from detect_secrets.core.plugins.util import get_mapping_from_secret_type_to_class
    from detect_secrets.core.scan import _process_line_based_plugins
    from detect_secrets.settings import default_settings, get_settings

    found: dict[str, list[tuple[int, str]]] = {}
    with default_settings():
        get_settings().configure_plugins([{"name": k, "path": f"file://{KINDS_FILE}"} for k in EXTRA_KINDS])
        get_mapping_from_secret_type_to_class.cache_clear()  # it caches the plugin list it saw first
        try:
            for path, text in texts.items():
                lines = list(enumerate((text or "").splitlines(), 1))
                hits = {(s.line_number, s.type) for s in _process_line_based_plugins(lines, "data.cfg")}
                if hits:
                    found[path] = sorted(hits)
        finally:
            get_mapping_from_secret_type_to_class.cache_clear()
    return found


def describe(found: dict[str, list[tuple[int, str]]], limit: int = 5) -> str:
    """`file:line (kind)` for the first few: enough to find them, without repeating a secret."""
    spots = [f"{path}:{line} ({kind})" for path, hits in sorted(found.items()) for line, kind in hits]
    more = f" and {len(spots) - limit} more" if len(spots) > limit else ""
    return ", ".join(spots[:limit]) + more
