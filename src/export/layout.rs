//! Finding the image inside an archive: `docker save` manifests and OCI image layouts.
//!
//! Two layouts are understood:
//! - legacy `docker save`: `manifest.json` lists images, each with `RepoTags`, a `Config`
//!   file and `Layers` files (uncompressed tars; Docker 25+ points them into `blobs/`);
//! - OCI image layout: `oci-layout` + `index.json` → descriptors (possibly nested indexes,
//!   one per platform) → an image manifest → config and layer blobs under `blobs/<alg>/<hex>`.
//!
//! When both are present (Docker 25+ writes both), `manifest.json` is used: its repo tags
//! are what users type. Selection is pure: it reads files through [`Blobs`], so it is tested
//! here with an in-memory archive.

use std::collections::HashMap;
use std::path::Path;

use serde::Deserialize;

use super::ExportError;

/// Read access to the files of an image archive, by normalized path.
pub trait Blobs {
    fn contains(&self, name: &str) -> bool;
    fn read(&self, name: &str) -> Result<Vec<u8>, ExportError>;
    fn archive_path(&self) -> &Path;
}

/// The image chosen from an archive: where its config and layers are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    /// A human name: the first repo tag / ref, or the manifest digest.
    pub name: String,
    pub config: String,
    pub layers: Vec<Layer>,
}

/// One layer blob and, for OCI, its declared media type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layer {
    pub name: String,
    pub media_type: Option<String>,
}

