//! Unit tests of [`super`] (choosing the image of an archive).

use super::*;
use std::path::PathBuf;

/// Blobs in memory. Fixtures name blobs by symbols (`"sha256:m1"`, `blobs/sha256/m1`);
/// [`mem`] replaces them with real digests, so that what is verified matches.
struct Mem(HashMap<String, Vec<u8>>, PathBuf, HashMap<String, String>);

impl Mem {
    /// The path blob symbol `sym` became.
    fn blob(&self, sym: &str) -> String {
        format!("blobs/sha256/{}", self.2[sym])
    }
}

impl Blobs for Mem {
    fn contains(&self, name: &str) -> bool {
        self.0.contains_key(name)
    }
    fn read(&self, name: &str) -> Result<Vec<u8>, ExportError> {
        self.0
            .get(name)
            .cloned()
            .ok_or_else(|| ExportError::MissingBlob {
                path: self.1.clone(),
                name: name.into(),
            })
    }
    fn archive_path(&self) -> &Path {
        &self.1
    }
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest as _;
    hex::encode(sha2::Sha256::digest(bytes))
}

/// The blob symbols `text` refers to (short alphanumeric names, not real digests).
fn symbols_in(text: &str) -> Vec<String> {
    text.split("\"sha256:")
        .skip(1)
        .filter_map(|rest| rest.split('"').next())
        .filter(|s| s.len() < 64 && s.bytes().all(|b| b.is_ascii_alphanumeric()))
        .map(str::to_owned)
        .collect()
}

fn mem(files: &[(&str, &str)]) -> Mem {
    let mut files: Vec<(String, String)> = (files.iter())
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let mut symbols = HashMap::new();
    let file_of = |files: &[(String, String)], sym: &str| {
        let path = format!("blobs/sha256/{sym}");
        files.iter().position(|(n, _)| *n == path)
    };
    let mut resolve = |files: &mut Vec<(String, String)>, sym: String, real: String| {
        for (_, content) in files.iter_mut() {
            *content = content.replace(&format!("\"sha256:{sym}\""), &format!("\"sha256:{real}\""));
        }
        if let Some(i) = file_of(files, &sym) {
            files[i].0 = format!("blobs/sha256/{real}");
        }
        symbols.insert(sym, real);
    };
    // Blobs that are not there get a well-formed digest of their own.
    let dangling: Vec<String> = (files.iter())
        .flat_map(|(_, c)| symbols_in(c))
        .filter(|sym| file_of(&files, sym).is_none())
        .collect();
    for sym in dangling {
        let real = sha256_hex(sym.as_bytes());
        resolve(&mut files, sym, real);
    }
    // Bottom up: a blob whose references are resolved gets its real digest.
    loop {
        let ready = files.iter().find_map(|(name, content)| {
            let sym = name.strip_prefix("blobs/sha256/")?;
            let waits = symbols_in(content)
                .iter()
                .any(|r| file_of(&files, r).is_some());
            (sym.len() < 64 && !waits).then(|| (sym.to_owned(), sha256_hex(content.as_bytes())))
        });
        let Some((sym, real)) = ready else { break };
        resolve(&mut files, sym, real);
    }
    let files = files
        .into_iter()
        .map(|(k, v)| (k, v.into_bytes()))
        .collect();
    Mem(files, PathBuf::from("test.tar"), symbols)
}

/// A `docker save` config listing `n` (well-formed) layer digests.
fn legacy_config(n: usize) -> String {
    let ids: Vec<String> = (0..n).map(|i| format!("\"sha256:{i:064x}\"")).collect();
    format!(
        r#"{{"rootfs":{{"type":"layers","diff_ids":[{}]}}}}"#,
        ids.join(",")
    )
}

const LEGACY_TWO: &str = r#"[
    {"Config":"c1.json","RepoTags":["app:1"],"Layers":["l1/layer.tar","l2/layer.tar"]},
    {"Config":"c2.json","RepoTags":["other:latest"],"Layers":["l3/layer.tar"]}
]"#;

