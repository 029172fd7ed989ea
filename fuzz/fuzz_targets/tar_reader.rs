//! The tar reader with its production limits: every entry's header and extension records
//! (PAX, GNU long names, sparse maps) and up to 1 MiB of its contents. Contents are never
//! silently short: they are whole or an error.
#![no_main]

use std::io::Read;

use droot_fleet::artifact::tar::{Archive, Limits};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut archive = Archive::with_limits(data, Limits::default());
    while let Ok(Some(entry)) = archive.next_entry() {
        let _ = entry.shown();
        let mut sink = Vec::new();
        let read = archive
            .contents(&entry)
            .take(1 << 20)
            .read_to_end(&mut sink);
        if read.is_err() {
            break;
        }
        if entry.sparse.is_none() {
            assert!(
                sink.len() as u64 >= entry.size.min(1 << 20),
                "{}: short contents without an error",
                entry.shown()
            );
        }
    }
});
