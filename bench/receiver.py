"""A webhook receiver on loopback for the benchmark's alert work.

``with webhook_receiver() as url:`` serves HTTP on 127.0.0.1 (a free port), answers every POST with
200 and counts them, and sets ``BENCH_WEBHOOK_URL`` for the pipelines the bench starts.
"""
import contextlib
import http.server
import os
import threading


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_POST(self):  # noqa: N802 (the name http.server calls)
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.server.posts += 1
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


@contextlib.contextmanager
def webhook_receiver():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.posts = 0
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = "http://127.0.0.1:%d/hook" % server.server_address[1]
    previous = os.environ.get("BENCH_WEBHOOK_URL")
    os.environ["BENCH_WEBHOOK_URL"] = url
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        if previous is None:
            os.environ.pop("BENCH_WEBHOOK_URL", None)
        else:
            os.environ["BENCH_WEBHOOK_URL"] = previous
