//! The cloned child's side of [`super::run`]: the set-up sequence in the new namespaces,
//! the init of the PID namespace, and the exec of the command (see the parent module's
//! diagram).

use super::*;

/// The cloned child. Never returns: it execs the command, runs init, or reports and exits.
pub(super) fn child_main(plan: &Plan<'_>, wr: RawFd, wait_set: &SigSet) -> isize {
    if let Some(fds) = plan.output
        && let Err(e) = output::redirect_in_child(fds)
    {
        report_and_exit(wr, &e);
    }
    let mut launch = match prepare(plan) {
        Ok(l) => l,
        Err(e) => report_and_exit(wr, &e),
    };
    if !plan.spec.pid_ns {
        let e = become_and_exec(&launch, plan);
        report_and_exit(wr, &e);
    }
    // SAFETY: we are PID 1 of a new namespace and single-threaded.
    match unsafe { nix::unistd::fork() } {
        Ok(ForkResult::Child) => {
            let e = become_and_exec(&launch, plan);
            report_and_exit(wr, &e)
        }
        Ok(ForkResult::Parent { child }) => {
            // The command holds the report pipe (and the pty); our copies must not keep the
            // parent waiting.
            // SAFETY: closing our copies; nothing else uses these numbers here.
            unsafe { libc::close(wr) };
            drop(launch.pty_slave.take());
            init_loop(child, wait_set)
        }
        Err(e) => report_and_exit(wr, &JailError::sys("fork of the command under init", e)),
    }
}

/// Ready-to-exec state, computed inside the jail.
struct Launch {
    identity: user::Identity,
    drop_caps: bool,
    cmd: String,
    path: String,
    argv: Vec<CString>,
    envp: Vec<CString>,
    /// The slave of the jail's pty, when stdin is a terminal.
    pty_slave: Option<OwnedFd>,
}

/// In the child, before any credential change: mounts, chroot, users, environment.
fn prepare(plan: &Plan<'_>) -> Result<Launch, JailError> {
    let root = plan.root.as_path();
    // A new session: no controlling terminal shared with the caller (TIOCSTI, see [`tty`]).
    nix::unistd::setsid().map_err(|e| JailError::sys("setsid", e))?;
    if plan.spec.pid_ns {
        // If droot-fleet dies, so does our init, and with it the whole PID namespace.
        // SAFETY: prctl with integer arguments only.
        unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) };
    }
    // Every directory and file the jail creates gets its mode whatever the caller's umask,
    // and the command starts with runc's default umask.
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o022));
    mounts::make_root_private()?;
    // Reopen the root by name: a descriptor from before the clone belongs to the host's mount
    // namespace, and mounting on it would fail (EINVAL) or, worse, act there.
    let root_fd = paths::open_root(root)?;
    let root_fd = root_fd.as_fd();
    mounts::mount_proc(root_fd, root)?;
    mounts::mount_sys(root_fd, root)?;
    devices::mount_dev(root_fd, root, plan.spec.userns)?;
    procfs::protect(root_fd, root)?;
    for (b, (kind, inside)) in plan.spec.binds.iter().zip(&plan.binds) {
        mounts::bind(root_fd, root, b, *kind, inside.as_deref())?;
    }
    if let Some((sock, parents)) = plan.userns_sync {
        // SAFETY: our copy of the parent's end; nothing else in this process uses it.
        unsafe { libc::close(parents) };
        userns::enter(sock, plan.spec.pid_ns)?;
    }
    chroot_into(root_fd, root)?;

    let db = UserDb {
        jail_passwd: user::parse_passwd(
            &read_optional(Path::new("/etc/passwd"))?.unwrap_or_default(),
        ),
        jail_group: read_optional(Path::new("/etc/group"))?.map(|t| user::parse_group(&t)),
        ..plan.host_db.clone()
    };
    let identity = db.resolve(plan.spec.user.as_deref(), plan.spec.group.as_deref())?;
    let drootenv = read_optional(Path::new("/").join(crate::drootenv::FILE_NAME).as_path())?
        .unwrap_or_default();
    let mut env = env::merge(&drootenv, &plan.spec.env);
    env::add_listen_fds(&mut env, &plan.spec.listen_fds);
    let path = env::path_of(&env).to_string();
    let argv = c_strings(plan.spec.command.iter().cloned())?;
    let envp = c_strings(env.into_iter().map(|(k, v)| format!("{k}={v}")))?;
    let pty_slave = match plan.console {
        Some(sock) => {
            let slave = tty::open_in_jail(sock, identity.uid)?;
            // SAFETY: our copy of the console socket; the master has been sent.
            unsafe { libc::close(sock) };
            Some(slave)
        }
        None => None,
    };
    tracing::debug!(uid = identity.uid, gid = identity.gid, groups = ?identity.groups, "jail prepared");
    Ok(Launch {
        identity,
        drop_caps: plan.spec.drop_caps,
        cmd: plan.spec.command[0].clone(),
        path,
        argv,
        envp,
        pty_slave,
    })
}

/// The strings as C strings for `execve`; one with a NUL byte is refused.
fn c_strings(strings: impl Iterator<Item = String>) -> Result<Vec<CString>, JailError> {
    strings
        .map(|s| {
            CString::new(s).map_err(|e| JailError::InvalidArg {
                arg: String::from_utf8_lossy(&e.into_vec()).into_owned(),
                reason: "contains a NUL byte".into(),
            })
        })
        .collect()
}

