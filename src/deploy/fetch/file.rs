//! `file://`: a local artifact, read as it is unpacked.

use std::io::Read;
use std::path::Path;

use super::FetchError;

pub fn open(url: &str, path: &Path) -> Result<Box<dyn Read + Send>, FetchError> {
    match std::fs::File::open(path) {
        Ok(f) => Ok(Box::new(f)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(FetchError::NoSuchFile {
            url: url.to_string(),
        }),
        Err(source) => Err(FetchError::File {
            url: url.to_string(),
            source,
        }),
    }
}
