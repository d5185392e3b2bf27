"""Which GPU code a CUDA shared library carries, read from its ELF file.

nvcc embeds the device code of every object in the `.nv_fatbin` section as a
series of fat binaries, each a 16-byte header (magic 0xBA55ED50) and entries
of machine code (ELF, one per `sm_XX`) or PTX (one per `compute_XX`). This
reads the entries' kind and architecture, as `cuobjdump --list-elf` and
`--list-ptx` list them, without needing cuobjdump on the machine.
"""
import struct
from pathlib import Path

FATBIN_MAGIC = 0xBA55ED50
KIND_PTX, KIND_ELF = 1, 2


def elf_section(path: Path, name: str) -> bytes:
    """The bytes of one section of a 64-bit little-endian ELF file."""
    data = path.read_bytes()
    if data[:6] != b"\x7fELF\x02\x01":
        raise ValueError(f"{path} is not a 64-bit little-endian ELF file")
    shoff, = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)

    def header(index: int) -> tuple:
        # sh_name, sh_type, sh_flags, sh_addr, sh_offset, sh_size
        return struct.unpack_from("<IIQQQQ", data, shoff + index * shentsize)

    names_offset = header(shstrndx)[4]
    for index in range(shnum):
        name_at, _, _, _, offset, size = header(index)
        end = data.index(b"\0", names_offset + name_at)
        if data[names_offset + name_at:end].decode() == name:
            return data[offset:offset + size]
    raise KeyError(f"{path} has no {name} section")


def architectures(path: Path) -> set[str]:
    """`sm_XX` for each architecture with machine code, `compute_XX` for PTX."""
    section = elf_section(path, ".nv_fatbin")
    found = set()
    position = 0
    while position + 16 <= len(section):
        magic, _, header_size, fat_size = struct.unpack_from("<IHHQ", section, position)
        if magic != FATBIN_MAGIC:
            position += 8  # fat binaries are 8-byte aligned, zero-padded between
            continue
        entry, end = position + header_size, position + header_size + fat_size
        while entry < end:
            kind, _, entry_header, entry_size = struct.unpack_from("<HHIQ", section, entry)
            arch, = struct.unpack_from("<I", section, entry + 28)
            if kind == KIND_ELF:
                found.add(f"sm_{arch}")
            elif kind == KIND_PTX:
                found.add(f"compute_{arch}")
            else:
                raise ValueError(f"{path}: fat binary entry of unknown kind {kind} at {entry}")
            entry += entry_header + entry_size
        position = end
    return found
