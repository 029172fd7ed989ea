//! The jail and the caller's terminal (issue 6 item 9): a jailed process cannot type into the
//! operator's shell with TIOCSTI, and `run -- sh` on a terminal is interactive through a fresh
//! pty (window size, resize, Ctrl-C, exit status, the caller's terminal settings restored).
//! Each test drives a pty it creates, waiting on markers in the output, never on sleeps.

mod common;

use std::io::Write;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command};
use std::sync::mpsc::{Receiver, channel};
use std::time::{Duration, Instant};

use common::jail::{build_static_c, jail};
use nix::pty::Winsize;
use nix::sys::termios::{LocalFlags, tcgetattr};

/// A terminal driven by the test: the master end, and everything the other side wrote.
struct Term {
    master: std::fs::File,
    slave: OwnedFd,
    output: Receiver<Vec<u8>>,
    seen: String,
}

impl Term {
    fn new(rows: u16, cols: u16) -> Term {
        let ws = Winsize {
            ws_row: rows,
            ws_col: cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        let p = nix::pty::openpty(Some(&ws), None).unwrap();
        let master = std::fs::File::from(p.master);
        let mut reader = master.try_clone().unwrap();
        let (tx, rx) = channel();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = std::io::Read::read(&mut reader, &mut buf) {
                if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                    break;
                }
            }
        });
        Term {
            master,
            slave: p.slave,
            output: rx,
            seen: String::new(),
        }
    }

    /// Starts `cmd` as the session leader of this terminal (it is its controlling tty).
    fn spawn(&self, cmd: &mut Command) -> Child {
        let slave = self.slave.as_raw_fd();
        // SAFETY: only async-signal-safe calls between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setsid() < 0
                    || libc::ioctl(slave, libc::TIOCSCTTY, 0) != 0
                    || libc::dup2(slave, 0) < 0
                    || libc::dup2(slave, 1) < 0
                    || libc::dup2(slave, 2) < 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        cmd.spawn().unwrap()
    }

    fn type_in(&mut self, text: &str) {
        self.master.write_all(text.as_bytes()).unwrap();
    }

    /// Waits until `marker` appears in the output (after what earlier waits consumed).
    fn wait_for(&mut self, marker: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(i) = self.seen.find(marker) {
                let upto = self.seen[..i + marker.len()].to_string();
                self.seen.drain(..i + marker.len());
                return upto;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match self.output.recv_timeout(left) {
                Ok(b) => self.seen.push_str(&String::from_utf8_lossy(&b)),
                Err(_) => panic!("{marker:?} never appeared; output so far: {:?}", self.seen),
            }
        }
    }

    fn resize(&self, rows: u16, cols: u16) {
        let ws = Winsize {
            ws_row: rows,
            ws_col: cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCSWINSZ reads a live winsize.
        assert_eq!(
            unsafe { libc::ioctl(self.master.as_raw_fd(), libc::TIOCSWINSZ, &ws) },
            0
        );
    }
}

const TIOCSTI_C: &str = r#"
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>
/* Pushes argv[1] into the input of every terminal it can reach. */
int main(int argc, char **argv) {
    int fds[4] = {0, 1, 2, open("/dev/tty", O_RDWR)};
    for (int i = 0; i < 4; i++) {
        if (fds[i] < 0) continue;
        int ok = 1;
        for (char *c = argv[1]; *c; c++) ok &= ioctl(fds[i], TIOCSTI, c) == 0;
        fprintf(stderr, "tiocsti fd %d: %s\n", fds[i], ok ? "pushed" : "refused");
    }
    return 0;
}
"#;

