//! Handover benchmark: requests failed per deploy, and the deploy's time, for an app whose
//! deploys overlap on the agent's socket (`listen`) against the same app stopped then
//! started (it binds its own port), side by side in one run, for an app that boots in 0 s
//! and one that boots in 2 s.
//!
//! Run (as root, with gcc): `cargo build --release && cargo run --release --example
//! handover_bench -- [--runs N]` (the jails are started by the release binary).
//!
//! The app is the socket-activated test app of the test suite (`tests/support/sockapp.c`),
//! in real jails started by the real supervisor, ready by `READY=1`. A thread GETs it with
//! a fresh connection every 10 ms throughout; a deploy counts the requests that failed
//! between its start and the new release being ready (and, overlapping, the old one
//! stopped). Each case runs N deploys; medians are reported.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use droot_fleet::deploy::app::{AppConfig, parse_apps};
use droot_fleet::deploy::supervisor::{AppStatus, Supervisor, SupervisorOptions};

const SOCKAPP: &str = include_str!("../tests/support/sockapp.c");

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Overlap,
    StopThenStart,
}

struct Prober {
    stop: Arc<AtomicBool>,
    failed: Arc<AtomicU64>,
    thread: std::thread::JoinHandle<()>,
}

fn probe(addr: String) -> Prober {
    let stop = Arc::new(AtomicBool::new(false));
    let failed = Arc::new(AtomicU64::new(0));
    let (s, f) = (stop.clone(), failed.clone());
    let thread = std::thread::spawn(move || {
        while !s.load(Ordering::SeqCst) {
            if !get_ok(&addr) {
                f.fetch_add(1, Ordering::SeqCst);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    });
    Prober {
        stop,
        failed,
        thread,
    }
}

fn get_ok(addr: &str) -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(addr) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    if s.write_all(b"GET / HTTP/1.0\r\n\r\n").is_err() {
        return false;
    }
    let mut buf = String::new();
    let _ = s.read_to_string(&mut buf);
    buf.starts_with("HTTP/1.0 200")
}

fn sh(cmd: &mut std::process::Command) {
    let st = cmd.status().expect("run a set-up command");
    assert!(st.success(), "{cmd:?} failed");
}

/// A release root: the app, its version, its boot time, and the mount points `run` needs.
fn release(dir: &Path, version: &str, boot_ms: u64, exe: &Path) {
    for d in ["proc", "sys", "dev", "tmp", "etc"] {
        std::fs::create_dir_all(dir.join(d)).unwrap();
    }
    std::fs::copy(exe, dir.join("sockapp")).unwrap();
    std::fs::write(dir.join("version"), version).unwrap();
    std::fs::write(dir.join("delay_ms"), boot_ms.to_string()).unwrap();
}

fn app(root: &Path, addr: &str, mode: Mode) -> AppConfig {
    let socket = match mode {
        Mode::Overlap => format!("listen = [\"tcp:{addr}\"]"),
        Mode::StopThenStart => format!("env = {{ BIND = \"{addr}\" }}"),
    };
    let text = format!(
        "[apps.b]\nartifact = \"file:///x/{{version}}.tar\"\nroot = \"{}\"\n\
         command = [\"/sockapp\"]\n{socket}\n[apps.b.health]\nnotify = true\ndeadline = \"30s\"\n",
        root.display()
    );
    parse_apps(&text).unwrap().remove("b").unwrap()
}

async fn wait(sup: &Supervisor, f: impl FnMut(&AppStatus) -> bool) {
    let mut rx = sup.watch("b").await.unwrap();
    tokio::time::timeout(Duration::from_secs(60), rx.wait_for(f))
        .await
        .expect("ready in time")
        .expect("supervisor alive");
}

/// One deploy of `release`: (requests failed meanwhile, its time).
async fn deploy(sup: &Supervisor, mode: Mode, release: &str, p: &Prober) -> (u64, Duration) {
    let before = p.failed.load(Ordering::SeqCst);
    let t = Instant::now();
    match mode {
        Mode::Overlap => {
            sup.start_next("b", release).await.unwrap();
            wait(sup, |s| s.next.as_ref().is_some_and(|n| n.ready)).await;
            sup.promote("b").await.unwrap();
        }
        Mode::StopThenStart => {
            sup.start("b", Some(release)).await.unwrap();
            wait(sup, |s| s.ready).await;
        }
    }
    let took = t.elapsed();
    // Requests sent just before ready that were still waiting count too.
    tokio::time::sleep(Duration::from_millis(50)).await;
    (p.failed.load(Ordering::SeqCst) - before, took)
}

/// `target/release/droot-fleet`, next to this example's directory.
fn droot_fleet_binary() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let bin = exe.ancestors().nth(2).unwrap().join("droot-fleet");
    assert!(
        bin.exists(),
        "{} is missing: run `cargo build --release` first",
        bin.display()
    );
    bin
}

fn median<T: Copy + Ord>(mut v: Vec<T>) -> T {
    v.sort();
    v[v.len() / 2]
}

async fn bench(dir: &Path, exe: &Path, boot_ms: u64, mode: Mode, runs: usize) -> (u64, Duration) {
    let tag = match mode {
        Mode::Overlap => "overlap",
        Mode::StopThenStart => "stop",
    };
    let root = dir.join(format!("{tag}-{boot_ms}"));
    for i in 0..=runs {
        release(
            &root.join(format!("releases/r{i}")),
            &format!("r{i}"),
            boot_ms,
            exe,
        );
    }
    let _ = std::fs::remove_file(root.join("current"));
    std::os::unix::fs::symlink("releases/r0", root.join("current")).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let mut opts = SupervisorOptions::new(dir.join(format!("state-{tag}-{boot_ms}"))).unwrap();
    opts.exe = droot_fleet_binary();
    let sup = Supervisor::new(opts).unwrap();
    sup.manage(app(&root, &addr, mode)).await.unwrap();
    sup.start("b", None).await.unwrap();
    wait(&sup, |s| s.ready).await;
    let p = probe(addr);
    let mut failed = Vec::new();
    let mut took = Vec::new();
    for i in 1..=runs {
        let (f, t) = deploy(&sup, mode, &format!("r{i}"), &p).await;
        failed.push(f);
        took.push(t);
    }
    p.stop.store(true, Ordering::SeqCst);
    p.thread.join().unwrap();
    sup.stop("b").await.unwrap();
    (median(failed), median(took))
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let runs = args
        .iter()
        .position(|a| a == "--runs")
        .and_then(|i| args.get(i + 1)?.parse().ok())
        .unwrap_or(5usize);
    let dir = std::env::temp_dir().join(format!("handover-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let src = dir.join("sockapp.c");
    std::fs::write(&src, SOCKAPP).unwrap();
    let exe = dir.join("sockapp");
    sh(std::process::Command::new("gcc")
        .arg("-static")
        .arg("-O2")
        .arg("-o")
        .arg(&exe)
        .arg(&src));
    println!("{runs} deploys each, a GET every 10 ms, medians");
    println!(
        "{:<6} {:<16} {:>16} {:>12}",
        "boot", "mode", "failed/deploy", "deploy time"
    );
    for boot_ms in [0, 2000] {
        for (mode, name) in [
            (Mode::Overlap, "overlap (listen)"),
            (Mode::StopThenStart, "stop-then-start"),
        ] {
            let (failed, took) = bench(&dir, &exe, boot_ms, mode, runs).await;
            println!(
                "{:<6} {:<16} {:>16} {:>11.2}s",
                format!("{} s", boot_ms / 1000),
                name,
                failed,
                took.as_secs_f64()
            );
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}
