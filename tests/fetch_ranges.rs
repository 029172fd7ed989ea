//! A large S3 object (or HTTP one, from a server that takes ranges) is fetched as
//! concurrent ranged GETs, each retried on its own: a range
//! cut off midway, or stalled with its connection open, is fetched again (the ranges already
//! fetched are kept, nothing starts again from byte 0), a range that keeps failing fails the deploy after five attempts, and
//! an object replaced midway (its ETag no longer matches) fails it with nothing deployed.
//!
//! The store is a fake S3 written here (plain HTTP on 127.0.0.1, path-style, any path): it
//! answers HEAD and ranged GETs of one object, cuts off or refuses the ranges a test names,
//! and logs every request; it serves `http://` URLs as they are. Garage cannot be told to
//! drop a connection midway.

mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};

/// What the fake store does to the GETs of the range starting at a byte offset.
#[derive(Clone, Copy, Debug)]
enum Fault {
    /// The first `n` GETs of it send half the body, then close.
    CutOff(usize),
    /// Every GET of it (and of any range after it) answers 412: the object was replaced.
    Replaced,
    /// The first GET of it sends half the body, then nothing (the connection stays open).
    Stall,
}

struct FakeS3 {
    endpoint: String,
    /// `METHOD RANGE` of every request, in arrival order (`-` without a range).
    log: Arc<Mutex<Vec<String>>>,
}

impl FakeS3 {
    /// Serves `object` as `s3://bucket/app.tar` with `faults` by range start.
    fn serve(object: Vec<u8>, faults: BTreeMap<u64, Fault>) -> FakeS3 {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let log = Arc::new(Mutex::new(Vec::new()));
        let shared = (Arc::new(object), Arc::new(Mutex::new(faults)), log.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let (object, faults, log) = (shared.0.clone(), shared.1.clone(), shared.2.clone());
                std::thread::spawn(move || answer(conn, &object, &faults, &log));
            }
        });
        FakeS3 { endpoint, log }
    }

    fn requests(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    /// How many GETs asked for the range starting at `start`.
    fn gets_of(&self, start: u64) -> usize {
        let prefix = format!("GET {start}-");
        (self.requests().iter())
            .filter(|r| r.starts_with(&prefix))
            .count()
    }
}

/// The request head: method, and the range's first and last byte if one was asked.
fn read_head(conn: &mut TcpStream) -> Option<(String, Option<(u64, u64)>)> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if conn.read(&mut byte).ok()? == 0 {
            return None;
        }
        head.push(byte[0]);
    }
    let text = String::from_utf8_lossy(&head).to_string();
    let method = text.split_whitespace().next()?.to_owned();
    let range = text.lines().find_map(|l| {
        let v = l.to_ascii_lowercase();
        let spec = v.strip_prefix("range: bytes=")?.trim().to_owned();
        let (a, b) = spec.split_once('-')?;
        Some((a.parse().ok()?, b.parse().ok()?))
    });
    Some((method, range))
}

