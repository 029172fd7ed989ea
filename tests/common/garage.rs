//! A private single-node Garage (an S3-compatible store written in Rust) for the tests.
//!
//! [`Garage::start`] runs `garage server` on free loopback ports in a temp dir, lays out
//! the node, and creates a bucket and a key with read/write on it. The server runs in its
//! own process group, killed on drop, so every exit path of a test (including a panic)
//! stops it, and it dies with the test process when that is killed (parent-death signal). Fails with the reason when `garage` is not installed.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub struct Garage {
    child: Child,
    config: PathBuf,
    bin: PathBuf,
    /// RPC, S3 and admin ports on 127.0.0.1.
    ports: [u16; 3],
    /// `http://127.0.0.1:PORT`
    pub endpoint: String,
    pub bucket: String,
    pub key_id: String,
    pub secret: String,
    dir: tempfile::TempDir,
}

/// The `garage` binary: on PATH, or where `cargo install` puts it.
pub fn garage_bin() -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let candidates = std::env::split_paths(&path)
        .map(|d| d.join("garage"))
        .chain(std::env::var_os("HOME").map(|h| Path::new(&h).join(".cargo/bin/garage")));
    for c in candidates {
        if c.is_file() {
            return c;
        }
    }
    panic!(
        "garage not found on PATH or in ~/.cargo/bin: install it with `cargo install garage \
         --locked` (the README test command .ci/test.sh does)"
    );
}

/// The local ports of the TCP sockets that process `pid` holds in the listening state.
fn listening_sockets(pid: u32) -> Vec<u16> {
    let mut inodes = std::collections::HashSet::new();
    if let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) {
        for fd in fds.flatten() {
            let link = std::fs::read_link(fd.path()).unwrap_or_default();
            let link = link.to_string_lossy();
            if let Some(inode) = link
                .strip_prefix("socket:[")
                .and_then(|l| l.strip_suffix(']'))
            {
                inodes.insert(inode.to_string());
            }
        }
    }
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            // local_address is HEXIP:HEXPORT, state 0A is LISTEN, inode is the tenth field.
            let (local, state, inode) = (f.get(1)?, f.get(3)?, f.get(9)?);
            let port = u16::from_str_radix(local.rsplit(':').next()?, 16).ok()?;
            (*state == "0A" && inodes.contains(*inode)).then_some(port)
        })
        .collect()
}

fn text(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr)
}

/// The value after `label` on the line that has it (`Key ID: GK...`).
fn field(out: &str, label: &str) -> String {
    out.lines()
        .find_map(|l| l.trim().strip_prefix(label))
        .map(|v| v.trim().to_string())
        .unwrap_or_else(|| panic!("no {label:?} in garage output:\n{out}"))
}

impl Garage {
    /// Starts a server on free ports and lays it out. A port picked free can be taken by
    /// another process before the server binds it (tests start many servers at once), so
    /// a server that does not come to hold all its ports is stopped and started again on
    /// fresh ones.
    pub fn start() -> Garage {
        for _ in 0..3 {
            let mut g = Garage::spawn();
            if g.holds_its_ports() {
                g.setup();
                return g;
            }
        }
        panic!("garage did not get its ports in 3 tries; is something taking loopback ports?")
    }

