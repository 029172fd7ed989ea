//! The jail's default seccomp filter: an allow list, after Docker's default profile.
//!
//! Every system call not named here fails with `EPERM`, as in Docker: a call added by a
//! newer kernel is refused until it is reviewed and listed, instead of being let through by
//! a deny list that does not know it. The list ([`ALLOWED`]) is Docker's unconditional
//! x86-64 list (files, memory, signals, sockets, timers, IPC, the credential calls the
//! kernel checks itself), with these left out, each refused with `EPERM`:
//! - `open_by_handle_at` and `name_to_handle_at`: the jail keeps `CAP_DAC_READ_SEARCH`
//!   (droot's list), and with it a handle opens any file of a host file system, outside the
//!   chroot ("shocker"; Docker lists `name_to_handle_at`, and `open_by_handle_at` only with
//!   that capability);
//! - `io_uring_*`: its operations bypass seccomp;
//! - `clock_adjtime` (it sets the clock with `CAP_SYS_TIME`);
//! - what Docker allows only with a capability the jail does not get from us: namespaces
//!   and mounts (`unshare`, `setns`, `mount`, `umount2`, `pivot_root`, `fsopen` and the
//!   new mount API), `chroot` (a second chroot is the classic way out of one), `bpf`,
//!   `perf_event_open`, modules, `kexec_*`, `reboot`, `swapon`/`swapoff`, `acct`,
//!   `settimeofday`/`clock_settime`, `sethostname`/`setdomainname`, `syslog`, `quotactl`,
//!   `lookup_dcookie`, `iopl`/`ioperm`, `vhangup`, tracing (`ptrace`,
//!   `process_vm_readv`/`writev`, `kcmp`, `pidfd_getfd`, `process_madvise`), NUMA policy
//!   (`mbind`, `get_mempolicy`, `set_mempolicy`), `fanotify_init`;
//! - and what Docker never allows: keyrings (`add_key`, `request_key`, `keyctl`),
//!   `userfaultfd`, `uselib`, `nfsservctl`, `_sysctl`, and every call newer than the list.
//!
//! Added beyond Docker's list: `fchmodat2` (glibc 2.39 calls it for `lchmod` and falls
//! back only on `ENOSYS`; it does what `fchmodat` does). Left out of Docker's for want of a
//! `libc` constant: `io_pgetevents` (AIO with a signal mask; `io_getevents` is there).
//!
//! Calls allowed only with certain arguments, as before:
//! - `clone` without any `CLONE_NEW*` flag (Docker's mask, [`CLONE_NAMESPACE_FLAGS`]);
//! - `personality` with Docker's safe values (`PER_LINUX`, `UNAME26`, `PER_LINUX32`,
//!   `PER_LINUX32|UNAME26`, query);
//! - `ioctl` except `TIOCSTI` and `TIOCLINUX`, which type into a terminal (not in Docker's
//!   profile: the jail may be handed the operator's terminal, see [`super::tty`]);
//! - `socket` except `AF_VSOCK` (Docker's rule).
//!
//! `clone3` fails with `ENOSYS`, as in Docker: its flags sit in memory a filter cannot read,
//! and `ENOSYS` makes libc fall back to `clone`, which is checked. Other architectures'
//! system calls (32-bit `int 0x80`) kill the process; x32 calls (number with bit 30) are on
//! no list, so they get `EPERM`.
//!
//! The list is the same with `--no-dropcaps`: the capabilities kept do not widen it.
//! Installed last, just before `execve`: after `NO_NEW_PRIVS`, or, with `--no-dropcaps`
//! (no `NO_NEW_PRIVS`), while still root, before the credentials change. The filter is
//! inherited by every descendant and cannot be removed. `--seccomp unconfined` skips it.

use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

use super::JailError;

/// `(name, number)` pairs from `libc::SYS_*` constants.
macro_rules! syscalls {
    ($($n:ident)*) => { &[$((stringify!($n), libc::$n)),*] };
}

