"""A token service for the distribution registry, answering the way Harbor's /service/token does.

Harbor does not check registry credentials in the registry: the registry answers 401 with
`WWW-Authenticate: Bearer realm="https://<harbor>/service/token",service="harbor-registry",scope="..."`, the
client fetches a JWT from the realm with HTTP basic credentials, and the registry (distribution) checks the
token's RS256 signature against a root certificate bundle. This issuer signs such tokens (x5c header, the claims
distribution checks: iss, aud, exp, nbf, access), so that a real distribution registry runs in Harbor's auth
mode. It grants the requested actions to a known user, none to anonymous requests, and 401s bad credentials.
It is the token half of Harbor only: no projects, no robot accounts, no policies.
"""

import base64
import datetime
import ipaddress
import json
import ssl
import time
import uuid
from http.server import BaseHTTPRequestHandler
from urllib.parse import parse_qs, urlparse

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID
from harbor_standin import BackgroundServer


def _b64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def signing_pair(common_name):
    """A fresh RSA key and a self-signed certificate for it (the registry's rootcertbundle)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def server_pair(ca_cert_pem, ca_key_pem, names, addresses=()):
    """A TLS key and certificate for `names`/`addresses`, signed by the given CA (PEM bytes)."""
    ca_cert = x509.load_pem_x509_certificate(ca_cert_pem)
    ca_key = serialization.load_pem_private_key(ca_key_pem, password=None)
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    now = datetime.datetime.now(datetime.UTC)
    alternative = [x509.DNSName(name) for name in names] + [
        x509.IPAddress(ipaddress.ip_address(address)) for address in addresses
    ]
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, (list(names) or list(addresses))[0])]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(alternative), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return key, cert


def pem(key=None, cert=None):
    if cert is not None:
        return cert.public_bytes(serialization.Encoding.PEM)
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
    )


class TokenIssuer(BackgroundServer):
    def __init__(self, users, *, issuer, service, tls_cert_file, tls_key_file):
        """users: {name: password}"""
        self.users = users
        self.issuer = issuer
        self.service = service
        self.signing_key, self.signing_cert = signing_pair(f"{issuer} token signer")
        self.requests = []
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(tls_cert_file, tls_key_file)
        super().__init__(self._handler(), context)
        self.realm = f"{self.url}/service/token"

    def token(self, subject, access):
        header = {
            "typ": "JWT",
            "alg": "RS256",
            "x5c": [base64.b64encode(self.signing_cert.public_bytes(serialization.Encoding.DER)).decode()],
        }
        now = int(time.time())
        claims = {
            "iss": self.issuer,
            "sub": subject,
            "aud": self.service,
            "exp": now + 1800,
            "nbf": now - 60,
            "iat": now,
            "jti": uuid.uuid4().hex,
            "access": access,
        }
        signed = f"{_b64url(json.dumps(header).encode())}.{_b64url(json.dumps(claims).encode())}"
        signature = self.signing_key.sign(signed.encode(), padding.PKCS1v15(), hashes.SHA256())
        return f"{signed}.{_b64url(signature)}"

    def _handler(self):
        issuer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                url = urlparse(self.path)
                query = parse_qs(url.query)
                user = None
                header = self.headers.get("Authorization", "")
                if header.startswith("Basic "):
                    name, _sep, password = base64.b64decode(header[6:]).decode().partition(":")
                    if issuer.users.get(name) != password:
                        self._reply(401, {"errors": [{"code": "UNAUTHORIZED", "message": "bad credentials"}]})
                        return
                    user = name
                scopes = query.get("scope", [])
                issuer.requests.append({"user": user, "scopes": scopes, "service": query.get("service", [""])[0]})
                if url.path != "/service/token":
                    self._reply(404, {"errors": [{"code": "NOT_FOUND"}]})
                    return
                access = []
                for scope in scopes if user else []:
                    kind, _sep, rest = scope.partition(":")
                    name, _sep, actions = rest.rpartition(":")
                    access.append({"type": kind, "name": name, "actions": [a for a in actions.split(",") if a]})
                token = issuer.token(user or "", access)
                self._reply(200, {"token": token, "access_token": token, "expires_in": 1800})

            def _reply(self, status, body):
                payload = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        return Handler
