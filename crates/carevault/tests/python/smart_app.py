"""A SMART standalone-launch app built on authlib, against the real carevault server.

Usage: smart_app.py CONFIG.json, where the JSON holds: root (https://host:port), fhir (the FHIR
base), ca (the server's certificate), client_id, redirect_uri, username, password, totp_secret
(base32), patient (the Patient id the account is linked to).

It discovers the endpoints from /.well-known/smart-configuration, runs authorization code + PKCE
S256 with authlib's OAuth2Session, signs in through the real /login form (TOTP computed here by
RFC 6238), approves the consent page, checks the ID token with authlib's JOSE against
/oauth2/jwks, reads the patient's record with fhirpy, refreshes (rotation, reuse detection),
introspects and revokes. Exits non-zero with a message at the first mismatch.
"""
import base64
import hashlib
import hmac
import html
import json
import re
import struct
import sys
import time
from urllib.parse import parse_qs, urljoin, urlparse

import requests
from authlib.common.security import generate_token
from authlib.integrations.requests_client import OAuth2Session
from authlib.jose import JsonWebKey, jwt
from fhirpy import SyncFHIRClient


def totp(secret_b32: str, at: float) -> str:
    """RFC 6238 TOTP (SHA-1, 30 s, 6 digits), written from the RFC, not taken from the server."""
    key = base64.b32decode(secret_b32.upper() + "=" * (-len(secret_b32) % 8))
    counter = struct.pack(">Q", int(at) // 30)
    mac = hmac.new(key, counter, hashlib.sha1).digest()
    offset = mac[-1] & 0x0F
    code = (struct.unpack(">I", mac[offset:offset + 4])[0] & 0x7FFFFFFF) % 1_000_000
    return f"{code:06d}"


def hidden_fields(page: str) -> dict:
    fields = {}
    for tag in re.findall(r"<input[^>]*>", page):
        name = re.search(r'name="([^"]*)"', tag)
        value = re.search(r'value="([^"]*)"', tag)
        kind = re.search(r'type="([^"]*)"', tag)
        if name and kind and kind.group(1) == "hidden":
            fields[html.unescape(name.group(1))] = html.unescape(value.group(1) if value else "")
    return fields


def check(cond, message):
    if not cond:
        print("FAILED:", message, file=sys.stderr)
        sys.exit(1)


def main() -> None:
    cfg = json.load(open(sys.argv[1]))
    ca = cfg["ca"]
    browser = requests.Session()
    browser.verify = ca
    browser.trust_env = False  # else REQUESTS_CA_BUNDLE would override verify

    conf = browser.get(cfg["root"] + "/.well-known/smart-configuration").json()
    check("S256" in conf["code_challenge_methods_supported"], conf)
    check("launch-standalone" in conf["capabilities"], conf)

    def sign_in_and_approve(scope: str):
        """Runs one authorization request; returns (session, code_verifier, callback URL, nonce)."""
        app = OAuth2Session(
            cfg["client_id"], redirect_uri=cfg["redirect_uri"], scope=scope,
            code_challenge_method="S256", token_endpoint_auth_method="none",
        )
        app.verify = ca
        app.trust_env = False
        verifier = generate_token(64)
        nonce = generate_token(16)
        url, state = app.create_authorization_url(
            conf["authorization_endpoint"], code_verifier=verifier, aud=cfg["fhir"], nonce=nonce,
        )
        r = browser.get(url, allow_redirects=False)
        if r.status_code == 303 and "/login" in r.headers["location"]:
            login_url = urljoin(cfg["root"], r.headers["location"])
            page = browser.get(login_url)
            check(page.status_code == 200, f"login page: {page.status_code}")
            form = hidden_fields(page.text)
            form.update(username=cfg["username"], password=cfg["password"],
                        otp=totp(cfg["totp_secret"], time.time()))
            r = browser.post(cfg["root"] + "/login", data=form, allow_redirects=False)
            check(r.status_code == 303, f"sign-in refused: {r.status_code} {r.text[:300]}")
            back = urljoin(cfg["root"], r.headers["location"])
            check(urlparse(back).path == "/oauth2/authorize", f"sign-in went to {back}")
            r = browser.get(back, allow_redirects=False)
        check(r.status_code == 200, f"consent page: {r.status_code} {r.text[:300]}")
        check("Allow" in r.text and "patient/Patient.rs" in r.text, "consent page lists the scopes")
        form = hidden_fields(r.text)
        check("csrf" in form, "consent form carries a CSRF token")
        form["decision"] = "approve"
        r = browser.post(cfg["root"] + "/oauth2/authorize", data=form, allow_redirects=False)
        check(r.status_code == 303, f"approval: {r.status_code} {r.text[:300]}")
        callback = r.headers["location"]
        check(callback.startswith(cfg["redirect_uri"]), callback)
        check(parse_qs(urlparse(callback).query)["state"] == [state], "state echoed")
        return app, verifier, callback, nonce

    scope = "openid fhirUser launch/patient offline_access patient/Patient.rs patient/Observation.rs"
    app, verifier, callback, nonce = sign_in_and_approve(scope)
    token = app.fetch_token(conf["token_endpoint"], authorization_response=callback,
                            code_verifier=verifier)
    check(token.get("patient") == cfg["patient"], f"launch context patient: {token}")
    check("refresh_token" in token and "id_token" in token, token.keys())
    granted = token["scope"].split()
    check("patient/Patient.rs" in granted and "offline_access" in granted, granted)

    # The ID token, checked by authlib's JOSE with the server's published keys.
    jwks = browser.get(conf["jwks_uri"]).json()
    claims = jwt.decode(token["id_token"], JsonWebKey.import_key_set(jwks),
                        claims_options={"iss": {"essential": True, "value": cfg["root"]},
                                        "aud": {"essential": True, "value": cfg["client_id"]},
                                        "nonce": {"essential": True, "value": nonce}})
    claims.validate()
    check(claims["sub"] == cfg["username"], claims)
    check(claims["fhirUser"] == f"{cfg['fhir']}/Patient/{cfg['patient']}", claims)

    # FHIR data through fhirpy with the user's token.
    fhir = SyncFHIRClient(cfg["fhir"], authorization=f"Bearer {token['access_token']}",
                          requests_config={"verify": ca})
    me = fhir.reference("Patient", cfg["patient"]).to_resource()
    check(me.id == cfg["patient"], me)

    def introspect(tok):
        r = browser.post(conf["introspection_endpoint"],
                         data={"token": tok, "client_id": cfg["client_id"]})
        check(r.status_code == 200, f"introspect: {r.status_code} {r.text}")
        return r.json()

    info = introspect(token["access_token"])
    check(info["active"] is True and info["patient"] == cfg["patient"], info)
    check(info["sub"] == cfg["username"] and info["client_id"] == cfg["client_id"], info)
    check(info["fhirUser"] == f"Patient/{cfg['patient']}", info)

    # Refresh: rotates on every use.
    r1 = token["refresh_token"]
    t2 = app.refresh_token(conf["token_endpoint"], refresh_token=r1)
    r2 = t2["refresh_token"]
    check(r2 != r1, "refresh token rotated")
    t3 = app.refresh_token(conf["token_endpoint"], refresh_token=r2)
    r3 = t3["refresh_token"]
    check(introspect(t3["access_token"])["active"] is True, "fresh token active")
    # Reuse of an old refresh token revokes the whole family, including the newest tokens.
    reuse = browser.post(conf["token_endpoint"], data={
        "grant_type": "refresh_token", "refresh_token": r1, "client_id": cfg["client_id"]})
    check(reuse.status_code == 400 and reuse.json()["error"] == "invalid_grant", reuse.text)
    after = browser.post(conf["token_endpoint"], data={
        "grant_type": "refresh_token", "refresh_token": r3, "client_id": cfg["client_id"]})
    check(after.status_code == 400 and after.json()["error"] == "invalid_grant", after.text)
    check(introspect(t3["access_token"]) == {"active": False}, "family's access token revoked")
    denied = browser.get(cfg["fhir"] + f"/Patient/{cfg['patient']}",
                         headers={"Authorization": f"Bearer {t3['access_token']}"})
    check(denied.status_code == 401, f"revoked token read: {denied.status_code}")

    # A second approval (still signed in: consent only), then RFC 7009 revocation.
    app, verifier, callback, _ = sign_in_and_approve(scope)
    token = app.fetch_token(conf["token_endpoint"], authorization_response=callback,
                            code_verifier=verifier)
    fhir = SyncFHIRClient(cfg["fhir"], authorization=f"Bearer {token['access_token']}",
                          requests_config={"verify": ca})
    check(fhir.reference("Patient", cfg["patient"]).to_resource().id == cfg["patient"], "read")
    app.revoke_token(conf["revocation_endpoint"], token["access_token"],
                     token_type_hint="access_token").raise_for_status()
    check(introspect(token["access_token"]) == {"active": False}, "revoked access token")
    denied = browser.get(cfg["fhir"] + f"/Patient/{cfg['patient']}",
                         headers={"Authorization": f"Bearer {token['access_token']}"})
    check(denied.status_code == 401, f"revoked token read: {denied.status_code}")
    check(introspect(token["refresh_token"])["active"] is True, "refresh token still live")
    app.revoke_token(conf["revocation_endpoint"], token["refresh_token"],
                     token_type_hint="refresh_token").raise_for_status()
    check(introspect(token["refresh_token"]) == {"active": False}, "revoked refresh token")
    gone = browser.post(conf["token_endpoint"], data={
        "grant_type": "refresh_token", "refresh_token": token["refresh_token"],
        "client_id": cfg["client_id"]})
    check(gone.status_code == 400 and gone.json()["error"] == "invalid_grant", gone.text)
    print("smart app flow ok")


if __name__ == "__main__":
    main()