/// System calls allowed whatever their arguments.
#[cfg(target_arch = "x86_64")]
#[rustfmt::skip]
pub const ALLOWED: &[(&str, i64)] = syscalls! {
    SYS_accept SYS_accept4 SYS_access SYS_adjtimex SYS_alarm SYS_arch_prctl SYS_bind SYS_brk
    SYS_capget SYS_capset SYS_chdir SYS_chmod SYS_chown SYS_clock_getres SYS_clock_gettime
    SYS_clock_nanosleep SYS_close SYS_close_range SYS_connect SYS_copy_file_range SYS_creat
    SYS_dup SYS_dup2 SYS_dup3 SYS_epoll_create SYS_epoll_create1 SYS_epoll_ctl
    SYS_epoll_ctl_old SYS_epoll_pwait SYS_epoll_pwait2 SYS_epoll_wait SYS_epoll_wait_old
    SYS_eventfd SYS_eventfd2 SYS_execve SYS_execveat SYS_exit SYS_exit_group SYS_faccessat
    SYS_faccessat2 SYS_fadvise64 SYS_fallocate SYS_fanotify_mark SYS_fchdir SYS_fchmod
    SYS_fchmodat SYS_fchmodat2 SYS_fchown SYS_fchownat SYS_fcntl SYS_fdatasync SYS_fgetxattr
    SYS_flistxattr SYS_flock SYS_fork SYS_fremovexattr SYS_fsetxattr SYS_fstat SYS_fstatfs
    SYS_fsync SYS_ftruncate SYS_futex SYS_futex_waitv SYS_futimesat SYS_getcpu SYS_getcwd
    SYS_getdents SYS_getdents64 SYS_getegid SYS_geteuid SYS_getgid SYS_getgroups
    SYS_getitimer SYS_getpeername SYS_getpgid SYS_getpgrp SYS_getpid SYS_getppid
    SYS_getpriority SYS_getrandom SYS_getresgid SYS_getresuid SYS_getrlimit
    SYS_get_robust_list SYS_getrusage SYS_getsid SYS_getsockname SYS_getsockopt
    SYS_get_thread_area SYS_gettid SYS_gettimeofday SYS_getuid SYS_getxattr
    SYS_inotify_add_watch SYS_inotify_init SYS_inotify_init1 SYS_inotify_rm_watch
    SYS_io_cancel SYS_io_destroy SYS_io_getevents SYS_ioprio_get
    SYS_ioprio_set SYS_io_setup SYS_io_submit SYS_kill SYS_landlock_add_rule
    SYS_landlock_create_ruleset SYS_landlock_restrict_self SYS_lchown SYS_lgetxattr SYS_link
    SYS_linkat SYS_listen SYS_listxattr SYS_llistxattr SYS_lremovexattr SYS_lseek
    SYS_lsetxattr SYS_lstat SYS_madvise SYS_membarrier SYS_memfd_create SYS_memfd_secret
    SYS_mincore SYS_mkdir SYS_mkdirat SYS_mknod SYS_mknodat SYS_mlock SYS_mlock2
    SYS_mlockall SYS_mmap SYS_modify_ldt SYS_mprotect SYS_mq_getsetattr SYS_mq_notify
    SYS_mq_open SYS_mq_timedreceive SYS_mq_timedsend SYS_mq_unlink SYS_mremap SYS_msgctl
    SYS_msgget SYS_msgrcv SYS_msgsnd SYS_msync SYS_munlock SYS_munlockall SYS_munmap
    SYS_nanosleep SYS_newfstatat SYS_open SYS_openat SYS_openat2 SYS_pause SYS_pidfd_open
    SYS_pidfd_send_signal SYS_pipe SYS_pipe2 SYS_pkey_alloc SYS_pkey_free SYS_pkey_mprotect
    SYS_poll SYS_ppoll SYS_prctl SYS_pread64 SYS_preadv SYS_preadv2 SYS_prlimit64
    SYS_process_mrelease SYS_pselect6 SYS_pwrite64 SYS_pwritev SYS_pwritev2 SYS_read
    SYS_readahead SYS_readlink SYS_readlinkat SYS_readv SYS_recvfrom SYS_recvmmsg
    SYS_recvmsg SYS_remap_file_pages SYS_removexattr SYS_rename SYS_renameat SYS_renameat2
    SYS_restart_syscall SYS_rmdir SYS_rseq SYS_rt_sigaction SYS_rt_sigpending
    SYS_rt_sigprocmask SYS_rt_sigqueueinfo SYS_rt_sigreturn SYS_rt_sigsuspend
    SYS_rt_sigtimedwait SYS_rt_tgsigqueueinfo SYS_sched_getaffinity SYS_sched_getattr
    SYS_sched_getparam SYS_sched_get_priority_max SYS_sched_get_priority_min
    SYS_sched_getscheduler SYS_sched_rr_get_interval SYS_sched_setaffinity
    SYS_sched_setattr SYS_sched_setparam SYS_sched_setscheduler SYS_sched_yield SYS_seccomp
    SYS_select SYS_semctl SYS_semget SYS_semop SYS_semtimedop SYS_sendfile SYS_sendmmsg
    SYS_sendmsg SYS_sendto SYS_setfsgid SYS_setfsuid SYS_setgid SYS_setgroups SYS_setitimer
    SYS_setpgid SYS_setpriority SYS_setregid SYS_setresgid SYS_setresuid SYS_setreuid
    SYS_setrlimit SYS_set_robust_list SYS_setsid SYS_setsockopt SYS_set_thread_area
    SYS_set_tid_address SYS_setuid SYS_setxattr SYS_shmat SYS_shmctl SYS_shmdt SYS_shmget
    SYS_shutdown SYS_sigaltstack SYS_signalfd SYS_signalfd4 SYS_socketpair SYS_splice
    SYS_stat SYS_statfs SYS_statx SYS_symlink SYS_symlinkat SYS_sync SYS_sync_file_range
    SYS_syncfs SYS_sysinfo SYS_tee SYS_tgkill SYS_time SYS_timer_create SYS_timer_delete
    SYS_timer_getoverrun SYS_timer_gettime SYS_timer_settime SYS_timerfd_create
    SYS_timerfd_gettime SYS_timerfd_settime SYS_times SYS_tkill SYS_truncate SYS_umask
    SYS_uname SYS_unlink SYS_unlinkat SYS_utime SYS_utimensat SYS_utimes SYS_vfork
    SYS_vmsplice SYS_wait4 SYS_waitid SYS_write SYS_writev
};

