//! The background compressor: one thread per [`Stores`](super::Stores), fed by a channel, that
//! gzips sealed segments (`N.log` -> `N.log.gz.tmp`, synced, renamed to `N.log.gz`, then `N.log`
//! removed). It runs off the FIFO path so a rotation never waits for gzip.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::{self, JoinHandle};

use flate2::{Compression, GzBuilder};

use super::catalog::{Shared, State};
use super::last_time;
use super::segment;
use super::StoreError;

/// Bytes copied between checks of the stop flag, so dropping the Stores waits for at most one
/// chunk of gzip, not a whole segment.
const CHUNK: usize = 256 << 10;

enum Message {
    Compress { store: Arc<Shared>, segment: u64 },
    Stop,
}

/// The sending side, one clone per container store.
#[derive(Clone)]
pub(crate) struct CompressQueue(mpsc::Sender<Message>);

impl CompressQueue {
    /// Queues a sealed segment; false if the compressor has stopped (the segment stays plain
    /// and is queued again when the store is next opened).
    pub(crate) fn send(&self, store: Arc<Shared>, segment: u64) -> bool {
        self.0.send(Message::Compress { store, segment }).is_ok()
    }

    /// Queues the sealed segments of `store` (whose locked `state` this is) not compressed or
    /// queued yet, if its limits want compression.
    pub(crate) fn queue_sealed(&self, store: &Arc<Shared>, state: &mut State) {
        if !state.limits.compress || state.removed {
            return;
        }
        for sealed in state.sealed.iter_mut() {
            if !sealed.compressed && !sealed.queued {
                sealed.queued = self.send(Arc::clone(store), sealed.number);
                sealed.compressing = sealed.queued;
            }
        }
    }
}

/// The thread; it ends when this is dropped.
pub(crate) struct Compressor {
    queue: CompressQueue,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Compressor {
    pub(crate) fn start() -> Result<Self, StoreError> {
        let (sender, receiver) = mpsc::channel();
        let stop = Arc::new(AtomicBool::new(false));
        let thread_stop = Arc::clone(&stop);
        let thread = thread::Builder::new()
            .name("store-compress".into())
            .spawn(move || run(&receiver, &thread_stop))
            .map_err(|source| StoreError::Thread { source })?;
        Ok(Self {
            queue: CompressQueue(sender),
            stop,
            thread: Some(thread),
        })
    }

    pub(crate) fn queue(&self) -> CompressQueue {
        self.queue.clone()
    }
}

impl Drop for Compressor {
    fn drop(&mut self) {
        // The flag cuts a compression in progress short; the message wakes an idle thread
        // (container stores still hold senders, so the channel does not close by itself).
        self.stop.store(true, Ordering::Relaxed);
        // Fails only if the thread is already gone.
        let _ = self.queue.0.send(Message::Stop);
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                tracing::error!("the store's compression thread panicked");
            }
        }
    }
}

/// The compressor's nice value: the lowest priority.
const NICE: libc::c_int = 19;

fn run(receiver: &mpsc::Receiver<Message>, stop: &AtomicBool) {
    // Compression is deferrable and draining the FIFOs is not: under load the scheduler gives
    // the cores to the drain (and to the host's containers) first, and the sealed segments wait,
    // readable and counted in max-file, until a core is free (at full ingest rate gzip takes
    // about as much CPU as the drain). On Linux this call sets the calling thread's nice value,
    // not the whole process's.
    // SAFETY: setpriority has no memory effects; who = 0 is this thread.
    if unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, NICE) } != 0 {
        tracing::debug!(error = %io::Error::last_os_error(), "cannot lower the compressor's priority");
    }
    while let Ok(Message::Compress { store, segment }) = receiver.recv() {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        if let Err(error) = compress(&store, segment, stop) {
            // Not a loss: the plain segment stays readable, and is queued again at next open.
            tracing::warn!(%error, "cannot compress a sealed segment; it stays uncompressed");
        }
        if stop.load(Ordering::Relaxed) {
            // Cut short by the shutdown: not settled at its raw size, which could delete
            // backlog on the way out.
            break;
        }
        store.compression_done(segment);
    }
}

