#!/usr/bin/env python3
"""Writes the starting corpus of the fuzz targets (fuzz/corpus/TARGET/seed-*).

The inputs are what real peers send (the DHCP discovers and requests of PXE ROMs, UEFI
firmware, iPXE and Linux clients; TFTP requests with the options EDK2, grub and iPXE ask for),
the shipped rules document, and import files in each supported format. The BitLocker seeds are
the boot sector and first metadata block of each Windows-made image in ../shared/testdata
(cryptsetup's test images, GPL-2.0-or-later test data), cut with --bitlocker IMAGES_DIR.
"""
import os
import struct
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def put(target, name, data):
    d = os.path.join(HERE, "corpus", target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "seed-" + name), "wb") as f:
        f.write(data)


def opt(code, value):
    return bytes([code, len(value)]) + value


def dhcp(mac, msg_type, options, xid=0x1234):
    head = struct.pack("!BBBBIHH4s4s4s4s", 1, 1, 6, 0, xid, 4, 0x8000,
                       bytes(4), bytes(4), bytes(4), bytes(4))
    chaddr = mac + bytes(16 - len(mac))
    body = head + chaddr + bytes(64) + bytes(128) + bytes([99, 130, 83, 99])
    body += opt(53, bytes([msg_type]))
    for code, value in options:
        body += opt(code, value)
    return body + b"\xff" + bytes(8)


def dhcp_seeds():
    mac = bytes.fromhex("525400123456")
    uuid = opt(97, b"\x00" + bytes(range(16)))[2:]
    pxe = lambda arch: [
        (60, b"PXEClient:Arch:%05d:UNDI:002001" % arch),
        (93, struct.pack("!H", arch)),
        (94, b"\x01\x02\x01"),
        (97, uuid),
        (55, bytes([1, 3, 6, 43, 60, 66, 67, 128, 129, 130, 131, 132, 133, 134, 135])),
        (57, struct.pack("!H", 1260)),
    ]
    put("dhcp", "bios-pxe-discover", dhcp(mac, 1, pxe(0)))
    put("dhcp", "uefi-pxe-discover", dhcp(mac, 1, pxe(7)))
    put("dhcp", "uefi-pxe-request-4011", dhcp(mac, 3, pxe(7) + [(50, bytes([10, 99, 0, 100])), (54, bytes([10, 99, 0, 1]))]))
    put("dhcp", "http-boot-discover", dhcp(mac, 1, [(60, b"HTTPClient:Arch:00016:UNDI:003016"), (93, b"\x00\x10")]))
    put("dhcp", "ipxe-discover", dhcp(mac, 1, pxe(7) + [(77, b"iPXE"), (175, bytes([0x13, 1, 1, 0x19, 1, 1]))]))
    put("dhcp", "linux-discover", dhcp(mac, 1, [(12, b"pc-12"), (61, b"\x01" + mac), (55, bytes([1, 3, 6, 15, 28]))]))
    put("dhcp", "linux-request", dhcp(mac, 3, [(50, bytes([10, 99, 0, 100])), (54, bytes([10, 99, 0, 1])), (61, b"\x01" + mac)]))
    put("dhcp", "release", dhcp(mac, 7, [(54, bytes([10, 99, 0, 1]))]))
    put("dhcp", "decline", dhcp(mac, 4, [(50, bytes([10, 99, 0, 100]))]))
    put("dhcp", "inform", dhcp(mac, 8, []))


def rrq(name, options):
    b = struct.pack("!H", 1) + name + b"\0octet\0"
    for k, v in options:
        b += k + b"\0" + v + b"\0"
    return b


def tftp_seeds():
    ack = lambda n: struct.pack("!HH", 4, n)
    # A script entry: an odd byte (n << 1 | 1) followed by n bytes of client datagram, or an
    # even byte for a timer expiry.
    send = lambda d: bytes([len(d) << 1 | 1]) + d
    for name, r, script in [
        ("lockstep", rrq(b"undionly.kpxe", []), b"".join(send(ack(n)) for n in range(1, 12))),
        ("edk2-tsize-probe", rrq(b"shimx64.efi", [(b"tsize", b"0"), (b"blksize", b"1468")]),
         send(struct.pack("!HH", 5, 8) + b"User aborted the transfer\0")),
        ("grub-1024", rrq(b"/grub/grub.cfg", [(b"blksize", b"1024"), (b"tsize", b"0")]),
         send(ack(0)) + b"".join(send(ack(n)) for n in range(1, 8))),
        ("windowsize", rrq(b"ipxe.efi", [(b"blksize", b"512"), (b"windowsize", b"8"), (b"timeout", b"3")]),
         send(ack(0)) + send(ack(4)) + b"\x40" + send(ack(8)) + send(ack(8))),
        ("timeouts", rrq(b"a\\b\\c.bin", [(b"timeout", b"255")]), b"\x7e\x7e\x7e\x7e\x7e\x7e\x7e\x7e"),
        ("netascii", struct.pack("!H", 1) + b"boot.txt\0netascii\0", send(ack(1))),
    ]:
        put("tftp", name, bytes([len(r)]) + r + script)


