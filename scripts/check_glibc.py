#!/usr/bin/env python3
"""Check the glibc floor of a PyInstaller single-file executable, from the file itself.

The bootloader of a one-file executable needs an old glibc (2.14 or so); what sets the real
floor is what it unpacks and loads at run time: libpython, the extension modules (websockets'
speedups, _ssl, ...), and the libraries they pull in (libssl, libcrypto, libffi, ...). This
script reads the archive appended to the executable with PyInstaller's own reader, takes
every ELF file out of it (in memory), reads the symbol versions each one needs from its
``.gnu.version_r`` section (pure Python: no binutils needed), and prints, per file, the
newest ``GLIBC_x.y`` it needs. It fails if any needs a newer one than ``--max``.

    python scripts/check_glibc.py --max 2.28 dist/reverse_websockify_server dist/reverse_websockify_agent_service_side

Other checks on the same archive:
    --require websockets/speedups   fail unless a bundled file's name starts with this
                                    (the websockets C speedups; repeatable)
    --list                          print the archive's table of contents

Exit status: 0 all within the floor, 1 a file needs a newer glibc (or a --require is missing),
2 usage error or unreadable input. Needs PyInstaller importable (the build environment has it).
"""

from __future__ import annotations

import argparse
import struct
import sys
from pathlib import Path

SHT_GNU_VERNEED = 0x6FFFFFFE


class ElfError(Exception):
    pass


def version_key(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split(".") if part.isdigit())


def elf_version_needs(data: bytes) -> dict[str, set[str]]:
    """{needed library: {version names}} from an ELF file's SHT_GNU_verneed section."""
    if data[:4] != b"\x7fELF":
        raise ElfError("not an ELF file")
    ei_class, ei_data = data[4], data[5]
    if ei_class not in (1, 2) or ei_data not in (1, 2):
        raise ElfError("unknown ELF class or byte order")
    end = "<" if ei_data == 1 else ">"
    is64 = ei_class == 2
    if is64:
        e_shoff, = struct.unpack_from(end + "Q", data, 0x28)
        e_shentsize, e_shnum = struct.unpack_from(end + "HH", data, 0x3A)
        shdr = end + "IIQQQQIIQQ"
    else:
        e_shoff, = struct.unpack_from(end + "I", data, 0x20)
        e_shentsize, e_shnum = struct.unpack_from(end + "HH", data, 0x2E)
        shdr = end + "IIIIIIIIII"
    if e_shoff == 0 or e_shnum == 0:
        raise ElfError("no section headers (cannot read version needs)")
    sections = []
    for i in range(e_shnum):
        fields = struct.unpack_from(shdr, data, e_shoff + i * e_shentsize)
        # name, type, flags, addr, offset, size, link, info, addralign, entsize
        sections.append(fields)
    needs: dict[str, set[str]] = {}
    for _name, sh_type, _flags, _addr, offset, size, link, info, _align, _entsize in sections:
        if sh_type != SHT_GNU_VERNEED:
            continue
        str_offset = sections[link][4]

        def string(index: int) -> str:
            start = str_offset + index
            return data[start : data.index(b"\0", start)].decode("ascii", "replace")

        pos = offset
        for _ in range(info):  # sh_info = number of Verneed entries
            _vn_version, vn_cnt, vn_file, vn_aux, vn_next = struct.unpack_from(end + "HHIII", data, pos)
            library = string(vn_file)
            aux = pos + vn_aux
            for _ in range(vn_cnt):
                _hash, _flags2, _other, vna_name, vna_next = struct.unpack_from(end + "IHHII", data, aux)
                needs.setdefault(library, set()).add(string(vna_name))
                if not vna_next:
                    break
                aux += vna_next
            if not vn_next:
                break
            pos += vn_next
    return needs


def max_glibc(needs: dict[str, set[str]]) -> str | None:
    versions = [v[len("GLIBC_"):] for names in needs.values() for v in names
                if v.startswith("GLIBC_") and v[len("GLIBC_"):][:1].isdigit()]
    return max(versions, key=version_key) if versions else None


def archive_files(executable: Path) -> list[tuple[str, bytes]]:
    """Every entry of the executable's PyInstaller archive, with its (decompressed) bytes."""
    try:
        from PyInstaller.archive.readers import CArchiveReader
    except ImportError:
        raise SystemExit("check_glibc.py needs PyInstaller importable (pip install pyinstaller)")
    reader = CArchiveReader(str(executable))
    entries = []
    for name, entry in reader.toc.items():
        typecode = entry[-1]
        if typecode in ("o", "z", "Z", "m", "M", "s", "l"):  # options, PYZ, python code, splash
            entries.append((name, b""))
            continue
        entries.append((name, reader.extract(name)))
    return entries


def check(executable: Path, floor: str | None, requires: list[str], list_toc: bool) -> bool:
    ok = True
    own = executable.read_bytes()
    files = [(f"{executable.name} (bootloader)", own)] if own[:4] == b"\x7fELF" else []
    bundled = archive_files(executable)
    if list_toc:
        for name, _ in bundled:
            print(f"  {name}")
    names = [name for name, _ in bundled]
    for prefix in requires:
        hits = [n for n in names if n.replace("\\", "/").startswith(prefix)]
        if hits:
            print(f"{executable}: contains {', '.join(hits)}")
        else:
            print(f"{executable}: FAIL: no bundled file starts with {prefix!r}")
            ok = False
    files += [(name, data) for name, data in bundled if data[:4] == b"\x7fELF"]
    overall: tuple[str, str] | None = None
    if not files:  # Mach-O or PE: nothing to say about glibc
        print(f"{executable}: not an ELF executable; glibc check skipped")
        return ok
    print(f"{executable}: {len(files)} ELF files (newest GLIBC symbol version each needs)")
    for name, data in files:
        try:
            needs = elf_version_needs(data)
        except ElfError as exc:
            print(f"  {'?':>6}  {name}: {exc}")
            ok = False
            continue
        newest = max_glibc(needs)
        too_new = floor is not None and newest is not None and version_key(newest) > version_key(floor)
        mark = "  FAIL: newer than --max " + floor if too_new else ""
        print(f"  {newest or '-':>6}  {name}{mark}")
        if too_new:
            ok = False
        if newest and (overall is None or version_key(newest) > version_key(overall[0])):
            overall = (newest, name)
    if overall:
        print(f"{executable}: needs glibc >= {overall[0]} (set by {overall[1]})"
              + (f"; floor {floor}: {'OK' if ok else 'FAIL'}" if floor else ""))
    return ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("executables", nargs="+", type=Path, help="PyInstaller one-file executables")
    parser.add_argument("--max", metavar="X.Y", help="fail if any file needs a GLIBC symbol newer than this")
    parser.add_argument("--require", action="append", default=[], metavar="PREFIX",
                        help="fail unless a bundled file's name starts with PREFIX (repeatable)")
    parser.add_argument("--list", action="store_true", help="print each archive's table of contents")
    args = parser.parse_args(argv)
    if args.max is not None and not version_key(args.max):
        parser.error(f"--max {args.max!r}: expected a version like 2.28")
    ok = True
    for executable in args.executables:
        if not executable.is_file():
            print(f"{executable}: no such file", file=sys.stderr)
            return 2
        try:
            ok = check(executable, args.max, args.require, args.list) and ok
        except Exception as exc:  # noqa: BLE001 — one line for CI logs
            print(f"{executable}: cannot read the archive: {type(exc).__name__}: {exc}", file=sys.stderr)
            return 2
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