fn compress(store: &Shared, number: u64, stop: &AtomicBool) -> Result<(), StoreError> {
    let dir = &store.dir;
    let log = segment::log_path(dir, number);
    let tmp = segment::tmp_path(dir, number);
    let gz = segment::gz_path(dir, number);
    // The tmp file is created under the store's lock, so retention or remove() cannot delete
    // the segment (or the directory) in between and leave a stray file behind.
    let (source, output, known_time) = {
        let mut state = store.lock();
        let compress = state.limits.compress;
        let Some(sealed) = state.sealed_mut(number) else {
            return Ok(());
        };
        if sealed.compressed || !compress {
            sealed.queued = false;
            return Ok(());
        }
        let source = match File::open(&log) {
            Ok(file) => file,
            Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(source) => return Err(StoreError::Open { path: log, source }),
        };
        let output = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(segment::FILE_MODE)
            .open(&tmp)
            .map_err(|source| StoreError::Create {
                path: tmp.clone(),
                source,
            })?;
        (source, output, sealed.last_time)
    };
    let written = write_gz(&source, &log, output, &tmp, known_time, stop);
    if !matches!(written, Ok(true)) {
        segment::remove_if_exists(&tmp)?;
        return written.map(drop);
    }
    {
        let mut state = store.lock();
        let Some(sealed) = state.sealed_mut(number) else {
            // Deleted while we worked; retention already removed the tmp, or will not care.
            drop(state);
            return segment::remove_if_exists(&tmp);
        };
        if let Err(source) = fs::rename(&tmp, &gz) {
            drop(state);
            segment::remove_if_exists(&tmp)?;
            return Err(StoreError::Compress { path: log, source });
        }
        sealed.compressed = true;
        // If this fails both files hold the same records; the next open removes the .log.
        segment::remove_if_exists(&log)?;
    }
    // The rename must survive a crash before anything relies on the .log being gone.
    segment::sync_dir(dir)
}

/// Gzips `source` into `output` and syncs it; Ok(false) if told to stop first.
fn write_gz(
    source: &File,
    source_path: &Path,
    output: File,
    output_path: &Path,
    known_time: Option<i64>,
    stop: &AtomicBool,
) -> Result<bool, StoreError> {
    let last_time = match known_time {
        Some(time) => Some(time),
        None => segment::plain_last_time(source, source_path)?,
    };
    let mut builder = GzBuilder::new();
    if let Some(time) = last_time {
        builder = builder.extra(last_time::header_extra(time));
    }
    let write_error = |source| StoreError::Compress {
        path: output_path.to_owned(),
        source,
    };
    let mut encoder = builder.write(output, Compression::fast());
    let mut buf = vec![0; CHUNK];
    let mut offset = 0;
    let mut reader = source;
    loop {
        if stop.load(Ordering::Relaxed) {
            return Ok(false);
        }
        let read = segment::read_fully(&mut reader, &mut buf, source_path, offset)?;
        if read == 0 {
            break;
        }
        encoder.write_all(&buf[..read]).map_err(write_error)?;
        offset += read as u64;
    }
    let output = encoder.finish().map_err(write_error)?;
    output.sync_all().map_err(write_error)?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The nice value of this process's thread named `name`, from /proc.
    fn nice_of(name: &str) -> Option<i64> {
        for task in fs::read_dir("/proc/self/task").ok()?.flatten() {
            let comm = fs::read_to_string(task.path().join("comm")).unwrap_or_default();
            if comm.trim() == name {
                let stat = fs::read_to_string(task.path().join("stat")).ok()?;
                // The 19th field is the nice value; fields are counted after the name's ')'.
                let after = stat.rsplit_once(')')?.1;
                return after.split_whitespace().nth(16)?.parse().ok();
            }
        }
        None
    }

    #[test]
    fn the_compressor_yields_the_cpu_to_draining() {
        let compressor = Compressor::start().unwrap();
        let mut nice = None;
        for _ in 0..200 {
            nice = nice_of("store-compress");
            if nice == Some(i64::from(NICE)) {
                break;
            }
            thread::sleep(std::time::Duration::from_millis(5));
        }
        drop(compressor);
        assert_eq!(nice, Some(i64::from(NICE)));
    }
}