#[derive(Deserialize)]
struct LegacyEntry {
    #[serde(rename = "Config")]
    config: String,
    #[serde(rename = "RepoTags", default)]
    repo_tags: Option<Vec<String>>,
    #[serde(rename = "Layers")]
    layers: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
struct Descriptor {
    #[serde(rename = "mediaType", default)]
    media_type: Option<String>,
    digest: String,
    #[serde(default)]
    platform: Option<Platform>,
    #[serde(default)]
    annotations: Option<HashMap<String, String>>,
}

#[derive(Debug, Clone, Deserialize)]
struct Platform {
    #[serde(default)]
    os: String,
    #[serde(default)]
    architecture: String,
    #[serde(default)]
    variant: Option<String>,
}

/// An index or a manifest: which one is told by `mediaType` or by which fields exist.
#[derive(Deserialize)]
struct IndexOrManifest {
    #[serde(rename = "mediaType", default)]
    media_type: Option<String>,
    #[serde(default)]
    manifests: Option<Vec<Descriptor>>,
    #[serde(default)]
    config: Option<Descriptor>,
    #[serde(default)]
    layers: Option<Vec<Descriptor>>,
}

/// The part of an image config that export needs.
#[derive(Deserialize)]
struct ConfigFile {
    #[serde(default)]
    config: Option<RuntimeConfig>,
}

#[derive(Deserialize)]
struct RuntimeConfig {
    #[serde(rename = "Env", default)]
    env: Option<Vec<String>>,
}

const REF_NAME: &str = "org.opencontainers.image.ref.name";
const CONTAINERD_NAME: &str = "io.containerd.image.name";
const MAX_DEPTH: usize = 4;

/// Picks the image (by `wanted` ref when given) and resolves its config and layers.
pub fn select(blobs: &dyn Blobs, wanted: Option<&str>) -> Result<Image, ExportError> {
    if blobs.contains("manifest.json") {
        select_legacy(blobs, wanted)
    } else if blobs.contains("index.json") {
        select_oci(blobs, wanted)
    } else {
        Err(ExportError::MissingManifest {
            path: blobs.archive_path().to_path_buf(),
        })
    }
}

/// The `config.Env` of an image config blob.
pub fn config_env(blobs: &dyn Blobs, image: &Image) -> Result<Option<Vec<String>>, ExportError> {
    let config: ConfigFile = parse(blobs, &image.config, "image config JSON")?;
    Ok(config.config.and_then(|c| c.env))
}

fn parse<T: serde::de::DeserializeOwned>(
    blobs: &dyn Blobs,
    name: &str,
    what: &'static str,
) -> Result<T, ExportError> {
    let bytes = blobs.read(name)?;
    serde_json::from_slice(&bytes).map_err(|source| ExportError::BadJson {
        path: blobs.archive_path().to_path_buf(),
        name: name.to_string(),
        what,
        source,
    })
}

fn select_legacy(blobs: &dyn Blobs, wanted: Option<&str>) -> Result<Image, ExportError> {
    let entries: Vec<LegacyEntry> = parse(blobs, "manifest.json", "docker save manifest")?;
    let names: Vec<Vec<String>> = entries
        .iter()
        .map(|e| e.repo_tags.clone().unwrap_or_default())
        .collect();
    let index = pick(blobs, &names, wanted, |i| {
        // An untagged image is known by its config file name.
        entries[i].config.clone()
    })?;
    let entry = &entries[index];
    let name = names[index]
        .first()
        .cloned()
        .unwrap_or_else(|| entry.config.clone());
    Ok(Image {
        name,
        config: clean(&entry.config),
        layers: entry
            .layers
            .iter()
            .map(|l| Layer {
                name: clean(l),
                media_type: None,
            })
            .collect(),
    })
}

fn select_oci(blobs: &dyn Blobs, wanted: Option<&str>) -> Result<Image, ExportError> {
    if !blobs.contains("oci-layout") {
        return Err(ExportError::BadLayout {
            path: blobs.archive_path().to_path_buf(),
            problem: "index.json without oci-layout: not an OCI image layout".into(),
        });
    }
    let index: IndexOrManifest = parse(blobs, "index.json", "OCI index")?;
    let top = index.manifests.unwrap_or_default();
    let names: Vec<Vec<String>> = top.iter().map(descriptor_refs).collect();
    // Several unnamed (or identically named) descriptors are one image's platforms.
    let same_image = names.windows(2).all(|w| w[0] == w[1]);
    let (candidates, name) = if top.len() > 1 && same_image {
        if let Some(w) = wanted
            && !names[0].iter().any(|n| ref_matches(n, w))
        {
            return Err(ExportError::ImageRefNotFound {
                path: blobs.archive_path().to_path_buf(),
                wanted: w.to_string(),
                refs: display_refs(&names, |i| top[i].digest.clone()),
            });
        }
        (top.clone(), names[0].first().cloned())
    } else {
        let i = pick(blobs, &names, wanted, |i| top[i].digest.clone())?;
        (vec![top[i].clone()], names[i].first().cloned())
    };
    let descriptor = choose_platform(blobs, &candidates)?;
    let name = name.unwrap_or_else(|| descriptor.digest.clone());
    resolve(blobs, descriptor, name, 0)
}

/// Follows a descriptor through nested indexes down to an image manifest.
fn resolve(
    blobs: &dyn Blobs,
    descriptor: Descriptor,
    name: String,
    depth: usize,
) -> Result<Image, ExportError> {
    let path = blob_path(blobs, &descriptor.digest)?;
    let doc: IndexOrManifest = parse(blobs, &path, "OCI index or manifest")?;
    let is_index = doc.manifests.is_some()
        || doc
            .media_type
            .as_deref()
            .or(descriptor.media_type.as_deref())
            .is_some_and(|m| m.contains("index") || m.contains("manifest.list"));
    if is_index {
        if depth >= MAX_DEPTH {
            return Err(ExportError::BadLayout {
                path: blobs.archive_path().to_path_buf(),
                problem: format!("indexes nested deeper than {MAX_DEPTH} at {path}"),
            });
        }
        let chosen = choose_platform(blobs, &doc.manifests.unwrap_or_default())?;
        return resolve(blobs, chosen, name, depth + 1);
    }
    let (Some(config), Some(layers)) = (doc.config, doc.layers) else {
        return Err(ExportError::BadLayout {
            path: blobs.archive_path().to_path_buf(),
            problem: format!(
                "{path} is neither an image index nor a manifest with config and layers"
            ),
        });
    };
    Ok(Image {
        name,
        config: blob_path(blobs, &config.digest)?,
        layers: layers
            .iter()
            .map(|l| {
                Ok(Layer {
                    name: blob_path(blobs, &l.digest)?,
                    media_type: l.media_type.clone(),
                })
            })
            .collect::<Result<_, ExportError>>()?,
    })
}

/// Picks `linux/<host arch>` among platform descriptors, or the only real image.
fn choose_platform(blobs: &dyn Blobs, list: &[Descriptor]) -> Result<Descriptor, ExportError> {
    // Build attestations (`unknown/unknown`) are not images.
    let images: Vec<&Descriptor> = list
        .iter()
        .filter(|d| {
            let attestation = d.annotations.as_ref().is_some_and(|a| {
                a.get("vnd.docker.reference.type")
                    .is_some_and(|t| t == "attestation-manifest")
            });
            let unknown = d.platform.as_ref().is_some_and(|p| p.os == "unknown");
            !attestation && !unknown
        })
        .collect();
    let arch = super::host_arch();
    if let Some(d) = images.iter().find(|d| {
        d.platform
            .as_ref()
            .is_some_and(|p| p.os == "linux" && p.architecture == arch)
    }) {
        return Ok((*d).clone());
    }
    if images.len() == 1 {
        return Ok(images[0].clone());
    }
    Err(ExportError::NoPlatform {
        path: blobs.archive_path().to_path_buf(),
        wanted: format!("linux/{arch}"),
        available: images
            .iter()
            .map(|d| match &d.platform {
                Some(p) => match &p.variant {
                    Some(v) => format!("{}/{}/{v}", p.os, p.architecture),
                    None => format!("{}/{}", p.os, p.architecture),
                },
                None => d.digest.clone(),
            })
            .collect(),
    })
}

/// The refs a top-level OCI descriptor is known by.
fn descriptor_refs(d: &Descriptor) -> Vec<String> {
    let Some(a) = &d.annotations else {
        return Vec::new();
    };
    let mut refs = Vec::new();
    if let Some(n) = a.get(CONTAINERD_NAME) {
        refs.push(n.clone());
    }
    if let Some(n) = a.get(REF_NAME)
        && !refs.contains(n)
    {
        refs.push(n.clone());
    }
    refs
}

/// Index of the image named `wanted`, or of the only image.
fn pick(
    blobs: &dyn Blobs,
    names: &[Vec<String>],
    wanted: Option<&str>,
    fallback: impl Fn(usize) -> String,
) -> Result<usize, ExportError> {
    let path = blobs.archive_path().to_path_buf();
    match wanted {
        Some(w) => names
            .iter()
            .position(|refs| refs.iter().any(|r| ref_matches(r, w)))
            .ok_or_else(|| ExportError::ImageRefNotFound {
                path,
                wanted: w.to_string(),
                refs: display_refs(names, &fallback),
            }),
        None => match names.len() {
            0 => Err(ExportError::BadLayout {
                path,
                problem: "the archive's manifest lists no image".into(),
            }),
            1 => Ok(0),
            _ => Err(ExportError::SeveralImages {
                path,
                refs: display_refs(names, &fallback),
            }),
        },
    }
}

fn display_refs(names: &[Vec<String>], fallback: impl Fn(usize) -> String) -> Vec<String> {
    names
        .iter()
        .enumerate()
        .map(|(i, refs)| {
            if refs.is_empty() {
                format!("untagged {}", fallback(i))
            } else {
                refs.join(" = ")
            }
        })
        .collect()
}

/// Whether an archive's ref `have` names the user's `want` (`busybox` = `busybox:latest` =
/// `docker.io/library/busybox:latest`; an OCI ref that is just a tag matches that tag).
pub fn ref_matches(have: &str, want: &str) -> bool {
    if have == want {
        return true;
    }
    let canon = |r: &str| -> String {
        let mut r = r
            .strip_prefix("docker.io/library/")
            .or_else(|| r.strip_prefix("docker.io/"))
            .unwrap_or(r)
            .to_string();
        let last = r.rsplit('/').next().unwrap_or("");
        if !last.contains(':') && !last.contains('@') {
            r.push_str(":latest");
        }
        r
    };
    if !have.contains('/')
        && !have.contains(':')
        && want.rsplit_once(':').is_some_and(|(_, t)| t == have)
    {
        return true;
    }
    canon(have) == canon(want)
}

/// `sha256:abc…` → `blobs/sha256/abc…`, refusing digests that would name another path.
fn blob_path(blobs: &dyn Blobs, digest: &str) -> Result<String, ExportError> {
    let ok = |s: &str| {
        !s.is_empty()
            && s.bytes().all(|b| {
                b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'+' || b == b'.'
            })
            && s != "."
            && s != ".."
    };
    match digest.split_once(':') {
        Some((alg, hex)) if ok(alg) && ok(hex) => Ok(format!("blobs/{alg}/{hex}")),
        _ => Err(ExportError::BadLayout {
            path: blobs.archive_path().to_path_buf(),
            problem: format!("malformed digest {digest:?}"),
        }),
    }
}

/// A manifest's file name as stored in the archive index (no `./`).
fn clean(name: &str) -> String {
    name.trim_start_matches("./").to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    struct Mem(HashMap<String, Vec<u8>>, PathBuf);

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

    fn mem(files: &[(&str, &str)]) -> Mem {
        Mem(
            files
                .iter()
                .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
                .collect(),
            PathBuf::from("test.tar"),
        )
    }

    const LEGACY_TWO: &str = r#"[
        {"Config":"c1.json","RepoTags":["app:1"],"Layers":["l1/layer.tar","l2/layer.tar"]},
        {"Config":"c2.json","RepoTags":["other:latest"],"Layers":["l3/layer.tar"]}
    ]"#;

    #[test]
    fn legacy_single_and_by_ref() {
        let b = mem(&[("manifest.json", LEGACY_TWO)]);
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
        assert_eq!(img.config, "blobs/sha256/cfg");
        assert_eq!(img.layers[0].name, "blobs/sha256/l1");
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
        assert_eq!(img.config, "blobs/sha256/cfg");
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
        assert_eq!(select(&b, Some("b:1")).unwrap().config, "blobs/sha256/cfg");
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
}
