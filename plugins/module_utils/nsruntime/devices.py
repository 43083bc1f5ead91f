# Copyright: mooring developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The device rules of a container on cgroup v2: v2 has no devices controller, the kernel asks a BPF program of
type BPF_PROG_TYPE_CGROUP_DEVICE attached to the cgroup instead (what runc and crun load). The spec's
linux.resources.devices become such a program here, instruction by instruction, loaded and attached with bpf(2)
through libc: no compiler and no library beyond libc.

The program reads the access the kernel asks about (struct bpf_cgroup_dev_ctx: access_type = access << 16 | type,
major, minor) and walks the rules from the last to the first, so the last matching rule decides, as with the v1
controller's lists; nothing matching means deny.
"""

from __future__ import annotations

import ctypes
import os
import struct

_libc = ctypes.CDLL("libc.so.6", use_errno=True)
SYS_BPF = 321  # x86_64
BPF_PROG_LOAD = 5
BPF_PROG_ATTACH = 8
BPF_PROG_TYPE_CGROUP_DEVICE = 15
BPF_CGROUP_DEVICE = 6
BPF_F_ALLOW_MULTI = 2
_TYPES = {"b": 1, "c": 2}  # BPF_DEVCG_DEV_BLOCK, BPF_DEVCG_DEV_CHAR
_ACCESS = {"m": 1, "r": 2, "w": 4}  # BPF_DEVCG_ACC_MKNOD, _READ, _WRITE


def _insn(code, dst=0, src=0, off=0, imm=0):
    return struct.pack("<BBhi", code, (src << 4) | dst, off, imm)


_LDX_W = 0x61  # r_dst = *(u32 *)(r_src + off)
_AND_K = 0x57  # r_dst &= imm (64-bit)
_RSH_K = 0x77  # r_dst >>= imm
_MOV_K = 0xB7  # r_dst = imm
_MOV_X = 0xBF  # r_dst = r_src
_JNE_K = 0x55  # if r_dst != imm: pc += off
_EXIT = 0x95


def program(rules):
    """The rules (OCI linux.resources.devices, in order) as BPF instructions (bytes)."""
    code = [
        _insn(_LDX_W, dst=2, src=1, off=0),  # r2 = access_type
        _insn(_AND_K, dst=2, imm=0xFFFF),  # r2 = device type
        _insn(_LDX_W, dst=3, src=1, off=0),
        _insn(_RSH_K, dst=3, imm=16),  # r3 = access asked for
        _insn(_LDX_W, dst=4, src=1, off=4),  # r4 = major
        _insn(_LDX_W, dst=5, src=1, off=8),  # r5 = minor
    ]
    for rule in reversed(rules):
        block = []
        kind = rule.get("type", "a")
        if kind != "a":
            block.append(("type", _TYPES[kind]))
        access = sum(_ACCESS[letter] for letter in set(rule.get("access") or "rwm"))
        if access != 7:
            block.append(("access", access))
        if rule.get("major", -1) not in (-1, None):
            block.append(("major", rule["major"]))
        if rule.get("minor", -1) not in (-1, None):
            block.append(("minor", rule["minor"]))
        # Each check jumps past the rest of the block (the checks after it, then the two-instruction verdict).
        size = sum(3 if check == "access" else 1 for check, _value in block) + 2
        for check, value in block:
            size -= 3 if check == "access" else 1
            if check == "access":
                # Asked-for bits outside the rule's: r0 = r3 & ~access, then skip unless 0.
                code += [_insn(_MOV_X, dst=0, src=3), _insn(_AND_K, dst=0, imm=~access & 0xFFFF),
                         _insn(_JNE_K, dst=0, off=size, imm=0)]  # fmt: skip
            else:
                register = {"type": 2, "major": 4, "minor": 5}[check]
                code.append(_insn(_JNE_K, dst=register, off=size, imm=value))
        code += [_insn(_MOV_K, dst=0, imm=1 if rule.get("allow") else 0), _insn(_EXIT)]
        if not block:
            # A rule for every device decides everything: what comes after it could never run, and the verifier
            # refuses unreachable instructions.
            return b"".join(code)
    code += [_insn(_MOV_K, dst=0, imm=0), _insn(_EXIT)]
    return b"".join(code)


def _bpf(command, attr):
    buffer = ctypes.create_string_buffer(attr, 128)
    result = _libc.syscall(SYS_BPF, command, buffer, 128)
    if result < 0:
        number = ctypes.get_errno()
        raise OSError(number, f"bpf({command}): {os.strerror(number)}")
    return result


def attach(cgroup_path, rules):
    """Load the rules' program and attach it to the cgroup (the attachment keeps it; the fd is closed)."""
    instructions = program(rules)
    insns = ctypes.create_string_buffer(instructions, len(instructions))
    license_text = ctypes.create_string_buffer(b"GPL")
    log = ctypes.create_string_buffer(65536)
    # union bpf_attr for BPF_PROG_LOAD: prog_type, insn_cnt, insns, license, log_level, log_size, log_buf
    attr = struct.pack("<IIQQIIQ", BPF_PROG_TYPE_CGROUP_DEVICE, len(instructions) // 8,
                       ctypes.addressof(insns), ctypes.addressof(license_text), 1, len(log),
                       ctypes.addressof(log))  # fmt: skip
    try:
        program_fd = _bpf(BPF_PROG_LOAD, attr)
    except OSError as exc:
        raise OSError(exc.errno, f"loading the device program: {exc.strerror}: {log.value.decode()[-500:]}") from None
    try:
        directory = os.open(cgroup_path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            # union bpf_attr for BPF_PROG_ATTACH: target_fd, attach_bpf_fd, attach_type, attach_flags
            _bpf(BPF_PROG_ATTACH, struct.pack("<IIII", directory, program_fd, BPF_CGROUP_DEVICE, BPF_F_ALLOW_MULTI))
        finally:
            os.close(directory)
    finally:
        os.close(program_fd)
