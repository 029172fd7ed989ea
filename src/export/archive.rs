//! Flattening a `docker save` / OCI image-layout tarball into one rootfs tar, with no engine.
//!
//! The archive is a plain tar of files (manifests, configs, layer blobs). It is indexed once
//! (name → byte range, symlinks and hardlinks between files resolved), then blobs are read in
//! place with positioned reads, so no blob is copied out or held in memory.
//!
//! Flattening is two streaming passes over the layers, bottom first:
//! 1. read every layer's entry headers into [`whiteout::Record`]s and let
//!    [`whiteout::plan`] decide which entry wins for each path;
//! 2. read the layers again and copy only the winners, in layer order.
//!
//! Layers may be plain, gzip or zstd tars; compression is detected from the magic bytes (the
//! media type may lie or be absent in `docker save`). A hardlink whose target does not
//! survive is written as a copy of the target, read by re-opening that layer.

use std::fs::File;
use std::io::{self, BufReader, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use std::collections::HashMap;
use std::io::Write;

use tracing::{debug, info};

use crate::artifact::format;
use crate::artifact::tar::{self, Archive, Limits};

use super::digests::{self, Of};
use super::layout::{self, Blobs, Image, Layer};
use super::rootfs_tar::{CopyError, OutputOptions, RootfsWriter};
use super::whiteout::{self, Action, Kind, Record};
use super::{ExportError, ExportSummary, normalize_path, show};

/// Largest JSON file (manifest, index, config) read into memory.
const MAX_JSON: u64 = 64 << 20;

/// An opened image archive: the file and where each member's bytes are.
pub struct ImageArchive {
    file: File,
    path: PathBuf,
    members: HashMap<String, (u64, u64)>,
}

impl ImageArchive {
    /// Opens and indexes `path`.
    pub fn open(path: &Path) -> Result<Self, ExportError> {
        let open_err = |source| ExportError::OpenArchive {
            path: path.to_path_buf(),
            source,
        };
        let file = File::open(path).map_err(open_err)?;
        let mut head = [0u8; 512];
        let n = read_full_at(&file, &mut head, 0).map_err(open_err)?;
        if let Some(kind) = format::compression_of(&head[..n]) {
            return Err(ExportError::CompressedArchive {
                path: path.to_path_buf(),
                kind: kind.name(),
            });
        }
        let not_tar = |source| ExportError::NotATar {
            path: path.to_path_buf(),
            source,
        };
        if n < 512 || !format::is_tar_header(&head) {
            return Err(not_tar(None));
        }
        let mut files: HashMap<String, (u64, u64)> = HashMap::new();
        let mut links: Vec<(String, String)> = Vec::new();
        let mut archive = Archive::seekable(&file, Limits::default());
        while let Some(entry) = archive
            .next_entry()
            .map_err(|e| not_tar(Some(e.into_io())))?
        {
            let Ok(name) = normalize_path(&entry.path) else {
                continue;
            };
            let name = show(&name);
            let kind = entry.kind;
            if kind == tar::Kind::File && entry.sparse.is_none() {
                files.insert(name, (entry.data_offset, entry.size));
            } else if matches!(kind, tar::Kind::Symlink | tar::Kind::HardLink) {
                let target = show(&entry.link);
                // Symlinks are relative to their directory, hardlinks to the archive root.
                let joined = match (kind == tar::Kind::Symlink, name.rsplit_once('/')) {
                    (true, Some((dir, _))) => format!("{dir}/{target}"),
                    _ => target,
                };
                links.push((name, joined));
            }
        }
        // Resolve links to files (a few rounds handle chains; cycles stay unresolved).
        for _ in 0..8 {
            for (name, target) in &links {
                if let Some(resolved) = resolve_dots(target).and_then(|t| files.get(&t).copied()) {
                    files.entry(name.clone()).or_insert(resolved);
                }
            }
        }
        debug!(archive = %path.display(), members = files.len(), "indexed image archive");
        Ok(Self {
            file,
            path: path.to_path_buf(),
            members: files,
        })
    }

    /// A reader over member `name`.
    fn member(&self, name: &str) -> Result<Section<'_>, ExportError> {
        let (start, len) =
            self.members
                .get(name)
                .copied()
                .ok_or_else(|| ExportError::MissingBlob {
                    path: self.path.clone(),
                    name: name.to_string(),
                })?;
        Ok(Section {
            file: &self.file,
            pos: start,
            end: start + len,
        })
    }

    /// A decompressing reader over layer blob `layer`.
    fn layer_reader(&self, index: usize, layer: &Layer) -> Result<Box<dyn Read + '_>, ExportError> {
        if let Some(mt) = &layer.media_type
            && !mt.contains("tar")
        {
            return Err(ExportError::UnsupportedMediaType {
                path: self.path.clone(),
                name: layer.name.clone(),
                media_type: mt.clone(),
            });
        }
        let section = self.member(&layer.name)?;
        let mut magic = [0u8; 4];
        let n = read_full_at(&self.file, &mut magic, section.pos)
            .map_err(|source| self.layer_err(index, layer, source))?;
        let n = n.min((section.end - section.pos) as usize);
        match format::compression_of(&magic[..n]) {
            Some(kind) => match format::decompress(kind, section) {
                Ok(r) => Ok(r),
                Err(source) => Err(self.layer_err(index, layer, source)),
            },
            None => Ok(Box::new(BufReader::with_capacity(128 << 10, section))),
        }
    }

    fn layer_err(&self, index: usize, layer: &Layer, source: io::Error) -> ExportError {
        ExportError::Layer {
            path: self.path.clone(),
            layer: index,
            name: layer.name.clone(),
            source,
        }
    }
}