#[test]
fn legacy_single_and_by_ref() {
    let (c1, c2) = (legacy_config(2), legacy_config(1));
    let b = mem(&[
        ("manifest.json", LEGACY_TWO),
        ("c1.json", &c1),
        ("c2.json", &c2),
    ]);
    let err = select(&b, None).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("app:1") && msg.contains("other:latest") && msg.contains("--image-ref"),
        "{msg}"
    );
    let img = select(&b, Some("other")).unwrap();
    assert_eq!(img.config, "c2.json");
    assert_eq!(img.layers.len(), 1);
    let img = select(&b, Some("app:1")).unwrap();
    assert_eq!(img.name, "app:1");
    assert_eq!(img.layers[1].name, "l2/layer.tar");
    assert_eq!(img.layers[1].digest.hex, format!("{:064x}", 1));
    assert_eq!(img.config_digest, None, "c1.json names no digest");
    // A config that does not list a digest per layer: nothing to verify them by.
    let b = mem(&[("manifest.json", LEGACY_TWO), ("c1.json", &c2)]);
    let err = select(&b, Some("app:1")).unwrap_err().to_string();
    assert!(
        err.contains("1 layer digests") && err.contains("2 layers"),
        "{err}"
    );
    assert!(matches!(
        select(&b, Some("nope:2")),
        Err(ExportError::ImageRefNotFound { .. })
    ));
}

#[test]
fn missing_manifest_and_bad_json() {
    let b = mem(&[("foo", "bar")]);
    assert!(matches!(
        select(&b, None),
        Err(ExportError::MissingManifest { .. })
    ));
    let b = mem(&[("manifest.json", "{not json")]);
    let err = select(&b, None).unwrap_err();
    assert!(err.to_string().contains("manifest.json"), "{err}");
}

fn oci(index: &str, extra: &[(&str, &str)]) -> Mem {
    let mut files = vec![
        ("oci-layout", r#"{"imageLayoutVersion":"1.0.0"}"#),
        ("index.json", index),
    ];
    files.extend_from_slice(extra);
    mem(&files)
}

const MANIFEST: &str = r#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json",
    "config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:cfg","size":1},
    "layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"sha256:l1","size":1},
              {"mediaType":"application/vnd.oci.image.layer.v1.tar+zstd","digest":"sha256:l2","size":1}]}"#;

#[test]
fn oci_single_manifest() {
    let b = oci(
        r#"{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:m1","size":1,
            "annotations":{"org.opencontainers.image.ref.name":"v1"}}]}"#,
        &[("blobs/sha256/m1", MANIFEST)],
    );
    let img = select(&b, None).unwrap();
    assert_eq!(img.config, b.blob("cfg"));
    assert_eq!(img.layers[0].name, b.blob("l1"));
    assert_eq!(img.layers[0].digest.hex, b.2["l1"]);
    assert_eq!(
        img.layers[1].media_type.as_deref(),
        Some("application/vnd.oci.image.layer.v1.tar+zstd")
    );
    assert_eq!(img.name, "v1");
    assert!(
        select(&b, Some("app:v1")).is_ok(),
        "a bare tag ref matches by tag"
    );
}

#[test]
fn oci_nested_index_picks_host_platform_skipping_attestations() {
    let arch = crate::export::host_arch();
    let other = if arch == "amd64" { "arm64" } else { "amd64" };
    let nested = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[
          {{"digest":"sha256:mo","platform":{{"os":"linux","architecture":"{other}"}}}},
          {{"digest":"sha256:mh","platform":{{"os":"linux","architecture":"{arch}"}}}},
          {{"digest":"sha256:att","platform":{{"os":"unknown","architecture":"unknown"}}}}]}}"#
    );
    let b = oci(
        r#"{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.index.v1+json","digest":"sha256:idx",
            "annotations":{"io.containerd.image.name":"docker.io/library/app:2"}}]}"#,
        &[
            ("blobs/sha256/idx", &nested),
            ("blobs/sha256/mh", MANIFEST),
            ("blobs/sha256/mo", "{}"),
        ],
    );
    let img = select(&b, Some("app:2")).unwrap();
    assert_eq!(img.name, "docker.io/library/app:2");
    assert_eq!(img.config, b.blob("cfg"));
}

