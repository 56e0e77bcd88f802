#!/usr/bin/env python3
"""Test helper run inside a client namespace: speaks raw DHCP or sends garbage.

  dhcp_probe.py pxe4011 SERVER MAC      PXE boot-server REQUEST to SERVER:4011; prints the reply
  dhcp_probe.py release SERVER MAC IP   DHCPRELEASE of IP, sent from IP:68
  dhcp_probe.py burst SERVER COUNT      COUNT malformed datagrams to :67, :4011 and :69
  dhcp_probe.py windows MAC             a broadcast DISCOVER as Windows (MSFT 5.0) naming MAC as
                                        chaddr, whatever this interface's own MAC is
  dhcp_probe.py flood RATE SECS         broadcast PXE DISCOVERs from random MACs, RATE a second
                                        for SECS seconds; prints how many it sent
  dhcp_probe.py pxetime MAC TRIES       a PXE DISCOVER for MAC, TRIES times; prints the time to
                                        each proxy offer in ms (or "none")
"""
import time
import os, random, socket, struct, sys

def dhcp_request(mac, msg_type, opts):
    hw = bytes.fromhex(mac.replace(":", ""))
    hdr = struct.pack("!BBBBIHH4s4s4s4s16s64s128s", 1, 1, 6, 0, 0x12345678, 0, 0x8000,
                      b"\0" * 4, b"\0" * 4, b"\0" * 4, b"\0" * 4, hw + b"\0" * 10, b"", b"")
    body = bytes([53, 1, msg_type])
    for code, val in opts:
        body += bytes([code, len(val)]) + val
    return hdr + b"\x63\x82\x53\x63" + body + b"\xff"

def parse_reply(data):
    op, = data[0:1]
    yiaddr = socket.inet_ntoa(data[16:20])
    siaddr = socket.inet_ntoa(data[20:24])
    file = data[108:236].split(b"\0")[0].decode()
    opts, i = {}, 240
    while i < len(data) and data[i] != 255:
        if data[i] == 0:
            i += 1; continue
        c, l = data[i], data[i + 1]
        opts[c] = data[i + 2:i + 2 + l]; i += 2 + l
    return op, yiaddr, siaddr, file, opts

def pxe4011(server, mac):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("0.0.0.0", 68))
    s.settimeout(3)
    pkt = dhcp_request(mac, 3, [(60, b"PXEClient:Arch:00007:UNDI:003000"), (93, b"\x00\x07"),
                                (97, b"\x00" + os.urandom(16))])
    s.sendto(pkt, (server, 4011))
    data, src = s.recvfrom(2048)
    op, yiaddr, siaddr, file, opts = parse_reply(data)
    print(f"from={src[0]}:{src[1]} op={op} type={opts[53][0]} yiaddr={yiaddr} siaddr={siaddr} file={file} "
          f"vendor={opts.get(60, b'').decode()} serverid={socket.inet_ntoa(opts[54])}")

def release(server, mac, ip):
    hw = bytes.fromhex(mac.replace(":", ""))
    pkt = bytearray(dhcp_request(mac, 7, [(54, socket.inet_aton(server))]))
    pkt[12:16] = socket.inet_aton(ip)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((ip, 68))
    s.sendto(bytes(pkt), (server, 67))
    print("released", ip)

def windows(mac):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, b"eth0")
    s.bind(("0.0.0.0", 68))
    pkt = dhcp_request(mac, 1, [(60, b"MSFT 5.0")])
    for _ in range(3):
        s.sendto(pkt, ("255.255.255.255", 67))
    print("sent a Windows DISCOVER for", mac)

def burst(server, count):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rnd = random.Random(7)
    for n in range(count):
        size = rnd.choice([0, 1, 3, 4, 50, 240, 241, 300, 600, 1400])
        data = bytes(rnd.getrandbits(8) for _ in range(size))
        if n % 3 == 0 and size >= 240:
            # Plausible header, hostile options: long hlen, truncated TLVs, option 121 nonsense.
            data = bytearray(data); data[0] = 1; data[1] = 1; data[2] = rnd.choice([6, 16, 41, 255])
            data[236:240] = b"\x63\x82\x53\x63"; data[240:246] = bytes([53, 1, 1, 121, 200, 40])
            data = bytes(data)
        for port in (67, 4011, 69):
            s.sendto(data, (server, port))
    # TFTP requests that look almost right.
    for bad in [b"\x00\x01", b"\x00\x01x", b"\x00\x02file\x00octet\x00", b"\x00\x01f\x00mail\x00",
                b"\x00\x01f\x00octet\x00blksize\x00", b"\x00\x05\x00\x01oops\x00", b"\x00\x04\x00\x01"]:
        s.sendto(bad, (server, 69))
    print("sent", count)

def bcast():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, b"eth0")
    return s

PXE_OPTS = [(60, b"PXEClient:Arch:00000:UNDI:002001"), (93, b"\x00\x00")]

def flood(rate, secs):
    s = bcast()
    s.bind(("0.0.0.0", 0))
    sent, start = 0, time.time()
    while time.time() - start < secs:
        for _ in range(max(1, rate // 100)):
            mac = "02:" + ":".join("%02x" % b for b in os.urandom(5))
            s.sendto(dhcp_request(mac, 1, PXE_OPTS), ("255.255.255.255", 67))
            sent += 1
        time.sleep(0.01)
    print("sent %d spoofed PXE DISCOVERs in %.1f s (%.0f a second)" % (sent, time.time() - start, sent / (time.time() - start)), flush=True)

def pxetime(mac, tries):
    s = bcast()
    s.bind(("0.0.0.0", 68))
    s.settimeout(1.0)
    hw = bytes.fromhex(mac.replace(":", ""))
    out = []
    for _ in range(tries):
        t = time.time()
        s.sendto(dhcp_request(mac, 1, PXE_OPTS), ("255.255.255.255", 67))
        got = None
        while time.time() - t < 1.0:
            try:
                d, _ = s.recvfrom(2048)
            except socket.timeout:
                break
            if d[28:34] == hw and d[0] == 2:
                got = (time.time() - t) * 1000
                break
        out.append("%.0f" % got if got is not None else "none")
        time.sleep(0.5)
    print("offers ms: " + " ".join(out), flush=True)

if __name__ == "__main__":
    cmd = sys.argv[1]
    if cmd == "pxe4011":
        pxe4011(sys.argv[2], sys.argv[3])
    elif cmd == "release":
        release(sys.argv[2], sys.argv[3], sys.argv[4])
    elif cmd == "windows":
        windows(sys.argv[2])
    elif cmd == "burst":
        burst(sys.argv[2], int(sys.argv[3]))
    elif cmd == "flood":
        flood(int(sys.argv[2]), float(sys.argv[3]))
    elif cmd == "pxetime":
        pxetime(sys.argv[2], int(sys.argv[3]))
