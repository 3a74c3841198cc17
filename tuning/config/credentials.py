"""Secrets kept out of the run: storage URIs with credentials refused, Ray's token redacted.

Credentials belong in the environment (AWS_ACCESS_KEY_ID, GOOGLE_APPLICATION_CREDENTIALS, ...)
or the instance's role, where pyarrow's filesystems find them: a URI is saved in config.yaml,
printed in messages and passed to every node.
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

from tuning.config.errors import ConfigError

# Query parameters by which pyarrow's S3, GCS and Azure filesystems take secrets.
SECRET_PARAMETERS = {
    "access_key",
    "secret_key",
    "session_token",
    "access_token",
    "account_key",
    "sas_token",
    "client_secret",
    "password",
    "token",
    "credentials",
}
REDACTED = "***"


def secret_parts(uri: str) -> list[str]:
    """What in `uri` is a secret, named, never quoted: 'a user and password', parameters."""
    if "://" not in uri:
        return []
    parts = urlsplit(uri)
    found = []
    if parts.username is not None or parts.password is not None:
        found.append("a user and password")
    params = sorted({k for k, _ in parse_qsl(parts.query) if k.lower() in SECRET_PARAMETERS})
    found += [f"the {k} parameter" for k in params]
    return found


# Where each kind of URI takes its secrets instead.
STORAGE_SECRETS = (
    "the environment (e.g. AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, "
    "GOOGLE_APPLICATION_CREDENTIALS) or the instance's credentials (an IAM role)"
)
MLFLOW_SECRETS = (
    "MLflow's environment variables (MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD, or "
    "MLFLOW_TRACKING_TOKEN)"
)


def check_no_credentials(uri: str, what: str = "storage", secrets: str = STORAGE_SECRETS) -> None:
    """ConfigError, echoing none of it, when the URI (of `what`) carries credentials."""
    if found := secret_parts(uri):
        scheme = urlsplit(uri).scheme
        raise ConfigError(
            f"the {scheme}:// {what} URI carries credentials ({', '.join(found)}); they would "
            f"be saved in config.yaml and shown in messages. Remove them from the URI and give "
            f"them through {secrets}"
        )


def ray_token() -> str | None:
    """This machine's Ray token, where Ray would read it; None without one."""
    if token := os.environ.get("RAY_AUTH_TOKEN", "").strip():
        return token
    path = Path(os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token")
    try:
        return path.read_text().strip() or None
    except OSError:
        return None


def redact(text: str) -> str:
    """`text` with Ray's token replaced, for any message that quotes Ray or a URI."""
    token = ray_token()
    if token and len(token) >= 8:  # a short "token" would blank out ordinary words
        text = text.replace(token, REDACTED)
    return text
