//! Export from a Docker engine: create (never start) a container, stream its filesystem.
//!
//! Why a container: the engine has already applied the image's layers, and `GET
//! /containers/{id}/export` streams the merged filesystem as one tar. The container gets a
//! placeholder `Cmd` so images without `CMD` (or without `/bin/sh`) can still be created, a
//! unique name known *before* the create call, and is removed (with its anonymous volumes)
//! on every path: success, error, or a signal in the middle. Because the name is known up
//! front, even a create interrupted mid-flight is cleaned up.
//!
//! The environment comes from the image's `Config.Env`, not the legacy `ContainerConfig`
//! (which describes the build step that made the last layer, a mistake droot made).
//!
//! The export stream is async (bollard); the tar re-writing is sync (`tar`). The re-writing
//! runs on a blocking thread that pulls stream chunks with `Handle::block_on`, so the image
//! is streamed through, never buffered whole.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::pin::Pin;

use bollard::Docker;
use bollard::errors::Error as BollardError;
use bollard::models::ContainerCreateBody;
use bollard::query_parameters::{CreateContainerOptionsBuilder, RemoveContainerOptionsBuilder};
use futures_util::{Stream, StreamExt};
use tracing::{debug, info, warn};

use crate::artifact::tar::{Archive, Kind, Limits};

use super::rootfs_tar::{CopyError, OutputOptions, RootfsWriter};
use super::{ExportError, ExportSummary, Signals, normalize_path, show};

/// Default engine address when `DOCKER_HOST` is unset.
pub const DEFAULT_HOST: &str = "unix:///var/run/docker.sock";
/// Label put on helper containers, so stray ones can be found: `docker ps -a --filter label=...`.
pub const HELPER_LABEL: &str = "droot-fleet.export";
/// Placeholder command: never run, only makes the create call valid for images without CMD.
const PLACEHOLDER_CMD: &str = "/droot-fleet-export-never-started";
/// Paths the engine adds to every container that are not part of the image.
const ENGINE_ARTIFACTS: [&[u8]; 1] = [b".dockerenv"];

/// Exports `image` from the engine at `DOCKER_HOST` into `out`.
pub(crate) async fn export_image<W: Write + Send + 'static>(
    image: &str,
    out: W,
    output: OutputOptions,
    signals: &mut Signals,
) -> Result<(ExportSummary, W), ExportError> {
    let host = std::env::var("DOCKER_HOST").unwrap_or_else(|_| DEFAULT_HOST.to_string());
    let docker = Docker::connect_with_defaults().map_err(|source| match source {
        BollardError::SocketNotFoundError(_) => ExportError::NoEngine {
            host: host.clone(),
            source,
        },
        source => ExportError::BadDockerHost {
            host: host.clone(),
            source,
        },
    })?;
    let prepared = async {
        // Also checks the engine answers, and speaks its (possibly older) API version.
        let docker = docker
            .negotiate_version()
            .await
            .map_err(|source| match source {
                BollardError::DockerResponseServerError { .. } => ExportError::Engine {
                    action: "report its version".into(),
                    source,
                },
                source => ExportError::NoEngine {
                    host: host.clone(),
                    source,
                },
            })?;
        let inspect = docker
            .inspect_image(image)
            .await
            .map_err(|e| engine_error(e, image, "inspect the image"))?;
        // Create from the id we inspected, so a tag moved meanwhile cannot mix two images.
        let id = inspect.id.clone().unwrap_or_else(|| image.to_string());
        let env = inspect.config.and_then(|c| c.env);
        let drootenv = super::drootenv_text(image, env)?;
        Ok::<_, ExportError>((docker, id, drootenv))
    };
    let (docker, id, drootenv) = tokio::select! {
        r = prepared => r?,
        name = signals.recv() => return Err(ExportError::Interrupted(name)),
    };

    let name = helper_name();
    let work = create_and_export(&docker, image, &id, &name, out, output, drootenv);
    let result = tokio::select! {
        r = work => r,
        signal = signals.recv() => Err(ExportError::Interrupted(signal)),
    };
    let cleanup = remove_helper(&docker, &name).await;
    match (result, cleanup) {
        (Ok(done), Ok(())) => Ok(done),
        (Ok(_), Err(e)) => Err(e),
        (Err(e), Ok(())) => Err(e),
        (Err(e), Err(cleanup)) => {
            warn!(container = %name, error = %cleanup, "helper container left behind");
            Err(e)
        }
    }
}

