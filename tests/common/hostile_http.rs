//! A hostile artifact server inside the test: plain HTTP/1.1 on 127.0.0.1, written by hand
//! so it can do what a real server would not (an endless body, a drip, a lying
//! Content-Length). Every connection gets the same [`Reply`]; once a request was read,
//! [`Server::requested`] says so, and when a connection ends (the client went away, or the
//! reply was written), the bytes it wrote arrive on [`Server::ended`], so a test can wait
//! for a fetch to be under way, and for the client to hang up.
//!
//! Include with `#[path = "common/hostile_http.rs"] mod hostile_http;`.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::mpsc;
use std::time::Duration;

/// What the server answers.
#[derive(Clone, Debug)]
pub enum Reply {
    /// `body`, announced as `length` bytes (or not announced), then the connection closes.
    Body { body: Vec<u8>, length: Option<u64> },
    /// `body`, then junk without end.
    Endless { body: Vec<u8> },
    /// `body`, then one junk byte every `every`, without end.
    Drip { body: Vec<u8>, every: Duration },
}

pub struct Server {
    pub url: String,
    requested: mpsc::Receiver<()>,
    ended: mpsc::Receiver<u64>,
}

impl Server {
    /// Waits (at most `limit`) until a request was read.
    pub fn requested(&self, limit: Duration) -> bool {
        self.requested.recv_timeout(limit).is_ok()
    }

    /// Waits (at most `limit`) until a connection ended; the bytes it wrote.
    pub fn ended(&self, limit: Duration) -> Option<u64> {
        self.ended.recv_timeout(limit).ok()
    }
}

/// Serves `reply` at `http://127.0.0.1:PORT/artifact.tar` until the test process ends.
pub fn serve(reply: Reply) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/artifact.tar", listener.local_addr().unwrap());
    let (tx, ended) = mpsc::channel();
    let (req_tx, requested) = mpsc::channel();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { continue };
            let (reply, tx, req_tx) = (reply.clone(), tx.clone(), req_tx.clone());
            std::thread::spawn(move || {
                let _ = tx.send(answer(conn, &reply, &req_tx));
            });
        }
    });
    Server {
        url,
        requested,
        ended,
    }
}

/// Reads the request head, writes `reply`; returns the body bytes written.
fn answer(mut conn: TcpStream, reply: &Reply, requested: &mpsc::Sender<()>) -> u64 {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") && head.len() < 16 << 10 {
        match conn.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            _ => return 0,
        }
    }
    let _ = requested.send(());
    let (body, length) = match reply {
        Reply::Body { body, length } => (body, *length),
        Reply::Endless { body } | Reply::Drip { body, .. } => (body, None),
    };
    let mut text = String::from("HTTP/1.1 200 OK\r\nConnection: close\r\n");
    if let Some(n) = length {
        text.push_str(&format!("Content-Length: {n}\r\n"));
    }
    text.push_str("\r\n");
    if conn.write_all(text.as_bytes()).is_err() || conn.write_all(body).is_err() {
        return 0;
    }
    let mut written = body.len() as u64;
    match reply {
        Reply::Body { .. } => {}
        Reply::Endless { .. } => {
            let junk = vec![0x5a; 64 << 10];
            while conn.write_all(&junk).is_ok() {
                written += junk.len() as u64;
            }
        }
        Reply::Drip { every, .. } => loop {
            if conn.write_all(b"z").is_err() {
                break;
            }
            written += 1;
            std::thread::sleep(*every);
        },
    }
    written
}
