//! A one-line progress display on stderr, drawn only when stderr is a terminal: the bytes
//! so far and the rate (`publish`'s upload, `deploy`'s fetch).

use std::io::{IsTerminal as _, Write as _};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

pub(super) struct Bar {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<()>,
}

impl Bar {
    /// Draws `LABEL: N MiB (R MiB/s)` from `bytes()` every 200 ms until stopped, if stderr is
    /// a terminal.
    pub(super) fn on_terminal(
        label: String,
        bytes: impl Fn() -> u64 + Send + 'static,
    ) -> Option<Bar> {
        if !std::io::stderr().is_terminal() {
            return None;
        }
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let started = Instant::now();
            while !flag.load(Ordering::Relaxed) {
                let mib = bytes() as f64 / 1048576.0;
                let secs = started.elapsed().as_secs_f64().max(0.001);
                eprint!("\r\x1b[2K{label}: {mib:.1} MiB ({:.1} MiB/s)", mib / secs);
                let _ = std::io::stderr().flush();
                std::thread::sleep(Duration::from_millis(200));
            }
            eprint!("\r\x1b[2K");
        });
        Some(Bar { stop, thread })
    }

    /// Stops drawing and clears the line.
    pub(super) fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.thread.join();
    }
}