fn answer(
    mut conn: TcpStream,
    object: &[u8],
    faults: &Mutex<BTreeMap<u64, Fault>>,
    log: &Mutex<Vec<String>>,
) {
    let Some((method, range)) = read_head(&mut conn) else {
        return;
    };
    let entry = match range {
        Some((a, b)) => format!("{method} {a}-{b}"),
        None => format!("{method} -"),
    };
    log.lock().unwrap().push(entry);
    let n = object.len();
    let common = "ETag: \"v1\"\r\nConnection: close\r\n\
                  Last-Modified: Mon, 07 Dec 2026 10:00:00 GMT\r\n";
    if method == "HEAD" {
        let head = format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {n}\r\nAccept-Ranges: bytes\r\n{common}\r\n"
        );
        let _ = conn.write_all(head.as_bytes());
        return;
    }
    let (a, b) = range.map_or((0, n as u64 - 1), |(a, b)| (a, b.min(n as u64 - 1)));
    let fault = {
        let mut faults = faults.lock().unwrap();
        let replaced = (faults.iter()).any(|(s, f)| matches!(f, Fault::Replaced) && a >= *s);
        match faults.get_mut(&a) {
            _ if replaced => Some(Fault::Replaced),
            Some(Fault::CutOff(k)) if *k > 0 => {
                *k -= 1;
                Some(Fault::CutOff(0))
            }
            Some(f @ Fault::Stall) => {
                *f = Fault::CutOff(0);
                Some(Fault::Stall)
            }
            _ => None,
        }
    };
    if let Some(Fault::Replaced) = fault {
        let body = "<?xml version=\"1.0\"?><Error><Code>PreconditionFailed</Code>\
                    <Message>At least one of the pre-conditions you specified did not hold</Message></Error>";
        let head = format!(
            "HTTP/1.1 412 Precondition Failed\r\nContent-Type: application/xml\r\n\
             Content-Length: {}\r\n{common}\r\n{body}",
            body.len()
        );
        let _ = conn.write_all(head.as_bytes());
        return;
    }
    let body = &object[a as usize..=b as usize];
    let head = format!(
        "HTTP/1.1 206 Partial Content\r\nContent-Length: {}\r\nContent-Range: bytes {a}-{b}/{n}\r\n\
         Content-Type: application/x-tar\r\n{common}\r\n",
        body.len()
    );
    let _ = conn.write_all(head.as_bytes());
    let cut = matches!(fault, Some(Fault::CutOff(_) | Fault::Stall));
    let send = if cut { &body[..body.len() / 2] } else { body };
    let _ = conn.write_all(send);
    if let Some(Fault::Stall) = fault {
        // Held open, silent, until the client gives up on it.
        let mut sink = [0u8; 1];
        let _ = conn.read(&mut sink);
    }
    if cut {
        let _ = conn.shutdown(std::net::Shutdown::Both);
    }
}

/// A plain tar of one 18 MiB file of noise: five ranges of 4 MiB.
fn object() -> (Vec<u8>, Vec<u8>) {
    let mut x = 0x2545_f491_u64;
    let noise: Vec<u8> = (0..18 << 20)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_size(noise.len() as u64);
    h.set_mode(0o644);
    h.set_cksum();
    b.append_data(&mut h, "noise", &noise[..]).unwrap();
    (b.into_inner().unwrap(), noise)
}

/// `deploy http://.../app.tar` from the fake store.
fn deploy_http(s3: &FakeS3, root: &Path) -> Output {
    common::output(
        Command::new(common::bin())
            .env_remove("RUST_LOG")
            .args(["deploy", "--version", "v1", "--root"])
            .arg(root)
            .arg(format!("{}/app.tar", s3.endpoint)),
    )
}

