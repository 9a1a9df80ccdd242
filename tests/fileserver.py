"""A file server on 127.0.0.1 for the download tests: HEAD, HTTP Range, dropped connections.

    with serving({"coco/a.zip": blob}) as srv:   # srv.base = "http://127.0.0.1:PORT"
        srv.drops["coco/a.zip"] = 1               # promise the whole body once, send half
        srv.honour_range = False                  # answer every GET whole (200)
        srv.endless["coco/a.zip"] = 1 << 26       # GET: no length, the body + 64 MiB more
        srv.redirects["a"] = "a"                  # answer /a with a redirect to /a

srv.log records (method, name, Range header) of every request, srv.sent the body bytes sent.
"""

import re
import threading
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Handler(BaseHTTPRequestHandler):
    def do_HEAD(self):
        self._serve(body=False)

    def do_GET(self):
        self._serve(body=True)

    def _serve(self, body):
        srv = self.server
        name = self.path.lstrip("/")
        srv.log.append((self.command, name, self.headers.get("Range")))
        if name in srv.redirects:
            self.send_response(302)
            self.send_header("Location", "/" + srv.redirects[name])
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if name not in srv.files:
            self.send_error(404)
            return
        data, start = srv.files[name], 0
        if body and name in srv.endless:  # no length: the client must decide when to stop
            self.send_response(200)
            self.end_headers()
            self.close_connection = True
            out = data + b"\0" * srv.endless[name]
            try:
                for k in range(0, len(out), 1 << 16):
                    self.wfile.write(out[k : k + (1 << 16)])
                    srv.sent += len(out[k : k + (1 << 16)])
            except OSError:  # the client hung up
                pass
            return
        m = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
        if m and srv.honour_range:
            start = int(m.group(1))
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        out = data[start:]
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        if not body:
            return
        if srv.drops.get(name):  # promise the whole body, send half, hang up
            srv.drops[name] -= 1
            out = out[: len(out) // 2]
            self.close_connection = True
        self.wfile.write(out)
        srv.sent += len(out)

    def log_message(self, *args):
        pass


def reset(srv, files):
    """Serve `files` ({name: bytes}) from now on, with fresh counters and full Range support."""
    srv.files, srv.drops, srv.log, srv.sent, srv.honour_range = dict(files), {}, [], 0, True
    srv.endless, srv.redirects = {}, {}


def gets(srv):
    """The Range headers of the GET requests so far, in order (None: from the start)."""
    return [r for method, _, r in srv.log if method == "GET"]


@contextmanager
def serving(files):
    srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    reset(srv, files)
    srv.base = f"http://127.0.0.1:{srv.server_address[1]}"
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    try:
        yield srv
    finally:
        srv.shutdown()
        srv.server_close()
        thread.join()
