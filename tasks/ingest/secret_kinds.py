"""Kinds of secret detect-secrets 1.5 has no plugin for, as its own plugins (RegexBasedDetector).

detect-secrets loads them from this file by path (tasks/ingest/secrets.py); each `secret_type` must
differ from the built-in plugins' names.
"""

import re

from detect_secrets.plugins.base import RegexBasedDetector


class GoogleApiKeyDetector(RegexBasedDetector):
    secret_type = "Google API Key"
    denylist = (re.compile(r"\bAIza[0-9A-Za-z_\-]{35}\b"),)


class BearerTokenDetector(RegexBasedDetector):
    secret_type = "Bearer Token"
    denylist = (re.compile(r"\bBearer\s+([A-Za-z0-9\-._~+/]{20,}=*)"),)


class GitHubFineGrainedTokenDetector(RegexBasedDetector):
    secret_type = "GitHub Fine-grained Token"
    denylist = (re.compile(r"\bgithub_pat_[0-9A-Za-z_]{22,}\b"),)


class ApiSecretKeyDetector(RegexBasedDetector):
    """Stripe-style `sk_live_`/`rk_test_` keys beyond Stripe's own format, and `sk-` API keys."""

    secret_type = "API Secret Key"
    denylist = (
        re.compile(r"\b[sr]k[-_](?:live|test|proj)[-_][0-9A-Za-z\-_]{16,}"),
        re.compile(r"\bsk-[0-9A-Za-z]{32,}\b"),
    )