#[test]
fn oci_no_matching_platform_lists_available() {
    let b = oci(
        r#"{"schemaVersion":2,"manifests":[
          {"digest":"sha256:a","platform":{"os":"linux","architecture":"s390x"}},
          {"digest":"sha256:b","platform":{"os":"linux","architecture":"riscv64"}}]}"#,
        &[],
    );
    let err = select(&b, None).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("linux/s390x") && msg.contains("linux/riscv64"),
        "{msg}"
    );
}

#[test]
fn oci_several_named_images_need_a_ref() {
    let b = oci(
        r#"{"schemaVersion":2,"manifests":[
          {"digest":"sha256:m1","annotations":{"org.opencontainers.image.ref.name":"a:1"}},
          {"digest":"sha256:m2","annotations":{"org.opencontainers.image.ref.name":"b:1"}}]}"#,
        &[("blobs/sha256/m1", "{}"), ("blobs/sha256/m2", MANIFEST)],
    );
    assert!(matches!(
        select(&b, None),
        Err(ExportError::SeveralImages { .. })
    ));
    assert_eq!(select(&b, Some("b:1")).unwrap().config, b.blob("cfg"));
    // "{}" is neither index nor manifest.
    assert!(matches!(
        select(&b, Some("a:1")),
        Err(ExportError::BadLayout { .. })
    ));
}

#[test]
fn digests_cannot_escape_blobs() {
    let b = oci(r#"{"manifests":[{"digest":"sha256:../../etc"}]}"#, &[]);
    assert!(matches!(
        select(&b, None),
        Err(ExportError::BadLayout { .. })
    ));
}

#[test]
fn config_env_present_missing() {
    let b = mem(&[
        (
            "c.json",
            r#"{"config":{"Env":["A=b=c"]},"container_config":{"Env":["X=1"]}}"#,
        ),
        ("d.json", r#"{"config":{}}"#),
    ]);
    let img = |c: &str| Image {
        name: "i".into(),
        config: c.into(),
        config_digest: None,
        layers: vec![],
    };
    assert_eq!(
        config_env(&b, &img("c.json")).unwrap(),
        Some(vec!["A=b=c".to_string()])
    );
    assert_eq!(config_env(&b, &img("d.json")).unwrap(), None);
    assert!(matches!(
        config_env(&b, &img("gone.json")),
        Err(ExportError::MissingBlob { .. })
    ));
}

#[test]
fn ref_matching() {
    assert!(ref_matches("busybox:latest", "busybox"));
    assert!(ref_matches("docker.io/library/busybox:latest", "busybox"));
    assert!(ref_matches("localhost:5000/x", "localhost:5000/x:latest"));
    assert!(!ref_matches("busybox:1", "busybox"));
    assert!(!ref_matches("a/b:1", "b:1"));
}

#[test]
fn an_altered_manifest_or_config_is_refused() {
    let index = r#"{"schemaVersion":2,"manifests":[{"digest":"sha256:m1"}]}"#;
    let mut b = oci(
        index,
        &[("blobs/sha256/m1", MANIFEST), ("blobs/sha256/cfg", "{}")],
    );
    let img = select(&b, None).unwrap();
    assert_eq!(config_env(&b, &img).unwrap(), None);
    // The same bytes, one changed: refused by name, with both digests.
    let manifest = b.blob("m1");
    b.0.get_mut(&manifest).unwrap()[0] = b' ';
    let err = select(&b, None).unwrap_err();
    assert!(
        matches!(&err, ExportError::Digest { name, .. } if *name == manifest),
        "{err}"
    );
    let config = b.blob("cfg");
    b.0.insert(config.clone(), b"{ }".to_vec());
    let err = config_env(&b, &img).unwrap_err();
    assert!(err.to_string().contains(&b.2["cfg"]), "{err}");
    // A digest in an algorithm that cannot be checked is no digest.
    let b = oci(r#"{"manifests":[{"digest":"md5:0123456789abcdef"}]}"#, &[]);
    let err = select(&b, None).unwrap_err();
    assert!(err.to_string().contains("cannot check"), "{err}");
}
