#!/usr/bin/env python3
"""Writes a small Windows registry hive file (the regf format) standing in for a volume's
Windows\\System32\\config\\SYSTEM: Select\\Current names the control set, and
ControlSet00N\\Control\\ComputerName\\ComputerName holds the value ComputerName (REG_SZ).

No Windows-made SYSTEM hive can be shipped with the tests, so this writer, built from the
published description of the format (base block, hive bins, nk/vk/lf cells) and sharing
nothing with the Rust reader it tests, makes one.

usage: make_system_hive.py OUT NAME [--control-set N] [--dirty] [--no-name] [--software]
  --dirty    primary and secondary sequence numbers differ (a hive Windows did not close,
             as after a crash; its logs are not written here)
  --no-name  the ComputerName key has no ComputerName value
  --software a SOFTWARE hive instead: NAME is "product;display version;build;UBR;edition",
             written to Microsoft\Windows NT\CurrentVersion (ProductName, DisplayVersion,
             CurrentBuild, CurrentBuildNumber, UBR as a DWORD, EditionID)
"""
import struct
import sys

NONE = 0xFFFFFFFF
KEY_HIVE_ENTRY, KEY_NO_DELETE, KEY_COMP_NAME = 0x0004, 0x0008, 0x0020
REG_SZ, REG_DWORD = 1, 4
FILETIME = 133_650_000_000_000_000  # 2024-07-19, in 100 ns units since 1601


class Key:
    def __init__(self, name, root=False):
        self.name, self.root = name, root
        self.subkeys, self.values = [], []
        self.parent = None

    def add(self, name):
        k = Key(name)
        k.parent = self
        self.subkeys.append(k)
        # The subkey list is sorted by upper-case name, as Windows keeps it.
        self.subkeys.sort(key=lambda s: s.name.upper())
        return k

    def dword(self, name, v):
        self.values.append((name, REG_DWORD, struct.pack("<I", v)))

    def sz(self, name, text):
        self.values.append((name, REG_SZ, (text + "\0").encode("utf-16-le")))