async fn create_and_export<W: Write + Send + 'static>(
    docker: &Docker,
    image: &str,
    id: &str,
    name: &str,
    out: W,
    output: OutputOptions,
    drootenv: String,
) -> Result<(ExportSummary, W), ExportError> {
    let body = ContainerCreateBody {
        image: Some(id.to_string()),
        cmd: Some(vec![PLACEHOLDER_CMD.to_string()]),
        network_disabled: Some(true),
        labels: Some(HashMap::from([(HELPER_LABEL.to_string(), "1".to_string())])),
        ..Default::default()
    };
    let options = CreateContainerOptionsBuilder::new().name(name).build();
    let created = docker
        .create_container(Some(options), body)
        .await
        .map_err(|e| engine_error(e, image, "create a helper container"))?;
    for w in &created.warnings {
        warn!(container = %name, warning = %w, "engine warning on create");
    }
    debug!(container = %name, id = %created.id, "created helper container");

    let docker = docker.clone();
    let handle = tokio::runtime::Handle::current();
    let (image, name) = (image.to_string(), name.to_string());
    let work = tokio::task::spawn_blocking(move || {
        let stream = docker.export_container(&name);
        let reader = StreamRead {
            handle,
            stream: Box::pin(stream),
            chunk: None,
            pos: 0,
        };
        rewrite(reader, &image, out, output, &drootenv)
    });
    work.await
        .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
}

/// Re-writes the engine's export tar entry by entry, adding `/.drootenv`.
fn rewrite<R: Read, W: Write>(
    reader: R,
    image: &str,
    out: W,
    output: OutputOptions,
    drootenv: &str,
) -> Result<(ExportSummary, W), ExportError> {
    let stream_err = |source| ExportError::ExportStream {
        image: image.to_string(),
        source,
    };
    let origin = || format!("the engine's export of {image}");
    let mut writer = RootfsWriter::new(out, output).map_err(ExportError::Output)?;
    let mut tar = Archive::with_limits(reader, Limits::default());
    while let Some(entry) = tar.next_entry().map_err(|e| stream_err(e.into_io()))? {
        let raw = &entry.path;
        let path = normalize_path(raw).map_err(|_| ExportError::UnsafePath {
            origin: origin(),
            entry: show(raw),
        })?;
        if path.is_empty()
            || path == crate::drootenv::FILE_NAME.as_bytes()
            || ENGINE_ARTIFACTS.contains(&path.as_slice())
        {
            continue;
        }
        let target = if entry.kind == Kind::HardLink {
            let raw_target = &entry.link;
            let target = normalize_path(raw_target).map_err(|_| ExportError::UnsafePath {
                origin: origin(),
                entry: show(raw_target),
            })?;
            if target == crate::drootenv::FILE_NAME.as_bytes()
                || ENGINE_ARTIFACTS.contains(&target.as_slice())
            {
                return Err(ExportError::HardlinkTarget {
                    origin: origin(),
                    entry: show(&path),
                    target: show(&target),
                });
            }
            Some(target)
        } else {
            None
        };
        let contents = tar.contents(&entry);
        writer
            .copy_entry(&entry, contents, &path, target.as_deref())
            .map_err(|e| match e {
                CopyError::Read(e) => stream_err(e),
                CopyError::Write(e) => ExportError::Output(e),
                CopyError::TooLarge { limit } => ExportError::TooLarge { limit },
            })?;
    }
    writer
        .append_drootenv(drootenv)
        .map_err(ExportError::Output)?;
    let (entries, skipped_devices) = (writer.entries(), writer.skipped_devices());
    let out = writer.finish().map_err(ExportError::Output)?;
    info!(image, entries, skipped_devices, "engine export re-written");
    Ok((
        ExportSummary {
            image: image.to_string(),
            entries,
            skipped_devices,
        },
        out,
    ))
}

