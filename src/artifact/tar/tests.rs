//! The entry iterator over hand-built archives: every extension, every limit, every refusal.

use std::io::{Cursor, Read};

use super::*;

const USTAR: &[u8] = b"ustar\x0000";
const GNU: &[u8] = b"ustar  \0";

fn header(name: &[u8], typeflag: u8, size: u64, magic: &[u8]) -> [u8; 512] {
    let mut h = [0u8; 512];
    h[..name.len()].copy_from_slice(name);
    h[100..108].copy_from_slice(b"0000755\0");
    h[124..136].copy_from_slice(format!("{size:011o}\0").as_bytes());
    h[136..148].copy_from_slice(b"00000001750\0");
    h[156] = typeflag;
    h[257..257 + magic.len()].copy_from_slice(magic);
    checksum(&mut h);
    h
}

fn checksum(h: &mut [u8; 512]) {
    h[148..156].fill(b' ');
    let sum: u32 = h.iter().map(|b| u32::from(*b)).sum();
    h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
}

fn member(h: [u8; 512], data: &[u8]) -> Vec<u8> {
    let mut v = h.to_vec();
    v.extend_from_slice(data);
    v.resize(v.len().next_multiple_of(512), 0);
    v
}

fn ext(name: &[u8], typeflag: u8, data: &[u8]) -> Vec<u8> {
    member(header(name, typeflag, data.len() as u64, USTAR), data)
}

fn file(name: &[u8], data: &[u8]) -> Vec<u8> {
    member(header(name, b'0', data.len() as u64, USTAR), data)
}

fn rec(k: &str, v: &[u8]) -> Vec<u8> {
    let body = [k.as_bytes(), b"=", v, b"\n"].concat();
    let mut n = body.len() + 2;
    while n != n.to_string().len() + 1 + body.len() {
        n = n.to_string().len() + 1 + body.len();
    }
    [n.to_string().as_bytes(), b" ", &body].concat()
}

fn archive(parts: &[Vec<u8>]) -> Vec<u8> {
    let mut v = parts.concat();
    v.extend_from_slice(&[0; 1024]);
    v
}

/// Every entry with its contents, or the first error.
fn read(bytes: &[u8]) -> Result<Vec<(Entry, Vec<u8>)>, TarError> {
    let mut a = Archive::new(Cursor::new(bytes));
    let mut out = Vec::new();
    while let Some(e) = a.next_entry()? {
        let mut data = Vec::new();
        a.contents(&e)
            .read_to_end(&mut data)
            .map_err(TarError::Io)?;
        out.push((e, data));
    }
    Ok(out)
}

#[test]
fn pax_records_override_the_header_and_globals_apply_until_deleted() {
    let long = "p/".repeat(100) + "name";
    let bytes = archive(&[
        ext(
            b"g",
            b'g',
            &[rec("uname", b"glob"), rec("gid", b"7")].concat(),
        ),
        ext(
            b"x",
            b'x',
            &[
                rec("path", long.as_bytes()),
                rec("uid", b"3000000000"),
                rec("mtime", b"-1.25"),
                rec("SCHILY.xattr.user.k", b"v\0w"),
            ]
            .concat(),
        ),
        file(b"short", b"data"),
        ext(
            b"x",
            b'X',
            &[rec("gid", b""), rec("linkpath", b"target")].concat(),
        ),
        member(header(b"sym", b'2', 0, USTAR), b""),
    ]);
    let got = read(&bytes).unwrap();
    let (e, data) = &got[0];
    assert_eq!(
        (e.path.as_slice(), data.as_slice()),
        (long.as_bytes(), &b"data"[..])
    );
    assert_eq!(
        (e.uid, e.gid, e.mtime, e.mode),
        (3_000_000_000, 7, -2, 0o755)
    );
    assert_eq!(e.uname, b"glob");
    assert_eq!(
        e.xattrs,
        vec![(b"SCHILY.xattr.user.k".to_vec(), b"v\0w".to_vec())]
    );
    assert!(e.ext_bytes > 0);
    let (s, _) = &got[1];
    assert_eq!(
        (s.kind, s.link.as_slice(), s.gid),
        (Kind::Symlink, &b"target"[..], 0)
    );
}

