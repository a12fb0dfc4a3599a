"""A real HTTP server on 127.0.0.1 for download tests (standard library only):
Range support on or off, a first request cut half-way, a request log."""
import re
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest


class _Site:
    """What the test server serves and how; ``requests`` logs (path, Range header)."""

    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.ranges = True          # False: ignore Range, always answer 200 with everything
        self.cut_once: set[str] = set()  # first GET of these paths sends half, then closes
        self.requests: list[tuple[str, str | None]] = []
        self.url = ""


def _handler(site: "_Site"):
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            wanted = self.headers.get("Range")
            site.requests.append((self.path, wanted))
            body = site.files.get(self.path)
            if body is None:
                self.send_error(404)
                return
            start = 0
            if wanted and site.ranges:
                start = int(re.fullmatch(r"bytes=(\d+)-", wanted).group(1))
                if start >= len(body):
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{len(body)}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
            else:
                self.send_response(200)
            payload = body[start:]
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            if self.path in site.cut_once:
                site.cut_once.discard(self.path)
                self.wfile.write(payload[:len(payload) // 2])
                self.close_connection = True
                return
            self.wfile.write(payload)

        def log_message(self, *args):
            pass

    return Handler


@pytest.fixture
def site():
    site = _Site()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(site))
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.01},
                              daemon=True)
    thread.start()
    site.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    yield site
    httpd.shutdown()
    httpd.server_close()
    thread.join()


@pytest.fixture
def closed_url():
    """A URL on a port nobody listens on: connection refused at once."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/models"
