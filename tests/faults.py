"""A TCP proxy in front of a real S3 API server (moto) that injects real faults on chosen requests:
an HTTP 503 in place of the answer, or the connection dropped (TCP reset) halfway through the
response body. Every request gets its own upstream connection, and the answer says
`Connection: close`, so that each request is seen and can be matched."""

from __future__ import annotations

import socket
import struct
import threading
from collections import Counter
from dataclasses import dataclass

SERVICE_UNAVAILABLE = (
    b"<?xml version='1.0' encoding='UTF-8'?><Error><Code>ServiceUnavailable</Code>"
    b"<Message>injected by the test proxy</Message></Error>"
)


@dataclass
class Fault:
    method: str
    path_contains: str
    action: str  # "503" or "drop"
    remaining: int  # how many more matching requests get it (-1: every one)


class FaultyProxy:
    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.faults: list[Fault] = []
        self.injected: Counter[tuple[str, str]] = Counter()  # (action, path_contains) -> times
        self.requests: Counter[tuple[str, str]] = Counter()  # (method, path without query) -> times
        self.lock = threading.Lock()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.endpoint = f"http://127.0.0.1:{self.port}"
        threading.Thread(target=self._accept, daemon=True).start()

    def inject(self, method: str, path_contains: str, action: str, times: int = -1) -> None:
        with self.lock:
            self.faults.append(Fault(method, path_contains, action, times))

    def clear(self) -> None:
        with self.lock:
            self.faults.clear()

    def close(self) -> None:
        self.listener.close()

    def _take_fault(self, method: str, target: str) -> Fault | None:
        with self.lock:
            for fault in self.faults:
                if fault.method == method and fault.path_contains in target and fault.remaining != 0:
                    fault.remaining -= 1 if fault.remaining > 0 else 0
                    self.injected[(fault.action, fault.path_contains)] += 1
                    return fault
        return None

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        try:
            head, body = _read_request(client)
            if head is None:
                return
            request_line, *header_lines = head.split(b"\r\n")
            method, target = request_line.decode("latin-1").split(" ")[:2]
            with self.lock:
                self.requests[(method, target.split("?", 1)[0])] += 1
            fault = self._take_fault(method, target)
            if fault is not None and fault.action == "503":
                client.sendall(
                    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/xml\r\n"
                    + f"Content-Length: {len(SERVICE_UNAVAILABLE)}\r\n".encode()
                    + b"Connection: close\r\n\r\n"
                    + SERVICE_UNAVAILABLE
                )
                return
            kept = [h for h in header_lines if not h.lower().startswith(b"connection:")]
            request = b"\r\n".join([request_line, *kept, b"Connection: close"]) + b"\r\n\r\n" + body
            with socket.create_connection(("127.0.0.1", self.upstream_port)) as upstream:
                upstream.sendall(request)
                response = _read_all(upstream)
            if fault is not None and fault.action == "drop":
                header_end = response.find(b"\r\n\r\n") + 4
                client.sendall(response[: header_end + max(1, (len(response) - header_end) // 2)])
                client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # reset
                return
            client.sendall(_with_connection_close(response))
        except OSError:
            pass
        finally:
            client.close()


def _read_request(client: socket.socket) -> tuple[bytes | None, bytes]:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = client.recv(65536)
        if not chunk:
            return None, b""
        data += chunk
    head, body = data.split(b"\r\n\r\n", 1)
    length, kept = 0, []
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
        if name.strip().lower() == b"expect" and value.strip().lower() == b"100-continue":
            client.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")  # botocore waits for it before a body
            continue
        kept.append(line)
    head = b"\r\n".join(kept)
    while len(body) < length:
        chunk = client.recv(65536)
        if not chunk:
            break
        body += chunk
    return head, body


def _read_all(sock: socket.socket) -> bytes:
    chunks = []
    while chunk := sock.recv(1 << 20):
        chunks.append(chunk)
    return b"".join(chunks)


def _with_connection_close(response: bytes) -> bytes:
    head, sep, body = response.partition(b"\r\n\r\n")
    lines = [h for h in head.split(b"\r\n") if not h.lower().startswith(b"connection:")]
    return b"\r\n".join([*lines, b"Connection: close"]) + sep + body