/// Removes the helper container and its anonymous volumes; a missing one is fine (the
/// create never happened or was interrupted before the engine made it).
async fn remove_helper(docker: &Docker, name: &str) -> Result<(), ExportError> {
    let options = RemoveContainerOptionsBuilder::new()
        .force(true)
        .v(true)
        .build();
    match docker.remove_container(name, Some(options)).await {
        Ok(()) => {
            debug!(container = %name, "removed helper container");
            Ok(())
        }
        Err(BollardError::DockerResponseServerError {
            status_code: 404, ..
        }) => Ok(()),
        Err(source) => Err(ExportError::Cleanup {
            name: name.to_string(),
            source,
        }),
    }
}

fn engine_error(e: BollardError, image: &str, action: &str) -> ExportError {
    match e {
        BollardError::DockerResponseServerError {
            status_code: 404, ..
        } => ExportError::ImageNotFound(image.to_string()),
        source => ExportError::Engine {
            action: format!("{action} for {image}"),
            source,
        },
    }
}

/// A container name unique to this process and moment.
fn helper_name() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("droot-fleet-export-{}-{nanos:x}", std::process::id())
}

/// A blocking `Read` over the async export stream.
struct StreamRead<S, T> {
    handle: tokio::runtime::Handle,
    stream: Pin<Box<S>>,
    chunk: Option<T>,
    pos: usize,
}

impl<S, T> Read for StreamRead<S, T>
where
    S: Stream<Item = Result<T, BollardError>>,
    T: AsRef<[u8]>,
{
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            if let Some(chunk) = &self.chunk {
                let rest = &chunk.as_ref()[self.pos..];
                if !rest.is_empty() {
                    let n = buf.len().min(rest.len());
                    buf[..n].copy_from_slice(&rest[..n]);
                    self.pos += n;
                    return Ok(n);
                }
            }
            match self.handle.block_on(self.stream.next()) {
                None => return Ok(0),
                Some(Ok(chunk)) => {
                    self.chunk = Some(chunk);
                    self.pos = 0;
                }
                Some(Err(e)) => return Err(io::Error::other(e)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::export::Compression;

    fn export_tar() -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        let mut add = |path: &str, data: &[u8], t: tar::EntryType| {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(t);
            h.set_mode(0o755);
            h.set_size(data.len() as u64);
            b.append_data(&mut h, path, data).unwrap();
        };
        add(".dockerenv", b"", tar::EntryType::Regular);
        add(".drootenv", b"OLD=1\n", tar::EntryType::Regular);
        add("bin/", b"", tar::EntryType::Directory);
        add("bin/busybox", b"ELF", tar::EntryType::Regular);
        b.into_inner().unwrap()
    }

    #[test]
    fn rewrite_drops_engine_files_and_replaces_drootenv() {
        let src = export_tar();
        let (summary, out) = rewrite(
            src.as_slice(),
            "img",
            Vec::new(),
            Compression::None.into(),
            "FOO=bar=baz\n",
        )
        .unwrap();
        assert_eq!(summary.entries, 3);
        let mut ar = tar::Archive::new(out.as_slice());
        let mut seen = Vec::new();
        for e in ar.entries().unwrap() {
            let mut e = e.unwrap();
            let p = e.path().unwrap().to_string_lossy().into_owned();
            let mut data = String::new();
            e.read_to_string(&mut data).unwrap();
            seen.push((p, data));
        }
        assert_eq!(
            seen,
            vec![
                ("bin".into(), String::new()),
                ("bin/busybox".into(), "ELF".into()),
                (".drootenv".into(), "FOO=bar=baz\n".into()),
            ]
        );
    }

    #[test]
    fn rewrite_reports_a_cut_stream() {
        let src = export_tar();
        let cut = &src[..src.len() - 1500];
        let err = rewrite(cut, "img", Vec::new(), Compression::None.into(), "").unwrap_err();
        assert!(matches!(err, ExportError::ExportStream { .. }), "{err:?}");
    }

    #[test]
    fn helper_names_are_valid_container_names() {
        let n = helper_name();
        assert!(n.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'));
    }
}