impl Blobs for ImageArchive {
    fn contains(&self, name: &str) -> bool {
        self.members.contains_key(name)
    }

    fn read(&self, name: &str) -> Result<Vec<u8>, ExportError> {
        let section = self.member(name)?;
        let mut out = Vec::new();
        section
            .take(MAX_JSON)
            .read_to_end(&mut out)
            .map_err(|source| ExportError::OpenArchive {
                path: self.path.clone(),
                source,
            })?;
        Ok(out)
    }

    fn archive_path(&self) -> &Path {
        &self.path
    }
}

/// Checks every layer against the digest its manifest declares, before anything is read
/// for flattening: the stored blob for an OCI layout, the uncompressed tar for `docker
/// save` ([`super::digests`]).
fn verify_layers(archive: &ImageArchive, image: &Image) -> Result<(), ExportError> {
    for (index, layer) in image.layers.iter().enumerate() {
        let checked = match layer.digest.of {
            Of::Stored => digests::mismatch_of_stream(&layer.digest, archive.member(&layer.name)?),
            Of::Uncompressed => {
                let stream = archive.layer_reader(index, layer)?;
                digests::mismatch_of_stream(&layer.digest, stream)
            }
        };
        let actual = checked.map_err(|source| archive.layer_err(index, layer, source))?;
        if let Some(actual) = actual {
            return Err(ExportError::Digest {
                path: archive.path.clone(),
                name: format!("layer {index} ({})", layer.name),
                expected: layer.digest.to_string(),
                actual,
            });
        }
        debug!(layer = index, digest = %layer.digest, "layer verified");
    }
    Ok(())
}

/// Flattens the image of the archive at `path` into `out`.
pub fn flatten<W: Write>(
    path: &Path,
    image_ref: Option<&str>,
    out: W,
    output: OutputOptions,
) -> Result<(ExportSummary, W), ExportError> {
    let archive = ImageArchive::open(path)?;
    let image = layout::select(&archive, image_ref)?;
    let env = layout::config_env(&archive, &image)?;
    let drootenv = super::drootenv_text(&image.name, env)?;
    info!(image = %image.name, layers = image.layers.len(), "flattening archive image");

    verify_layers(&archive, &image)?;
    // Pass 1: headers only.
    let mut records = Vec::with_capacity(image.layers.len());
    for (index, layer) in image.layers.iter().enumerate() {
        records.push(read_records(&archive, &image, index, layer)?);
    }
    let plan = whiteout::plan(&records).map_err(|d| ExportError::HardlinkTarget {
        origin: origin(&image, d.layer),
        entry: show(&d.path),
        target: show(&d.target),
    })?;

    // Pass 2: the winners, in layer order.
    let mut writer = RootfsWriter::new(out, output).map_err(ExportError::Output)?;
    for (index, layer) in image.layers.iter().enumerate() {
        let actions = &plan[index];
        if actions.iter().all(|a| *a == Action::Skip) {
            continue;
        }
        write_layer(
            &archive,
            index,
            layer,
            actions,
            &records[index],
            &mut writer,
        )?;
    }
    writer
        .append_drootenv(&drootenv)
        .map_err(ExportError::Output)?;
    let (entries, skipped_devices) = (writer.entries(), writer.skipped_devices());
    let out = writer.finish().map_err(ExportError::Output)?;
    info!(image = %image.name, entries, skipped_devices, "archive flattened");
    Ok((
        ExportSummary {
            image: image.name,
            entries,
            skipped_devices,
        },
        out,
    ))
}