class Cells:
    """Cells laid out one after another in hive bins; offsets count from the first bin."""

    def __init__(self):
        self.items = []  # (id, builder(offsets) -> bytes, payload size)

    def add(self, ident, size, build):
        self.items.append((ident, size, build))

    def layout(self):
        offsets, pos = {}, 32  # after the first bin's header
        for ident, size, _ in self.items:
            cell = (size + 4 + 7) & ~7
            # A cell never crosses a bin's end: start a new bin when it would.
            if pos // 4096 != (pos + cell - 1) // 4096:
                pos = (pos // 4096 + 1) * 4096 + 32
            offsets[ident] = pos
            pos += cell
        return offsets, pos

    def bins(self):
        offsets, end = self.layout()
        total = (end + 4095) // 4096 * 4096
        data = bytearray(total)
        for b in range(0, total, 4096):
            data[b:b + 32] = struct.pack("<4sIIIIQI", b"hbin", b, 4096, 0, 0, FILETIME, 0)
        used = set()
        for ident, size, build in self.items:
            payload = build(offsets)
            assert len(payload) == size, ident
            off = offsets[ident]
            cell = (size + 4 + 7) & ~7
            data[off:off + cell] = struct.pack("<i", -cell) + payload + bytes(cell - 4 - size)
            used.add((off, cell))
        # The rest of each bin is one free cell (positive size).
        ends = {}
        for off, cell in used:
            ends[off // 4096] = max(ends.get(off // 4096, 0), off + cell)
        for b in range(0, total, 4096):
            start = ends.get(b // 4096, b + 32)
            free = b + 4096 - start
            if free >= 8:
                data[start:start + 4] = struct.pack("<i", free)
        return offsets, bytes(data)


def nk(cells, key):
    name = key.name.encode("latin-1")
    ident = ("nk", id(key))

    def build(off):
        flags = KEY_COMP_NAME | ((KEY_HIVE_ENTRY | KEY_NO_DELETE) if key.root else 0)
        parent = off[("nk", id(key.parent))] if key.parent else NONE
        subs = off[("lf", id(key))] if key.subkeys else NONE
        vals = off[("vl", id(key))] if key.values else NONE
        max_sub = max([len(s.name) * 2 for s in key.subkeys], default=0)
        max_vname = max([len(v[0]) * 2 for v in key.values], default=0)
        max_vdata = max([len(v[2]) for v in key.values], default=0)
        return struct.pack(
            "<2sHQIIIIIIIIIIIIIIIHH",
            b"nk", flags, FILETIME, 0, parent, len(key.subkeys), 0, subs, NONE,
            len(key.values), vals, NONE, NONE, max_sub, 0, max_vname, max_vdata, 0,
            len(name), 0,
        ) + name

    cells.add(ident, 76 + len(name), build)
    if key.subkeys:
        def build_lf(off):
            out = struct.pack("<2sH", b"lf", len(key.subkeys))
            for s in key.subkeys:
                hint = s.name.encode("latin-1")[:4].ljust(4, b"\0")
                out += struct.pack("<I4s", off[("nk", id(s))], hint)
            return out
        cells.add(("lf", id(key)), 4 + 8 * len(key.subkeys), build_lf)
    if key.values:
        cells.add(
            ("vl", id(key)),
            4 * len(key.values),
            lambda off: b"".join(
                struct.pack("<I", off[("vk", id(key), i)]) for i in range(len(key.values))
            ),
        )
        for i, (vname, vtype, vdata) in enumerate(key.values):
            vn = vname.encode("latin-1")

            def build_vk(off, vn=vn, vtype=vtype, vdata=vdata, i=i):
                if len(vdata) <= 4:
                    # Small data sits in the offset field; the size's top bit says so.
                    size = len(vdata) | 0x80000000
                    doff = struct.unpack("<I", vdata.ljust(4, b"\0"))[0]
                else:
                    size, doff = len(vdata), off[("vd", id(key), i)]
                return struct.pack("<2sHIIIHH", b"vk", len(vn), size, doff, vtype, 1, 0) + vn

            cells.add(("vk", id(key), i), 20 + len(vn), build_vk)
            if len(vdata) > 4:
                cells.add(("vd", id(key), i), len(vdata), lambda off, vdata=vdata: vdata)
    for s in key.subkeys:
        nk(cells, s)


def main(argv):
    import argparse

    p = argparse.ArgumentParser(usage=__doc__.split("usage: ")[1].split("\n")[0])
    p.add_argument("out")
    p.add_argument("name")
    p.add_argument("--control-set", type=int, default=1)
    p.add_argument("--dirty", action="store_true")
    p.add_argument("--no-name", action="store_true")
    p.add_argument("--software", action="store_true")
    a = p.parse_args(argv)
    out, name, cs = a.out, a.name, a.control_set
    root = Key("CMI-CreateHive{2A7FB991-7BBE-4F9D-B91E-7CB51D4737F5}", root=True)
    if a.software:
        product, display, build, ubr, edition = name.split(";")
        ms = root.add("Microsoft")
        ms.add("Windows").add("CurrentVersion").sz("ProgramFilesDir", "C:\\Program Files")
        cv = ms.add("Windows NT").add("CurrentVersion")
        cv.sz("ProductName", product)
        cv.sz("DisplayVersion", display)
        cv.sz("CurrentBuild", build)
        cv.sz("CurrentBuildNumber", build)
        cv.dword("UBR", int(ubr))
        cv.sz("EditionID", edition)
        cv.sz("InstallationType", "Client")
        write(out, root, a.dirty, "SOFTWARE")
        return
    sel = root.add("Select")
    for v in ("Current", "Default", "LastKnownGood"):
        sel.dword(v, cs)
    sel.dword("Failed", 0)
    # A stale control set beside the current one, with another name: the reader must follow
    # Select\Current.
    for n, cname in ((cs, name), (cs % 3 + 1, "STALE-NAME")):
        control = root.add(f"ControlSet{n:03d}").add("Control")
        control.add("Session Manager").dword("SafeBoot", 0)
        cn = control.add("ComputerName")
        k = cn.add("ComputerName")
        k.sz("(unused)", "x")
        if n != cs or not a.no_name:
            k.sz("ComputerName", cname)
        cn.add("ActiveComputerName")
    write(out, root, a.dirty, "SYSTEM")


def write(out, root, dirty, hive_name):
    cells = Cells()
    nk(cells, root)
    offsets, bins = cells.bins()
    seq1 = 7
    seq2 = 6 if dirty else 7
    fname = f"\\SystemRoot\\System32\\Config\\{hive_name}".encode("utf-16-le")[:64].ljust(64, b"\0")
    base = struct.pack(
        "<4sIIQIIIIIII", b"regf", seq1, seq2, FILETIME, 1, 5, 0, 1,
        offsets[("nk", id(root))], len(bins), 1,
    ) + fname
    base = base.ljust(508, b"\0")
    x = 0
    for i in range(0, 508, 4):
        x ^= struct.unpack_from("<I", base, i)[0]
    x = 1 if x == 0 else (0xFFFFFFFE if x == 0xFFFFFFFF else x)
    base += struct.pack("<I", x)
    base = base.ljust(4096, b"\0")
    with open(out, "wb") as f:
        f.write(base + bins)


if __name__ == "__main__":
    main(sys.argv[1:])
