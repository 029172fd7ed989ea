//! The jail's default seccomp filter: the dangerous system calls of Docker's default profile.
//!
//! The jail keeps `CAP_DAC_READ_SEARCH` (droot's list), and with it `open_by_handle_at` can open
//! any file of a host file system by handle, outside the chroot ("shocker"). Other calls reach
//! host-wide kernel state whatever the capabilities. So every jailed command gets a filter that
//! fails these with `EPERM` ([`DENIED`]), as Docker's default profile does:
//! - file handles: `open_by_handle_at`, `name_to_handle_at`;
//! - keyrings: `add_key`, `request_key`, `keyctl`;
//! - kernel extension and replacement: `bpf`, `init_module`, `finit_module`, `delete_module`,
//!   `kexec_load`, `kexec_file_load`, `uselib`, `nfsservctl`, `_sysctl`;
//! - `userfaultfd`, `perf_event_open`, `io_uring_*` (its operations bypass seccomp);
//! - tracing other processes: `ptrace`, `process_vm_readv`/`writev`, `kcmp`, `pidfd_getfd`;
//! - `chroot`: the jail is a chroot, and a second one is the classic way out of it for a
//!   process that keeps `CAP_SYS_CHROOT` (`--no-dropcaps`);
//! - namespaces and mounts: `unshare`, `setns`, `mount`, `umount2`, `pivot_root`,
//!   `mount_setattr`, `open_tree`, `move_mount`, `fsopen`, `fsconfig`, `fsmount`, `fspick`, and
//!   `clone` with any `CLONE_NEW*` flag;
//! - host-wide settings: `reboot`, `swapon`, `swapoff`, `acct`, `settimeofday`,
//!   `clock_settime`, `clock_adjtime`, `sethostname`, `setdomainname`, `syslog`, `quotactl`,
//!   `lookup_dcookie`, `iopl`, `ioperm`, `vhangup`;
//! - `personality` with anything but Docker's safe values (`PER_LINUX`, `UNAME26`,
//!   `PER_LINUX32`, `PER_LINUX32|UNAME26`, query);
//! - `ioctl` `TIOCSTI` and `TIOCLINUX`, which type into a terminal (not in Docker's profile:
//!   the jail may be handed the operator's terminal, see [`super::tty`]).
//!
//! `clone3` fails with `ENOSYS`, as in Docker: its flags sit in memory a filter cannot read, and
//! `ENOSYS` makes libc fall back to `clone`, which is checked. Other architectures' system
//! calls (32-bit `int 0x80`) kill the process, and x32 calls (number with bit 30) get `EPERM`:
//! a deny list keyed on x86-64 numbers would not see them.
//!
//! Installed last, just before `execve`: after `NO_NEW_PRIVS`, or, with `--no-dropcaps`
//! (no `NO_NEW_PRIVS`), while still root, before the credentials change. The filter is
//! inherited by every descendant and cannot be removed. `--seccomp unconfined` skips it.

use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch, sock_filter,
};

use super::JailError;

/// System calls refused with `EPERM` whatever their arguments.
#[cfg(target_arch = "x86_64")]
pub const DENIED: &[(&str, i64)] = &[
    ("acct", libc::SYS_acct),
    ("add_key", libc::SYS_add_key),
    ("bpf", libc::SYS_bpf),
    ("chroot", libc::SYS_chroot),
    ("clock_adjtime", libc::SYS_clock_adjtime),
    ("clock_settime", libc::SYS_clock_settime),
    ("delete_module", libc::SYS_delete_module),
    ("finit_module", libc::SYS_finit_module),
    ("fsconfig", libc::SYS_fsconfig),
    ("fsmount", libc::SYS_fsmount),
    ("fsopen", libc::SYS_fsopen),
    ("fspick", libc::SYS_fspick),
    ("init_module", libc::SYS_init_module),
    ("io_uring_enter", libc::SYS_io_uring_enter),
    ("io_uring_register", libc::SYS_io_uring_register),
    ("io_uring_setup", libc::SYS_io_uring_setup),
    ("ioperm", libc::SYS_ioperm),
    ("iopl", libc::SYS_iopl),
    ("kcmp", libc::SYS_kcmp),
    ("kexec_file_load", libc::SYS_kexec_file_load),
    ("kexec_load", libc::SYS_kexec_load),
    ("keyctl", libc::SYS_keyctl),
    ("lookup_dcookie", libc::SYS_lookup_dcookie),
    ("mount", libc::SYS_mount),
    ("mount_setattr", libc::SYS_mount_setattr),
    ("move_mount", libc::SYS_move_mount),
    ("name_to_handle_at", libc::SYS_name_to_handle_at),
    ("nfsservctl", libc::SYS_nfsservctl),
    ("open_by_handle_at", libc::SYS_open_by_handle_at),
    ("open_tree", libc::SYS_open_tree),
    ("perf_event_open", libc::SYS_perf_event_open),
    ("pidfd_getfd", libc::SYS_pidfd_getfd),
    ("pivot_root", libc::SYS_pivot_root),
    ("process_vm_readv", libc::SYS_process_vm_readv),
    ("process_vm_writev", libc::SYS_process_vm_writev),
    ("ptrace", libc::SYS_ptrace),
    ("quotactl", libc::SYS_quotactl),
    ("reboot", libc::SYS_reboot),
    ("request_key", libc::SYS_request_key),
    ("setdomainname", libc::SYS_setdomainname),
    ("sethostname", libc::SYS_sethostname),
    ("setns", libc::SYS_setns),
    ("settimeofday", libc::SYS_settimeofday),
    ("swapoff", libc::SYS_swapoff),
    ("swapon", libc::SYS_swapon),
    ("_sysctl", libc::SYS__sysctl),
    ("syslog", libc::SYS_syslog),
    ("umount2", libc::SYS_umount2),
    ("unshare", libc::SYS_unshare),
    ("uselib", libc::SYS_uselib),
    ("userfaultfd", libc::SYS_userfaultfd),
    ("vhangup", libc::SYS_vhangup),
];

