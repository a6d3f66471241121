"""Canaille 0.3.6's SCIM server on a free loopback port, for the test suite.

Runs under .venv-canaille's Python (requirements/canaille.txt), never scimsync's: it needs
an older scim2-models. Prints one JSON line, {"url": ..., "token": ...}, once it serves:
the SCIM base URL and a bearer token from its OAuth token endpoint (client credentials,
so no user's permissions apply). Serves until stdin closes.
"""

from __future__ import annotations

import datetime
import json
import os
import sys
import threading
import uuid

import httpx
import portpicker
from canaille import create_app
from canaille.backends import Backend
from joserfc.jwk import JWKRegistry
from pytest_iam import Server

CLIENT_ID = "scimsync-tests"


def main() -> None:
    port = portpicker.pick_unused_port()
    os.environ["AUTHLIB_INSECURE_TRANSPORT"] = "1"  # plain HTTP on loopback
    key = JWKRegistry.generate_key("RSA", 2048)
    key.ensure_kid()
    config = {
        "TESTING": True,
        "SECRET_KEY": uuid.uuid4().hex,
        "WTF_CSRF_ENABLED": False,
        "SERVER_NAME": f"localhost:{port}",
        "PREFERRED_URL_SCHEME": "http",
        "CANAILLE": {"DATABASE": "memory"},  # its SQL backend breaks after one 500
        "CANAILLE_OIDC": {"ACTIVE_JWKS": [key.as_dict(private=True)]},
        "CANAILLE_SCIM": {"ENABLE_SERVER": True},
    }
    app = create_app(config=config, env_file=None)
    server = Server(app, port, Backend.instance)
    threading.Thread(target=server.httpd.serve_forever, daemon=True).start()
    secret = uuid.uuid4().hex
    with app.app_context():
        client = server.models.Client(
            client_id=CLIENT_ID,
            client_secret=secret,
            client_id_issued_at=datetime.datetime.now(datetime.UTC),
            grant_types=["client_credentials"],
            response_types=[],
            token_endpoint_auth_method="client_secret_basic",
            scope=["openid"],
            redirect_uris=[],
        )
        server.backend.save(client)
    answer = httpx.post(
        f"{server.url}oauth/token",
        auth=(CLIENT_ID, secret),
        data={"grant_type": "client_credentials"},
    )
    answer.raise_for_status()
    token = answer.json()["access_token"]
    print(json.dumps({"url": f"{server.url}scim/v2", "token": token}), flush=True)
    sys.stdin.read()  # until the test session closes our stdin
    server.httpd.shutdown()


if __name__ == "__main__":
    main()