/// issue 6 item 9: a `-u 65534` jailed process pushed `id > FILE` into the operator's root
/// shell, which ran it after the jail exited.
#[test]
fn issue6_tiocsti_cannot_type_into_the_callers_shell() {
    let j = jail("TIOCSTI");
    let outside = j.root.parent().unwrap().to_path_buf();
    let exe = build_static_c(&outside, "tiocsti", TIOCSTI_C);
    std::fs::copy(&exe, j.root.join("bin/tiocsti")).unwrap();

    // Through the jail's pty (stdin a terminal), and without one (stdin /dev/null: then only
    // stdout and stderr are the caller's terminal); with and without the seccomp filter.
    let cases = [
        ("", ""),
        ("--seccomp unconfined", ""),
        ("--seccomp unconfined", "< /dev/null"),
    ];
    for (i, (flags, stdin)) in cases.into_iter().enumerate() {
        let injected = outside.join(format!("injected{i}"));
        let mut t = Term::new(24, 80);
        let mut shell = t.spawn(Command::new("/bin/sh").arg("-i").env("PS1", "$ "));
        t.type_in(&format!(
            "{} run --root {} -u 65534 {flags} -- tiocsti 'touch {}\n' {stdin}; echo DONE-$((1+1))\n",
            common::bin().display(),
            j.root.display(),
            injected.display()
        ));
        t.wait_for("DONE-2");
        // Anything injected into our terminal sits in its input before this line.
        t.type_in("echo MARK-$((6*7))\n");
        let out = t.wait_for("MARK-42");
        assert!(
            !injected.exists(),
            "{flags} {stdin}: the jail typed a command into the caller's shell: {out}"
        );
        t.type_in("exit\n");
        shell.wait().unwrap();
    }
}

/// `run -- sh` on a terminal: a real interactive shell through a fresh pty.
#[test]
fn interactive_shell_through_a_pty_with_size_resize_ctrl_c_and_exit_status() {
    let j = jail("interactive run");
    let mut t = Term::new(33, 101);
    let before = tcgetattr(&t.slave).unwrap();
    let mut run = t.spawn(common::cmd().arg("run").arg("--root").arg(&j.root).args([
        "-e",
        "PS1=jail$ ",
        "--",
        "sh",
    ]));
    t.type_in("stty size; tty; echo A-$((2+3))\n");
    let out = t.wait_for("A-5");
    assert!(out.contains("33 101"), "outer size inside: {out:?}");
    assert!(
        out.contains("\n/dev/pts/0\r\n"),
        "the jail's own pty, on its own devpts: {out:?}"
    );
    // While the jail runs, the caller's terminal is raw.
    let raw = tcgetattr(&t.slave).unwrap();
    assert!(!raw.local_flags.contains(LocalFlags::ICANON));

    t.resize(40, 120);
    t.type_in("stty size; echo B-$((3+4))\n");
    let out = t.wait_for("B-7");
    assert!(out.contains("40 120"), "resize propagated: {out:?}");

    t.type_in("sleep 60\n");
    common::wait_for_comm(run.id(), "sleep", 3);
    t.type_in("\x03");
    t.type_in("echo C-$((4+5))\n");
    t.wait_for("C-9");

    t.type_in("exit 5\n");
    let st = run.wait().unwrap();
    assert_eq!(st.code(), Some(5), "the shell's exit status");
    let after = tcgetattr(&t.slave).unwrap();
    assert_eq!(
        after.local_flags, before.local_flags,
        "terminal settings restored"
    );
    assert_eq!(after.input_flags, before.input_flags);
    assert_eq!(after.output_flags, before.output_flags);
    common::jail::assert_no_mounts(&j.root);
}

/// With a terminal on stdin but stdout redirected, the file gets the command's bytes as they
/// are (no pty in between, no CR added); stderr, still the terminal, goes through the pty.
#[test]
fn redirected_stdout_bypasses_the_pty() {
    let j = jail("redirected stdout");
    let file = j.root.parent().unwrap().join("copy");
    let mut t = Term::new(24, 80);
    let mut shell = t.spawn(Command::new("/bin/sh").arg("-i").env("PS1", "$ "));
    t.type_in(&format!(
        "{} run --root {} -- sh -c '[ -t 0 ] && [ -t 2 ] && echo ERR-$((2*4)) >&2; \
         [ -t 1 ] || printf \"a\\nb\\n\"' > {}; echo DONE-$((1+1))\n",
        common::bin().display(),
        j.root.display(),
        file.display()
    ));
    let out = t.wait_for("DONE-2");
    assert!(out.contains("ERR-8"), "stderr through the pty: {out:?}");
    assert_eq!(std::fs::read(&file).unwrap(), b"a\nb\n");
    t.type_in("exit\n");
    shell.wait().unwrap();
}
