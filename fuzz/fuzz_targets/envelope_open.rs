//! The sealed envelope: datagrams through `envelope::open`, stream bytes through a
//! `FrameDecoder` fed in the chunks the input's first byte picks. Whatever opens must
//! have been sealed with the fixed keyring (seeds), and a failed decoder stays failed.
#![no_main]

use droot_fleet::gossip::envelope::{self, FrameDecoder};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let keyring = droot_fleet_fuzz::keyring();
    let _ = envelope::open(&keyring, data);
    let Some((&chunk, rest)) = data.split_first() else {
        return;
    };
    let chunk = usize::from(chunk).max(1);
    let mut dec = FrameDecoder::new();
    let mut failed = false;
    for piece in rest.chunks(chunk) {
        dec.feed(piece);
        loop {
            match dec.next_frame(&keyring) {
                Ok(Some(_)) => assert!(!failed, "a frame after an error"),
                Ok(None) => break,
                Err(_) => {
                    failed = true;
                    break;
                }
            }
        }
        if failed {
            assert!(
                dec.next_frame(&keyring).is_err(),
                "a failed decoder recovered"
            );
        }
    }
    let _ = dec.finish();
});