#[test]
fn gnu_long_names_and_links() {
    let long = vec![b'n'; 300];
    let target = vec![b't'; 200];
    let bytes = archive(&[
        ext(b"././@LongLink", b'L', &[long.as_slice(), b"\0"].concat()),
        ext(b"././@LongLink", b'K', &target),
        member(header(b"trunc", b'1', 0, GNU), b""),
    ]);
    let got = read(&bytes).unwrap();
    assert_eq!(got[0].0.path, long);
    assert_eq!((got[0].0.kind, &got[0].0.link), (Kind::HardLink, &target));
}

#[test]
fn extension_cap_applies_before_reading() {
    // The header claims 1 GiB and the input ends right after it: the cap, not the short
    // input, is what is reported, so nothing was read or allocated first.
    let head = header(b"big", b'x', 1 << 30, USTAR).to_vec();
    let err = read(&head).unwrap_err();
    assert!(
        matches!(err, TarError::ExtensionTooLarge { size, limit, .. } if size == 1 << 30 && limit == MAX_EXTENSION),
        "{err}"
    );
    assert!(err.to_string().contains("\"big\""), "{err}");
    // Several headers before one entry add up.
    let pax = rec("comment", &vec![b'a'; 400_000]);
    let three = archive(&[
        ext(b"a", b'x', &pax),
        ext(b"b", b'x', &pax),
        ext(b"c", b'L', &pax),
    ]);
    let err = read(&three).unwrap_err();
    assert!(matches!(err, TarError::ExtensionTooLarge { .. }), "{err}");
    // Global headers with new keys add up across entries, not only before one.
    let globals: Vec<Vec<u8>> = (0..4)
        .flat_map(|i| {
            let key = format!("comment{i}");
            [
                ext(b"g", b'g', &rec(&key, &vec![b'a'; 400_000])),
                file(b"f", b""),
            ]
        })
        .collect();
    let err = read(&archive(&globals)).unwrap_err();
    assert!(err.to_string().contains("global PAX headers"), "{err}");
    let mut small = Archive::with_limits(
        Cursor::new(archive(&[
            ext(b"a", b'x', &rec("uid", b"1")),
            file(b"f", b""),
        ])),
        Limits { max_extension: 4 },
    );
    assert!(matches!(
        small.next_entry(),
        Err(TarError::ExtensionTooLarge { .. })
    ));
}

#[test]
fn v7_directories_labels_and_refused_types() {
    let mut v7dir = header(b"dir/", b'0', 0, b"");
    checksum(&mut v7dir);
    let bytes = archive(&[
        member(v7dir, b""),
        ext(b"label", b'V', b""),
        member(header(b"dumpdir", b'D', 3, GNU), b"abc"),
    ]);
    let got = read(&bytes).unwrap();
    let kinds: Vec<_> = got.iter().map(|(e, _)| (e.path.clone(), e.kind)).collect();
    assert_eq!(
        kinds,
        vec![
            (b"dir/".to_vec(), Kind::Dir),
            (b"dumpdir".to_vec(), Kind::Dir)
        ]
    );
    assert_eq!(got[0].0.format, header::Format::V7);
    for (t, feature) in [
        (b'M', "multi-volume"),
        (b'N', "long-name record"),
        (b'Z', "'Z'"),
    ] {
        let err = read(&archive(&[member(header(b"odd", t, 0, GNU), b"")])).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("\"odd\"") && text.contains(feature), "{text}");
    }
    let star = [rec("SCHILY.filetype", b"sparse")].concat();
    let err = read(&archive(&[ext(b"x", b'x', &star), file(b"s", b"")])).unwrap_err();
    assert!(err.to_string().contains("star sparse"), "{err}");
}

#[test]
fn ends_and_truncation() {
    let one = file(b"f", b"abc");
    assert_eq!(
        read(&one).unwrap().len(),
        1,
        "end of input at a block boundary"
    );
    let mut lone = one.clone();
    lone.extend_from_slice(&[0; 512]);
    lone.extend_from_slice(&file(b"after-end", b""));
    assert_eq!(
        read(&lone).unwrap().len(),
        1,
        "a zero block ends the archive"
    );
    let err = read(&one[..514]).unwrap_err();
    assert!(matches!(err, TarError::Io(_)), "short data: {err}");
    let err = read(&one[..700]).unwrap_err();
    assert!(
        matches!(err, TarError::Truncated(_)),
        "short padding: {err}"
    );
    let err = read(&one[..300]).unwrap_err();
    assert!(matches!(err, TarError::Truncated(_)), "{err}");
    for lone_ext in [ext(b"x", b'x', &rec("uid", b"1")), ext(b"x", b'x', b"")] {
        let err = read(&lone_ext).unwrap_err();
        assert!(matches!(err, TarError::Truncated(_)), "{err}");
    }
    let mut bad = one.clone();
    bad[10] ^= 1;
    let mut two = file(b"ok", b"");
    two.extend_from_slice(&bad);
    assert!(matches!(read(&two), Err(TarError::Checksum { at: 512 })));
    let err = read(&archive(&[ext(b"x", b'x', b"5 a=b\nzz")])).unwrap_err();
    assert!(matches!(err, TarError::BadExtension { .. }), "{err}");
    let err = read(&archive(&[
        ext(b"x", b'x', &rec("uid", b"-1")),
        file(b"f", b""),
    ]));
    assert!(err.unwrap_err().to_string().contains("uid"));
}

