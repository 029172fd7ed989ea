//! Robustness of every decoder that sees untrusted bytes: seeded random inputs and random
//! mutations of valid encodings must produce a value or a typed error — never a panic, and
//! for archives never a write outside the destination.
//!
//! A poor man's fuzzer that runs on stable Rust in every `cargo test`: the seeds are fixed, so
//! a failure is reproducible; raise `ROUNDS` locally to search longer.

mod common;

use std::io::{Read, Write};
use std::path::Path;

use droot_fleet::artifact::tar::{Archive, Limits};
use droot_fleet::artifact::{UnpackOptions, unpack};
use droot_fleet::gossip::envelope::{self, FrameDecoder};
use droot_fleet::gossip::message::{self, Broadcast};
use droot_fleet::gossip::{Key, Keyring, LamportClock, UserEvent};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

const ROUNDS: usize = 2_000;

fn random_bytes(rng: &mut StdRng, max: usize) -> Vec<u8> {
    let n = rng.random_range(0..=max);
    (0..n).map(|_| rng.random()).collect()
}

/// Flips, inserts, deletes or truncates a few bytes.
fn mutate(rng: &mut StdRng, input: &[u8]) -> Vec<u8> {
    let mut v = input.to_vec();
    for _ in 0..rng.random_range(1..=4) {
        match rng.random_range(0..4) {
            0 if !v.is_empty() => {
                let i = rng.random_range(0..v.len());
                v[i] ^= 1 << rng.random_range(0..8);
            }
            1 => {
                let i = rng.random_range(0..=v.len());
                v.insert(i, rng.random());
            }
            2 if !v.is_empty() => {
                let i = rng.random_range(0..v.len());
                v.remove(i);
            }
            _ => {
                let n = rng.random_range(0..=v.len());
                v.truncate(n);
            }
        }
    }
    v
}

fn sample_event(rng: &mut StdRng) -> Vec<u8> {
    let mut clock = LamportClock::default();
    let ev = UserEvent::create(rng, &mut clock, "web-1", "deploy", b"web v42".to_vec()).unwrap();
    message::encode_broadcast(&Broadcast::Event(ev)).unwrap()
}

#[test]
fn gossip_message_decoders_never_panic() {
    let mut rng = StdRng::seed_from_u64(0xd1);
    let valid = sample_event(&mut rng);
    assert!(
        message::decode_broadcast(&valid).is_ok(),
        "the seed input decodes"
    );
    let mut errors = 0;
    for _ in 0..ROUNDS {
        let input = if rng.random_bool(0.5) {
            random_bytes(&mut rng, 300)
        } else {
            mutate(&mut rng, &valid)
        };
        errors += usize::from(message::decode_broadcast(&input).is_err());
        let _ = message::decode_datagram(&input);
        let _ = message::decode_stream(&input);
    }
    assert!(
        errors > ROUNDS / 4,
        "garbage was mostly refused ({errors} errors)"
    );
}

/// The anti-entropy digest, node certificates and revocations: mutated encodings decode or
/// are refused; whatever decodes encodes back to itself.
#[test]
fn digest_and_identity_decoders_never_panic() {
    use droot_fleet::gossip::cert::{NodeCert, Revocation};
    use droot_fleet::gossip::digest::Digest;
    let mut rng = StdRng::seed_from_u64(0xd4);
    let enrollment = ed25519_dalek::SigningKey::from_bytes(&[7; 32]);
    let node_key = ed25519_dalek::SigningKey::from_bytes(&[8; 32]).verifying_key();
    let cert = NodeCert::issue(&enrollment, "web-1", &node_key, 1, 2_000_000_000).unwrap();
    let digest = Digest {
        buckets: vec![7; 16],
        events: 9,
        answer_back: true,
    };
    let valid = [
        digest.encode(),
        cert.encode(),
        Revocation::issue(&enrollment, cert.body(), 5).encode(),
    ];
    let mut decoded = 0;
    for round in 0..ROUNDS {
        let input = mutate(&mut rng, &valid[round % valid.len()]);
        if let Ok(d) = Digest::decode(&input) {
            assert_eq!(Digest::decode(&d.encode()), Ok(d));
            decoded += 1;
        }
        if let Ok(c) = NodeCert::decode(&input) {
            assert_eq!(NodeCert::decode(&c.encode()).ok(), Some(c));
            decoded += 1;
        }
        if let Ok(r) = Revocation::decode(&input) {
            assert_eq!(Revocation::decode(&r.encode()).ok(), Some(r));
            decoded += 1;
        }
    }
    assert!(
        decoded > 0 && decoded < ROUNDS,
        "{decoded} of {ROUNDS} decoded"
    );
}

