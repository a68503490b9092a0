"""Settings of the callbacks service's outside integrations (CXMESH_CALLBACKS_*)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class CallbackSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CXMESH_CALLBACKS_")

    # reCAPTCHA: used only by services with captcha_required; without a secret they refuse
    # every create (fail closed).
    recaptcha_verify_url: str = "https://www.google.com/recaptcha/api/siteverify"
    recaptcha_secret: SecretStr | None = None
    # FCM HTTP v1: a service account's JSON key (its project_id, client_email, private_key
    # and token_uri); unset = no push notifications.
    fcm_service_account_file: Path | None = None
    fcm_url: str = "https://fcm.googleapis.com"
    # A notification is tried this many times, waiting backoff × 2^n between tries.
    push_max_attempts: int = Field(default=5, ge=1, le=20)
    push_backoff_seconds: float = Field(default=1.0, gt=0)
    # Timeout of every outside HTTP call.
    http_timeout_seconds: float = Field(default=5.0, gt=0)
