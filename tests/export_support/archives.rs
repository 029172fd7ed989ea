//! Builders for image archives (`docker save`, OCI layout) and readers for output tars.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;
use std::process::Output;

use crate::common::{cmd, output};

// ---------------------------------------------------------------- building archives

pub enum E<'a> {
    Dir(&'a str),
    File(&'a str, &'a str),
    Hard(&'a str, &'a str),
    Sym(&'a str, &'a str),
    /// A raw, unchecked name (for `..` and absolute paths the tar crate refuses to write).
    Raw(&'a str),
    /// A device node or FIFO (devices are 1:3, like /dev/null).
    Node(&'a str, tar::EntryType),
}

pub fn layer(entries: &[E]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        let mut h = tar::Header::new_gnu();
        h.set_mtime(1_700_000_000);
        h.set_uid(0);
        h.set_gid(0);
        match e {
            E::Dir(p) => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_mode(0o755);
                h.set_size(0);
                b.append_data(&mut h, p, std::io::empty()).unwrap();
            }
            E::File(p, data) => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_mode(0o644);
                h.set_size(data.len() as u64);
                b.append_data(&mut h, p, data.as_bytes()).unwrap();
            }
            E::Hard(p, t) | E::Sym(p, t) => {
                h.set_entry_type(if matches!(e, E::Hard(..)) {
                    tar::EntryType::Link
                } else {
                    tar::EntryType::Symlink
                });
                h.set_mode(0o777);
                h.set_size(0);
                b.append_link(&mut h, p, t).unwrap();
            }
            E::Node(p, kind) => {
                h.set_entry_type(*kind);
                h.set_mode(0o666);
                h.set_size(0);
                h.set_device_major(1).unwrap();
                h.set_device_minor(3).unwrap();
                b.append_data(&mut h, p, std::io::empty()).unwrap();
            }
            E::Raw(p) => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_mode(0o644);
                h.set_size(4);
                let name = &mut h.as_old_mut().name;
                name[..p.len()].copy_from_slice(p.as_bytes());
                h.set_cksum();
                b.append(&h, &b"evil"[..]).unwrap();
            }
        }
    }
    b.into_inner().unwrap()
}

pub fn gzip(data: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

pub fn zstd_bytes(data: &[u8]) -> Vec<u8> {
    zstd::encode_all(data, 3).unwrap()
}

/// Writes a tar of `(name, bytes)` files to `path`.
pub fn write_archive(path: &Path, files: &[(String, Vec<u8>)]) {
    let mut b = tar::Builder::new(std::fs::File::create(path).unwrap());
    for (name, data) in files {
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_mode(0o644);
        h.set_size(data.len() as u64);
        b.append_data(&mut h, name, data.as_slice()).unwrap();
    }
    b.finish().unwrap();
}

/// An image config with `env`, listing the digests (`sha256:…`) of `layers` uncompressed.
pub fn config_json(env: &[&str], layers: &[Vec<u8>]) -> Vec<u8> {
    let diff_ids: Vec<String> = layers.iter().map(|l| digest(&uncompressed(l))).collect();
    serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "config": {"Env": env, "Cmd": ["/bin/sh"]},
        "container_config": {"Env": ["WRONG=container_config"]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids}
    })
    .to_string()
    .into_bytes()
}

/// `sha256:<hex>` of `bytes`.
pub fn digest(bytes: &[u8]) -> String {
    use sha2::Digest as _;
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(bytes)))
}

/// A layer as its tar: gzip and zstd layers decompressed.
pub fn uncompressed(layer: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    if layer.starts_with(&[0x1f, 0x8b]) {
        flate2::read::GzDecoder::new(layer)
            .read_to_end(&mut out)
            .unwrap();
    } else if layer.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        out = zstd::decode_all(layer).unwrap();
    } else {
        out = layer.to_vec();
    }
    out
}