fn deploy(s3: &FakeS3, root: &Path) -> Output {
    common::output(
        Command::new(common::bin())
            .env_remove("RUST_LOG")
            .env("AWS_ACCESS_KEY_ID", "GKfake")
            .env("AWS_SECRET_ACCESS_KEY", "fake")
            .env("AWS_REGION", "garage")
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env("AWS_ENDPOINT_URL", &s3.endpoint)
            .args(["deploy", "--version", "v1", "--root"])
            .arg(root)
            .arg("s3://bucket/app.tar"),
    )
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

const MIB4: u64 = 4 << 20;

#[test]
fn a_range_cut_off_is_fetched_again_and_the_others_are_kept() {
    let (tar, noise) = object();
    let s3 = FakeS3::serve(tar, BTreeMap::from([(MIB4, Fault::CutOff(2))]));
    let t = common::tempdir();
    let out = deploy(&s3, &t.path().join("app"));
    assert!(out.status.success(), "{}", text(&out));
    let got = std::fs::read(t.path().join("app/current/noise")).unwrap();
    assert!(got == noise, "the file differs");
    let log = s3.requests();
    assert_eq!(
        log.iter().filter(|r| r.starts_with("HEAD")).count(),
        1,
        "{log:?}"
    );
    assert!(
        !log.contains(&"GET -".to_string()),
        "a GET of the whole object: {log:?}"
    );
    assert_eq!(
        s3.gets_of(MIB4),
        3,
        "the cut-off range, twice again: {log:?}"
    );
    for start in [0, 2 * MIB4, 3 * MIB4, 4 * MIB4] {
        assert_eq!(s3.gets_of(start), 1, "range at {start}: {log:?}");
    }
}

/// A range that stops midway with its connection open (a dead peer) is given up (the SDK's
/// stalled-stream protection after about 5 s, else 15 s without a byte) and fetched again,
/// well before the fetch's own 60 s idle limit.
#[test]
fn a_stalled_range_is_fetched_again() {
    let (tar, noise) = object();
    let s3 = FakeS3::serve(tar, BTreeMap::from([(3 * MIB4, Fault::Stall)]));
    let t = common::tempdir();
    let started = std::time::Instant::now();
    let out = deploy(&s3, &t.path().join("app"));
    assert!(out.status.success(), "{}", text(&out));
    assert!(std::fs::read(t.path().join("app/current/noise")).unwrap() == noise);
    assert_eq!(s3.gets_of(3 * MIB4), 2, "{:?}", s3.requests());
    let took = started.elapsed();
    assert!(took < std::time::Duration::from_secs(50), "{took:?}");
}

#[test]
fn a_range_that_keeps_failing_fails_the_deploy_after_five_attempts() {
    let (tar, _) = object();
    let s3 = FakeS3::serve(tar, BTreeMap::from([(2 * MIB4, Fault::CutOff(usize::MAX))]));
    let t = common::tempdir();
    let out = deploy(&s3, &t.path().join("app"));
    assert!(!out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("5 attempts"), "{}", text(&out));
    assert_eq!(s3.gets_of(2 * MIB4), 5, "{:?}", s3.requests());
    assert!(!t.path().join("app/current").exists(), "nothing deployed");
}

#[test]
fn an_object_replaced_midway_fails_the_fetch_with_nothing_deployed() {
    let (tar, _) = object();
    let s3 = FakeS3::serve(tar, BTreeMap::from([(2 * MIB4, Fault::Replaced)]));
    let t = common::tempdir();
    let out = deploy(&s3, &t.path().join("app"));
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("changed during the fetch"),
        "{}",
        text(&out)
    );
    assert_eq!(s3.gets_of(2 * MIB4), 1, "not retried: {:?}", s3.requests());
    assert!(!t.path().join("app/current").exists(), "nothing deployed");
}

/// `http://` from a server that takes ranges: the same ranges, pinned to its ETag, a
/// cut-off one fetched again; and an object replaced midway refused.
#[test]
fn over_http_a_large_object_comes_in_ranges_and_a_cut_off_one_again() {
    let (tar, noise) = object();
    let s3 = FakeS3::serve(tar.clone(), BTreeMap::from([(MIB4, Fault::CutOff(1))]));
    let t = common::tempdir();
    let out = deploy_http(&s3, &t.path().join("app"));
    assert!(out.status.success(), "{}", text(&out));
    assert!(std::fs::read(t.path().join("app/current/noise")).unwrap() == noise);
    let log = s3.requests();
    assert!(!log.contains(&"GET -".to_string()), "a whole GET: {log:?}");
    assert_eq!(s3.gets_of(MIB4), 2, "{log:?}");
    assert_eq!(s3.gets_of(4 * MIB4), 1, "{log:?}");
    let replaced = FakeS3::serve(tar, BTreeMap::from([(3 * MIB4, Fault::Replaced)]));
    let out = deploy_http(&replaced, &t.path().join("other"));
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("changed during the fetch"),
        "{}",
        text(&out)
    );
    assert!(!t.path().join("other/current").exists(), "nothing deployed");
}
