use std::io::Write;

use super::*;
use crate::artifact::gzip_members::{
    BLOCK, GzipMembers, HEADER_LEN, TRAILER_LEN, inflate, member_len, writer,
};

/// Compressible but not trivial bytes.
fn data(len: usize) -> Vec<u8> {
    let mut x = 0x2545_f491_u32;
    (0..len)
        .map(|i| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            if i % 7 == 0 {
                x as u8
            } else {
                b'a' + (i % 23) as u8
            }
        })
        .collect()
}

fn members(data: &[u8]) -> Vec<u8> {
    let mut w = writer(Vec::new(), flate2::Compression::fast()).unwrap();
    w.write_all(data).unwrap();
    w.finish().unwrap()
}

fn gunzip(gz: Vec<u8>, workers: usize) -> (Vec<u8>, io::Result<usize>) {
    let mut r = ParallelDecode::spawn(Box::new(io::Cursor::new(gz)), GzipMembers, workers).unwrap();
    let mut out = Vec::new();
    let res = r.read_to_end(&mut out);
    (out, res)
}

/// The member boundaries of `gz`.
fn offsets(gz: &[u8]) -> Vec<usize> {
    let mut at = vec![0];
    while *at.last().unwrap() < gz.len() {
        at.push(at.last().unwrap() + member_len(&gz[*at.last().unwrap()..]).unwrap());
    }
    at
}

#[test]
fn output_comes_in_order_whatever_the_number_of_workers() {
    let input = data(5 * BLOCK + 777);
    let gz = members(&input);
    for workers in [1, 2, 4] {
        let (out, res) = gunzip(gz.clone(), workers);
        res.unwrap();
        assert!(out == input, "{workers} workers: output differs");
    }
    let (out, res) = gunzip(members(b""), 2);
    assert_eq!((out.len(), res.unwrap()), (0, 0));
}

#[test]
fn a_corrupt_member_fails_after_the_output_before_it() {
    let input = data(4 * BLOCK);
    let mut gz = members(&input);
    let at = offsets(&gz);
    gz[at[2] + HEADER_LEN + 100] ^= 0x55; // inside member 2's deflate data
    let (out, res) = gunzip(gz, 2);
    let err = res.unwrap_err().to_string();
    assert!(err.contains("gzip member 2"), "{err}");
    assert!(
        out == input[..2 * BLOCK],
        "the first two members' output, then the error"
    );
}

#[test]
fn a_wrong_crc_or_size_in_a_trailer_is_refused() {
    for (byte, what) in [(8, "CRC32"), (4, "trailer says")] {
        let mut gz = members(&data(2 * BLOCK));
        let end = offsets(&gz)[1];
        gz[end - byte] ^= 1;
        let err = gunzip(gz, 2).1.unwrap_err().to_string();
        assert!(err.contains("gzip member 0") && err.contains(what), "{err}");
    }
}

#[test]
fn truncation_mixed_layouts_and_oversized_claims_are_named() {
    let gz = members(&data(2 * BLOCK));
    let cut = gunzip(gz[..gz.len() - 10].to_vec(), 2).1.unwrap_err();
    assert!(cut.to_string().contains("ends inside it"), "{cut}");
    let cut = gunzip(gz[..offsets(&gz)[1] + 5].to_vec(), 2).1.unwrap_err();
    assert!(cut.to_string().contains("inside its header"), "{cut}");

    let mut plain = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    plain.write_all(b"more").unwrap();
    let mixed = [gz.clone(), plain.finish().unwrap()].concat();
    let err = gunzip(mixed, 2).1.unwrap_err().to_string();
    assert!(
        err.contains("gzip member 2") && err.contains("parallel layout"),
        "{err}"
    );

    let mut huge = gz.clone();
    huge[16..20].copy_from_slice(&u32::MAX.to_le_bytes());
    let err = gunzip(huge, 2).1.unwrap_err().to_string();
    assert!(
        err.contains("gzip member 0 at byte 0") && err.contains("claims"),
        "{err}"
    );
}

/// A member that inflates past the bound it claims (a bomb) stops at the bound.
#[test]
fn a_member_that_inflates_past_its_trailer_is_refused_at_the_bound() {
    let zeros = vec![0u8; 3 * 1024 * 1024];
    let mut deflate = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::best());
    deflate.write_all(&zeros).unwrap();
    let body = deflate.finish().unwrap();
    let total = (HEADER_LEN + body.len() + TRAILER_LEN) as u32;
    let mut member = crate::artifact::gzip_members::member_header(total).to_vec();
    member.extend_from_slice(&body);
    member.extend_from_slice(&0u32.to_le_bytes());
    member.extend_from_slice(&1024u32.to_le_bytes()); // claims 1 KiB
    let err = inflate(0, &member).unwrap_err().to_string();
    assert!(err.contains("inflates to 1025+ bytes"), "{err}");
}

/// An endless source stops once the reader is dropped.
#[test]
fn dropping_the_reader_stops_the_threads() {
    struct Endless(Vec<u8>, usize, std::sync::mpsc::Sender<()>);
    impl Read for Endless {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = buf.len().min(self.0.len() - self.1);
            buf[..n].copy_from_slice(&self.0[self.1..self.1 + n]);
            self.1 = (self.1 + n) % self.0.len();
            Ok(n)
        }
    }
    impl Drop for Endless {
        fn drop(&mut self) {
            let _ = self.2.send(());
        }
    }
    let (dropped_tx, dropped) = std::sync::mpsc::channel();
    let one = members(&data(BLOCK));
    let source = Endless(one, 0, dropped_tx);
    let mut r = ParallelDecode::spawn(Box::new(source), GzipMembers, 2).unwrap();
    let mut first = vec![0u8; 3 * BLOCK];
    r.read_exact(&mut first).unwrap();
    assert!(
        dropped.try_recv().is_err(),
        "the source was dropped while read"
    );
    drop(r);
    dropped
        .recv_timeout(std::time::Duration::from_secs(10))
        .expect("the reading thread kept running after the reader was dropped");
}