/// The three layers both generated archives use, and what flattening them must give.
pub fn test_layers() -> Vec<Vec<u8>> {
    vec![
        layer(&[
            E::Dir("./"),
            E::Dir("./bin/"),
            E::File("./bin/sh", "shell"),
            E::Sym("./bin/ls", "sh"),
            E::Dir("./etc/"),
            E::File("./etc/passwd", "root:x:0:0::/:/bin/sh\n"),
            E::File("./etc/deleteme", "gone"),
            E::Dir("./opt/"),
            E::Dir("./opt/old/"),
            E::File("./opt/old/file", "old"),
            E::File("./opt/keep", "keep"),
            E::Dir("./var/"),
            E::Dir("./var/cache/"),
            E::File("./var/cache/a", "a"),
            E::Dir("./var/cache/sub/"),
            E::File("./var/cache/sub/b", "b"),
            E::Dir("./usr/"),
            E::Dir("./usr/bin/"),
            E::File("./usr/bin/tool", "tool v1"),
            E::Hard("./usr/bin/tool-alias", "./usr/bin/tool"),
            E::File("./usr/bin/other", "other"),
            E::Hard("./usr/bin/other-alias", "./usr/bin/other"),
            E::File("./.drootenv", "STALE=1\n"),
        ]),
        layer(&[
            E::Dir("etc/"),
            E::File("etc/.wh.deleteme", ""),
            E::Dir("var/cache/"),
            E::File("var/cache/.wh..wh..opq", ""),
            E::File("var/cache/new", "new"),
            E::File("opt/.wh.old", ""),
            E::File("usr/bin/tool", "tool v2"),
        ]),
        layer(&[
            E::Dir("opt/old/"),
            E::File("opt/old/fresh", "fresh"),
            E::File("etc/motd", "hi"),
        ]),
    ]
}

pub const ENV: [&str; 3] = ["PATH=/usr/bin:/bin", "OPTS=a=b=c", "EMPTY="];
pub const DROOTENV: &str = "PATH=/usr/bin:/bin\nOPTS=a=b=c\nEMPTY=\n";

pub const EXPECTED: &[&str] = &[
    ".drootenv",
    "bin",
    "bin/ls",
    "bin/sh",
    "etc",
    "etc/motd",
    "etc/passwd",
    "opt",
    "opt/keep",
    "opt/old",
    "opt/old/fresh",
    "usr",
    "usr/bin",
    "usr/bin/other",
    "usr/bin/other-alias",
    "usr/bin/tool",
    "usr/bin/tool-alias",
    "var",
    "var/cache",
    "var/cache/new",
];

pub fn expected_paths() -> Vec<String> {
    EXPECTED.iter().map(|p| p.to_string()).collect()
}

/// One image of a generated `docker save`: repo tags, layer tars, env.
pub type SavedImage<'a> = (&'a [&'a str], Vec<Vec<u8>>, &'a [&'a str]);

/// A legacy `docker save` tarball of one image per entry.
pub fn legacy_archive(path: &Path, images: &[SavedImage]) {
    let mut files = Vec::new();
    let mut manifest = Vec::new();
    for (n, (tags, layers, env)) in images.iter().enumerate() {
        let config_bytes = config_json(env, layers);
        let config = format!("{}.json", &digest(&config_bytes)["sha256:".len()..]);
        files.push((config.clone(), config_bytes));
        let mut names = Vec::new();
        for (i, l) in layers.iter().enumerate() {
            let name = format!("{:064x}/layer.tar", (n + 1) * 100 + i);
            files.push((name.clone(), l.clone()));
            names.push(name);
        }
        manifest.push(serde_json::json!({"Config": config, "RepoTags": tags, "Layers": names}));
    }
    files.push((
        "manifest.json".into(),
        serde_json::to_vec(&manifest).unwrap(),
    ));
    write_archive(path, &files);
}

pub fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

/// An OCI image layout: index.json → nested index (other arch, host arch, attestation) →
/// manifest with a plain, a gzip and a zstd layer.
pub fn oci_archive(path: &Path) {
    let layers = test_layers();
    let blobs = [
        (
            "l0",
            layers[0].clone(),
            "application/vnd.oci.image.layer.v1.tar",
        ),
        (
            "l1",
            gzip(&layers[1]),
            "application/vnd.oci.image.layer.v1.tar+gzip",
        ),
        (
            "l2",
            zstd_bytes(&layers[2]),
            "application/vnd.oci.image.layer.v1.tar+zstd",
        ),
    ];
    // Bottom up, each blob named by its digest.
    let mut files = vec![(
        "oci-layout".to_string(),
        br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec(),
    )];
    let mut put = |bytes: Vec<u8>| {
        let d = digest(&bytes);
        files.push((format!("blobs/sha256/{}", &d["sha256:".len()..]), bytes));
        d
    };
    let config = put(config_json(&ENV, &layers));
    let layer_descriptors: Vec<_> = blobs
        .into_iter()
        .map(|(_, d, mt)| {
            let size = d.len();
            serde_json::json!({"mediaType": mt, "digest": put(d), "size": size})
        })
        .collect();
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config, "size": 1},
        "layers": layer_descriptors,
    });
    let manifest = put(manifest.to_string().into_bytes());
    let bad = put(b"this manifest must never be read".to_vec());
    let other_arch = if host_arch() == "amd64" {
        "arm64"
    } else {
        "amd64"
    };
    let attestation = format!("sha256:{:0>64}", "a7");
    let nested = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [
            {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": bad, "size": 1,
             "platform": {"os": "linux", "architecture": other_arch}},
            {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": manifest, "size": 1,
             "platform": {"os": "linux", "architecture": host_arch()}},
            {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": attestation, "size": 1,
             "platform": {"os": "unknown", "architecture": "unknown"},
             "annotations": {"vnd.docker.reference.type": "attestation-manifest"}},
        ]
    });
    let nested = put(nested.to_string().into_bytes());
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{"mediaType": "application/vnd.oci.image.index.v1+json", "digest": nested, "size": 1,
            "annotations": {"io.containerd.image.name": "example.com/app:1.0", "org.opencontainers.image.ref.name": "1.0"}}]
    });
    files.push(("index.json".to_string(), index.to_string().into_bytes()));
    write_archive(path, &files);
}