/// Pass 2 for one layer: each entry as its `actions` say, into `writer`.
fn write_layer<W: Write>(
    archive: &ImageArchive,
    index: usize,
    layer: &Layer,
    actions: &[Action],
    records: &[Record],
    writer: &mut RootfsWriter<W>,
) -> Result<(), ExportError> {
    let reader = archive.layer_reader(index, layer)?;
    let mut tar = Archive::new(reader);
    let mut next = 0;
    while let Some(entry) = tar
        .next_entry()
        .map_err(|e| archive.layer_err(index, layer, e.into_io()))?
    {
        let i = next;
        next += 1;
        let action = actions.get(i).ok_or_else(|| {
            archive.layer_err(
                index,
                layer,
                io::Error::other("layer changed between the two passes"),
            )
        })?;
        let path = &records[i].path;
        let copied = match action {
            Action::Skip => continue,
            Action::Emit => writer.copy_entry(&entry, tar.contents(&entry), path, None),
            Action::Link { target } => {
                writer.copy_entry(&entry, tar.contents(&entry), path, Some(target))
            }
            Action::CopyOf { index: source } => {
                debug!(entry = %show(path), "hardlink target shadowed; writing a copy");
                copy_from_layer(archive, index, layer, *source, writer, path)?;
                Ok(())
            }
        };
        copied.map_err(|e| match e {
            CopyError::Read(e) => archive.layer_err(index, layer, e),
            CopyError::Write(e) => ExportError::Output(e),
            CopyError::TooLarge { limit } => ExportError::TooLarge { limit },
        })?;
    }
    Ok(())
}

/// Pass 1 for one layer: every entry's normalized path and kind, in tar order.
fn read_records(
    archive: &ImageArchive,
    image: &Image,
    index: usize,
    layer: &Layer,
) -> Result<Vec<Record>, ExportError> {
    let reader = archive.layer_reader(index, layer)?;
    let mut tar = Archive::new(reader);
    let mut records = Vec::new();
    let unsafe_path = |raw: &[u8]| ExportError::UnsafePath {
        origin: origin(image, index),
        entry: show(raw),
    };
    while let Some(entry) = tar
        .next_entry()
        .map_err(|e| archive.layer_err(index, layer, e.into_io()))?
    {
        let raw = &entry.path;
        let path = normalize_path(raw).map_err(|_| unsafe_path(raw))?;
        let kind = if path.is_empty() || path == crate::drootenv::FILE_NAME.as_bytes() {
            Kind::Ignore
        } else if entry.kind == tar::Kind::Dir {
            Kind::Dir
        } else if entry.kind == tar::Kind::HardLink {
            let target = normalize_path(&entry.link).map_err(|_| unsafe_path(&entry.link))?;
            Kind::HardLink(target)
        } else {
            Kind::Other
        };
        records.push(Record { path, kind });
    }
    debug!(layer = index, entries = records.len(), "read layer headers");
    Ok(records)
}

/// Writes entry `source` of `layer` at `path`, re-reading the layer up to it.
fn copy_from_layer<W: Write>(
    archive: &ImageArchive,
    index: usize,
    layer: &Layer,
    source: usize,
    writer: &mut RootfsWriter<W>,
    path: &[u8],
) -> Result<(), ExportError> {
    let err = |e| archive.layer_err(index, layer, e);
    let mut tar = Archive::new(archive.layer_reader(index, layer)?);
    let mut entry = None;
    for _ in 0..=source {
        entry = tar.next_entry().map_err(|e| err(e.into_io()))?;
    }
    let entry =
        entry.ok_or_else(|| err(io::Error::other("hardlink source vanished on re-read")))?;
    writer
        .copy_entry(&entry, tar.contents(&entry), path, None)
        .map_err(|e| match e {
            CopyError::Read(e) => err(e),
            CopyError::Write(e) => ExportError::Output(e),
            CopyError::TooLarge { limit } => ExportError::TooLarge { limit },
        })
}

fn origin(image: &Image, layer: usize) -> String {
    format!(
        "layer {layer} ({}) of image {}",
        image.layers.get(layer).map_or("?", |l| l.name.as_str()),
        image.name
    )
}

/// Resolves `.` and `..` inside the archive's own namespace (never above its root).
fn resolve_dots(path: &str) -> Option<String> {
    let mut parts: Vec<&str> = Vec::new();
    for c in path.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                parts.pop()?;
            }
            c => parts.push(c),
        }
    }
    Some(parts.join("/"))
}

fn read_full_at(file: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match file.read_at(&mut buf[n..], offset + n as u64) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// A byte range of the archive file, read with positioned reads (no shared cursor).
struct Section<'a> {
    file: &'a File,
    pos: u64,
    end: u64,
}

impl Read for Section<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.end.saturating_sub(self.pos);
        if left == 0 {
            return Ok(0);
        }
        let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        let n = self.file.read_at(&mut buf[..want], self.pos)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "archive member is cut short",
            ));
        }
        self.pos += n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dots_resolve_inside_the_archive_only() {
        assert_eq!(resolve_dots("a/../b/./c").as_deref(), Some("b/c"));
        assert_eq!(resolve_dots("../x"), None);
    }
}