fn chroot_into(root_fd: BorrowedFd<'_>, root: &Path) -> Result<(), JailError> {
    let err = |e: Errno| JailError::Chroot {
        root: root.to_path_buf(),
        err: e.into(),
    };
    nix::unistd::fchdir(root_fd).map_err(err)?;
    nix::unistd::chroot(".").map_err(err)?;
    nix::unistd::chdir("/").map_err(err)
}

/// Drops privileges, installs the seccomp filter and execs the command; returns only the
/// error that stopped it. The filter goes last, after `NO_NEW_PRIVS`; without it
/// (`--no-dropcaps`) it must go while we are still root, before the credentials change.
fn become_and_exec(l: &Launch, plan: &Plan<'_>) -> JailError {
    // Under our init, the command gets its own session too (it is already a session leader
    // without a PID namespace, and then this fails harmlessly).
    let _ = nix::unistd::setsid();
    if let Some(slave) = &l.pty_slave
        && let Err(e) = tty::attach(slave.as_raw_fd())
    {
        return e;
    }
    if let Err(e) = drop_privileges(l, plan.seccomp.as_ref()) {
        return e;
    }
    reset_signals();
    let listen = plan.spec.listen_fds.len() as i32;
    if let Err(e) = keep_listen_fds(listen) {
        return e;
    }
    close_inherited_fds(3 + listen);
    // LISTEN_PID is the pid that execs, as the command sees it (in its PID namespace).
    let mut envp = l.envp.clone();
    if listen > 0 {
        let pid = nix::unistd::getpid();
        envp.push(CString::new(format!("LISTEN_PID={pid}")).expect("no NUL in a number"));
    }
    let mut denied = None;
    for cand in env::candidates(&l.cmd, &l.path) {
        let Ok(c) = CString::new(cand.as_os_str().as_encoded_bytes()) else {
            continue;
        };
        match nix::unistd::execve(&c, &l.argv, &envp) {
            Err(Errno::ENOENT | Errno::ENOTDIR) => {}
            Err(e @ Errno::EACCES) => denied = Some(e),
            Err(e @ Errno::ENOEXEC) => {
                return JailError::NotExecutable {
                    cmd: cand.display().to_string(),
                    err: e.into(),
                };
            }
            Err(e) => {
                return JailError::Exec {
                    cmd: cand.display().to_string(),
                    err: e.into(),
                };
            }
            Ok(never) => match never {},
        }
    }
    match denied {
        Some(e) => JailError::NotExecutable {
            cmd: l.cmd.clone(),
            err: e.into(),
        },
        None => JailError::CommandNotFound {
            cmd: l.cmd.clone(),
            path: l.path.clone(),
        },
    }
}

fn drop_privileges(l: &Launch, filter: Option<&seccomp::Filter>) -> Result<(), JailError> {
    if l.drop_caps {
        caps::restrict()?;
    } else if let Some(f) = filter {
        f.install()?;
    }
    user::apply(&l.identity)?;
    if l.drop_caps {
        caps::no_new_privs()?;
        if let Some(f) = filter {
            f.install()?;
        }
    }
    Ok(())
}

/// Default dispositions and an empty mask for the command (Rust ignores SIGPIPE; exec keeps
/// ignored signals and the mask).
fn reset_signals() {
    let dfl = SigAction::new(SigHandler::SigDfl, SaFlags::empty(), SigSet::empty());
    for sig in Signal::iterator() {
        if !matches!(sig, Signal::SIGKILL | Signal::SIGSTOP) {
            // SAFETY: installing the default disposition is always sound.
            let _ = unsafe { sigaction(sig, &dfl) };
        }
    }
    let _ =
        nix::sys::signal::pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None);
}

/// The listening sockets at 3.. survive the exec.
fn keep_listen_fds(n: i32) -> Result<(), JailError> {
    for fd in 3..3 + n {
        // SAFETY: fcntl on a descriptor number; clears FD_CLOEXEC only.
        if unsafe { libc::fcntl(fd, libc::F_SETFD, 0) } < 0 {
            return Err(JailError::sys("keeping a listening socket", Errno::last()));
        }
    }
    Ok(())
}

/// Marks every descriptor from `first` close-on-exec: a directory fd of the host leaking
/// into the jail would let its root walk out of the chroot.
fn close_inherited_fds(first: i32) {
    // SAFETY: close_range with integer arguments; CLOSE_RANGE_CLOEXEC only sets flags.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            first as u32,
            u32::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        )
    };
    if rc != 0 {
        // Before Linux 5.11: walk the descriptors one by one.
        if let Ok(dir) = std::fs::read_dir("/proc/self/fd") {
            let fds: Vec<i32> = dir
                .flatten()
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .collect();
            for fd in fds.into_iter().filter(|fd| *fd >= first) {
                // SAFETY: setting FD_CLOEXEC on a descriptor number; harmless if it is closed.
                unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
            }
        }
    }
}

/// PID 1 of the jail: reap everything, forward signals to the command, exit with its status.
fn init_loop(cmd: Pid, wait_set: &SigSet) -> ! {
    loop {
        let Ok(sig) = next_signal(wait_set) else {
            continue;
        };
        if sig != Signal::SIGCHLD {
            let _ = kill(cmd, sig);
            continue;
        }
        loop {
            match waitpid(None::<Pid>, Some(WaitPidFlag::WNOHANG)) {
                // SAFETY: ending PID 1; the kernel kills what is left in the namespace.
                Ok(WaitStatus::Exited(pid, code)) if pid == cmd => unsafe { libc::_exit(code) },
                Ok(WaitStatus::Signaled(pid, s, _)) if pid == cmd => unsafe {
                    libc::_exit(128 + s as i32)
                },
                Ok(WaitStatus::StillAlive) | Err(_) => break,
                Ok(_) => {}
            }
        }
    }
}