/// Other architectures have no list yet: [`Filter::compile`] refuses, naming the way out.
#[cfg(not(target_arch = "x86_64"))]
pub const ALLOWED: &[(&str, i64)] = &[];

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

/// `socket` domain refused (Docker's rule).
pub const SOCKET_DENIED_DOMAIN: u64 = libc::AF_VSOCK as u64;

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

/// The allow list: [`ALLOWED`], and `clone`, `personality`, `ioctl`, `socket` with the
/// arguments allowed; everything else `EPERM`.
fn allow_list_program() -> Result<BpfProgram, JailError> {
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> =
        ALLOWED.iter().map(|(_, nr)| (*nr, Vec::new())).collect();
    let ns_mask = CLONE_NAMESPACE_FLAGS
        .iter()
        .fold(0u64, |m, f| m | u64::from(*f as u32));
    rules.insert(
        libc::SYS_clone,
        vec![rule(vec![cond(0, SeccompCmpOp::MaskedEq(ns_mask), 0)?])?],
    );
    let personality = PERSONALITY_ALLOWED
        .iter()
        .map(|v| rule(vec![cond(0, SeccompCmpOp::Eq, *v)?]))
        .collect::<Result<Vec<_>, _>>()?;
    rules.insert(libc::SYS_personality, personality);
    let ioctl = IOCTL_DENIED
        .iter()
        .map(|req| cond(1, SeccompCmpOp::Ne, *req))
        .collect::<Result<Vec<_>, _>>()?;
    rules.insert(libc::SYS_ioctl, vec![rule(ioctl)?]);
    rules.insert(
        libc::SYS_socket,
        vec![rule(vec![cond(
            0,
            SeccompCmpOp::Ne,
            SOCKET_DENIED_DOMAIN,
        )?])?],
    );
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Errno(libc::EPERM as u32),
        SeccompAction::Allow,
        arch()?,
    )
    .map_err(|e| err("build the filter", e))?;
    BpfProgram::try_from(filter).map_err(|e| err("compile the filter", e))
}

/// `clone3` → `ENOSYS`. Installed after the allow list (which refuses it with `EPERM`): of
/// two errno answers the kernel returns the later filter's.
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

impl Filter {
    /// Compiles the default filter. Done before the fork, so a bug shows as a set-up error.
    pub fn compile() -> Result<Filter, JailError> {
        if ALLOWED.is_empty() {
            return Err(err(
                "compile",
                format!("no profile for {} yet", std::env::consts::ARCH),
            ));
        }
        Ok(Filter {
            programs: vec![allow_list_program()?, enosys_program()?],
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
    fn the_default_filter_compiles_and_leaves_out_the_dangerous_calls() {
        let f = Filter::compile().unwrap();
        assert_eq!(f.programs.len(), 2);
        assert!(f.programs.iter().all(|p| !p.is_empty() && p.len() < 4096));
        for nr in [
            libc::SYS_open_by_handle_at,
            libc::SYS_name_to_handle_at,
            libc::SYS_keyctl,
            libc::SYS_bpf,
            libc::SYS_ptrace,
            libc::SYS_unshare,
            libc::SYS_mount,
            libc::SYS_chroot,
            libc::SYS_io_uring_setup,
            libc::SYS_get_mempolicy,
            libc::SYS_clone,
            libc::SYS_clone3,
        ] {
            assert!(!ALLOWED.iter().any(|(_, n)| *n == nr), "{nr} is allowed");
        }
        let mut numbers: Vec<i64> = ALLOWED.iter().map(|(_, n)| *n).collect();
        numbers.sort_unstable();
        numbers.dedup();
        assert_eq!(numbers.len(), ALLOWED.len(), "a call is listed twice");
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
                        // Not on the list (Docker allows it only with CAP_SYS_NICE).
                        errno(libc::syscall(libc::SYS_get_mempolicy, 0, 0, 0, 0, 0)) == libc::EPERM,
                        errno(libc::syscall(
                            libc::SYS_socket,
                            libc::AF_VSOCK,
                            libc::SOCK_STREAM,
                            0,
                        )) == libc::EPERM,
                        // A clone without namespace flags is allowed (a plain fork).
                        {
                            let pid = libc::syscall(libc::SYS_clone, libc::SIGCHLD, 0, 0, 0, 0);
                            if pid == 0 {
                                libc::_exit(0);
                            }
                            pid > 0
                        },
                        errno(libc::syscall(
                            libc::SYS_clone,
                            libc::CLONE_NEWNET | libc::SIGCHLD,
                            0,
                            0,
                            0,
                            0,
                        )) == libc::EPERM,
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
