"""Keep-alive and idle limit, seen by Python's own HTTP and TLS (OpenSSL) stacks.

For plain HTTP (:8080) and HTTPS (:8443): two requests on one connection, 1 s apart; then waits
for the server to close the silent connection. Prints one line per protocol:
  <scheme> <status 1> <status 2> closed-after <seconds>
"""
import socket
import ssl
import sys
import time

server = sys.argv[1]


def connect(tls):
    s = socket.create_connection((server, 8443 if tls else 8080), timeout=30)
    if tls:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        s = ctx.wrap_socket(s)
    return s


def get(s):
    s.sendall(b"GET /healthz HTTP/1.1\r\nHost: unbrick\r\n\r\n")
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = s.recv(4096)
        if not chunk:
            return "closed"
        buf += chunk
    head, body = buf.split(b"\r\n\r\n", 1)
    length = 0
    for line in head.split(b"\r\n")[1:]:
        k, _, v = line.partition(b":")
        if k.strip().lower() == b"content-length":
            length = int(v)
    while len(body) < length:
        body += s.recv(4096)
    return head.split(b" ")[1].decode()


for tls in (False, True):
    s = connect(tls)
    first = get(s)
    time.sleep(1)
    second = get(s)
    t = time.time()
    try:
        rest = s.recv(16)
    except (ConnectionError, ssl.SSLError):
        rest = b""
    state = "closed-after" if rest == b"" else "data"
    print("https" if tls else "http", first, second, state, round(time.time() - t, 1), flush=True)
