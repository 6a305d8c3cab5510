"""An HTTP server on 127.0.0.1 for the tests of pigeon's download paths. It counts connections, not just
requests, so even a reachability probe that asks for nothing shows."""

from __future__ import annotations

import http.server
import threading


class CountingServer:
    """Serves with `handler` on a free loopback port in a background thread until `close()`."""

    def __init__(self, handler: type[http.server.BaseHTTPRequestHandler]) -> None:
        self.connections = 0
        owner = self

        class Server(http.server.ThreadingHTTPServer):
            daemon_threads = True

            def process_request(self, request, client_address):  # type: ignore[no-untyped-def]
                owner.connections += 1
                super().process_request(request, client_address)

        self.httpd = Server(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)
