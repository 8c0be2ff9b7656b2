"""A seccomp filter for sandboxed code, written as raw classic BPF (no libseccomp needed).

bubblewrap loads the program from a file descriptor (`bwrap --seccomp FD`) right before it starts
the interpreter, so every process in the sandbox runs under it and cannot remove it.

What it denies (errno, not a kill, so the program sees an ordinary `OSError` and the verdict stays
a clean failure):
- `socket()` for any family but `AF_UNIX` (EACCES): no TCP/UDP/raw/netlink/packet sockets, even if
  a network namespace were missing;
- `io_uring_*` (its ring operations would bypass this filter), `ptrace`, `process_vm_readv/writev`,
  `pidfd_getfd`, `process_madvise`, `kcmp`: no reaching into another process;
- namespace and mount manipulation (`unshare`, `setns`, `mount`, `umount2`, `pivot_root`, `chroot`,
  the new mount API), `bpf`, `perf_event_open`, `userfaultfd`, keyrings, kernel modules, `kexec`,
  `reboot`, `swapon/off`, `acct`, `quotactl`, `syslog`, `open_by_handle_at`, `fanotify_init`,
  `iopl/ioperm`, `vhangup`, `lookup_dcookie`: kernel attack surface no test program needs.
With `deny_signal_handlers` (test runs), `rt_sigaction` that installs anything is refused too
(EPERM; reading a disposition is allowed): a Python signal handler is called with the running frame,
and from a frame the supervisor's own variables, the end token among them, are reachable. Python
starts fine under it (it ignores a failure to set its own handlers). (Returning success without
doing it would leave the caller's copy of the old action uninitialised: glibc copies it from its
own stack, and Python fails at random when that garbage reads as SIG_ERR.)
Any syscall from a foreign ABI (i386 `int 0x80`, x32) is denied with ENOSYS, because its numbers
differ from the table checked here.

Supported architectures: x86_64 and aarch64 (syscall numbers from the kernel's `unistd_64.h` and
`asm-generic/unistd.h`). On any other machine `build_filter()` returns None and the sandbox
reports that the "seccomp" layer is not in force.
"""

from __future__ import annotations

import errno
import platform
import struct

# Classic BPF opcodes (linux/filter.h) and seccomp return actions (linux/seccomp.h).
_LD_W_ABS = 0x20
_JEQ_K = 0x15
_JGE_K = 0x35
_RET_K = 0x06
_RET_ALLOW = 0x7FFF0000
_RET_ERRNO = 0x00050000
# Offsets inside `struct seccomp_data`: int nr; u32 arch; u64 ip; u64 args[6] (little endian).
_OFF_NR, _OFF_ARCH, _OFF_ARG0_LOW, _OFF_ARG1_LOW, _OFF_ARG1_HIGH = 0, 4, 16, 24, 28
_AF_UNIX = 1
_X32_SYSCALL_BIT = 0x40000000

_COMMON_DENIED = (
    "ptrace", "process_vm_readv", "process_vm_writev", "pidfd_getfd", "process_madvise", "kcmp",
    "unshare", "setns", "mount", "umount2", "pivot_root", "chroot", "open_tree", "move_mount",
    "fsopen", "fsconfig", "fsmount", "fspick", "mount_setattr", "bpf", "perf_event_open",
    "userfaultfd", "keyctl", "add_key", "request_key", "init_module", "finit_module",
    "delete_module", "kexec_load", "kexec_file_load", "reboot", "swapon", "swapoff", "acct",
    "quotactl", "syslog", "open_by_handle_at", "name_to_handle_at", "fanotify_init",
    "lookup_dcookie", "vhangup", "io_uring_setup", "io_uring_enter", "io_uring_register",
)  # fmt: skip

