use super::*;

fn spec(dir: &Path, cap: u64) -> LogSpec {
    LogSpec {
        path: dir.join("web.log"),
        cap,
    }
}

#[test]
fn the_file_is_rotated_by_rename_at_the_cap_and_never_grows_past_it() {
    let dir = tempfile::tempdir().unwrap();
    let s = spec(dir.path(), 10);
    std::fs::write(&s.path, b"0123").unwrap();
    let mut log = RotatingLog::open(&s, false).unwrap();
    let first = std::fs::metadata(&s.path).unwrap();
    log.write(b"456789abcdefghij").unwrap();
    let rotated = RotatingLog::rotated_path(&s.path);
    assert_eq!(std::fs::read(&rotated).unwrap(), b"0123456789");
    assert_eq!(std::fs::read(&s.path).unwrap(), b"abcdefghij");
    // Renamed, not copied: the rotated file is the inode that was written first.
    use std::os::unix::fs::MetadataExt;
    assert_eq!(std::fs::metadata(&rotated).unwrap().ino(), first.ino());
    // A write that never ends is cut at the cap like any other bytes.
    log.write(&[b'x'; 35]).unwrap();
    assert_eq!(std::fs::read(&rotated).unwrap(), [b'x'; 10]);
    assert_eq!(std::fs::read(&s.path).unwrap(), [b'x'; 5]);
}

#[test]
fn a_symlink_or_fifo_at_the_log_path_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let s = spec(dir.path(), 10);
    std::os::unix::fs::symlink("/etc/passwd", &s.path).unwrap();
    assert!(RotatingLog::open(&s, false).is_err());
    std::fs::remove_file(&s.path).unwrap();
    nix::unistd::mkfifo(&s.path, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    assert!(RotatingLog::open(&s, false).is_err());
}

/// A stalled log disk: nobody takes from the queue. The reader still empties the pipe (the
/// jail's writes all complete) and counts what it dropped; the marker shows once the
/// writer moves again.
#[test]
fn a_stalled_writer_never_blocks_the_jail_and_the_gap_is_marked() {
    let (read, write) = nix::unistd::pipe2(OFlag::O_CLOEXEC).unwrap();
    let (stop_rd, _stop_wr) = nix::unistd::pipe2(OFlag::O_CLOEXEC).unwrap();
    let (tx, rx) = std::sync::mpsc::sync_channel(QUEUE_CHUNKS);
    let reader = std::thread::spawn(move || read_pipe(&read, &stop_rd, &tx));
    let total = 8 * QUEUE_CHUNKS * CHUNK;
    let (sent_tx, sent) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut f = File::from(write);
        f.write_all(&vec![b'#'; total]).unwrap();
        sent_tx.send(()).unwrap();
    });
    sent.recv_timeout(Duration::from_secs(20))
        .expect("the jail's writes blocked behind a stalled log writer");
    let mut out = Vec::new();
    write_chunks(&rx, |b| {
        out.extend_from_slice(b);
        Ok(())
    });
    reader.join().unwrap();
    let text = String::from_utf8_lossy(&out);
    let ys = out.iter().filter(|b| **b == b'#').count();
    // What the queue held, plus what was still in the pipe when the jail's last write
    // returned (the reader may take it once the queue drains): at most the pipe's size.
    let pipe = 64 << 10;
    assert!(ys <= (QUEUE_CHUNKS + 1) * CHUNK + pipe, "kept {ys} bytes");
    let dropped = total - ys;
    assert!(
        text.contains(&format!(
            "[droot-fleet: {dropped} bytes of output dropped: the log writer fell behind]"
        )),
        "{}",
        &text[text.len().saturating_sub(200)..]
    );
}

#[test]
fn bytes_the_file_refuses_are_counted_and_marked() {
    let (tx, rx) = std::sync::mpsc::sync_channel(4);
    tx.send(Chunk::Data(b"one\n".to_vec())).unwrap();
    tx.send(Chunk::Data(b"two\n".to_vec())).unwrap();
    tx.send(Chunk::Data(b"three\n".to_vec())).unwrap();
    drop(tx);
    let mut out = Vec::new();
    let mut calls = 0;
    write_chunks(&rx, |b| {
        calls += 1;
        if calls == 2 {
            return Err(io::Error::from_raw_os_error(libc::ENOSPC));
        }
        out.extend_from_slice(b);
        Ok(())
    });
    let text = String::from_utf8(out).unwrap();
    assert!(text.starts_with("one\n"), "{text}");
    assert!(
        text.contains("[droot-fleet: 4 bytes of output dropped: the log file refused them"),
        "{text}"
    );
    assert!(text.ends_with("three\n"), "{text}");
}
