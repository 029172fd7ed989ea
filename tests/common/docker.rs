//! Docker plumbing for the tests that run the fleet in containers: the static binary, the
//! images (the `Dockerfile.test` host, and a FROM-scratch Garage), and cleanup.
//!
//! Every object a test makes carries one label ([`LABEL`]), so removal is one sweep: at the
//! start of a run (what a killed run left), when the test's [`Cleanup`] drops (a passed or
//! failed assertion), and from a reaper process in its own process group that outlives the
//! test process (Ctrl-C, SIGKILL: nothing runs in the test then).

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

/// The label on every container, network, volume and image a container test makes.
pub const LABEL: &str = "droot-fleet-test=fleet-containers";

/// Removes every labelled object: containers (with their anonymous volumes) first, then
/// networks, volumes and images. A shell line so the reaper runs the same sweep.
const SWEEP: &str = "f='label=droot-fleet-test=fleet-containers'; \
    docker ps -aq --filter \"$f\" | xargs -r docker rm -f -v >/dev/null 2>&1; \
    docker network ls -q --filter \"$f\" | xargs -r docker network rm >/dev/null 2>&1; \
    docker volume ls -q --filter \"$f\" | xargs -r docker volume rm -f >/dev/null 2>&1; \
    docker images -q --filter \"$f\" | sort -u | xargs -r docker rmi -f >/dev/null 2>&1; true";

/// Runs `docker ARGS`.
pub fn docker(args: &[&str]) -> Output {
    Command::new("docker")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("the docker CLI cannot be run: install Docker (see README)")
}

/// Runs `docker ARGS` and returns its stdout, trimmed; panics with its stderr if it fails.
pub fn ok(args: &[&str]) -> String {
    let out = docker(args);
    assert!(
        out.status.success(),
        "docker {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Removes every labelled object (see [`SWEEP`]).
pub fn sweep() {
    let st = Command::new("sh").args(["-c", SWEEP]).status();
    assert!(st.is_ok_and(|s| s.success()), "removing labelled objects");
}

/// Sweeps on drop, and holds the reaper that sweeps if the test process dies first.
pub struct Cleanup {
    reaper: Child,
}

impl Cleanup {
    /// Sweeps what an earlier run left, then starts the reaper: a shell in its own process
    /// group (so Ctrl-C to the test's group does not reach it) that waits for this process
    /// to end, then sweeps.
    pub fn start() -> Cleanup {
        sweep();
        let watch = format!(
            "while kill -0 {pid} 2>/dev/null; do sleep 1; done; {SWEEP}",
            pid = std::process::id()
        );
        let reaper = Command::new("sh")
            .args(["-c", &watch])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .expect("start the cleanup reaper");
        Cleanup { reaper }
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        sweep();
        let _ = self.reaper.kill();
        let _ = self.reaper.wait();
    }
}

/// The static release binary that ships to every host (`DROOT_FLEET_STATIC_BIN`, or where
/// the README's test command builds it).
pub fn static_binary() -> PathBuf {
    let p = std::env::var_os("DROOT_FLEET_STATIC_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("target/static/x86_64-unknown-linux-gnu/release/droot-fleet")
        });
    assert!(
        p.exists(),
        "static binary {} missing: build it with `bash .ci/static-build.sh` (.ci/test.sh does)",
        p.display()
    );
    p
}

/// Builds `Dockerfile.test` (the static binary and busybox) as `tag`, labelled.
pub fn build_host_image(tag: &str) {
    let ctx = tempfile::tempdir().unwrap();
    std::fs::copy(static_binary(), ctx.path().join("droot-fleet")).unwrap();
    std::fs::copy(super::busybox(), ctx.path().join("busybox")).unwrap();
    let dockerfile = Path::new(env!("CARGO_MANIFEST_DIR")).join("Dockerfile.test");
    build(tag, &dockerfile, ctx.path());
}

/// Builds a FROM-scratch image of `binary` (at `/BINARY-NAME`) with the shared libraries
/// `ldd` lists, at their paths, as `tag`, labelled. `dirs` are created empty in it.
pub fn build_scratch_image(tag: &str, binary: &Path, dirs: &[&str]) {
    let ctx = tempfile::tempdir().unwrap();
    let root = ctx.path().join("root");
    let name = binary.file_name().unwrap();
    std::fs::create_dir_all(&root).unwrap();
    std::fs::copy(binary, root.join(name)).unwrap();
    for lib in shared_libraries(binary) {
        let to = root.join(lib.strip_prefix("/").unwrap());
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        // The file, not a symlink to it (ldd may name a link).
        std::fs::copy(&lib, &to).unwrap_or_else(|e| panic!("copy {}: {e}", lib.display()));
    }
    for d in dirs {
        let d = root.join(d.trim_start_matches('/'));
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join(".keep"), "").unwrap();
    }
    let dockerfile = ctx.path().join("Dockerfile");
    std::fs::write(
        &dockerfile,
        format!(
            "FROM scratch\nCOPY root/ /\nENTRYPOINT [\"/{}\"]\n",
            name.to_string_lossy()
        ),
    )
    .unwrap();
    build(tag, &dockerfile, ctx.path());
}

/// The absolute paths `ldd` prints for `binary` (libraries and the loader).
fn shared_libraries(binary: &Path) -> Vec<PathBuf> {
    let out = Command::new("ldd")
        .arg(binary)
        .output()
        .expect("ldd is needed to copy a binary's libraries into an image");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter(|w| w.starts_with('/'))
        .map(PathBuf::from)
        .collect()
}

fn build(tag: &str, dockerfile: &Path, ctx: &Path) {
    ok(&[
        "build",
        "-q",
        "--label",
        LABEL,
        "-f",
        dockerfile.to_str().unwrap(),
        "-t",
        tag,
        ctx.to_str().unwrap(),
    ]);
}

/// Creates an `--internal` network labelled, on the first of `subnets` (`A.B.C`, a /24)
/// that no other network holds. Returns the prefix it took.
pub fn internal_network(name: &str, subnets: &[&str]) -> String {
    let mut errors = Vec::new();
    for s in subnets {
        let subnet = format!("{s}.0/24");
        let out = docker(&[
            "network",
            "create",
            "--internal",
            "--subnet",
            &subnet,
            "--label",
            LABEL,
            name,
        ]);
        if out.status.success() {
            return s.to_string();
        }
        errors.push(format!(
            "{subnet}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    panic!("no free subnet for the test network: {errors:?}");
}

/// Creates a labelled volume.
pub fn volume(name: &str) {
    ok(&["volume", "create", "--label", LABEL, name]);
}

/// `docker exec NAME ARGS` with `env` (`K=V`): the output.
pub fn exec(name: &str, env: &[String], args: &[&str]) -> Output {
    let mut all: Vec<&str> = vec!["exec"];
    for e in env {
        all.extend(["-e", e]);
    }
    all.push(name);
    all.extend_from_slice(args);
    docker(&all)
}
