use super::*;
use crate::artifact::parallel_decode::ParallelDecode;

fn data(len: usize) -> Vec<u8> {
    let mut x = 0x9e37_79b9_u32;
    (0..len)
        .map(|i| {
            x = x.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            if i % 5 == 0 {
                (x >> 24) as u8
            } else {
                b'a' + (i % 19) as u8
            }
        })
        .collect()
}

fn frames(data: &[u8]) -> Vec<u8> {
    let mut w = writer(Vec::new(), 3).unwrap();
    w.write_all(data).unwrap();
    w.finish().unwrap()
}

fn decode_all(z: Vec<u8>, workers: usize) -> (Vec<u8>, io::Result<usize>) {
    let mut r = ParallelDecode::spawn(Box::new(io::Cursor::new(z)), ZstdFrames, workers).unwrap();
    let mut out = Vec::new();
    let res = r.read_to_end(&mut out);
    (out, res)
}

/// Where each frame of `z` starts, found as the reader finds them.
fn offsets(z: &[u8]) -> Vec<usize> {
    let mut r = io::Cursor::new(z);
    let mut at = vec![0];
    while let Some(f) = read_frame(&mut r, 0, 0).unwrap() {
        at.push(at.last().unwrap() + f.len());
    }
    at
}

#[test]
fn frames_decode_in_order_in_parallel_and_with_any_zstd_reader() {
    let input = data(3 * BLOCK + 999);
    let z = frames(&input);
    assert!(is_marked(&z) && starts_skippable(&z));
    // The marker and four frames.
    assert_eq!(offsets(&z).len(), 6);
    for workers in [1, 2, 4] {
        let (out, res) = decode_all(z.clone(), workers);
        res.unwrap();
        assert!(out == input, "{workers} workers: output differs");
    }
    assert!(
        zstd::decode_all(&z[..]).unwrap() == input,
        "a plain zstd reader"
    );
    let (out, res) = decode_all(frames(b""), 2);
    assert_eq!((out.len(), res.unwrap()), (0, 0));
}

#[test]
fn corrupt_truncated_and_unbounded_frames_are_named() {
    let input = data(3 * BLOCK);
    let z = frames(&input);
    let at = offsets(&z);

    let mut corrupt = z.clone();
    corrupt[at[3] - 2] ^= 0xff; // frame 2's checksum
    let (out, res) = decode_all(corrupt, 2);
    let err = res.unwrap_err().to_string();
    assert!(err.contains("zstd frame 2"), "{err}");
    assert!(
        out == input[..BLOCK],
        "the first frame's output, then the error"
    );

    let err = decode_all(z[..z.len() - 3].to_vec(), 2)
        .1
        .unwrap_err()
        .to_string();
    assert!(err.contains("ends inside it"), "{err}");

    // A frame that does not declare its size (a plain streaming encoder's).
    let mut plain = zstd::bulk::Compressor::new(3).unwrap();
    plain.include_contentsize(false).unwrap();
    let no_size = [z.clone(), plain.compress(b"more").unwrap()].concat();
    let err = decode_all(no_size, 2).1.unwrap_err().to_string();
    assert!(
        err.contains("zstd frame 4") && err.contains("no content size"),
        "{err}"
    );

    let garbage = [z.clone(), b"trailing".to_vec()].concat();
    let err = decode_all(garbage, 2).1.unwrap_err().to_string();
    assert!(err.contains("not a zstd frame"), "{err}");
}

#[test]
fn a_frame_declaring_more_than_the_bound_is_refused_before_decoding() {
    let zeros = vec![0u8; MAX_FRAME + 1];
    let mut c = zstd::bulk::Compressor::new(3).unwrap();
    c.include_contentsize(true).unwrap();
    let big = c.compress(&zeros).unwrap();
    let err = decode(7, &big).unwrap_err().to_string();
    assert!(
        err.contains("zstd frame 7") && err.contains("over"),
        "{err}"
    );
}
