//! The store side of `fanout_attacks.rs`: one private Garage per test process, each test
//! under its own keys, reached through a counting TCP relay so a test can tell how much of
//! an artifact the store served.

use std::io::Read;
use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

use droot_fleet::cancel::Cancel;
use droot_fleet::deploy::fetch::peers::Peers;
use droot_fleet::deploy::fetch::{self, FetchOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::common::garage::Garage;

/// The Garage the tests share, with its credentials in this process's environment (the
/// fetcher reads the standard AWS chain). Every test calls this first: the first call
/// starts it while the others wait, so nothing reads the environment while it is written.
pub fn setup() -> &'static Garage {
    static GARAGE: OnceLock<Garage> = OnceLock::new();
    GARAGE.get_or_init(|| {
        // The server is killed when the thread that started it ends (parent-death signal):
        // start it from one that lives as long as the process, not from a test's thread.
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(Garage::start());
            loop {
                std::thread::park();
            }
        });
        let g = rx.recv().expect("garage did not start");
        g.export_credentials();
        // A static is never dropped: its directory goes when the process exits.
        let _ = GARAGE_DIR.set(g.dir().to_owned());
        // SAFETY: registers a plain function with no captured state.
        unsafe { libc::atexit(remove_garage_dir) };
        g
    })
}

static GARAGE_DIR: OnceLock<std::path::PathBuf> = OnceLock::new();

extern "C" fn remove_garage_dir() {
    if let Some(dir) = GARAGE_DIR.get() {
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// An artifact in the shared Garage, and a relay in front of it.
pub struct Store {
    pub url: String,
    /// The relay's `http://127.0.0.1:PORT`.
    endpoint: String,
    sent: Arc<AtomicU64>,
}

impl Store {
    /// Bytes the store has sent towards the fetcher (responses, headers included).
    pub fn sent(&self) -> u64 {
        self.sent.load(Ordering::SeqCst)
    }
}

/// `data` as `s3://BUCKET/NAME/app.tar` and `chunks` as its `KEY.chunks`; `name` is the
/// test's own.
pub async fn store(name: &str, data: &[u8], chunks: Option<Vec<u8>>) -> Store {
    let g = setup();
    let key = format!("{name}/app.tar");
    g.put_async(&key, data.to_vec()).await;
    if let Some(c) = chunks {
        g.put_async(&format!("{key}.chunks"), c).await;
    }
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let sent = Arc::new(AtomicU64::new(0));
    let upstream = g.endpoint.trim_start_matches("http://").to_owned();
    tokio::spawn(relay(listener, upstream, sent.clone()));
    Store {
        url: format!("s3://{}/{key}", g.bucket),
        endpoint,
        sent,
    }
}

/// Forwards every connection to `upstream` and back, counting the bytes coming back
/// before the client gets them.
async fn relay(listener: TcpListener, upstream: String, sent: Arc<AtomicU64>) {
    while let Ok((client, _)) = listener.accept().await {
        let Ok(store) = TcpStream::connect(&upstream).await else {
            continue;
        };
        let sent = sent.clone();
        tokio::spawn(async move {
            let (mut from_client, mut to_client) = client.into_split();
            let (mut from_store, mut to_store) = store.into_split();
            let up = async {
                let _ = tokio::io::copy(&mut from_client, &mut to_store).await;
                let _ = to_store.shutdown().await;
            };
            let down = async {
                let mut buf = vec![0u8; 64 << 10];
                while let Ok(n @ 1..) = from_store.read(&mut buf).await {
                    sent.fetch_add(n as u64, Ordering::SeqCst);
                    if to_client.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
                let _ = to_client.shutdown().await;
            };
            tokio::join!(up, down);
        });
    }
}

/// Fetches `s3`'s artifact through its relay with `peers` in front, on a blocking thread
/// (the fetcher runs its own runtime); the bytes read, or the error's text.
pub async fn fetch_all(s3: &Store, peers: Peers) -> Result<Vec<u8>, String> {
    let opts = FetchOptions {
        s3_endpoint: Some(s3.endpoint.clone()),
        s3_region: Some("garage".into()),
        s3_path_style: Some(true),
        peers: Some(peers),
        ..Default::default()
    };
    let url = s3.url.clone();
    tokio::task::spawn_blocking(move || {
        let mut r = fetch::open(&url, &opts, &Cancel::default()).map_err(|e| e.to_string())?;
        let mut out = Vec::new();
        r.read_to_end(&mut out).map_err(|e| e.to_string())?;
        Ok(out)
    })
    .await
    .unwrap()
}