RULES = b"""{
  "format": 1,
  "id": "crowdstrike-c00000291-2024-07-19",
  "version": 1,
  "expires": "2030-01-01T00:00:00Z",
  "description": "CrowdStrike Falcon channel file 291",
  "rules": [
    {
      "id": "cs-channel-291-bad",
      "description": "channel file 291 written before the fix",
      "path": "Windows\\\\System32\\\\drivers\\\\CrowdStrike\\\\C-00000291*.sys",
      "magic": "AAAAAAAA01002301",
      "last_write_before": "2024-07-19T05:27:00Z",
      "action": "quarantine"
    },
    {
      "id": "other",
      "description": "a window",
      "path": "Windows/System32/drivers/x?.sys",
      "last_write_after": "2024-07-18T00:00:00Z",
      "last_write_before": "2024-07-20T00:00:00Z",
      "action": "quarantine"
    }
  ]
}
"""


def rules_seeds():
    put("rules", "crowdstrike", RULES)


def imports_seeds():
    put("imports", "hosts-csv", b"\0mac,hostname,site,tags\n52:54:00:12:34:56,pc-1,Berlin,canary;kiosk\n"
        b"52-54-00-12-34-57,\"pc, 2\",Paris,\nnot-a-mac,pc-3,,\n")
    put("imports", "hosts-json", b"\x01[{\"mac\":\"52:54:00:12:34:56\",\"hostname\":\"pc-1\",\"site\":\"Berlin\",\"tags\":[\"canary\"]},{\"mac\":\"x\"}]")
    rp = b"111111-222222-333333-444444-555555-666666-777777-888888"
    put("imports", "keys-ad", b"\x02ComputerName,msFVE-RecoveryGuid,msFVE-RecoveryPassword\r\n"
        b"PC-1,{A1B2C3D4-0000-1111-2222-333344445555}," + rp + b"\r\n")
    put("imports", "keys-entra", b"\x02Device name;Key ID;Recovery key\npc-2;a1b2c3d4-0000-1111-2222-333344445555;" + rp + b"\n")
    put("imports", "keys-plain", b"\x02a1b2c3d4-0000-1111-2222-333344445555," + rp + b",pc-3\n")
    put("imports", "controllers", b"\x03mac,kind,address,port,tls,fingerprint,ca_file,user,secret\n"
        b"52:54:00:12:34:56,ipmi,10.97.0.2,623,,,,admin,secret\n"
        b"52:54:00:12:34:57,redfish,10.97.0.3,443,true,AB:CD,,root,pw\n"
        b"52:54:00:12:34:58,amt,10.97.0.4,16992,false,,,admin,P@ssw0rd\n")


def bitlocker_seeds(images):
    for name in sorted(os.listdir(images)):
        if not name.endswith(".img"):
            continue
        with open(os.path.join(images, name), "rb") as f:
            boot = f.read(512)
            if boot[3:11] == b"-FVE-FS-":
                at = 0xB0
            else:  # BitLocker To Go: the offsets sit after the FAT boot code
                at = 0x1B8
            off = struct.unpack_from("<Q", boot, at)[0]
            f.seek(off)
            block = f.read(65536).rstrip(b"\0")
        put("bitlocker", name[:-4], boot + block)
    # A boot sector that names no metadata at all.
    put("bitlocker", "no-metadata", bytes(3) + b"-FVE-FS-" + bytes(501))


if __name__ == "__main__":
    dhcp_seeds()
    tftp_seeds()
    rules_seeds()
    imports_seeds()
    if len(sys.argv) == 3 and sys.argv[1] == "--bitlocker":
        bitlocker_seeds(sys.argv[2])