    /// Runs `garage server` with a fresh config on ports free a moment ago.
    fn spawn() -> Garage {
        let bin = garage_bin();
        let dir = tempfile::tempdir().unwrap();
        let ports = [
            super::unused_port(),
            super::unused_port(),
            super::unused_port(),
        ];
        let [rpc, s3, admin] = ports;
        let config = dir.path().join("garage.toml");
        let secret: String = (0..32)
            .map(|_| format!("{:02x}", rand::random::<u8>()))
            .collect();
        std::fs::write(
            &config,
            format!(
                "metadata_dir = \"{meta}\"\ndata_dir = \"{data}\"\ndb_engine = \"sqlite\"\n\
                 replication_factor = 1\nrpc_bind_addr = \"127.0.0.1:{rpc}\"\n\
                 rpc_public_addr = \"127.0.0.1:{rpc}\"\nrpc_secret = \"{secret}\"\n\n\
                 [s3_api]\ns3_region = \"garage\"\napi_bind_addr = \"127.0.0.1:{s3}\"\n\n\
                 [admin]\napi_bind_addr = \"127.0.0.1:{admin}\"\n",
                meta = dir.path().join("meta").display(),
                data = dir.path().join("data").display(),
            ),
        )
        .unwrap();
        let log = std::fs::File::create(dir.path().join("server.log")).unwrap();
        let mut cmd = Command::new(&bin);
        cmd.arg("-c")
            .arg(&config)
            .arg("server")
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .process_group(0);
        // Killed with the test process too, even when that is SIGKILLed and no Drop runs.
        // SAFETY: prctl with integer arguments only; async-signal-safe.
        unsafe {
            cmd.pre_exec(
                || match libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) {
                    0 => Ok(()),
                    _ => Err(std::io::Error::last_os_error()),
                },
            )
        };
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
        Garage {
            child,
            config,
            bin,
            ports,
            endpoint: format!("http://127.0.0.1:{s3}"),
            bucket: "artifacts".into(),
            key_id: String::new(),
            secret: String::new(),
            dir,
        }
    }

    /// Waits (up to 20 s) until the server process listens on all three of its ports;
    /// false when it exits or another process holds one of them.
    fn holds_its_ports(&mut self) -> bool {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return false;
            }
            let held = listening_sockets(self.child.id());
            if self.ports.iter().all(|p| held.contains(p)) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }

    /// Runs `garage -c CONFIG args...`.
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(&self.bin)
            .arg("-c")
            .arg(&self.config)
            .args(args)
            .env("RUST_LOG", "warn")
            .output()
            .unwrap()
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(
            out.status.success(),
            "garage {args:?} failed:\n{}",
            text(&out)
        );
        text(&out)
    }

    fn server_log(&self) -> String {
        std::fs::read_to_string(self.dir().join("server.log")).unwrap_or_default()
    }

    /// Waits until the server answers `status` (its RPC is up), then lays it out.
    fn setup(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let out = self.cli(&["status"]);
            if out.status.success() {
                break;
            }
            if let Ok(Some(st)) = self.child.try_wait() {
                panic!("garage server exited ({st}):\n{}", self.server_log());
            }
            assert!(
                Instant::now() < deadline,
                "garage did not come up in 60 s:\n{}\n{}",
                text(&out),
                self.server_log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        let out = self.cli(&["node", "id", "-q"]);
        assert!(out.status.success(), "garage node id: {}", text(&out));
        let stdout = String::from_utf8_lossy(&out.stdout);
        let id = stdout.trim().split('@').next().unwrap().to_string();
        self.ok(&["layout", "assign", "-z", "dc1", "-c", "1G", &id]);
        self.ok(&["layout", "apply", "--version", "1"]);
        self.ok(&["bucket", "create", &self.bucket.clone()]);
        let key = self.ok(&["key", "create", "test-key"]);
        self.key_id = field(&key, "Key ID:");
        self.secret = field(&key, "Secret key:");
        self.ok(&[
            "bucket",
            "allow",
            "--read",
            "--write",
            "--owner",
            &self.bucket.clone(),
            "--key",
            "test-key",
        ]);
    }

    /// Environment for a client: credentials, endpoint, region.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ACCESS_KEY_ID", self.key_id.clone()),
            ("AWS_SECRET_ACCESS_KEY", self.secret.clone()),
            ("AWS_ENDPOINT_URL", self.endpoint.clone()),
            ("AWS_REGION", "garage".into()),
            ("AWS_EC2_METADATA_DISABLED", "true".into()),
        ]
    }
}

/// Objects in the bucket, through the SDK with the test key.
impl Garage {
    /// The credentials a client takes from the standard AWS chain.
    pub fn credentials(&self) -> Vec<(&'static str, String)> {
        let mut env = self.env();
        env.retain(|(k, _)| {
            k.starts_with("AWS_ACCESS") || k.starts_with("AWS_SECRET") || k.contains("METADATA")
        });
        env
    }

    /// Puts [`Garage::credentials`] into this process's environment, for code under test
    /// that reads the standard AWS chain.
    pub fn export_credentials(&self) {
        for (k, v) in self.credentials() {
            // SAFETY: only std (which locks the environment) reads it in the test binaries;
            // other tests in the binary inherit credentials they do not use.
            unsafe { std::env::set_var(k, v) };
        }
    }