// ---------------------------------------------------------------- reading results

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Got {
    Dir,
    File(Vec<u8>),
    Sym(String),
    Hard(String),
    /// A device node or FIFO, by entry type.
    Node(tar::EntryType),
}

pub fn file(content: &str) -> Got {
    Got::File(content.as_bytes().to_vec())
}

pub fn entries_of(bytes: &[u8]) -> BTreeMap<String, Got> {
    let mut out = BTreeMap::new();
    let mut ar = tar::Archive::new(bytes);
    for e in ar.entries().unwrap() {
        let mut e = e.unwrap();
        let path = e.path().unwrap().to_string_lossy().into_owned();
        assert!(
            !path.starts_with('/') && !path.starts_with("./"),
            "output paths must be relative: {path}"
        );
        let t = e.header().entry_type();
        let link = || {
            e.link_name()
                .unwrap()
                .unwrap()
                .to_string_lossy()
                .into_owned()
        };
        let got = if t.is_dir() {
            Got::Dir
        } else if t.is_symlink() {
            Got::Sym(link())
        } else if t.is_hard_link() {
            Got::Hard(link())
        } else if t.is_character_special() || t.is_block_special() || t.is_fifo() {
            Got::Node(t)
        } else {
            let mut data = Vec::new();
            e.read_to_end(&mut data).unwrap();
            Got::File(data)
        };
        let previous = out.insert(path.trim_end_matches('/').to_string(), got);
        assert!(previous.is_none(), "duplicate entry {path}");
    }
    out
}

pub fn read_entries(path: &Path) -> BTreeMap<String, Got> {
    entries_of(&std::fs::read(path).unwrap())
}

pub fn run(args: &[&str]) -> Output {
    output(cmd().args(args))
}

/// `droot-fleet export --from-archive ARCHIVE -o OUT`.
pub fn export_to(archive: &Path, out: &Path) -> Output {
    run(&[
        "export",
        "--from-archive",
        archive.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
    ])
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

pub fn assert_ok(o: &Output) {
    assert!(o.status.success(), "export failed: {}", stderr(o));
}

pub fn files_in(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

pub fn check_flattened(out: &BTreeMap<String, Got>) {
    let paths: Vec<String> = out.keys().cloned().collect();
    assert_eq!(paths, expected_paths());
    assert_eq!(out[".drootenv"], file(DROOTENV));
    assert_eq!(out["usr/bin/tool"], file("tool v2"));
    // Its target was replaced by layer 1: the alias keeps v1 as a real file, not a link.
    assert_eq!(out["usr/bin/tool-alias"], file("tool v1"));
    assert_eq!(
        out["usr/bin/other-alias"],
        Got::Hard("usr/bin/other".into())
    );
    assert_eq!(out["bin/ls"], Got::Sym("sh".into()));
    assert!(!out.keys().any(|p| p.contains(".wh.")), "whiteouts leaked");
    assert!(!out.contains_key("etc/deleteme"));
    assert!(!out.contains_key("var/cache/a") && !out.contains_key("var/cache/sub"));
    assert!(!out.contains_key("opt/old/file"));
}