# name -> number, per architecture; plus the AUDIT_ARCH value the kernel reports.
_TABLES: dict[str, tuple[int, dict[str, int]]] = {
    "x86_64": (
        0xC000003E,
        {
            "socket": 41, "ptrace": 101, "process_vm_readv": 310, "process_vm_writev": 311,
            "pidfd_getfd": 438, "process_madvise": 440, "kcmp": 312, "unshare": 272, "setns": 308,
            "mount": 165, "umount2": 166, "pivot_root": 155, "chroot": 161, "open_tree": 428,
            "move_mount": 429, "fsopen": 430, "fsconfig": 431, "fsmount": 432, "fspick": 433,
            "mount_setattr": 442, "bpf": 321, "perf_event_open": 298, "userfaultfd": 323,
            "keyctl": 250, "add_key": 248, "request_key": 249, "init_module": 175,
            "finit_module": 313, "delete_module": 176, "kexec_load": 246, "kexec_file_load": 320,
            "reboot": 169, "swapon": 167, "swapoff": 168, "acct": 163, "quotactl": 179,
            "syslog": 103, "open_by_handle_at": 304, "name_to_handle_at": 303,
            "fanotify_init": 300, "lookup_dcookie": 212, "vhangup": 153, "io_uring_setup": 425,
            "io_uring_enter": 426, "io_uring_register": 427, "iopl": 172, "ioperm": 173, "rt_sigaction": 13,
        },
    ),
    "aarch64": (
        0xC00000B7,
        {
            "socket": 198, "ptrace": 117, "process_vm_readv": 270, "process_vm_writev": 271,
            "pidfd_getfd": 438, "process_madvise": 440, "kcmp": 272, "unshare": 97, "setns": 268,
            "mount": 40, "umount2": 39, "pivot_root": 41, "chroot": 51, "open_tree": 428,
            "move_mount": 429, "fsopen": 430, "fsconfig": 431, "fsmount": 432, "fspick": 433,
            "mount_setattr": 442, "bpf": 280, "perf_event_open": 241, "userfaultfd": 282,
            "keyctl": 219, "add_key": 217, "request_key": 218, "init_module": 105,
            "finit_module": 273, "delete_module": 106, "kexec_load": 104, "kexec_file_load": 294,
            "reboot": 142, "swapon": 224, "swapoff": 225, "acct": 89, "quotactl": 60,
            "syslog": 116, "open_by_handle_at": 265, "name_to_handle_at": 264,
            "fanotify_init": 262, "lookup_dcookie": 18, "vhangup": 58, "io_uring_setup": 425,
            "io_uring_enter": 426, "io_uring_register": 427, "rt_sigaction": 134,
        },
    ),
}  # fmt: skip


def _insn(code: int, jt: int, jf: int, k: int) -> bytes:
    return struct.pack("<HBBI", code, jt, jf, k)


def build_filter(machine: str | None = None, deny_signal_handlers: bool = False) -> bytes | None:
    """The BPF program (`struct sock_filter[]` bytes) for `machine` (default: this one), or None.

    Layout: check the ABI, deny x32 numbers, jump to the errno return for each denied number, with
    `deny_signal_handlers` refuse `rt_sigaction` with a new action (its second argument not NULL),
    let `socket(AF_UNIX, ...)` through and refuse every other socket family, allow the rest.
    """
    machine = machine or platform.machine()
    if machine not in _TABLES:
        return None
    audit_arch, numbers = _TABLES[machine]
    denied = [numbers[name] for name in (*_COMMON_DENIED, "iopl", "ioperm") if name in numbers]
    deny = _insn(_RET_K, 0, 0, _RET_ERRNO | errno.EPERM)
    allow = _insn(_RET_K, 0, 0, _RET_ALLOW)
    # Each block ends in a return, except that its "not mine" jump lands on the next block's start.
    signals = [
        _insn(_JEQ_K, 0, 6, numbers["rt_sigaction"]),  # not rt_sigaction -> the socket block
        _insn(_LD_W_ABS, 0, 0, _OFF_ARG1_LOW),
        _insn(_JEQ_K, 0, 2, 0),  # a new action -> deny
        _insn(_LD_W_ABS, 0, 0, _OFF_ARG1_HIGH),
        _insn(_JEQ_K, 1, 0, 0),  # NULL: only reads the disposition -> allow
        deny,
        allow,
    ] if deny_signal_handlers else []  # fmt: skip
    sockets = [
        _insn(_JEQ_K, 0, 3, numbers["socket"]),  # not socket -> allow (3 ahead)
        _insn(_LD_W_ABS, 0, 0, _OFF_ARG0_LOW),
        _insn(_JEQ_K, 1, 0, _AF_UNIX),  # AF_UNIX -> allow
        _insn(_RET_K, 0, 0, _RET_ERRNO | errno.EACCES),
        allow,
    ]
    # Each denied-syscall jump lands on the shared `deny` return placed after the blocks: check i
    # jumps over the (n - i - 1) checks after it and both blocks.
    n = len(denied)
    checks = [_insn(_JEQ_K, (n - i - 1) + len(signals) + len(sockets), 0, nr) for i, nr in enumerate(denied)]
    head = [
        _insn(_LD_W_ABS, 0, 0, _OFF_ARCH),
        _insn(_JEQ_K, 1, 0, audit_arch),
        _insn(_RET_K, 0, 0, _RET_ERRNO | errno.ENOSYS),  # foreign ABI
        _insn(_LD_W_ABS, 0, 0, _OFF_NR),
    ]
    if machine == "x86_64":
        head += [_insn(_JGE_K, 0, 1, _X32_SYSCALL_BIT), _insn(_RET_K, 0, 0, _RET_ERRNO | errno.ENOSYS)]
    return b"".join(head + checks + signals + sockets + [deny])
