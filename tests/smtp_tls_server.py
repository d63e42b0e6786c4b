"""SMTP server for strata's tests: TLS with a throwaway CA, AUTH required.

    smtp_tls_server.py DIR PORT MODE USER PASSWORD [stall]    (MODE: starttls | smtps)

Makes a CA and a certificate for 127.0.0.1 signed by it, writes the CA to
DIR/ca.pem, serves on 127.0.0.1:PORT (STARTTLS required, or TLS from the start),
accepts only USER/PASSWORD, appends each message to DIR/mail.log after a line
"AUTH <user>", and writes DIR/ready once it listens. With `stall`, a failed AUTH
gets no answer at all (a server that hangs mid-session).
"""
import datetime
import ipaddress
import pathlib
import ssl
import sys
import time

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

directory, port, mode, user, password = sys.argv[1:6]
stall = sys.argv[6:7] == ["stall"]
d = pathlib.Path(directory)


def name(cn):
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def certificate(subject, issuer, key, signer, ca):
    now = datetime.datetime.now(datetime.timezone.utc)
    b = (
        x509.CertificateBuilder()
        .subject_name(name(subject))
        .issuer_name(name(issuer))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if ca:
        b = b.add_extension(
            x509.KeyUsage(True, False, False, False, False, True, True, False, False), critical=True
        )
    else:
        b = b.add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False
        ).add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
    return b.sign(signer, hashes.SHA256())


ca_key = ec.generate_private_key(ec.SECP256R1())
ca = certificate("strata test CA", "strata test CA", ca_key, ca_key, True)
server_key = ec.generate_private_key(ec.SECP256R1())
server = certificate("127.0.0.1", "strata test CA", server_key, ca_key, False)
(d / "ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
(d / "server.pem").write_bytes(server.public_bytes(serialization.Encoding.PEM))
(d / "server.key").write_bytes(
    server_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
)
context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
context.load_cert_chain(d / "server.pem", d / "server.key")


class Handler:
    async def handle_DATA(self, server, session, envelope):
        who = session.auth_data.login.decode() if isinstance(session.auth_data, LoginPassword) else "-"
        with open(d / "mail.log", "a", encoding="utf-8") as log:
            log.write(f"AUTH {who}\n{envelope.content.decode('utf-8', 'replace')}\n")
        return "250 OK"


def authenticator(server, session, envelope, mechanism, auth_data):
    ok = (
        isinstance(auth_data, LoginPassword)
        and auth_data.login.decode() == user
        and auth_data.password.decode() == password
    )
    # handled=False: aiosmtpd answers 535 itself on failure; True: nobody answers.
    return AuthResult(success=ok, handled=stall, auth_data=auth_data if ok else None)


options = dict(hostname="127.0.0.1", port=int(port), auth_required=True, authenticator=authenticator)
if mode == "starttls":
    controller = Controller(Handler(), tls_context=context, require_starttls=True, **options)
else:
    # aiosmtpd sees TLS only when it did the STARTTLS itself; this connection is TLS already.
    controller = Controller(
        Handler(), ssl_context=context, server_hostname="127.0.0.1", auth_require_tls=False, **options
    )
controller.start()
(d / "ready").write_text("ok")
while True:
    time.sleep(3600)