#[test]
fn envelope_refuses_every_tampered_packet() {
    let mut rng = StdRng::seed_from_u64(0xd2);
    let keyring = Keyring::new(Key::generate(&mut rng));
    let other = Keyring::new(Key::generate(&mut rng));
    let plaintext = sample_event(&mut rng);
    let sealed = envelope::seal_datagram(&keyring, &plaintext, &mut rng).unwrap();
    assert_eq!(envelope::open(&keyring, &sealed).unwrap(), plaintext);
    assert!(
        envelope::open(&other, &sealed).is_err(),
        "wrong key refused"
    );
    for _ in 0..ROUNDS {
        let tampered = mutate(&mut rng, &sealed);
        if tampered == sealed {
            continue;
        }
        assert!(
            envelope::open(&keyring, &tampered).is_err(),
            "a tampered packet was accepted"
        );
        let _ = envelope::open(&keyring, &random_bytes(&mut rng, 200));
    }
}

#[test]
fn frame_decoder_survives_garbage_and_any_chunking() {
    let mut rng = StdRng::seed_from_u64(0xd3);
    let keyring = Keyring::new(Key::generate(&mut rng));
    let frame = envelope::encode_frame(&keyring, b"push-pull state", &mut rng).unwrap();
    for _ in 0..ROUNDS / 4 {
        // A valid frame split at random points decodes to the same plaintext.
        let mut dec = FrameDecoder::new();
        let cut = rng.random_range(0..=frame.len());
        dec.feed(&frame[..cut]);
        let early = dec.next_frame(&keyring).unwrap();
        dec.feed(&frame[cut..]);
        let got = match early {
            Some(f) => f,
            None => dec.next_frame(&keyring).unwrap().expect("a whole frame"),
        };
        assert_eq!(got, b"push-pull state");
        // Garbage never panics, and after an error the decoder stays failed.
        let mut dec = FrameDecoder::new();
        dec.feed(&mutate(&mut rng, &frame));
        if dec.next_frame(&keyring).is_err() {
            assert!(dec.next_frame(&keyring).is_err());
        }
    }
}

/// Names, modes, owners and mtimes under `dir`, and `dir`'s own: any change outside is damage.
fn snapshot(dir: &Path) -> Vec<String> {
    use std::os::unix::fs::MetadataExt;
    let line = |name: String, m: std::fs::Metadata| {
        format!(
            "{name} {:o} {}:{} {}.{} {}",
            m.mode(),
            m.uid(),
            m.gid(),
            m.mtime(),
            m.mtime_nsec(),
            m.len()
        )
    };
    let mut out: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            line(
                e.file_name().to_string_lossy().into_owned(),
                std::fs::symlink_metadata(e.path()).unwrap(),
            )
        })
        .collect();
    out.sort();
    out.push(line(".".into(), std::fs::symlink_metadata(dir).unwrap()));
    out
}