#[test]
fn sparse_forms_expand_to_the_same_file() {
    let data = [b"head".as_slice(), &[0; 508], b"tail"].concat();
    let mut expect = vec![0u8; 8192];
    expect[..4].copy_from_slice(b"head");
    expect[8188..].copy_from_slice(b"tail");
    // Old GNU with one slot in the header and one in an extension block.
    let mut old = header(b"old", b'S', 516, GNU);
    old[386..398].copy_from_slice(b"00000000000\0");
    old[398..410].copy_from_slice(b"00000001000\0");
    old[482] = 1;
    old[483..495].copy_from_slice(b"00000020000\0");
    checksum(&mut old);
    let mut more = [0u8; 512];
    more[..12].copy_from_slice(b"00000017774\0");
    more[12..24].copy_from_slice(b"00000000004\0");
    let mut v1 = b"2\n0\n512\n8188\n4\n".to_vec();
    v1.resize(512, 0);
    v1.extend_from_slice(&data);
    let bytes = archive(&[
        [old.to_vec(), more.to_vec(), data.clone(), vec![0; 508]].concat(),
        ext(
            b"x",
            b'x',
            &[
                rec("GNU.sparse.size", b"8192"),
                rec("GNU.sparse.numblocks", b"2"),
                rec("GNU.sparse.map", b"0,512,8188,4"),
                rec("GNU.sparse.name", b"v01"),
            ]
            .concat(),
        ),
        file(b"GNUSparseFile.1/v01", &data),
        ext(
            b"x",
            b'x',
            &[
                rec("GNU.sparse.major", b"1"),
                rec("GNU.sparse.minor", b"0"),
                rec("GNU.sparse.name", b"v10"),
                rec("GNU.sparse.realsize", b"8192"),
            ]
            .concat(),
        ),
        file(b"GNUSparseFile.1/v10", &v1),
    ]);
    let got = read(&bytes).unwrap();
    let names: Vec<_> = got.iter().map(|(e, _)| e.shown()).collect();
    assert_eq!(names, ["old", "v01", "v10"]);
    for (e, contents) in &got {
        assert_eq!((e.size, e.stored), (8192, 516), "{}", e.shown());
        assert_eq!(contents, &expect, "{}", e.shown());
    }
    assert!(
        got[2].0.ext_bytes >= 512,
        "the 1.0 map counts as extension data"
    );
}

#[test]
fn skipping_by_seek_and_data_offsets() {
    let bytes = archive(&[file(b"a", &[1; 1000]), file(b"b", b"second")]);
    let mut a = Archive::seekable(Cursor::new(&bytes), Limits::default());
    let first = a.next_entry().unwrap().unwrap();
    assert_eq!((first.data_offset, first.size), (512, 1000));
    let second = a.next_entry().unwrap().unwrap();
    assert_eq!(second.data_offset, 512 * 4);
    let mut data = String::new();
    a.data().read_to_string(&mut data).unwrap();
    assert_eq!(data, "second");
    assert!(a.next_entry().unwrap().is_none());
}

#[test]
fn a_global_header_may_end_the_archive() {
    let global = ext(b"g", b'g', &rec("comment", b"built by ci"));
    for bytes in [
        archive(&[file(b"a", b"x"), global.clone()]),
        [file(b"a", b"x"), global.clone()].concat(),
        archive(std::slice::from_ref(&global)),
    ] {
        let entries = read(&bytes).unwrap();
        assert!(entries.len() <= 1);
        assert!(entries.iter().all(|(e, d)| e.path == b"a" && d == b"x"));
    }
    // A local header still needs its entry, global header or not.
    let err = read(&archive(&[ext(b"x", b'x', &rec("uid", b"1")), global])).unwrap_err();
    assert!(matches!(err, TarError::Truncated(_)), "{err}");
}