/// Other architectures have no profile yet: [`Filter::compile`] refuses, naming the way out.
#[cfg(not(target_arch = "x86_64"))]
pub const DENIED: &[(&str, i64)] = &[];

/// The namespace flags of `clone` that are refused (Docker's mask, 0x7E020000).
pub const CLONE_NAMESPACE_FLAGS: [libc::c_int; 7] = [
    libc::CLONE_NEWNS,
    libc::CLONE_NEWCGROUP,
    libc::CLONE_NEWUTS,
    libc::CLONE_NEWIPC,
    libc::CLONE_NEWUSER,
    libc::CLONE_NEWPID,
    libc::CLONE_NEWNET,
];

/// `personality` values allowed: PER_LINUX, UNAME26, PER_LINUX32, PER_LINUX32|UNAME26, query.
pub const PERSONALITY_ALLOWED: [u64; 5] = [0x0, 0x8, 0x20000, 0x20008, 0xffff_ffff];

/// `ioctl` requests refused: faking terminal input.
#[allow(clippy::unnecessary_cast)] // `libc::Ioctl` is not u64 on every libc
pub const IOCTL_DENIED: [u64; 2] = [libc::TIOCSTI as u64, libc::TIOCLINUX as u64];

/// The x32 ABI marks its system call numbers with this bit.
const X32_SYSCALL_BIT: u32 = 0x4000_0000;

/// The compiled default filter: one program per action, installed in order.
pub struct Filter {
    programs: Vec<BpfProgram>,
}

fn err(op: &str, e: impl std::fmt::Display) -> JailError {
    JailError::Seccomp {
        op: op.to_string(),
        reason: e.to_string(),
    }
}

fn arch() -> Result<TargetArch, JailError> {
    TargetArch::try_from(std::env::consts::ARCH).map_err(|e| err("target architecture", e))
}

fn cond(arg: u8, op: SeccompCmpOp, value: u64) -> Result<SeccompCondition, JailError> {
    SeccompCondition::new(arg, SeccompCmpArgLen::Dword, op, value)
        .map_err(|e| err("build a condition", e))
}

fn rule(conds: Vec<SeccompCondition>) -> Result<SeccompRule, JailError> {
    SeccompRule::new(conds).map_err(|e| err("build a rule", e))
}

/// The `EPERM` program: [`DENIED`], `clone` with a namespace flag, unsafe `personality`,
/// [`IOCTL_DENIED`].
fn eperm_program() -> Result<BpfProgram, JailError> {
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> =
        DENIED.iter().map(|(_, nr)| (*nr, Vec::new())).collect();
    let clone_rules = CLONE_NAMESPACE_FLAGS
        .iter()
        .map(|f| {
            let f = *f as u32 as u64;
            rule(vec![cond(0, SeccompCmpOp::MaskedEq(f), f)?])
        })
        .collect::<Result<Vec<_>, _>>()?;
    rules.insert(libc::SYS_clone, clone_rules);
    let not_allowed = PERSONALITY_ALLOWED
        .iter()
        .map(|v| cond(0, SeccompCmpOp::Ne, *v))
        .collect::<Result<Vec<_>, _>>()?;
    rules.insert(libc::SYS_personality, vec![rule(not_allowed)?]);
    let ioctl_rules = IOCTL_DENIED
        .iter()
        .map(|req| rule(vec![cond(1, SeccompCmpOp::Eq, *req)?]))
        .collect::<Result<Vec<_>, _>>()?;
    rules.insert(libc::SYS_ioctl, ioctl_rules);
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EPERM as u32),
        arch()?,
    )
    .map_err(|e| err("build the filter", e))?;
    BpfProgram::try_from(filter).map_err(|e| err("compile the filter", e))
}

/// `clone3` → `ENOSYS`.
fn enosys_program() -> Result<BpfProgram, JailError> {
    let rules = BTreeMap::from([(libc::SYS_clone3, Vec::new())]);
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::ENOSYS as u32),
        arch()?,
    )
    .map_err(|e| err("build the clone3 filter", e))?;
    BpfProgram::try_from(filter).map_err(|e| err("compile the clone3 filter", e))
}

