"""A local SMTP server for tests (aiosmtpd): accepts every message on
127.0.0.1:PORT and appends it, parsed, as one JSON line to OUT:
{"mail_from", "rcpt_tos", "from", "to", "subject", "text", "html"}.
Prints "ready" once listening; runs until killed.

With CERT and KEY it requires STARTTLS; with USER:PASSWORD as well it
requires AUTH (PLAIN or LOGIN, over TLS only) with those credentials.

usage: python smtp_sink.py PORT OUT [CERT KEY [USER:PASSWORD]]
"""

import email
import json
import ssl
import sys
import time
from email import policy

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult


class Sink:
    def __init__(self, out):
        self.out = out

    async def handle_DATA(self, server, session, envelope):
        msg = email.message_from_bytes(envelope.content, policy=policy.default)
        rec = {
            "mail_from": envelope.mail_from,
            "rcpt_tos": envelope.rcpt_tos,
            "from": str(msg["from"]),
            "to": str(msg["to"]),
            "subject": str(msg["subject"]),
            "text": None,
            "html": None,
        }
        for part in msg.walk():
            kind = part.get_content_type()
            if kind == "text/plain" and rec["text"] is None:
                rec["text"] = part.get_content()
            elif kind == "text/html" and rec["html"] is None:
                rec["html"] = part.get_content()
        with open(self.out, "a", encoding="utf-8") as f:
            f.write(json.dumps(rec) + "\n")
        return "250 OK"


def authenticator_for(user, password):
    def check(server, session, envelope, mechanism, auth_data):
        ok = (
            auth_data.login == user.encode()
            and auth_data.password == password.encode()
        )
        return AuthResult(success=ok)

    return check


def main():
    port, out = int(sys.argv[1]), sys.argv[2]
    kwargs = {}
    if len(sys.argv) >= 5:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(sys.argv[3], sys.argv[4])
        kwargs.update(tls_context=ctx, require_starttls=True)
    if len(sys.argv) >= 6:
        user, password = sys.argv[5].split(":", 1)
        kwargs.update(
            authenticator=authenticator_for(user, password),
            auth_required=True,
            auth_require_tls=True,
        )
    controller = Controller(Sink(out), hostname="127.0.0.1", port=port, **kwargs)
    controller.start()
    print("ready", flush=True)
    try:
        while True:
            time.sleep(3600)
    finally:
        controller.stop()


if __name__ == "__main__":
    main()
