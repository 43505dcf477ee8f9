"""What the kubelet probes in a pod, on free ports of 127.0.0.1: gRPC's
health service (grpcio, generic handlers: raw protobuf bytes) and an HTTPS
server (the standard library's, with the certificate and key given).

Usage: probe_targets.py CERT_PEM KEY_PEM

Prints {"port": GRPC_PORT} then {"https_port": N}, one line each, and
serves until its stdin closes (the test that started it ended).

grpc.health.v1.Health/Check answers SERVING (status 1) for the server as
a whole ("") and for "shop.Orders", NOT_SERVING (2) for "shop.Sick", and
NOT_FOUND for any other service. HTTPS: GET /healthz answers 200 when the
request has an `x-probe` header (as a probe's httpHeaders would set),
else 403; anything else 500.
"""

import http.server
import json
import ssl
import sys
import threading
from concurrent import futures

import grpc

STATUSES = {"": 1, "shop.Orders": 1, "shop.Sick": 2}


def service_of(request):
    """HealthCheckRequest.service: field 1, a string of under 128 bytes."""
    if len(request) >= 2 and request[0] == 0x0A:
        return request[2 : 2 + request[1]].decode()
    return ""


def check(request, context):
    service = service_of(request)
    if service not in STATUSES:
        context.abort(grpc.StatusCode.NOT_FOUND, f"unknown service {service}")
    return bytes([0x08, STATUSES[service]])


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path != "/healthz":
            status = 500
        elif self.headers.get("x-probe"):
            status = 200
        else:
            status = 403
        self.send_response(status)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


def main():
    cert, key = sys.argv[1], sys.argv[2]
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    handler = grpc.unary_unary_rpc_method_handler(check)
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler("grpc.health.v1.Health", {"Check": handler}),)
    )
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()

    https = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    https.socket = context.wrap_socket(https.socket, server_side=True)
    threading.Thread(target=https.serve_forever, daemon=True).start()

    print(json.dumps({"port": port}))
    print(json.dumps({"https_port": https.server_address[1]}))
    sys.stdin.read()
    server.stop(0)


if __name__ == "__main__":
    main()
