"""SMART Backend Services with authlib, against the real carevault server.

Usage: backend_services.py CONFIG.json, where the JSON holds: root, fhir, ca, bin (the carevault
binary), data (the data directory), workdir (a scratch directory).

For each of RS384 and ES384 it generates a key pair here (joserfc, authlib's JOSE engine),
registers a client with `carevault client add NAME --scope ... --jwks FILE` (public keys only),
then gets tokens with authlib's OAuth2Session and its PrivateKeyJWT client authentication, reads
FHIR data with fhirpy, and checks that a replayed assertion (same jti) is refused. Exits non-zero
with a message at the first mismatch.
"""
import json
import os
import subprocess
import sys
import time

import requests
from authlib.integrations.requests_client import OAuth2Session
from authlib.oauth2.rfc7523 import PrivateKeyJWT
from fhirpy import SyncFHIRClient
from joserfc.jwk import ECKey, RSAKey


def check(cond, message):
    if not cond:
        print("FAILED:", message, file=sys.stderr)
        sys.exit(1)


class FreshPrivateKeyJWT(PrivateKeyJWT):
    """authlib's private_key_jwt, with exp five minutes ahead at most (SMART) instead of its
    default hour; a fresh jti each time (authlib adds one)."""

    def sign(self, auth, token_endpoint):
        self.claims = {"exp": int(time.time()) + 240}
        return super().sign(auth, token_endpoint)


class RecordingPrivateKeyJWT(FreshPrivateKeyJWT):
    """Keeps the last assertion so the test can replay it."""

    last = None

    def sign(self, auth, token_endpoint):
        RecordingPrivateKeyJWT.last = super().sign(auth, token_endpoint)
        return RecordingPrivateKeyJWT.last


def main() -> None:
    cfg = json.load(open(sys.argv[1]))
    conf = requests.get(cfg["root"] + "/.well-known/smart-configuration", verify=cfg["ca"]).json()
    token_url = conf["token_endpoint"]
    check("private_key_jwt" in conf["token_endpoint_auth_methods_supported"], conf)
    check({"RS384", "ES384"} <= set(conf["token_endpoint_auth_signing_alg_values_supported"]), conf)

    for alg, key in [
        ("RS384", RSAKey.generate_key(2048, parameters={"kid": "rsa-1", "alg": "RS384"})),
        ("ES384", ECKey.generate_key("P-384", parameters={"kid": "ec-1", "alg": "ES384"})),
    ]:
        name = f"backend-{alg.lower()}"
        jwks_file = os.path.join(cfg["workdir"], f"{name}.jwks.json")
        with open(jwks_file, "w") as f:
            json.dump({"keys": [key.as_dict(private=False)]}, f)
        out = subprocess.run([cfg["bin"], "client", "add", name, "--scope",
                              "system/Patient.rs system/Observation.rs", "--jwks", jwks_file,
                              "--data", cfg["data"]], capture_output=True, text=True)
        check(out.returncode == 0 and out.stdout.strip() == name, f"client add: {out}")

        pem = key  # the joserfc key object itself
        session = OAuth2Session(
            name, pem, token_endpoint_auth_method=RecordingPrivateKeyJWT(
                token_url, alg=alg, headers={"kid": key.kid}),
            scope="system/Patient.rs",
        )
        session.verify = cfg["ca"]
        session.trust_env = False  # else REQUESTS_CA_BUNDLE would override verify
        token = session.fetch_token(token_url, grant_type="client_credentials")
        check(token["scope"] == "system/Patient.rs", token)
        check(token["token_type"] == "Bearer" and token["expires_in"] <= 900, token)

        fhir = SyncFHIRClient(cfg["fhir"], authorization=f"Bearer {token['access_token']}",
                              requests_config={"verify": cfg["ca"]})
        found = fhir.resources("Patient").limit(1).fetch()
        check(isinstance(found, list), found)

        # The very same assertion again: jti replay.
        replay = requests.post(token_url, verify=cfg["ca"], data={
            "grant_type": "client_credentials", "scope": "system/Patient.rs",
            "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            "client_assertion": RecordingPrivateKeyJWT.last})
        check(replay.status_code == 401 and replay.json()["error"] == "invalid_client",
              f"replay: {replay.status_code} {replay.text}")
        check("jti" in replay.json()["error_description"], replay.text)

        # A second, fresh assertion works (new jti).
        again = session.fetch_token(token_url, grant_type="client_credentials")
        check(again["access_token"] != token["access_token"], "a new token")

        # authlib's default one-hour assertion is refused: exp at most five minutes ahead.
        lazy = OAuth2Session(name, pem, token_endpoint_auth_method=PrivateKeyJWT(
            token_url, alg=alg, headers={"kid": key.kid}))
        lazy.verify = cfg["ca"]
        lazy.trust_env = False
        try:
            lazy.fetch_token(token_url, grant_type="client_credentials")
            check(False, "a one-hour assertion was accepted")
        except Exception as e:  # authlib raises OAuthError with the server's error
            check("invalid_client" in str(e), e)
    print("backend services ok")


if __name__ == "__main__":
    main()
