"""Local stand-ins for Google's endpoints that speak their real protocols: reCAPTCHA
siteverify, the OAuth 2.0 token endpoint of service accounts (JWT bearer grant), and FCM
HTTP v1 messages:send (which fails with 503 on its first call, to exercise retries)."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

PROJECT = "cxmesh-test"
SECRET = "recaptcha-secret"
GOOD_TOKEN = "good-captcha-token"


class FakeGoogle:
    def __init__(self, folder: Path) -> None:
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.messages: list[dict[str, Any]] = []
        self.failures_left = 1
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self.account_file = folder / "service-account.json"
        pem = self.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode()
        self.account_file.write_text(
            json.dumps(
                {
                    "type": "service_account",
                    "project_id": PROJECT,
                    "private_key_id": "k1",
                    "private_key": pem,
                    "client_email": f"push@{PROJECT}.iam.gserviceaccount.com",
                    "token_uri": f"{self.url}/token",
                }
            )
        )
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def _answer(self, status: int, body: dict[str, Any]) -> None:
                payload = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                if self.path == "/siteverify":
                    form = {k: v[0] for k, v in parse_qs(body.decode()).items()}
                    ok = form.get("secret") == SECRET and form.get("response") == GOOD_TOKEN
                    self._answer(
                        200,
                        {"success": ok, "error-codes": [] if ok else ["invalid-input-response"]},
                    )
                elif self.path == "/token":
                    form = {k: v[0] for k, v in parse_qs(body.decode()).items()}
                    claims = jwt.decode(
                        form["assertion"],
                        fake.key.public_key(),
                        algorithms=["RS256"],
                        audience=f"{fake.url}/token",
                    )
                    assert form["grant_type"] == "urn:ietf:params:oauth:grant-type:jwt-bearer"
                    assert claims["scope"].endswith("firebase.messaging")
                    self._answer(200, {"access_token": "fake-access", "expires_in": 3600})
                elif self.path == f"/v1/projects/{PROJECT}/messages:send":
                    if self.headers.get("authorization") != "Bearer fake-access":
                        self._answer(401, {"error": {"status": "UNAUTHENTICATED"}})
                    elif fake.failures_left > 0:
                        fake.failures_left -= 1
                        self._answer(503, {"error": {"status": "UNAVAILABLE"}})
                    else:
                        fake.messages.append(json.loads(body)["message"])
                        self._answer(
                            200, {"name": f"projects/{PROJECT}/messages/{len(fake.messages)}"}
                        )
                else:
                    self._answer(404, {})

        return Handler
