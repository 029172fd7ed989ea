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
use super::digests::{self, Expected, Of};

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
    /// The config's declared digest (a `docker save` config named otherwise has none).
    pub config_digest: Option<Expected>,
    pub layers: Vec<Layer>,
}

/// One layer blob, its declared digest and, for OCI, its declared media type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layer {
    pub name: String,
    pub media_type: Option<String>,
    pub digest: Expected,
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
    #[serde(default)]
    rootfs: Option<RootFs>,
}

#[derive(Deserialize)]
struct RootFs {
    #[serde(default)]
    diff_ids: Vec<String>,
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
    let digest = image.config_digest.as_ref();
    let config: ConfigFile = parse(blobs, &image.config, "image config JSON", digest)?;
    Ok(config.config.and_then(|c| c.env))
}

/// Reads and parses `name`, checked against `digest` when one is declared.
fn parse<T: serde::de::DeserializeOwned>(
    blobs: &dyn Blobs,
    name: &str,
    what: &'static str,
    digest: Option<&Expected>,
) -> Result<T, ExportError> {
    let bytes = blobs.read(name)?;
    if let Some(expected) = digest
        && let Some(actual) = digests::mismatch_of_bytes(expected, &bytes)
    {
        return Err(ExportError::Digest {
            path: blobs.archive_path().to_path_buf(),
            name: name.to_string(),
            expected: expected.to_string(),
            actual,
        });
    }
    serde_json::from_slice(&bytes).map_err(|source| ExportError::BadJson {
        path: blobs.archive_path().to_path_buf(),
        name: name.to_string(),
        what,
        source,
    })
}

fn select_legacy(blobs: &dyn Blobs, wanted: Option<&str>) -> Result<Image, ExportError> {
    let entries: Vec<LegacyEntry> = parse(blobs, "manifest.json", "docker save manifest", None)?;
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
    let config = clean(&entry.config);
    let config_digest = digests::from_config_name(&config);
    let diff_ids = legacy_diff_ids(blobs, &config, config_digest.as_ref(), entry.layers.len())?;
    Ok(Image {
        name,
        config,
        config_digest,
        layers: (entry.layers.iter().zip(diff_ids))
            .map(|(l, digest)| Layer {
                name: clean(l),
                media_type: None,
                digest,
            })
            .collect(),
    })
}

/// The uncompressed digests a `docker save` config lists for its `layers` layers.
fn legacy_diff_ids(
    blobs: &dyn Blobs,
    config: &str,
    digest: Option<&Expected>,
    layers: usize,
) -> Result<Vec<Expected>, ExportError> {
    let parsed: ConfigFile = parse(blobs, config, "image config JSON", digest)?;
    let ids = parsed.rootfs.map(|r| r.diff_ids).unwrap_or_default();
    let bad = |problem: String| ExportError::BadLayout {
        path: blobs.archive_path().to_path_buf(),
        problem: format!("{config}: {problem}; the layers cannot be verified"),
    };
    if ids.len() != layers {
        let n = ids.len();
        return Err(bad(format!(
            "lists {n} layer digests (rootfs.diff_ids) for {layers} layers"
        )));
    }
    (ids.iter())
        .map(|d| digests::parse(d, Of::Uncompressed).map_err(&bad))
        .collect()
}

fn select_oci(blobs: &dyn Blobs, wanted: Option<&str>) -> Result<Image, ExportError> {
    if !blobs.contains("oci-layout") {
        return Err(ExportError::BadLayout {
            path: blobs.archive_path().to_path_buf(),
            problem: "index.json without oci-layout: not an OCI image layout".into(),
        });
    }
    let index: IndexOrManifest = parse(blobs, "index.json", "OCI index", None)?;
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
    let digest = stored_digest(blobs, &descriptor.digest)?;
    let doc: IndexOrManifest = parse(blobs, &path, "OCI index or manifest", Some(&digest))?;
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
        config_digest: Some(stored_digest(blobs, &config.digest)?),
        layers: layers
            .iter()
            .map(|l| {
                Ok(Layer {
                    name: blob_path(blobs, &l.digest)?,
                    media_type: l.media_type.clone(),
                    digest: stored_digest(blobs, &l.digest)?,
                })
            })
            .collect::<Result<_, ExportError>>()?,
    })
}

/// An OCI descriptor's digest, of the blob as stored.
fn stored_digest(blobs: &dyn Blobs, digest: &str) -> Result<Expected, ExportError> {
    digests::parse(digest, Of::Stored).map_err(|problem| ExportError::BadLayout {
        path: blobs.archive_path().to_path_buf(),
        problem,
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
#[path = "layout_tests.rs"]
mod tests;