    pub fn client(&self) -> aws_sdk_s3::Client {
        let creds =
            aws_sdk_s3::config::Credentials::new(&self.key_id, &self.secret, None, None, "test");
        let conf = aws_sdk_s3::config::Builder::new()
            .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
            .credentials_provider(creds)
            .endpoint_url(&self.endpoint)
            .region(aws_sdk_s3::config::Region::new("garage"))
            .force_path_style(true)
            .build();
        aws_sdk_s3::Client::from_conf(conf)
    }

    /// Uploads `bytes` as `key`, retrying while the fresh layout settles.
    pub async fn put_async(&self, key: &str, bytes: Vec<u8>) {
        let client = self.client();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let body = aws_sdk_s3::primitives::ByteStream::from(bytes.clone());
            let put = client.put_object().bucket(&self.bucket).key(key).body(body);
            match put.send().await {
                Ok(_) => return,
                Err(_) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(200)).await
                }
                Err(e) => panic!(
                    "cannot upload {key}: {}",
                    aws_sdk_s3::error::DisplayErrorContext(&e)
                ),
            }
        }
    }

    /// Uploads `bytes` as `key` in parts of `part` bytes (a multipart upload, with the
    /// SDK's default checksums: each part's, so the object's is a part-level one).
    pub fn put_in_parts(&self, key: &str, bytes: &[u8], part: usize) {
        use aws_sdk_s3::primitives::ByteStream;
        use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
        // A first plain upload waits out the fresh layout, as `put` does.
        self.put(key, Vec::new());
        let client = self.client();
        rt().block_on(async {
            let up = (client.create_multipart_upload())
                .bucket(&self.bucket)
                .key(key)
                .checksum_algorithm(aws_sdk_s3::types::ChecksumAlgorithm::Crc32)
                .send()
                .await
                .unwrap_or_else(|e| panic!("multipart upload of {key}: {e}"));
            let id = up.upload_id().expect("an upload id").to_owned();
            let mut parts = Vec::new();
            for (i, chunk) in bytes.chunks(part).enumerate() {
                let n = i as i32 + 1;
                let r = (client.upload_part())
                    .bucket(&self.bucket)
                    .key(key)
                    .upload_id(&id)
                    .part_number(n)
                    .checksum_algorithm(aws_sdk_s3::types::ChecksumAlgorithm::Crc32)
                    .body(ByteStream::from(chunk.to_vec()))
                    .send()
                    .await
                    .unwrap_or_else(|e| panic!("part {n} of {key}: {e}"));
                let done = CompletedPart::builder().part_number(n);
                let done = match r.checksum_crc32() {
                    Some(c) => done.checksum_crc32(c),
                    None => done,
                };
                parts.push(done.e_tag(r.e_tag().unwrap_or_default()).build());
            }
            let all = CompletedMultipartUpload::builder()
                .set_parts(Some(parts))
                .build();
            (client.complete_multipart_upload())
                .bucket(&self.bucket)
                .key(key)
                .upload_id(&id)
                .multipart_upload(all)
                .send()
                .await
                .unwrap_or_else(|e| panic!("completing {key}: {e}"));
        });
    }

    /// [`Garage::put_async`] outside a runtime.
    pub fn put(&self, key: &str, bytes: Vec<u8>) {
        rt().block_on(self.put_async(key, bytes))
    }

    /// Deletes `key` and checks that a GET of it now fails.
    pub fn delete(&self, key: &str) {
        let client = self.client();
        rt().block_on(async {
            client
                .delete_object()
                .bucket(&self.bucket)
                .key(key)
                .send()
                .await
                .unwrap_or_else(|e| panic!("delete {key}: {e}"));
            let r = client
                .get_object()
                .bucket(&self.bucket)
                .key(key)
                .send()
                .await;
            assert!(r.is_err(), "{key} is still in the bucket");
        })
    }
}

pub fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

impl Garage {
    /// The directory that holds the server's config, data and log.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Garage {
    fn drop(&mut self) {
        let pgid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGKILL);
        let _ = self.child.wait();
    }
}