/// x32 system calls → `EPERM` (seccompiler has no rule on the number's range).
fn x32_program() -> BpfProgram {
    const LD_W_ABS: u16 = 0x20;
    const JSET_K: u16 = 0x45;
    const RET_K: u16 = 0x06;
    let ins = |code, jt, jf, k| sock_filter { code, jt, jf, k };
    vec![
        // A = seccomp_data.nr (offset 0)
        ins(LD_W_ABS, 0, 0, 0),
        ins(JSET_K, 0, 1, X32_SYSCALL_BIT),
        ins(RET_K, 0, 0, libc::SECCOMP_RET_ERRNO | libc::EPERM as u32),
        ins(RET_K, 0, 0, libc::SECCOMP_RET_ALLOW),
    ]
}

impl Filter {
    /// Compiles the default filter. Done before the fork, so a bug shows as a set-up error.
    pub fn compile() -> Result<Filter, JailError> {
        if DENIED.is_empty() {
            return Err(err(
                "compile",
                format!("no profile for {} yet", std::env::consts::ARCH),
            ));
        }
        Ok(Filter {
            programs: vec![eperm_program()?, enosys_program()?, x32_program()],
        })
    }

    /// Installs the filter on the calling thread. Needs `NO_NEW_PRIVS` or `CAP_SYS_ADMIN`;
    /// sets neither (seccompiler's `apply_filter` would force `NO_NEW_PRIVS`, which
    /// `--no-dropcaps` must not get).
    pub fn install(&self) -> Result<(), JailError> {
        for prog in &self.programs {
            let fprog = libc::sock_fprog {
                len: u16::try_from(prog.len()).map_err(|e| err("filter length", e))?,
                filter: prog.as_ptr() as *mut libc::sock_filter,
            };
            // SAFETY: `fprog` points at a live program of `len` instructions with the kernel's
            // layout (seccompiler's `sock_filter` is `repr(C)` like `libc::sock_filter`); the
            // kernel copies it.
            let rc = unsafe {
                libc::syscall(
                    libc::SYS_seccomp,
                    libc::SECCOMP_SET_MODE_FILTER,
                    0,
                    &fprog as *const libc::sock_fprog,
                )
            };
            if rc != 0 {
                return Err(err("install", std::io::Error::last_os_error()));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_filter_compiles_and_lists_the_shocker_call() {
        let f = Filter::compile().unwrap();
        assert_eq!(f.programs.len(), 3);
        assert!(f.programs.iter().all(|p| !p.is_empty() && p.len() < 4096));
        for name in [
            "open_by_handle_at",
            "keyctl",
            "bpf",
            "ptrace",
            "unshare",
            "mount",
        ] {
            assert!(DENIED.iter().any(|(n, _)| *n == name), "{name}");
        }
    }

    /// Installs the filter in a forked child (filters cannot be removed) and checks what each
    /// call returns there; the exit code says which check failed.
    #[test]
    fn the_installed_filter_refuses_and_allows_as_documented() {
        let f = Filter::compile().unwrap();
        let errno = |rc: libc::c_long| {
            if rc == -1 {
                std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
            } else {
                0
            }
        };
        // SAFETY: the child makes raw syscalls only and leaves with `_exit`.
        match unsafe { nix::unistd::fork() }.unwrap() {
            nix::unistd::ForkResult::Child => {
                // SAFETY: prctl and syscall with integer arguments; null pointers where the
                // filter answers before the kernel would read them.
                let code = unsafe {
                    libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
                    let checks = [
                        f.install().is_ok(),
                        errno(libc::syscall(libc::SYS_open_by_handle_at, -1, 0, 0)) == libc::EPERM,
                        errno(libc::syscall(libc::SYS_unshare, 0)) == libc::EPERM,
                        errno(libc::syscall(libc::SYS_clone3, 0, 0)) == libc::ENOSYS,
                        // READ_IMPLIES_EXEC is not among the safe personalities; a query is.
                        errno(libc::syscall(libc::SYS_personality, 0x0040_0000)) == libc::EPERM,
                        errno(libc::syscall(libc::SYS_personality, 0xffff_ffffu32)) == 0,
                        errno(libc::syscall(libc::SYS_ioctl, 0, libc::TIOCSTI, 0)) == libc::EPERM,
                        // The x32 number of getpid.
                        errno(libc::syscall(0x4000_0000 | libc::SYS_getpid)) == libc::EPERM,
                        libc::syscall(libc::SYS_getpid) > 0,
                    ];
                    checks.iter().position(|ok| !ok).map_or(0, |i| i as i32 + 1)
                };
                // SAFETY: ends the forked child without running the parent's destructors.
                unsafe { libc::_exit(code) }
            }
            nix::unistd::ForkResult::Parent { child } => {
                let st = nix::sys::wait::waitpid(child, None).unwrap();
                assert_eq!(
                    st,
                    nix::sys::wait::WaitStatus::Exited(child, 0),
                    "failed check"
                );
            }
        }
    }

    #[test]
    fn clone_mask_is_dockers() {
        let mask = CLONE_NAMESPACE_FLAGS
            .iter()
            .fold(0u32, |m, f| m | *f as u32);
        assert_eq!(mask, 0x7E02_0000);
    }
}
