"""A package index over HTTP with the JSON simple API (PEP 691) and upload times (PEP 700), served
from a directory of wheels, for the tests of python.excludeNewer: uv reads upload times only from
such an index. Upload times come from DIR/upload-times.json ({filename: RFC 3339}).
With NIXUV_TEST_INDEX_AUTH=user:password set, every request needs those HTTP Basic credentials
(401 otherwise), as a private index does. With NIXUV_TEST_INDEX_TLS=CERT:KEY it serves HTTPS with
that certificate, as an index behind a private CA does; NIXUV_TEST_INDEX_LOG=FILE appends each
request's path to FILE.
Usage: python3 json_index.py DIR  -> prints the port it listens on (127.0.0.1), then serves."""

import base64

import hashlib
import http.server
import json
import os
import re
import ssl
import sys

ROOT = sys.argv[1]
TIMES = json.load(open(os.path.join(ROOT, "upload-times.json")))
AUTH = os.environ.get("NIXUV_TEST_INDEX_AUTH")
TLS = os.environ.get("NIXUV_TEST_INDEX_TLS")
LOG = os.environ.get("NIXUV_TEST_INDEX_LOG")


def normalise(name):
    return re.sub(r"[-_.]+", "-", name).lower()


class Handler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_HEAD(self):
        self.do_GET(head=True)

    def do_GET(self, head=False):
        if LOG:
            with open(LOG, "a") as log:
                log.write(self.path + "\n")
        if AUTH and self.headers.get("Authorization") != "Basic " + base64.b64encode(AUTH.encode()).decode():
            self.send_response(401)
            self.send_header("WWW-Authenticate", 'Basic realm="private"')
            self.send_header("Content-Length", "0")
            self.end_headers()
            return None
        m = re.fullmatch(r"/simple/([^/]+)/?", self.path)
        if m:
            want = normalise(m.group(1))
            files = []
            for f in sorted(os.listdir(ROOT)):
                if f.endswith(".whl") and normalise(f.split("-")[0]) == want:
                    data = open(os.path.join(ROOT, f), "rb").read()
                    files.append({"filename": f, "url": f"/files/{f}",
                                  "hashes": {"sha256": hashlib.sha256(data).hexdigest()},
                                  "upload-time": TIMES[f]})
            if not files:
                return self.send_error(404)
            body = json.dumps({"meta": {"api-version": "1.1"}, "name": want, "files": files}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/vnd.pypi.simple.v1+json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            return None if head else self.wfile.write(body)
        m = re.fullmatch(r"/files/([^/]+)", self.path)
        if m and os.path.exists(os.path.join(ROOT, m.group(1))):
            body = open(os.path.join(ROOT, m.group(1)), "rb").read()
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            return None if head else self.wfile.write(body)
        self.send_error(404)


server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
if TLS:
    cert, key = TLS.split(":")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    # A client that does not trust the certificate fails the handshake in accept(), which the
    # server survives (it is an OSError).
    server.socket = context.wrap_socket(server.socket, server_side=True)
print(server.server_address[1], flush=True)
server.serve_forever()