#[test]
fn unpacker_never_panics_or_escapes_on_mutated_archives() {
    let mut rng = StdRng::seed_from_u64(0xd4);
    let mut b = tar::Builder::new(Vec::new());
    for (i, body) in ["alpha", "beta", "gamma"].iter().enumerate() {
        let mut h = tar::Header::new_gnu();
        h.set_size(body.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, format!("d{i}/f{i}"), body.as_bytes())
            .unwrap();
    }
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Symlink);
    h.set_size(0);
    h.set_mode(0o777);
    h.set_cksum();
    b.append_link(&mut h, "link", "../outside").unwrap();
    // A directory, then a symlink of the same name to the outside directory: the directory's
    // mode and mtime must never reach the outside through it.
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Directory);
    h.set_size(0);
    h.set_mode(0o777);
    h.set_mtime(0);
    b.append_data(&mut h, "dd/", std::io::empty()).unwrap();
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Symlink);
    h.set_size(0);
    h.set_mode(0o777);
    b.append_link(&mut h, "dd", "../outside").unwrap();
    let mut tar = b.into_inner().unwrap();
    // Followed by every extension header and sparse form the reader knows.
    tar.truncate(tar.len() - 1024);
    tar.extend_from_slice(&common::archive::every_extension());
    let gz = {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(&tar).unwrap();
        e.finish().unwrap()
    };
    // The parallel layouts publish writes (other decoders).
    let members = {
        let mut w =
            droot_fleet::artifact::gzip_members::writer(Vec::new(), flate2::Compression::fast())
                .unwrap();
        w.write_all(&tar).unwrap();
        w.finish().unwrap()
    };
    let frames = {
        let mut w = droot_fleet::artifact::zstd_frames::writer(Vec::new(), 3).unwrap();
        w.write_all(&tar).unwrap();
        w.finish().unwrap()
    };
    let t = common::tempdir();
    let outside = t.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    std::fs::write(outside.join("keep"), b"k").unwrap();
    let before = snapshot(&outside);
    let opts = UnpackOptions {
        max_bytes: 1 << 20,
        max_entries: 1_000,
        ..UnpackOptions::default()
    };
    // The unmutated archives first: they are valid, so they reach the end of the unpack.
    for (i, base) in [&tar, &gz, &members, &frames].into_iter().enumerate() {
        let dest = t.path().join(format!("base{i}"));
        std::fs::create_dir(&dest).unwrap();
        unpack(std::io::Cursor::new(base.clone()), &dest, &opts).unwrap();
        assert!(
            std::fs::symlink_metadata(dest.join("dd"))
                .unwrap()
                .is_symlink()
        );
        std::fs::remove_dir_all(&dest).unwrap();
        assert_eq!(
            snapshot(&outside),
            before,
            "base archive {i} changed the outside"
        );
    }
    let (mut ok, mut refused) = (0, 0);
    for round in 0..300 {
        let base = [&tar, &gz, &members, &frames][round % 4];
        let input = mutate(&mut rng, base);
        let dest = t.path().join(format!("r{round}"));
        std::fs::create_dir(&dest).unwrap();
        match unpack(std::io::Cursor::new(input), &dest, &opts) {
            Ok(_) => ok += 1,
            Err(_) => refused += 1,
        }
        std::fs::remove_dir_all(&dest).unwrap();
        assert_eq!(snapshot(&outside), before, "round {round} wrote outside");
    }
    assert!(
        refused > 0,
        "mutations were noticed ({ok} accepted, {refused} refused)"
    );
}

/// Reads every entry of `input` and up to 1 MiB of each one's contents; the number of
/// entries, or the first error.
fn read_all_entries(input: &[u8]) -> Result<usize, String> {
    let limits = Limits {
        max_extension: 64 << 10,
    };
    let mut archive = Archive::with_limits(input, limits);
    let mut n = 0;
    while let Some(entry) = archive.next_entry().map_err(|e| e.to_string())? {
        n += 1;
        let mut sink = Vec::new();
        archive
            .contents(&entry)
            .take(1 << 20)
            .read_to_end(&mut sink)
            .map_err(|e| e.to_string())?;
        if entry.sparse.is_none() && (sink.len() as u64) < entry.size.min(1 << 20) {
            return Err(format!(
                "{}: short contents without an error",
                entry.shown()
            ));
        }
    }
    Ok(n)
}

#[test]
fn tar_reader_never_panics_on_mutated_extension_headers() {
    let mut rng = StdRng::seed_from_u64(0xd5);
    let valid = common::archive::every_extension();
    assert_eq!(read_all_entries(&valid), Ok(9), "the seed archive reads");
    let mut errors = 0;
    for _ in 0..ROUNDS {
        let input = if rng.random_bool(0.9) {
            // Mutate inside the headers and extension data, where the decoding happens.
            let mut v = valid.clone();
            for _ in 0..rng.random_range(1..=4) {
                let i = rng.random_range(0..v.len());
                v[i] = match rng.random_range(0..4) {
                    0 => rng.random(),
                    1 => b'0' + rng.random_range(0..10),
                    2 => 0,
                    _ => v[i] ^ (1 << rng.random_range(0..8)),
                };
            }
            if rng.random_bool(0.2) {
                v = mutate(&mut rng, &v);
            }
            v
        } else {
            random_bytes(&mut rng, 4096)
        };
        if let Err(e) = read_all_entries(&input) {
            assert!(!e.contains("short contents"), "{e}");
            errors += 1;
        }
    }
    assert!(
        errors > ROUNDS / 10,
        "mutations were noticed ({errors} errors)"
    );
}

#[path = "hostile_bytes/seeds.rs"]
mod seeds;
